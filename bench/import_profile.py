#!/usr/bin/env python3
"""What the daemon imports at start-up, what each import costs in time and in RSS.

Two measurements, each in fresh interpreters with compiled bytecode:

1. ``python -X importtime -m entra_tokend run`` with one token against the emulator: every
   module imported until the token is on disk (plus one second), with its importer, self and
   cumulative time. Modules imported after the daemon logged "entra-tokend starting" are
   marked ``lazy`` (imported by a code path, not at start-up: the watcher's backend,
   httpcore's anyio backend on the first request).
2. The RSS each layer adds, importing the daemon's dependency stack step by step in one
   interpreter (``STEPS``), so the idle RSS can be attributed.

    .venv/bin/python bench/import_profile.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import benchlib

# (label, code run in the child); each step's RSS is measured after it, cumulatively.
STEPS: list[tuple[str, str]] = [
    ("interpreter", "pass"),
    ("asyncio (loads ssl, libssl/libcrypto)", "import asyncio"),
    ("httpx (its own modules; httpcore comes with the first client)", "import httpx"),
    (
        "CA bundle in an SSLContext (certifi, as in a pod)",
        "import ssl, certifi; _c = ssl.create_default_context(cafile=certifi.where())",
    ),
    (
        "httpcore + h11 + anyio (loaded with the first client and request)",
        "import httpcore, httpcore._backends.anyio, anyio._backends._asyncio",
    ),
    ("structlog", "import structlog"),
    ("prometheus_client", "import prometheus_client"),
    ("watchdog inotify observer", "import watchdog.observers.inotify"),
    ("entra_tokend.config (pathlib, urllib.parse, ipaddress, ...)", "import entra_tokend.config"),
    ("entra_tokend.daemon and the rest", "import entra_tokend.daemon"),
    ("entra_tokend.server, .watcher, .cli", "import entra_tokend.server, entra_tokend.watcher"),
    ("argparse + cli", "import entra_tokend.cli"),
    ("an event loop + 1 default-executor thread", "_run_loop()"),
]

_STEP_CHILD = r"""
import json, sys
def rss():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0])
    return out
def _run_loop():
    import asyncio
    async def main():
        await asyncio.to_thread(lambda: None)
    asyncio.run(main())
res = []
for label, code in json.loads(sys.argv[1]):
    exec(code)
    res.append([label, rss()])
print(json.dumps(res))
"""


@dataclass
class Module:
    """One line of -X importtime output."""

    name: str
    depth: int
    self_us: int
    cumulative_us: int
    importer: str | None = None
    lazy: bool = False


def parse_importtime(text: str) -> list[Module]:
    """Parse -X importtime lines (in the order printed: children before their parent)."""
    mods: list[Module] = []
    lazy = False
    for line in text.splitlines():
        if not line.startswith("import time:"):
            if '"entra-tokend starting"' in line:
                lazy = True
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue  # the header line
        raw = parts[2].rstrip()
        name = raw.lstrip()
        depth = (len(raw) - len(name) - 1) // 2
        mods.append(Module(name, depth, int(parts[0]), int(parts[1]), lazy=lazy))
    # In post-order, a module's importer is the next line that is one level shallower.
    for i, m in enumerate(mods):
        for later in mods[i + 1 :]:
            if later.depth < m.depth:
                m.importer = later.name if later.depth == m.depth - 1 else None
                break
    return mods


def importtime_run(
    emu: benchlib.EmulatorProcess, work: Path, pycache: Path | None
) -> dict[str, Any]:
    """Run the daemon once with -X importtime; summarise what it imported."""
    log_path = work / "importtime.log"
    with benchlib.daemon(
        work, emu, 1, pycache=pycache, python_flags=["-X", "importtime"], stderr_path=log_path
    ) as d:
        d.wait_all(60)
        time.sleep(1.0)
    mods = parse_importtime(log_path.read_text())
    start = [m for m in mods if not m.lazy]
    lazy = [m for m in mods if m.lazy]
    top = sorted((m for m in start if m.depth == 0), key=lambda m: -m.cumulative_us)
    third_party_roots = {"httpx", "httpcore", "h11", "anyio", "sniffio", "idna", "certifi"}
    third_party_roots |= {"structlog", "prometheus_client", "watchdog", "typing_extensions"}
    by_root: dict[str, int] = {}
    for m in mods:
        root = m.name.split(".")[0]
        key = root if root in third_party_roots or root == "entra_tokend" else "stdlib"
        by_root[key] = by_root.get(key, 0) + m.self_us
    return {
        "modules_at_start": len(start),
        "modules_lazy": len(lazy),
        "import_ms_at_start": round(sum(m.self_us for m in start) / 1000, 1),
        "import_ms_lazy": round(sum(m.self_us for m in lazy) / 1000, 1),
        "self_ms_by_package": {
            k: round(v / 1000, 1) for k, v in sorted(by_root.items(), key=lambda kv: -kv[1])
        },
        "top_level": [
            {"module": m.name, "cumulative_ms": round(m.cumulative_us / 1000, 2)} for m in top[:25]
        ],
        "lazy_top_level": [
            {
                "module": m.name,
                "cumulative_ms": round(m.cumulative_us / 1000, 2),
            }
            for m in lazy
            if m.depth == 0
        ],
        "modules": [asdict(m) for m in mods],
    }


def rss_steps(pycache: Path | None) -> list[dict[str, Any]]:
    """RSS after each of STEPS, and what each step added (MiB)."""
    out = subprocess.run(
        [sys.executable, "-c", _STEP_CHILD, json.dumps(STEPS)],
        env=benchlib.child_env(pycache=pycache),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows: list[dict[str, Any]] = []
    prev: dict[str, int] | None = None
    for label, values in json.loads(out):
        row = {
            "step": label,
            "rss_mib": round(values["VmRSS"] / 1024, 2),
            "added_mib": round((values["VmRSS"] - (prev or values)["VmRSS"]) / 1024, 2),
            "added_anon_mib": round((values["RssAnon"] - (prev or values)["RssAnon"]) / 1024, 2),
            "added_file_mib": round((values["RssFile"] - (prev or values)["RssFile"]) / 1024, 2),
        }
        rows.append(row)
        prev = values
    return rows


def run(emu: benchlib.EmulatorProcess, work: Path, pycache: Path | None) -> dict[str, Any]:
    """Both measurements."""
    result = importtime_run(emu, work / "importtime", pycache)
    # Twice: the first run may write the bytecode cache for the step modules.
    rss_steps(pycache)
    result["rss_steps"] = rss_steps(pycache)
    return result


def print_summary(result: dict[str, Any]) -> None:
    """A short text summary."""
    print(
        f"start-up imports: {result['modules_at_start']} modules, "
        f"{result['import_ms_at_start']} ms; lazy later: {result['modules_lazy']} modules, "
        f"{result['import_ms_lazy']} ms"
    )
    print("  self time by package (ms):", result["self_ms_by_package"])
    print("  largest top-level imports (cumulative ms):")
    for row in result["top_level"][:12]:
        print(f"    {row['cumulative_ms']:7.2f}  {row['module']}")
    if result["lazy_top_level"]:
        print("  imported after start:")
        for row in result["lazy_top_level"]:
            print(f"    {row['cumulative_ms']:7.2f}  {row['module']}")
    print("  RSS by layer (MiB):")
    for row in result["rss_steps"]:
        print(f"    {row['rss_mib']:6.2f}  +{row['added_mib']:5.2f}  {row['step']}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="entra-tokend-imports-") as tmp_name:
        tmp = Path(tmp_name)
        pycache = tmp / "pycache"
        with benchlib.emulator(tmp / "emulator", tls=args.tls, pycache=pycache) as emu:
            # A first run fills the bytecode cache; the second is the one measured.
            importtime_run(emu, tmp / "warm-up", pycache)
            result = run(emu, tmp, pycache)
    print_summary(result)
    if args.json:
        benchlib.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
