"""Cold start: process spawn until N token files are on disk (the daemon, N = 1 and 10), beside
azure-identity's ``WorkloadIdentityCredential`` getting one token in a fresh interpreter."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
from scenarios.common import env_of, median, mib
from suite import base_env, stop_process


def daemon_once(emu: benchlib.EmulatorProcess, work: Path, n: int, pycache: Path) -> dict[str, Any]:
    """One spawn → ``n`` token files on disk: seconds, RSS (KiB) and the log phases (ms)."""
    with benchlib.daemon(work, emu, n, pycache=pycache) as d:
        seconds = d.wait_all(60)
        mem = benchlib.memory(d.pid)
        d.process.wait_event("ready: every token is on disk")  # logged after the last file
    phases = benchlib.log_phases(d)
    benchlib.rmtree(work)
    return {"seconds": round(seconds, 4), "rss_kib": mem.rss, "phases_ms": phases}


def azure_identity_once(emu: benchlib.EmulatorProcess, pycache: Path) -> dict[str, Any]:
    """One fresh interpreter: import azure-identity, get one token; spawn → token seen (s),
    plus what ``azure_identity_probe.py`` reports. Raises BenchError if it prints nothing."""
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


def _emulator_cpu_ms(runs: list[dict[str, Any]]) -> int:
    seconds: float = statistics.median(x["emulator_cpu_s"] for x in runs)
    return round(1000 * seconds)


def summarise_daemon(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians (and min/max, every value) of the daemon's repeats."""
    secs = [x["seconds"] for x in runs]
    phases = [x["phases_ms"] for x in runs]
    return {
        "spawn_to_files_s_median": median(secs),
        "min_s": min(secs),
        "max_s": max(secs),
        "all_s": secs,
        "emulator_cpu_ms_median": _emulator_cpu_ms(runs),
        "phases_ms_median": {
            k: round(statistics.median(p[k] for p in phases if k in p), 1)
            for k in ("starting", "first_token", "last_token", "ready")
            if any(k in p for p in phases)
        },
    }


def summarise_azure_identity(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of azure-identity's repeats."""
    return {
        "spawn_to_token_s_median": median([x["spawn_to_token_s"] for x in runs]),
        "import_and_token_s_median": median([x["import_and_token_s"] for x in runs]),
        "import_s_median": median([x["import_s"] for x in runs]),
        "get_token_s_median": median([x["get_token_s"] for x in runs]),
        "rss_mib_median": mib(int(statistics.median([x["rss_kib"] for x in runs]))),
        "hwm_mib_median": mib(int(statistics.median([x["hwm_kib"] for x in runs]))),
        "all_spawn_to_token_s": [x["spawn_to_token_s"] for x in runs],
        "emulator_cpu_ms_median": _emulator_cpu_ms(runs),
    }


def cold_start(
    emu: benchlib.EmulatorProcess,
    work: Path,
    pycache: Path,
    repeats: int,
    hashed: dict[str, str] | None,
) -> dict[str, Any]:
    """Interleaved repeats of daemon N=1, N=10 and azure-identity, so noise hits all alike.

    With ``hashed`` (the environment of a hashed-directory trust store) the daemon with 10
    tokens and azure-identity are also run with it. One untimed warm-up round comes first
    (bytecode and page cache).
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
    for r in range(repeats + 1):
        for key, n, extra in plan:
            emu_cpu = benchlib.cpu(emu.pid).seconds
            with env_of(emu, {**emu.env, **extra}):
                if n:
                    one = daemon_once(emu, work / f"{key}-{r}", n, pycache)
                else:
                    one = azure_identity_once(emu, pycache)
            one["emulator_cpu_s"] = benchlib.cpu(emu.pid).seconds - emu_cpu
            if r:
                runs[key].append(one)
    out: dict[str, Any] = {"repeats": repeats, "load_before": load_before}
    for key, n, _ in plan:
        out[key] = summarise_daemon(runs[key]) if n else summarise_azure_identity(runs[key])
    out["load_after"] = benchlib.load()
    return out
