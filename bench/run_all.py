#!/usr/bin/env python3
"""entra-tokend footprint and scale benchmarks, in one run: the scenarios → a results JSON.

Starts the real daemon (``python -m entra_tokend run``, a subprocess of its own) against the
emulator (``python -m entra_tokend emulator``, another subprocess, TLS on 127.0.0.1) and
measures, side by side (one module of ``scenarios/`` each):

* cold start: process spawn until N token files are on disk, N = 1 and 10; azure-identity's
  ``WorkloadIdentityCredential`` in a fresh interpreter beside it (``cold_start``);
* idle RSS (the whole process tree, from /proc) and idle CPU over a window (default 60 s) for
  1 to 1,000 tokens, plus variants of the 10-token daemon (trust store, malloc arenas), beside
  ``floor_probe.py`` (``idle``);
* projected-token rotation to new token on disk, p50/p99 (``rotation_latency.py``, run as a
  subprocess; by default after the idle window) and the managed-identity endpoint under load
  (``endpoint_load.py``) (``children``);
* 1,000 tokens with 50 ms added to every token request: time until all are on disk, peak RSS,
  and ``/metrics`` scrapes of that daemon (``big``, ``scrape``);
* the fleet simulation (``fleet_sim.py``, no network).

Writes ``bench/results/latest.json``, prints the tables, and renders ``docs/benchmarks.md`` from
those results with ``report.py`` (which re-renders the page from saved results alone).

Trust store: to verify Entra an application loads a full public CA bundle (certifi's, for
azure-identity and for the daemon outside its image). So that the figures include that cost,
both are given a bundle made of certifi's certificates plus the emulator's CA, unless
``--trust emulator-only`` or ``--trust hashed-dir``. The daemon's image sets ``SSL_CERT_DIR`` to
an OpenSSL hashed directory instead: the "hashed dir" rows measure that as well.

    .venv/bin/python bench/run_all.py            # everything
    .venv/bin/python bench/run_all.py --quick    # smoke run, writes results/quick.json only

Figures are noisy on a busy machine: the load average is recorded next to each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib
import figures
import report
from scenarios.big import big
from scenarios.children import endpoint, finish_rotation, start_rotation
from scenarios.cold_start import cold_start
from scenarios.common import env_of, log, trust_env, trust_files
from scenarios.idle import idle, variants
from suite import stop_process


@dataclass
class Options:
    """What to run (see --help); stored in the results as ``options``."""

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
    json_path: Path = report.RESULTS
    docs_path: Path = report.DOCS
    plot_path: Path = report.PLOT
    keep: bool = False
    scrapes: int = 20
    endpoint_requests: int = 2000


def idle_and_rotation(
    r: dict[str, Any],
    emu: benchlib.EmulatorProcess,
    tmp: Path,
    opts: Options,
    files: dict[str, Path],
) -> None:
    """The idle window, and the rotation bench after it (``--no-serial``: beside it).
    ``files``: the trust stores (``common.trust_files``)."""
    pycache = tmp / "pycache"
    env = trust_env(emu, files, opts.trust)
    hashed = trust_env(emu, files, "hashed-dir") if "hashed_dir" in files else None
    daemons = variants(hashed)
    rotation_proc: subprocess.Popen[bytes] | None = None
    rotation_dir = tmp / "rotation"
    try:
        if not opts.serial and opts.rotations > 0:
            log(f"rotation latency ({opts.rotations} rotations) in the background")
            rotation_proc = start_rotation(rotation_dir, pycache, opts.rotations)
        with env_of(emu, env):
            log(f"idle: {len(daemons)} daemons, {opts.idle_window:g} s window")
            r["idle"] = idle(
                emu, tmp / "idle", pycache, daemons, window=opts.idle_window, settle=opts.settle
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


def with_emulator(r: dict[str, Any], tmp: Path, opts: Options) -> None:
    """Every scenario that needs a live emulator, in order, into ``r``."""
    pycache = tmp / "pycache"
    with benchlib.emulator(tmp / "emulator", tls=opts.tls, pycache=pycache) as emu:
        files = trust_files(tmp, emu) if opts.tls else {}
        env = trust_env(emu, files, opts.trust)
        with env_of(emu, env):
            log("cold start (daemon N=1, N=10, azure-identity)")
            hashed = trust_env(emu, files, "hashed-dir") if "hashed_dir" in files else None
            r["cold_start"] = cold_start(emu, tmp / "cold", pycache, opts.repeats, hashed)
        log(f"{opts.big_tokens} tokens at {opts.big_delay * 1000:.0f} ms")
        r["big"] = big(
            tmp / "big",
            pycache,
            tokens=opts.big_tokens,
            delay=opts.big_delay,
            concurrency=opts.big_concurrency,
            tls=opts.tls,
            trust=opts.trust,
            scrapes=opts.scrapes,
        )
        log(f"managed-identity endpoint ({opts.endpoint_requests} requests at 200/s)")
        r["endpoint"] = endpoint(tmp / "endpoint", pycache, opts.endpoint_requests)
        idle_and_rotation(r, emu, tmp, opts, files)


def run(opts: Options) -> dict[str, Any]:
    """Every scenario; returns the results (the JSON ``report.py`` renders): the run's
    options, machine and load, one section per scenario, and the verdicts and floor figures
    derived from them (``figures.py``)."""
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
    try:
        with_emulator(r, tmp, opts)
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
    r["verdicts"] = figures.verdicts(r)
    r["floors"] = figures.floor_figures(r)
    return r


def parser() -> argparse.ArgumentParser:
    """The command line (see --help)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=5, help="cold-start repeats (default 5)")
    p.add_argument("--idle-window", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--settle", type=float, default=10.0, help="seconds before the window")
    p.add_argument(
        "--rotations",
        type=int,
        default=200,
        help="rotation rounds (default 200, ~100 s); 0 skips the rotation bench",
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
    p.add_argument("--json", type=Path, default=report.RESULTS)
    p.add_argument("--docs-path", type=Path, default=report.DOCS)
    p.add_argument("--plot", type=Path, default=report.PLOT, help="the fleet plot (PNG)")
    p.add_argument("--daemon-src", type=Path, help="benchmark another source root (a copy)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--quick", action="store_true", help="short smoke run; writes no docs")
    return p


def parse_args(argv: list[str] | None) -> Options:
    """Options from the command line; exits 2 on a non-positive count or window."""
    p = parser()
    a = p.parse_args(argv)
    if a.daemon_src:
        benchlib.source = a.daemon_src.resolve()
        sys.path.insert(0, str(benchlib.source))  # for fleet_sim's import of the scheduler
    opts = Options(
        repeats=a.repeats,
        idle_window=a.idle_window,
        settle=a.settle,
        rotations=a.rotations,
        serial=a.serial,
        big_tokens=a.big_tokens,
        big_delay=a.big_delay,
        big_concurrency=[
            None if c.strip() == "default" else int(c) for c in a.big_concurrency.split(",")
        ],
        tls=a.tls,
        trust=a.trust,
        fleet=not a.no_fleet,
        docs=not a.no_docs and not a.no_fleet,  # the page shows every figure
        json_path=a.json,
        docs_path=a.docs_path,
        plot_path=a.plot,
        keep=a.keep,
    )
    if a.quick:
        opts.repeats, opts.idle_window, opts.settle, opts.rotations = 2, 10.0, 2.0, 10
        opts.endpoint_requests, opts.scrapes = 400, 5
        opts.docs = False
        if a.json == report.RESULTS:
            opts.json_path = report.RESULTS.with_name("quick.json")
    if opts.repeats < 1 or opts.idle_window <= 0 or opts.big_tokens < 1:
        p.error("--repeats, --idle-window and --big-tokens must be positive")
    return opts


def main(argv: list[str] | None = None) -> int:
    """Run every scenario, write the results JSON, print the tables, render the page."""
    opts = parse_args(argv)
    result = run(opts)
    benchlib.write_json(opts.json_path, result)
    report.print_summary(result)
    print(f"\nwrote {opts.json_path}")
    if opts.docs:
        report.write_page(result, out=opts.docs_path, plot=opts.plot_path)
        print(f"wrote {opts.docs_path} (re-render it with bench/report.py)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
