"""The scenarios that run as scripts of their own (each with its own emulator and daemon):
``endpoint_load.py`` and ``rotation_latency.py``, as subprocesses whose JSON becomes a section
of the results. A child that fails gives ``{"error": ...}`` instead of figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import benchlib
from suite import base_env, stop_process


def endpoint(work: Path, pycache: Path, requests: int) -> dict[str, Any]:
    """``bench/endpoint_load.py`` with ``requests`` cached requests at 200/s."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "endpoint.json"
    load_before = benchlib.load()
    script = benchlib.BENCH_DIR / "endpoint_load.py"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            *("--requests", str(requests), "--rate", "200", "--json", str(path)),
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
    data.pop("machine", None)  # the run's own machine section says it once
    data["load_before"] = load_before
    data["load_after"] = benchlib.load()
    return data


def start_rotation(work: Path, pycache: Path, rotations: int) -> subprocess.Popen[bytes]:
    """Start ``bench/rotation_latency.py`` (``rotations`` rounds) in the background; its output
    goes to ``work/rotation.log``. Raises BenchError if the script is missing."""
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
                *("--rotations", str(rotations), "--json", str(work / "rotation.json")),
            ],
            env=base_env(daemon_src=benchlib.source, pycache=pycache),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    finally:
        log_file.close()


def finish_rotation(proc: subprocess.Popen[bytes], work: Path, timeout: float) -> dict[str, Any]:
    """Wait up to ``timeout`` s for the rotation bench; its JSON, without the per-round list."""
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
