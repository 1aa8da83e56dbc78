#!/usr/bin/env python3
"""entra-tokend footprint and scale benchmarks (issue 9), in one run.

Starts the real daemon (``python -m entra_tokend run``, a subprocess of its own) against the
emulator (``python -m entra_tokend emulator``, another subprocess, TLS on 127.0.0.1) and
measures, side by side:

* cold start: process spawn until N token files are on disk, N = 1 and 10;
* azure-identity's ``WorkloadIdentityCredential`` in a fresh interpreter: spawn until it has
  one token, the in-process import + ``get_token`` time, and its RSS (the competitor);
* idle RSS (the whole process tree, from /proc) and idle CPU over a window (default 60 s) for
  1, 10 and 100 tokens, plus variants of the 10-token daemon (trust store, malloc arenas);
* projected-token rotation to new token on disk, p50/p99 (``bench/rotation_latency.py``,
  run as a subprocess; by default during the idle window, which it does not disturb: the idle
  daemons' CPU is counted per process and they talk to another emulator);
* 1,000 tokens with 50 ms added to every token request: time until all are on disk, peak RSS;
* the fleet simulation (``bench/fleet_sim.py``, no network).

Prints a table, writes ``bench/results/latest.json`` and ``docs/benchmarks.md`` (rendered from
``bench/benchmarks.md.tmpl``: the tables, the machine, and the fleet plot
``docs/fleet_sim.png``). Takes about 2 minutes.

Trust store: to verify Entra an application loads a full public CA bundle (certifi's, for
azure-identity and for the daemon outside its image). So that the figures include that cost,
both are given a bundle made of certifi's certificates plus the emulator's CA, unless
``--trust emulator-only`` or ``--trust hashed-dir``. The daemon's image sets ``SSL_CERT_DIR`` to
an OpenSSL hashed directory instead: the "hashed dir" rows measure that as well.

    .venv/bin/python bench/run_all.py            # everything
    .venv/bin/python bench/run_all.py --quick    # smoke run, ~1 min

Figures are noisy on a busy machine: the load average is recorded next to each.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import benchlib
from entra_tokend.config.schema import TOP_LEVEL
from support import REPO, base_env, stop_process

DEFAULT_CONCURRENCY = int(TOP_LEVEL["concurrency"][1])  # the default the daemon runs with

RESULTS = benchlib.BENCH_DIR / "results" / "latest.json"
TEMPLATE = benchlib.BENCH_DIR / "benchmarks.md.tmpl"
BASELINE = benchlib.BENCH_DIR / "results" / "baseline.json"
"""The "before" of the before/after table: the results of an earlier full run, kept as they were."""
DOCS = REPO / "docs" / "benchmarks.md"
PLOT = REPO / "docs" / "fleet_sim.png"

TARGET_IDLE_RSS_MIB = 32.0
TARGET_IDLE_CPU_PCT = 0.1
TARGET_ROTATION_P99_MS = 100.0
TARGET_BIG_SECONDS = 5.0
TARGET_BIG_RSS_MIB = 64.0


@dataclass
class Options:
    """What to run (see --help)."""

    repeats: int = 5
    idle_window: float = 60.0
    settle: float = 10.0
    rotations: int = 200
    serial: bool = True
    big_tokens: int = 1000
    big_delay: float = 0.05
    big_concurrency: list[int | None] = field(default_factory=lambda: [None, 32, 64])
    tls: bool = True
    trust: str = "full"
    fleet: bool = True
    docs: bool = True
    json_path: Path = RESULTS
    docs_path: Path = DOCS
    plot_path: Path = PLOT
    keep: bool = False
    render: Path | None = None
    scrapes: int = 20
    endpoint_requests: int = 2000


def log(msg: str) -> None:
    """Progress on stderr, with the load average."""
    print(f"[{time.strftime('%H:%M:%S')} load {benchlib.load()[0]:.2f}] {msg}", file=sys.stderr)


def median(values: list[float]) -> float:
    """Median, rounded for the table."""
    return round(statistics.median(values), 4)


def mib(kib: int) -> float:
    """KiB to MiB, 2 decimals."""
    return round(kib / 1024, 2)


# ------------------------------------------------------------------------------ trust store


def trust_files(work: Path, emu: benchlib.EmulatorProcess) -> dict[str, Path]:
    """A full bundle (certifi + the emulator's CA), and the same as an OpenSSL hashed dir."""
    import certifi

    ca = Path(emu.env["SSL_CERT_FILE"]).read_text()
    public = Path(certifi.where()).read_text()
    bundle = work / "trust" / "bundle.pem"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_text(public.rstrip("\n") + "\n" + ca)
    out = {"bundle": bundle}
    if shutil.which("openssl"):
        hashed = work / "trust" / "hashed"
        hashed.mkdir(exist_ok=True)
        end = "-----END CERTIFICATE-----"
        pems = [p + end + "\n" for p in (public + "\n" + ca).split(end) if "BEGIN" in p]
        for i, pem in enumerate(pems):
            (hashed / f"ca{i:04d}.pem").write_text(pem[pem.index("-----BEGIN") :])
        done = subprocess.run(
            ["openssl", "rehash", str(hashed)], capture_output=True, timeout=60, check=False
        )
        if done.returncode == 0:
            out["hashed_dir"] = hashed
    return out


def trust_env(emu: benchlib.EmulatorProcess, files: dict[str, Path], mode: str) -> dict[str, str]:
    """The emulator's environment with the trust store ``mode`` asks for."""
    env = {k: v for k, v in emu.env.items() if k not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}
    if not emu.env.get("SSL_CERT_FILE"):
        return env  # plain http
    if mode == "emulator-only":
        env["SSL_CERT_FILE"] = env["REQUESTS_CA_BUNDLE"] = emu.env["SSL_CERT_FILE"]
    elif mode == "hashed-dir":
        env["SSL_CERT_DIR"] = env["REQUESTS_CA_BUNDLE"] = str(files["hashed_dir"])
        env["SSL_CERT_FILE"] = ""  # the daemon treats empty as unset
    else:
        env["SSL_CERT_FILE"] = env["REQUESTS_CA_BUNDLE"] = str(files["bundle"])
    return env


@contextlib.contextmanager
def env_of(emu: benchlib.EmulatorProcess, env: dict[str, str]) -> Iterator[None]:
    """Temporarily give ``emu`` another environment for the children."""
    saved = emu.env
    emu.env = env
    try:
        yield
    finally:
        emu.env = saved


# ------------------------------------------------------------------------------- cold start


def cold_start_daemon(
    emu: benchlib.EmulatorProcess, work: Path, n: int, pycache: Path
) -> dict[str, Any]:
    """One spawn → n token files on disk."""
    with benchlib.daemon(work, emu, n, pycache=pycache) as d:
        seconds = d.wait_all(60)
        mem = benchlib.memory(d.pid)
        d.process.wait_event("ready: every token is on disk")  # logged after the last file
    phases = benchlib.log_phases(d)
    benchlib.rmtree(work)
    return {"seconds": round(seconds, 4), "rss_kib": mem.rss, "phases_ms": phases}


def azure_identity_once(emu: benchlib.EmulatorProcess, pycache: Path) -> dict[str, Any]:
    """One fresh interpreter: import azure-identity, get one token; spawn → token seen."""
    argv = [sys.executable, str(benchlib.BENCH_DIR / "azure_identity_probe.py")]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        env=base_env(emu.env, daemon_src=benchlib.source, pycache=pycache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        seconds = time.monotonic() - started
        _, err = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    if not line.strip():
        raise benchlib.BenchError(f"azure-identity probe failed: {err[-2000:]}")
    result: dict[str, Any] = json.loads(line)
    result["spawn_to_token_s"] = round(seconds, 4)
    return result


def cold_start(
    emu: benchlib.EmulatorProcess,
    work: Path,
    pycache: Path,
    repeats: int,
    hashed: dict[str, str] | None,
) -> dict[str, Any]:
    """Interleaved repeats of daemon N=1, N=10 and azure-identity (noise hits all alike).

    With ``hashed`` (the environment of a hashed-directory trust store) the daemon with 10
    tokens and azure-identity are also run with it.
    """
    plan: list[tuple[str, int, dict[str, str]]] = [
        ("daemon_1", 1, {}),
        ("daemon_10", 10, {}),
        ("azure_identity", 0, {}),
    ]
    if hashed is not None:
        plan += [("daemon_10_hashed", 10, hashed), ("azure_identity_hashed", 0, hashed)]
    load_before = benchlib.load()
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in plan}
    # One untimed warm-up of each (bytecode cache, page cache), then the repeats.
    for r in range(repeats + 1):
        for key, n, extra in plan:
            emu_cpu = benchlib.cpu(emu.pid).seconds
            with env_of(emu, {**emu.env, **extra}):
                if n:
                    one = cold_start_daemon(emu, work / f"{key}-{r}", n, pycache)
                else:
                    one = azure_identity_once(emu, pycache)
            one["emulator_cpu_s"] = benchlib.cpu(emu.pid).seconds - emu_cpu
            if r:
                runs[key].append(one)
    out: dict[str, Any] = {"repeats": repeats, "load_before": load_before}
    for key, n, _ in plan:
        if n:
            secs = [x["seconds"] for x in runs[key]]
            phases = [x["phases_ms"] for x in runs[key]]
            out[key] = {
                "spawn_to_files_s_median": median(secs),
                "min_s": min(secs),
                "max_s": max(secs),
                "all_s": secs,
                "emulator_cpu_ms_median": round(
                    1000 * statistics.median(x["emulator_cpu_s"] for x in runs[key])
                ),
                "phases_ms_median": {
                    k: round(statistics.median(p[k] for p in phases if k in p), 1)
                    for k in ("starting", "first_token", "last_token", "ready")
                    if any(k in p for p in phases)
                },
            }
            continue
        az = runs[key]
        out[key] = {
            "spawn_to_token_s_median": median([x["spawn_to_token_s"] for x in az]),
            "import_and_token_s_median": median([x["import_and_token_s"] for x in az]),
            "import_s_median": median([x["import_s"] for x in az]),
            "get_token_s_median": median([x["get_token_s"] for x in az]),
            "rss_mib_median": mib(int(statistics.median([x["rss_kib"] for x in az]))),
            "hwm_mib_median": mib(int(statistics.median([x["hwm_kib"] for x in az]))),
            "all_spawn_to_token_s": [x["spawn_to_token_s"] for x in az],
            "emulator_cpu_ms_median": round(
                1000 * statistics.median(x["emulator_cpu_s"] for x in az)
            ),
        }
    out["load_after"] = benchlib.load()
    return out


# ------------------------------------------------------------------------------------- idle


@dataclass
class IdleVariant:
    """One idle daemon to watch."""

    key: str
    label: str
    tokens: int
    env: dict[str, str] = field(default_factory=dict)


def idle(
    emu: benchlib.EmulatorProcess,
    work: Path,
    pycache: Path,
    variants: list[IdleVariant],
    *,
    window: float,
    settle: float,
) -> dict[str, Any]:
    """Start every variant, wait until all are on disk, settle, then watch for ``window`` s.
    ``floor_probe.py`` (the same stack, one HTTPS request) idles beside them: the floor."""
    out: dict[str, Any] = {"window_s": window, "settle_s": settle}
    with contextlib.ExitStack() as stack:
        probe = subprocess.Popen(
            [sys.executable, str(benchlib.BENCH_DIR / "floor_probe.py")],
            env=base_env(emu.env, daemon_src=benchlib.source, pycache=pycache),
            stdout=subprocess.PIPE,
            text=True,
        )
        stack.callback(stop_process, probe)
        runs = []
        for v in variants:
            with env_of(emu, {**emu.env, **v.env}):
                runs.append(
                    (
                        v,
                        stack.enter_context(
                            benchlib.daemon(work / v.key, emu, v.tokens, pycache=pycache)
                        ),
                    )
                )
        for _, d in runs:
            d.wait_all(120)
        assert probe.stdout is not None
        if not probe.stdout.readline().startswith("ready"):
            raise benchlib.BenchError("floor_probe.py did not make its request")
        time.sleep(settle)
        out["load_before"] = benchlib.load()
        before = {v.key: benchlib.cpu(d.pid) for v, d in runs}
        peaks = {v.key: benchlib.memory(d.pid) for v, d in runs}
        started = time.monotonic()
        # Bounded: one sample a second for the window.
        for _ in range(int(window) + 1):
            remaining = window - (time.monotonic() - started)
            if remaining <= 0:
                break
            time.sleep(min(1.0, remaining))
            for v, d in runs:
                m = benchlib.memory(d.pid)
                if m.rss > peaks[v.key].rss:
                    peaks[v.key] = m
        elapsed = time.monotonic() - started
        for v, d in runs:
            after = benchlib.cpu(d.pid)
            m = benchlib.memory(d.pid)
            b = before[v.key]
            cpu_s = after.seconds - b.seconds
            out[v.key] = {
                "label": v.label,
                "tokens": v.tokens,
                "rss_mib": m.rss_mib,
                "rss_anon_mib": mib(m.anon),
                "rss_file_mib": mib(m.file),
                "rss_peak_in_window_mib": peaks[v.key].rss_mib,
                "processes": m.processes,
                "threads": m.threads,
                "cpu_s": round(cpu_s, 3),
                "cpu_pct_of_core": round(100 * cpu_s / elapsed, 4),
                "wakeups_per_min": round(
                    (after.voluntary_switches - b.voluntary_switches) * 60 / elapsed, 1
                ),
                "involuntary_switches": after.involuntary_switches - b.involuntary_switches,
            }
        m = benchlib.memory(probe.pid)
        out["floor_probe"] = {
            "label": "floor (bench/floor_probe.py: the same libraries, one HTTPS request)",
            "tokens": 0,
            "rss_mib": m.rss_mib,
            "rss_anon_mib": mib(m.anon),
            "rss_file_mib": mib(m.file),
            "threads": m.threads,
        }
        out["window_measured_s"] = round(elapsed, 2)
        out["load_after"] = benchlib.load()
    return out


# ------------------------------------------------------------------------------- 1,000 tokens


def big(work: Path, pycache: Path, opts: Options, trust: str) -> dict[str, Any]:
    """N tokens, every token request delayed: time to all on disk, peak RSS."""
    out: dict[str, Any] = {"tokens": opts.big_tokens, "delay_s": opts.big_delay, "runs": []}
    count = opts.big_tokens * (len(opts.big_concurrency) + 1) * 4
    with benchlib.emulator(
        work / "emulator",
        tls=opts.tls,
        delay=opts.big_delay,
        delay_count=count,
        pycache=pycache,
    ) as emu:
        files = trust_files(work, emu)
        with env_of(emu, trust_env(emu, files, trust)):
            for concurrency in opts.big_concurrency:
                extra = {} if concurrency is None else {"concurrency": concurrency}
                tag = "default" if concurrency is None else str(concurrency)
                load_before = benchlib.load()
                emu_cpu0 = benchlib.cpu(emu.pid).seconds
                with (
                    benchlib.daemon(
                        work / f"c{tag}", emu, opts.big_tokens, pycache=pycache, extra_config=extra
                    ) as d,
                    benchlib.PeakSampler(d.pid, 0.02) as sampler,
                ):
                    seconds = d.wait_all(120, interval=0.005)
                    daemon_cpu = benchlib.cpu(d.pid).seconds
                    started_ms = benchlib.log_phases(d).get("starting")
                    emu_cpu = benchlib.cpu(emu.pid).seconds - emu_cpu0
                    if "scrape" not in out:
                        out["scrape"] = scrape_load(d, opts.scrapes)
                    time.sleep(2.0)
                    settled = benchlib.memory(d.pid)
                    hwm = settled.hwm
                out["runs"].append(
                    {
                        "concurrency": concurrency or f"default ({DEFAULT_CONCURRENCY})",
                        "all_on_disk_s": round(seconds, 3),
                        # From "entra-tokend starting" (interpreter, imports and configuration
                        # done): the phase the floor (tokens x latency / concurrency) models.
                        "started_s": None if started_ms is None else round(started_ms / 1000, 3),
                        "requests_to_disk_s": None
                        if started_ms is None
                        else round(seconds - started_ms / 1000, 3),
                        "peak_rss_mib": max(sampler.peak.rss_mib, mib(hwm)),
                        "vm_hwm_mib": mib(hwm),
                        "rss_after_2s_mib": settled.rss_mib,
                        "daemon_cpu_s": round(daemon_cpu, 2),
                        "emulator_cpu_s": round(emu_cpu, 2),
                        "floor_s": round(
                            opts.big_tokens * opts.big_delay / (concurrency or DEFAULT_CONCURRENCY),
                            3,
                        ),
                        "load_before": load_before,
                        "load_after": benchlib.load(),
                    }
                )
                benchlib.rmtree(work / f"c{tag}")
                log(f"  {opts.big_tokens} tokens, concurrency {tag}: {seconds:.2f} s")
    return out


def _healthz(conn: http.client.HTTPConnection) -> float:
    started = time.perf_counter()
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    return time.perf_counter() - started


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
    quiet: list[float] = []
    quiet_end = time.perf_counter() + window
    while len(quiet) < 300 or time.perf_counter() < quiet_end:
        quiet.append(_healthz(probe))
    sizes: list[int] = []
    latencies: list[float] = []
    stop = threading.Event()

    def scrape(conn: http.client.HTTPConnection) -> None:
        t0 = time.perf_counter()
        conn.request("GET", "/metrics", headers={"Accept": accept} if accept else {})
        sizes.append(len(conn.getresponse().read()))
        latencies.append(time.perf_counter() - t0)

    def scrape_loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        end = time.perf_counter() + window
        while len(latencies) < scrapes or time.perf_counter() < end:
            scrape(conn)
        conn.close()
        stop.set()

    scraper = threading.Thread(target=scrape_loop)
    scraper.start()
    busy: list[float] = []
    while not stop.is_set():
        busy.append(_healthz(probe))
    scraper.join()
    probe.close()
    busy_scrapes, first_scrape = len(latencies), latencies[0]
    during = latencies[:]

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies.clear()
    cpu0 = benchlib.cpu(d.pid).seconds
    end = time.perf_counter() + window
    while len(latencies) < scrapes or time.perf_counter() < end:
        scrape(conn)
    cpu_s = benchlib.cpu(d.pid).seconds - cpu0
    conn.close()

    def ms(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {
        "accept": accept,
        "scrapes": busy_scrapes,
        "window_s": window,
        "bytes": sizes[-1] if sizes else 0,
        "first_scrape_ms": round(first_scrape * 1000, 2),
        "scrape_ms_mean": round(statistics.mean(during) * 1000, 2),
        "scrape_ms_max": ms(during, 1.0),
        "cpu_scrapes": len(latencies),
        "daemon_cpu_ms_per_scrape": round(cpu_s * 1000 / len(latencies), 2),
        "healthz_during_p50_ms": ms(busy, 0.5),
        "healthz_during_p99_ms": ms(busy, 0.99),
        "healthz_during_max_ms": ms(busy, 1.0),
        "healthz_quiet_p50_ms": ms(quiet, 0.5),
        "healthz_quiet_p99_ms": ms(quiet, 0.99),
        "healthz_quiet_max_ms": ms(quiet, 1.0),
        "healthz_probes_during": len(busy),
        "healthz_probes_quiet": len(quiet),
    }


# ------------------------------------------------------------------------------- endpoint


def endpoint(work: Path, pycache: Path, opts: Options) -> dict[str, Any]:
    """``bench/endpoint_load.py`` in a subprocess (its own emulator and daemon)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "endpoint.json"
    load_before = benchlib.load()
    done = subprocess.run(
        [
            sys.executable,
            str(benchlib.BENCH_DIR / "endpoint_load.py"),
            "--requests",
            str(opts.endpoint_requests),
            "--rate",
            "200",
            "--json",
            str(path),
        ],
        env=base_env(daemon_src=benchlib.source, pycache=pycache),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0 or not path.exists():
        return {"error": f"exited {done.returncode}: {done.stderr[-1500:]}"}
    data: dict[str, Any] = json.loads(path.read_text())
    data.pop("machine", None)
    data["load_before"] = load_before
    data["load_after"] = benchlib.load()
    return data


# ------------------------------------------------------------------------------- rotation


def start_rotation(work: Path, pycache: Path, rotations: int) -> subprocess.Popen[bytes]:
    """bench/rotation_latency.py in a subprocess (it runs its own emulator and daemon)."""
    script = benchlib.BENCH_DIR / "rotation_latency.py"
    if not script.exists():
        raise benchlib.BenchError(f"{script} is missing")
    work.mkdir(parents=True, exist_ok=True)
    log_file = open(work / "rotation.log", "wb")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            [
                sys.executable,
                str(script),
                "--rotations",
                str(rotations),
                "--json",
                str(work / "rotation.json"),
            ],
            env=base_env(daemon_src=benchlib.source, pycache=pycache),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    finally:
        log_file.close()


def finish_rotation(proc: subprocess.Popen[bytes], work: Path, timeout: float) -> dict[str, Any]:
    """Wait for the rotation bench; its JSON, without the per-round list."""
    load_before = benchlib.load()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        return {"error": f"did not finish within {timeout:g} s"}
    path = work / "rotation.json"
    if not path.exists():
        tail = (work / "rotation.log").read_text(errors="replace")[-1500:]
        return {"error": f"exited {proc.returncode} without results: {tail}"}
    data: dict[str, Any] = json.loads(path.read_text())
    data.pop("latencies_ms", None)
    data["load_at_end"] = benchlib.load()
    data["load_when_waited"] = load_before
    return data


# ---------------------------------------------------------------------------------- report


def verdicts(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what was reached, met or not, and the margin."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: float, unit: str, lower: bool = True) -> None:
        if value is None:
            rows.append({"target": name, "value": None, "met": None})
            return
        met = value <= target if lower else value >= target
        margin = value - target
        rows.append(
            {
                "target": name,
                "value": value,
                "limit": target,
                "unit": unit,
                "met": met,
                "margin": round(margin, 3),
                "margin_pct": round(100 * margin / target, 1) if target else None,
            }
        )

    idle_r = r.get("idle", {})
    if "daemon_10" in idle_r:
        add("idle RSS, 10 tokens", idle_r["daemon_10"]["rss_mib"], TARGET_IDLE_RSS_MIB, "MiB")
        worst = max(idle_r[k]["cpu_pct_of_core"] for k in ("daemon_1", "daemon_10", "daemon_100"))
        add("idle CPU, worst of 1/10/100 tokens", worst, TARGET_IDLE_CPU_PCT, "% of a core")
    cs = r.get("cold_start")
    if cs:
        add(
            "cold start to 10 tokens vs azure-identity spawn to 1 token",
            cs["daemon_10"]["spawn_to_files_s_median"],
            cs["azure_identity"]["spawn_to_token_s_median"],
            "s",
        )
    rot = r.get("rotation", {})
    add("rotation → token p99", rot.get("p99_ms"), TARGET_ROTATION_P99_MS, "ms")
    bg = r.get("big", {}).get("runs", [])
    if bg:
        add(
            f"{r['big']['tokens']} tokens all on disk",
            bg[0]["all_on_disk_s"],
            TARGET_BIG_SECONDS,
            "s",
        )
        add(
            f"{r['big']['tokens']} tokens peak RSS",
            bg[0]["peak_rss_mib"],
            TARGET_BIG_RSS_MIB,
            "MiB",
        )
    fl = r.get("fleet")
    if fl:
        add("fleet peak/mean after 1 h (60 s windows)", fl["peak_to_mean"], 1.5, "×")
    return rows


def fmt_verdict(v: dict[str, Any]) -> str:
    """One verdict as text."""
    if v["value"] is None:
        return "not measured"
    word = "met" if v["met"] else "MISSED"
    sign = "+" if v["margin"] >= 0 else ""
    return f"{word} ({sign}{v['margin']:g} {v['unit']}, {sign}{v['margin_pct']:g} %)"


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, load) rows for the side-by-side table."""
    rows: list[tuple[str, str, str]] = []
    cs = r.get("cold_start")
    if cs:
        ld = f"{cs['load_before'][0]:.2f}→{cs['load_after'][0]:.2f}"
        labels = {
            "daemon_1": "cold start, spawn → 1 token file on disk",
            "daemon_10": "cold start, spawn → 10 token files on disk",
            "daemon_10_hashed": "cold start, 10 tokens, trust store as hashed dir",
        }
        for key, label in labels.items():
            if key not in cs:
                continue
            d = cs[key]
            ph = d.get("phases_ms_median", {})
            detail = ""
            if "starting" in ph and "last_token" in ph:
                detail = (
                    f"; started {ph['starting']:.0f}, first token {ph.get('first_token', 0):.0f},"
                    f" last {ph['last_token']:.0f} ms;"
                    f" emulator CPU {d['emulator_cpu_ms_median']} ms"
                )
            rows.append(
                (
                    label,
                    f"{d['spawn_to_files_s_median'] * 1000:.0f} ms (min {d['min_s'] * 1000:.0f},"
                    f" max {d['max_s'] * 1000:.0f}, n={cs['repeats']}{detail})",
                    ld,
                )
            )
        for key, label in (
            ("azure_identity", "azure-identity: spawn → 1 token (fresh interpreter)"),
            ("azure_identity_hashed", "azure-identity, trust store as hashed dir"),
        ):
            if key not in cs:
                continue
            az = cs[key]
            rows.append(
                (
                    label,
                    f"{az['spawn_to_token_s_median'] * 1000:.0f} ms (import "
                    f"{az['import_s_median'] * 1000:.0f} + get_token "
                    f"{az['get_token_s_median'] * 1000:.0f}); RSS {az['rss_mib_median']:.1f} MiB;"
                    f" emulator CPU {az['emulator_cpu_ms_median']} ms",
                    ld,
                )
            )
    idle_r = r.get("idle", {})
    ld = (
        f"{idle_r['load_before'][0]:.2f}→{idle_r['load_after'][0]:.2f}"
        if "load_before" in idle_r
        else ""
    )
    for key, v in idle_r.items():
        if not isinstance(v, dict) or "rss_mib" not in v:
            continue
        rows.append(
            (
                f"idle, {v['label']}: RSS (tree)",
                f"{v['rss_mib']:.1f} MiB (anon {v['rss_anon_mib']:.1f}, "
                f"file {v['rss_file_mib']:.1f}; {v['threads']} threads)",
                ld,
            )
        )
        if key in ("daemon_1", "daemon_10", "daemon_100"):
            rows.append(
                (
                    f"idle, {v['label']}: CPU over {idle_r['window_measured_s']:.0f} s",
                    f"{v['cpu_pct_of_core']:.3f} % of a core ({v['cpu_s']:.2f} s;"
                    f" {v['wakeups_per_min']:.0f} wake-ups/min)",
                    ld,
                )
            )
    rot = r.get("rotation", {})
    if "p99_ms" in rot:
        rows.append(
            (
                f"rotation → new token on disk ({rot['rotations']} rotations)",
                f"p50 {rot['p50_ms']:.1f} ms, p99 {rot['p99_ms']:.1f} ms, "
                f"max {rot['max_ms']:.1f} ms",
                f"{rot['load_when_waited'][0]:.2f}",
            )
        )
    elif rot:
        rows.append(("rotation → new token on disk", rot.get("error", "failed"), ""))
    bg = r.get("big")
    if bg:
        for run in bg["runs"]:
            rows.append(
                (
                    f"{bg['tokens']} tokens, {bg['delay_s'] * 1000:.0f} ms latency, concurrency "
                    f"{run['concurrency']}",
                    f"all on disk {run['all_on_disk_s']:.2f} s (floor {run['floor_s']:.2f}); peak "
                    f"{run['peak_rss_mib']:.1f} MiB; CPU daemon {run['daemon_cpu_s']:.1f} s, "
                    f"emulator {run['emulator_cpu_s']:.1f} s",
                    f"{run['load_before'][0]:.2f}→{run['load_after'][0]:.2f}",
                )
            )
    fl = r.get("fleet")
    if fl:
        for s in fl["scenarios"]:
            if s["lifetime_min_s"] == s["lifetime_max_s"]:
                continue
            w = s["windows"]["60s"]
            rows.append(
                (
                    f"fleet 10k pods: {s['scenario']}",
                    f"peak/mean {w['peak_to_mean']:.2f} "
                    f"(Poisson floor {w['poisson_peak_to_mean']:.2f}), "
                    f"mean {s['mean_rps_after_first_hour']:.2f} req/s",
                    "n/a",
                )
            )
    return rows


def floor_figures(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 18's figures, each beside its floor measured in the same run: figure, result,
    floor, ratio (result / floor), target (as a ratio or an absolute bound), met, load."""
    rows: list[dict[str, Any]] = []

    def add(
        figure: str,
        result: float,
        floor: float | None,
        unit: str,
        *,
        max_ratio: float | None = None,
        max_value: float | None = None,
        load: str = "",
        note: str = "",
    ) -> None:
        ratio = round(result / floor, 2) if floor else None
        met = True
        if max_ratio is not None:
            met = ratio is not None and ratio <= max_ratio
        if max_value is not None:
            met = met and result <= max_value
        target = " and ".join(
            t
            for t in (
                f"≤ {max_ratio:g}× floor" if max_ratio is not None else "",
                f"≤ {max_value:g} {unit}" if max_value is not None else "",
            )
            if t
        )
        rows.append(
            {
                "figure": figure,
                "result": result,
                "floor": floor,
                "unit": unit,
                "ratio": ratio,
                "target": target,
                "met": met,
                "load": load,
                "note": note,
            }
        )

    rot = r.get("rotation", {})
    fl = rot.get("floor")
    if "p99_ms" in rot and fl:
        add(
            "rotation → new token on disk, p99",
            rot["p99_ms"],
            fl["p50_ms"],
            "ms",
            max_ratio=3.0,
            load=f"{rot['load_when_waited'][0]:.2f}",
            note=f"p50 {rot['p50_ms']:.1f} ms; floor = inotify wake-up {fl['inotify_p50_ms']:.2f}"
            f" + HTTPS token request {fl['https_round_trip_p50_ms']:.2f} ms (p50s)",
        )
    bg = r.get("big")
    if bg:
        for run in bg["runs"]:
            load = f"{run['load_before'][0]:.2f}→{run['load_after'][0]:.2f}"
            add(
                f"{bg['tokens']} tokens at +{bg['delay_s'] * 1000:.0f} ms, concurrency "
                f"{run['concurrency']}: all on disk",
                run["all_on_disk_s"],
                run["floor_s"],
                "s",
                max_ratio=1.1,
                load=load,
                note=f"floor = tokens × latency / concurrency; daemon CPU {run['daemon_cpu_s']} s,"
                f" emulator {run['emulator_cpu_s']} s",
            )
            if run.get("requests_to_disk_s") is not None:
                add(
                    f"same, from the daemon's start-up log line (imports and configuration done,"
                    f" {run['started_s'] * 1000:.0f} ms after spawn) to all on disk",
                    run["requests_to_disk_s"],
                    run["floor_s"],
                    "s",
                    max_ratio=1.1,
                    load=load,
                    note="the phase the floor models: every token request and write",
                )
        sc = bg.get("scrape")
        if sc:
            add(
                f"/metrics with {bg['tokens']} tokens: longest /healthz wait during scrapes",
                sc["healthz_during_max_ms"],
                sc["healthz_quiet_max_ms"],
                "ms",
                max_value=20.0,
                load=f"{bg['runs'][0]['load_after'][0]:.2f}",
                note=f"bounds the event-loop time of one scrape; {sc['bytes'] / 1000:.0f} kB,"
                f" {sc['daemon_cpu_ms_per_scrape']} ms daemon CPU per scrape (unchanged tokens;"
                f" first scrape {sc.get('first_scrape_ms', '?')} ms); /healthz p99"
                f" {sc['healthz_during_p99_ms']} ms during, "
                f"{sc['healthz_quiet_p99_ms']} ms quiet (floor column: longest quiet wait)",
            )
    idle_r = r.get("idle", {})
    ld = (
        f"{idle_r['load_before'][0]:.2f}→{idle_r['load_after'][0]:.2f}"
        if "load_before" in idle_r
        else ""
    )
    probe = idle_r.get("floor_probe")
    if probe and "daemon_1" in idle_r:
        add(
            "idle RSS, 1 token",
            idle_r["daemon_1"]["rss_mib"],
            probe["rss_mib"],
            "MiB",
            max_ratio=1.1,
            load=ld,
            note="floor: bench/floor_probe.py (the same libraries imported, one HTTPS request)",
        )
    if "daemon_1000" in idle_r and "daemon_1" in idle_r:
        per_token = (idle_r["daemon_1000"]["rss_mib"] - idle_r["daemon_1"]["rss_mib"]) * 1024 / 999
        add(
            "memory per token (idle RSS, 1,000 tokens − 1 token) / 999",
            round(per_token, 2),
            None,
            "KiB",
            max_value=8.0,
            load=ld,
            note=f"1,000 tokens {idle_r['daemon_1000']['rss_mib']:.1f} MiB",
        )
    ep = r.get("endpoint", {})
    if "cached" in ep:
        ld = f"{ep['load_before'][0]:.2f}→{ep['load_after'][0]:.2f}"
        add(
            f"endpoint, cached token at {ep['cached']['rate_per_s']:g}/s: p99",
            ep["cached"]["p99_ms"],
            ep["floor"]["p99_ms"],
            "ms",
            max_value=2.0,
            load=ld,
            note=f"p50 {ep['cached']['p50_ms']} ms (floor {ep['floor']['p50_ms']}); floor: the "
            f"same client against a process answering at once; "
            f"{ep['cached']['daemon_cpu_ms_per_request']} ms daemon CPU per request",
        )
        add(
            f"endpoint, {ep['burst']['concurrent_first_requests']} concurrent first requests:"
            " Entra requests",
            ep["burst"]["entra_requests"],
            1,
            "",
            max_ratio=1.0,
            load=ld,
            note=f"slowest caller {ep['burst']['max_ms']} ms",
        )
    return rows


def fmt_floor_row(f: dict[str, Any]) -> tuple[str, ...]:
    """One floor row as text cells."""
    unit = f" {f['unit']}" if f["unit"] else ""
    return (
        f["figure"],
        f"{f['result']:g}{unit}",
        "–" if f["floor"] is None else f"{f['floor']:g}{unit}",
        "–" if f["ratio"] is None else f"{f['ratio']:g}×",
        f["target"],
        "met" if f["met"] else "MISSED",
        f["load"],
        f["note"],
    )


def _figure_key(figure: str) -> str:
    """A floor row's figure without "default (N)", so a changed default still lines up."""
    return re.sub(r"default \((\d+)\)", r"\1", figure)


def before_after_rows(r: dict[str, Any], baseline: dict[str, Any]) -> list[tuple[str, ...]]:
    """Each floor figure of this run beside the same figure in ``baseline`` (an earlier
    run's results): figure, before (result and ratio to its floor), after, the change."""

    def cell(f: dict[str, Any] | None) -> str:
        if f is None:
            return "–"
        unit = f" {f['unit']}" if f["unit"] else ""
        ratio = "" if f["ratio"] is None else f" ({f['ratio']:g}× floor)"
        return f"{f['result']:g}{unit}{ratio}"

    before = {_figure_key(f["figure"]): f for f in baseline.get("floors", [])}
    rows: list[tuple[str, ...]] = []
    for f in floor_figures(r):
        b = before.get(_figure_key(f["figure"]))
        change = "–"
        if b is not None and b["result"]:
            change = f"{(f['result'] - b['result']) / b['result'] * 100:+.0f} %"
        verdict = "met" if f["met"] else "MISSED"
        rows.append((f["figure"], cell(b), cell(f), change, f"{f['target']}: {verdict}"))
    return rows


def print_table(r: dict[str, Any]) -> None:
    """The side-by-side table and the verdicts on stdout."""
    rows = table_rows(r)
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    print()
    print(f"{'figure':{w0}}  {'result':{w1}}  load")
    print(f"{'-' * w0}  {'-' * w1}  ----")
    for a, b, c in rows:
        print(f"{a:{w0}}  {b:{w1}}  {c}")
    print()
    for v in r["verdicts"]:
        print(f"target: {v['target']}: {fmt_verdict(v)}")
    print()
    for f in r.get("floors", []):
        cells = fmt_floor_row(f)
        print(
            f"{cells[0]}: {cells[1]} (floor {cells[2]}, {cells[3]}; target {cells[4]}: "
            f"{cells[5]}; load {cells[6]})"
        )


def md_rows(rows: Iterable[Sequence[str]]) -> str:
    """Markdown table rows, one a line."""
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def write_docs(r: dict[str, Any], path: Path, plot: Path | None) -> None:
    """Render ``bench/benchmarks.md.tmpl`` with the results into ``path``.

    The template holds the page's prose; this fills in the figures and the tables.
    """
    m = r["machine"]
    trust = r["options"]["trust"]
    revision = str(r.get("daemon_revision", "unknown"))
    fl = r["fleet"]
    targets = [
        (
            v["target"],
            "—" if v["value"] is None else f"{v['value']:g} {v['unit']} (limit {v['limit']:g})",
            fmt_verdict(v),
        )
        for v in r["verdicts"]
    ]
    fleet_rows = [
        (
            s["scenario"],
            f"{s['mean_rps_after_first_hour']:.2f}",
            *(
                f"{w['peak_to_mean']:.2f} ({w['poisson_peak_to_mean']:.2f})"
                for w in s["windows"].values()
            ),
        )
        for s in fl["scenarios"]
    ]
    baseline: dict[str, Any] = {}
    baseline_note = "no baseline (`bench/results/baseline.json` is missing)"
    if BASELINE.exists():
        baseline = json.loads(BASELINE.read_text())
        baseline_note = (
            f"before: the run of {baseline.get('finished_at', '?')} (daemon at "
            f"{baseline.get('daemon_revision', '?')}, load "
            f"{baseline.get('load_at_start', ['?'])[0]} at its start), kept in "
            "`bench/results/baseline.json`; after: this run"
        )
    plot_line = ""
    if plot is not None and plot.exists():
        plot_line = (
            f"\n![Entra requests per second over 24 h]({os.path.relpath(plot, path.parent)})\n"
        )
    text = Template(TEMPLATE.read_text()).substitute(
        finished_at=r["finished_at"],
        elapsed_s=f"{r['elapsed_s']:.0f}",
        load_at_start=r["load_at_start"],
        load_at_end=r["load_at_end"],
        cpu=f"{m['cpu_model']}, {m['nproc']} CPUs"
        + (f" ({m['hypervisor']} guest)" if m.get("hypervisor") else ""),
        mem_total_mib=m["mem_total_mib"],
        kernel=m["kernel"],
        python=m["python"],
        packages=", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
        transport="TLS" if r["options"]["tls"] else "plain http",
        trust=trust,
        trust_note=(
            " (certifi's bundle + the emulator's CA; the daemon's image uses a hashed directory "
            "via SSL_CERT_DIR instead: the rows marked hashed dir)"
            if trust == "full"
            else ""
        ),
        revision=revision,
        revision_note=(
            " (+dirty: uncommitted changes were measured too)."
            if "+dirty" in revision
            else " (no uncommitted changes)."
        ),
        result_rows=md_rows(table_rows(r)),
        target_rows=md_rows(targets),
        floor_rows=md_rows(fmt_floor_row(f) for f in floor_figures(r)),
        baseline_note=baseline_note,
        before_after_rows=md_rows(before_after_rows(r, baseline)),
        fleet_pods=f"{fl['pods']:,}",
        fleet_start_window=f"{fl['start_window_s']:g}",
        fleet_refresh_at=fl["policy"]["refresh_at"],
        fleet_jitter=fl["policy"]["jitter"],
        fleet_rows=md_rows(fleet_rows),
        fleet_plot=plot_line,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ------------------------------------------------------------------------------------- main


def run(opts: Options) -> dict[str, Any]:
    """Every benchmark; returns the results (and writes JSON and docs as asked)."""
    t0 = time.monotonic()
    r: dict[str, Any] = {
        "benchmark": "run_all",
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": benchlib.machine(),
        "load_at_start": benchlib.load(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.__dict__.items()},
        "daemon_src": str(benchlib.source),
        "daemon_revision": benchlib.source_revision(benchlib.source),
    }
    tmp = Path(tempfile.mkdtemp(prefix="entra-tokend-bench-"))
    pycache = tmp / "pycache"
    try:
        with benchlib.emulator(tmp / "emulator", tls=opts.tls, pycache=pycache) as emu:
            files = trust_files(tmp, emu) if opts.tls else {}
            env = trust_env(emu, files, opts.trust)
            with env_of(emu, env):
                log("cold start (daemon N=1, N=10, azure-identity)")
                hashed_cold = trust_env(emu, files, "hashed-dir") if "hashed_dir" in files else None
                r["cold_start"] = cold_start(emu, tmp / "cold", pycache, opts.repeats, hashed_cold)
            log(f"{opts.big_tokens} tokens at {opts.big_delay * 1000:.0f} ms")
            r["big"] = big(tmp / "big", pycache, opts, opts.trust)
            log(f"managed-identity endpoint ({opts.endpoint_requests} requests at 200/s)")
            r["endpoint"] = endpoint(tmp / "endpoint", pycache, opts)
            variants = [
                IdleVariant("daemon_1", "1 token", 1),
                IdleVariant("daemon_10", "10 tokens", 10),
                IdleVariant("daemon_100", "100 tokens", 100),
                IdleVariant("daemon_1000", "1000 tokens", 1000),
                IdleVariant(
                    "daemon_10_arena2",
                    "10 tokens, MALLOC_ARENA_MAX=2",
                    10,
                    {"MALLOC_ARENA_MAX": "2"},
                ),
            ]
            if opts.tls and "hashed_dir" in files:
                variants.append(
                    IdleVariant(
                        "daemon_10_hashed",
                        "10 tokens, trust store as hashed dir (SSL_CERT_DIR)",
                        10,
                        trust_env(emu, files, "hashed-dir"),
                    )
                )
            rotation_proc = None
            rotation_dir = tmp / "rotation"
            try:
                if not opts.serial and opts.rotations > 0:
                    log(f"rotation latency ({opts.rotations} rotations) in the background")
                    rotation_proc = start_rotation(rotation_dir, pycache, opts.rotations)
                with env_of(emu, env):
                    log(f"idle: {len(variants)} daemons, {opts.idle_window:g} s window")
                    r["idle"] = idle(
                        emu,
                        tmp / "idle",
                        pycache,
                        variants,
                        window=opts.idle_window,
                        settle=opts.settle,
                    )
                r["idle"]["rotation_bench_ran_during_window"] = rotation_proc is not None
                if opts.rotations > 0:
                    if rotation_proc is None:
                        log(f"rotation latency ({opts.rotations} rotations)")
                        rotation_proc = start_rotation(rotation_dir, pycache, opts.rotations)
                    r["rotation"] = finish_rotation(rotation_proc, rotation_dir, 600)
            finally:
                if rotation_proc is not None:
                    stop_process(rotation_proc)
        if opts.fleet:
            import fleet_sim

            log("fleet simulation")
            r["fleet"] = fleet_sim.run(plot_path=opts.plot_path if opts.docs else None)
    finally:
        if opts.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            benchlib.rmtree(tmp)
    r["load_at_end"] = benchlib.load()
    r["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    r["elapsed_s"] = round(time.monotonic() - t0, 1)
    r["verdicts"] = verdicts(r)
    r["floors"] = floor_figures(r)
    return r


def parse_args(argv: list[str] | None) -> Options:
    """Options from the command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=5, help="cold-start repeats (default 5)")
    p.add_argument("--idle-window", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--settle", type=float, default=10.0, help="seconds before the window")
    p.add_argument(
        "--rotations",
        type=int,
        default=200,
        help="rotation rounds (default 200, ~100 s, in the background of the idle window); "
        "0 skips the rotation bench",
    )
    p.add_argument(
        "--serial",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the rotation bench after the idle window (default), not beside the idle"
        " daemons' start-up (--no-serial: shorter, but their start-up lands in the tail)",
    )
    p.add_argument("--big-tokens", type=int, default=1000)
    p.add_argument("--big-delay", type=float, default=0.05, help="seconds per token request")
    p.add_argument(
        "--big-concurrency",
        default="default,32,64",
        help="comma-separated daemon concurrency settings for the big run (default: default,32,64)",
    )
    p.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--trust",
        choices=("full", "emulator-only", "hashed-dir"),
        default="full",
        help="trust store for the daemon and azure-identity (default: certifi + emulator CA)",
    )
    p.add_argument("--no-fleet", action="store_true", help="skip the fleet simulation (no docs)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--json", type=Path, default=RESULTS)
    p.add_argument("--docs-path", type=Path, default=DOCS)
    p.add_argument("--plot", type=Path, default=PLOT, help="the fleet plot (PNG) the docs show")
    p.add_argument("--daemon-src", type=Path, help="benchmark another source root (a copy)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--quick", action="store_true", help="short smoke run; writes no docs")
    p.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: render the docs from the results of an earlier run",
    )
    a = p.parse_args(argv)
    if a.daemon_src:
        benchlib.source = a.daemon_src.resolve()
        sys.path.insert(0, str(benchlib.source))  # for fleet_sim's import of the scheduler
    conc: list[int | None] = [
        None if c.strip() == "default" else int(c) for c in a.big_concurrency.split(",")
    ]
    opts = Options(
        repeats=a.repeats,
        idle_window=a.idle_window,
        settle=a.settle,
        rotations=a.rotations,
        serial=a.serial,
        big_tokens=a.big_tokens,
        big_delay=a.big_delay,
        big_concurrency=conc,
        tls=a.tls,
        trust=a.trust,
        fleet=not a.no_fleet,
        docs=not a.no_docs and not a.no_fleet,  # the page shows every figure
        json_path=a.json,
        docs_path=a.docs_path,
        plot_path=a.plot,
        keep=a.keep,
        render=a.render,
    )
    if a.quick:
        opts.repeats, opts.idle_window, opts.settle, opts.rotations = 2, 10.0, 2.0, 10
        opts.endpoint_requests, opts.scrapes = 400, 5
        opts.docs = False
        if a.json == RESULTS:
            opts.json_path = RESULTS.with_name("quick.json")
    if opts.repeats < 1 or opts.idle_window <= 0 or opts.big_tokens < 1:
        p.error("--repeats, --idle-window and --big-tokens must be positive")
    return opts


def main(argv: list[str] | None = None) -> int:
    """Run everything, print the table, write JSON (and docs)."""
    opts = parse_args(argv)
    if opts.render is not None:
        write_docs(json.loads(opts.render.read_text()), opts.docs_path, opts.plot_path)
        print(f"wrote {opts.docs_path} from {opts.render}")
        return 0
    result = run(opts)
    benchlib.write_json(opts.json_path, result)
    print_table(result)
    print(f"\nwrote {opts.json_path}")
    if opts.docs:
        write_docs(result, opts.docs_path, opts.plot_path)
        print(f"wrote {opts.docs_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
