"""Idle: RSS and CPU of daemons that hold their tokens and wait (1 to 1,000 tokens, and
variants of the 10-token one), beside ``floor_probe.py``, the same libraries making one
HTTPS request: the floor."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
from scenarios.common import env_of, mib
from suite import base_env, stop_process


@dataclass
class IdleVariant:
    """One idle daemon to watch: its results key, label, token count and extra environment."""

    key: str
    label: str
    tokens: int
    env: dict[str, str] = field(default_factory=dict)


def variants(hashed: dict[str, str] | None) -> list[IdleVariant]:
    """The daemons to idle; the hashed-dir one only with ``hashed`` (its trust environment)."""
    out = [
        IdleVariant("daemon_1", "1 token", 1),
        IdleVariant("daemon_10", "10 tokens", 10),
        IdleVariant("daemon_100", "100 tokens", 100),
        IdleVariant("daemon_1000", "1000 tokens", 1000),
        IdleVariant(
            "daemon_10_arena2", "10 tokens, MALLOC_ARENA_MAX=2", 10, {"MALLOC_ARENA_MAX": "2"}
        ),
    ]
    if hashed is not None:
        out.append(
            IdleVariant(
                "daemon_10_hashed",
                "10 tokens, trust store as hashed dir (SSL_CERT_DIR)",
                10,
                hashed,
            )
        )
    return out


def _peaks_over(
    runs: list[tuple[IdleVariant, benchlib.DaemonRun]], window: float
) -> dict[str, benchlib.MemorySample]:
    """Sample every daemon's memory once a second for ``window`` s; the largest of each."""
    peaks = {v.key: benchlib.memory(d.pid) for v, d in runs}
    started = time.monotonic()
    for _ in range(int(window) + 1):
        remaining = window - (time.monotonic() - started)
        if remaining <= 0:
            break
        time.sleep(min(1.0, remaining))
        for v, d in runs:
            m = benchlib.memory(d.pid)
            if m.rss > peaks[v.key].rss:
                peaks[v.key] = m
    return peaks


def _figures(
    v: IdleVariant,
    m: benchlib.MemorySample,
    peak: benchlib.MemorySample,
    *,
    before: benchlib.CpuSample,
    after: benchlib.CpuSample,
    elapsed: float,
) -> dict[str, Any]:
    cpu_s = after.seconds - before.seconds
    return {
        "label": v.label,
        "tokens": v.tokens,
        "rss_mib": m.rss_mib,
        "rss_anon_mib": mib(m.anon),
        "rss_file_mib": mib(m.file),
        "rss_peak_in_window_mib": peak.rss_mib,
        "processes": m.processes,
        "threads": m.threads,
        "cpu_s": round(cpu_s, 3),
        "cpu_pct_of_core": round(100 * cpu_s / elapsed, 4),
        "wakeups_per_min": round(
            (after.voluntary_switches - before.voluntary_switches) * 60 / elapsed, 1
        ),
        "involuntary_switches": after.involuntary_switches - before.involuntary_switches,
    }


def _floor_probe(emu: benchlib.EmulatorProcess, pycache: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(benchlib.BENCH_DIR / "floor_probe.py")],
        env=base_env(emu.env, daemon_src=benchlib.source, pycache=pycache),
        stdout=subprocess.PIPE,
        text=True,
    )


def idle(
    emu: benchlib.EmulatorProcess,
    work: Path,
    pycache: Path,
    daemons: list[IdleVariant],
    *,
    window: float,
    settle: float,
) -> dict[str, Any]:
    """Start every variant and the floor probe, wait until all tokens are on disk, settle for
    ``settle`` s, then watch for ``window`` s: figures per variant key and ``floor_probe``.
    Raises BenchError if the floor probe fails its request."""
    out: dict[str, Any] = {"window_s": window, "settle_s": settle}
    with contextlib.ExitStack() as stack:
        probe = _floor_probe(emu, pycache)
        stack.callback(stop_process, probe)
        runs = []
        for v in daemons:
            with env_of(emu, {**emu.env, **v.env}):
                d = stack.enter_context(
                    benchlib.daemon(work / v.key, emu, v.tokens, pycache=pycache)
                )
            runs.append((v, d))
        for _, d in runs:
            d.wait_all(120)
        assert probe.stdout is not None
        if not probe.stdout.readline().startswith("ready"):
            raise benchlib.BenchError("floor_probe.py did not make its request")
        time.sleep(settle)
        out["load_before"] = benchlib.load()
        before = {v.key: benchlib.cpu(d.pid) for v, d in runs}
        started = time.monotonic()
        peaks = _peaks_over(runs, window)
        elapsed = time.monotonic() - started
        for v, d in runs:
            after = benchlib.cpu(d.pid)
            m = benchlib.memory(d.pid)
            out[v.key] = _figures(
                v, m, peaks[v.key], before=before[v.key], after=after, elapsed=elapsed
            )
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
