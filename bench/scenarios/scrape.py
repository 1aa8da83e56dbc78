"""``/metrics`` of a daemon holding many tokens: how long a scrape holds the event loop, seen
from ``/healthz`` requests answered on that loop, and the daemon's CPU per scrape."""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from typing import Any

import benchlib


def _healthz(conn: http.client.HTTPConnection) -> float:
    started = time.perf_counter()
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    return time.perf_counter() - started


def _ms(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank below) of seconds, in ms."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


class Scraper:
    """Scrapes ``/metrics`` over one connection, keeping each response's size and latency."""

    def __init__(self, port: int, accept: str) -> None:
        self.port = port
        self.headers = {"Accept": accept} if accept else {}
        self.sizes: list[int] = []
        self.latencies: list[float] = []

    def loop(self, scrapes: int, window: float) -> None:
        """Back-to-back scrapes for at least ``window`` s and at least ``scrapes`` of them."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        end = time.perf_counter() + window
        while len(self.latencies) < scrapes or time.perf_counter() < end:
            t0 = time.perf_counter()
            conn.request("GET", "/metrics", headers=self.headers)
            self.sizes.append(len(conn.getresponse().read()))
            self.latencies.append(time.perf_counter() - t0)
        conn.close()


def _probe_until(
    probe: http.client.HTTPConnection, done: threading.Event | None, window: float
) -> list[float]:
    """``/healthz`` latencies (s), back to back over ``probe``: until ``done`` is set, or else
    for at least ``window`` s and 300 probes."""
    out: list[float] = []
    if done is None:
        end = time.perf_counter() + window
        while len(out) < 300 or time.perf_counter() < end:
            out.append(_healthz(probe))
    else:
        while not done.is_set():
            out.append(_healthz(probe))
    return out


def scrape_load(
    d: benchlib.DaemonRun, scrapes: int, window: float = 3.0, accept: str = ""
) -> dict[str, Any]:
    """``/metrics`` of a daemon with every token on disk: its size, the daemon's CPU per scrape,
    and how long ``/healthz`` (answered on the event loop) waits while scrapes run back to
    back in another thread, beside the same probe with no scrape (the floor). A request that
    arrives while the loop is held waits until it is free, so the longest wait bounds the
    event-loop time a scrape takes in one piece.

    Each phase lasts at least *window* seconds (the busy one also at least *scrapes* scrapes),
    so a fast scrape is probed as often as a slow one: the longest of a few dozen probes and of
    a thousand are not the same statistic. The busy window starts with the daemon's first scrape
    (the one that renders every token). CPU per scrape is measured in a third phase with no
    probes (utime+stime, 10 ms ticks, over at least *window* seconds of scrapes). *accept* is
    the scrapes' Accept header (none: the classic text format; Prometheus asks for
    OpenMetrics)."""
    port = int(d.process.wait_event("listening")["listen"].rpartition(":")[2])
    probe = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    quiet = _probe_until(probe, None, window)
    during = Scraper(port, accept)
    stop = threading.Event()

    def scrape_then_stop() -> None:
        during.loop(scrapes, window)
        stop.set()

    scraper = threading.Thread(target=scrape_then_stop)
    scraper.start()
    busy = _probe_until(probe, stop, window)
    scraper.join()
    probe.close()
    alone = Scraper(port, accept)
    cpu0 = benchlib.cpu(d.pid).seconds
    alone.loop(scrapes, window)
    cpu_s = benchlib.cpu(d.pid).seconds - cpu0
    sizes = during.sizes + alone.sizes
    return {
        "accept": accept,
        "scrapes": len(during.latencies),
        "window_s": window,
        "bytes": sizes[-1] if sizes else 0,
        "first_scrape_ms": round(during.latencies[0] * 1000, 2),
        "scrape_ms_mean": round(statistics.mean(during.latencies) * 1000, 2),
        "scrape_ms_max": _ms(during.latencies, 1.0),
        "cpu_scrapes": len(alone.latencies),
        "daemon_cpu_ms_per_scrape": round(cpu_s * 1000 / len(alone.latencies), 2),
        "healthz_during_p50_ms": _ms(busy, 0.5),
        "healthz_during_p99_ms": _ms(busy, 0.99),
        "healthz_during_max_ms": _ms(busy, 1.0),
        "healthz_quiet_p50_ms": _ms(quiet, 0.5),
        "healthz_quiet_p99_ms": _ms(quiet, 0.99),
        "healthz_quiet_max_ms": _ms(quiet, 1.0),
        "healthz_probes_during": len(busy),
        "healthz_probes_quiet": len(quiet),
    }
