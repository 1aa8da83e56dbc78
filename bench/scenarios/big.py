"""Many tokens against a slow Entra: one daemon with N tokens, every token request delayed in
the emulator; time until all are on disk, peak RSS, CPU, once per concurrency setting. The
first setting's daemon is also scraped (``scrape.scrape_load``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import benchlib
from entra_tokend.config.schema import TOP_LEVEL
from scenarios.common import env_of, log, mib, trust_env, trust_files
from scenarios.scrape import scrape_load

DEFAULT_CONCURRENCY = int(TOP_LEVEL["concurrency"][1])  # the default the daemon runs with


def one_setting(
    emu: benchlib.EmulatorProcess,
    work: Path,
    pycache: Path,
    *,
    tokens: int,
    concurrency: int | None,
    scrapes: int | None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One daemon with ``tokens`` tokens at ``concurrency`` (None: the daemon's default): its
    figures, and the figures of ``scrapes`` scrapes once all are on disk (None: no scrape)."""
    extra = {} if concurrency is None else {"concurrency": concurrency}
    load_before = benchlib.load()
    emu_cpu0 = benchlib.cpu(emu.pid).seconds
    scrape = None
    with (
        benchlib.daemon(work, emu, tokens, pycache=pycache, extra_config=extra) as d,
        benchlib.PeakSampler(d.pid, 0.02) as sampler,
    ):
        seconds = d.wait_all(120, interval=0.005)
        daemon_cpu = benchlib.cpu(d.pid).seconds
        started_ms = benchlib.log_phases(d).get("starting")
        emu_cpu = benchlib.cpu(emu.pid).seconds - emu_cpu0
        if scrapes is not None:
            scrape = scrape_load(d, scrapes)
        time.sleep(2.0)  # what the heap settles to once the burst of requests is over
        settled = benchlib.memory(d.pid)
    return {
        "concurrency": concurrency or f"default ({DEFAULT_CONCURRENCY})",
        "all_on_disk_s": round(seconds, 3),
        # From "entra-tokend starting" (interpreter, imports and configuration done): the
        # phase the floor (tokens x latency / concurrency) models.
        "started_s": None if started_ms is None else round(started_ms / 1000, 3),
        "requests_to_disk_s": None if started_ms is None else round(seconds - started_ms / 1000, 3),
        "peak_rss_mib": max(sampler.peak.rss_mib, mib(settled.hwm)),
        "vm_hwm_mib": mib(settled.hwm),
        "rss_after_2s_mib": settled.rss_mib,
        "daemon_cpu_s": round(daemon_cpu, 2),
        "emulator_cpu_s": round(emu_cpu, 2),
        "load_before": load_before,
        "load_after": benchlib.load(),
    }, scrape


def big(
    work: Path,
    pycache: Path,
    *,
    tokens: int,
    delay: float,
    concurrency: list[int | None],
    tls: bool,
    trust: str,
    scrapes: int,
) -> dict[str, Any]:
    """``tokens`` tokens, each token request delayed ``delay`` s, once per ``concurrency``
    setting: ``runs`` (one per setting, with its floor tokens × delay / concurrency in s) and
    ``scrape`` (the first setting's daemon)."""
    out: dict[str, Any] = {"tokens": tokens, "delay_s": delay, "runs": []}
    count = tokens * (len(concurrency) + 1) * 4
    with benchlib.emulator(
        work / "emulator", tls=tls, delay=delay, delay_count=count, pycache=pycache
    ) as emu:
        files = trust_files(work, emu)
        with env_of(emu, trust_env(emu, files, trust)):
            for c in concurrency:
                tag = "default" if c is None else str(c)
                run, scrape = one_setting(
                    emu,
                    work / f"c{tag}",
                    pycache,
                    tokens=tokens,
                    concurrency=c,
                    scrapes=None if "scrape" in out else scrapes,
                )
                run["floor_s"] = round(tokens * delay / (c or DEFAULT_CONCURRENCY), 3)
                out["runs"].append(run)
                if scrape is not None:
                    out["scrape"] = scrape
                benchlib.rmtree(work / f"c{tag}")
                log(f"  {tokens} tokens, concurrency {tag}: {run['all_on_disk_s']:.2f} s")
    return out
