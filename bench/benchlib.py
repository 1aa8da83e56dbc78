"""What the benchmarks measure with: /proc readings, the machine, the emulator and daemons.

The processes, their environment, config files and waiting are the test suite's
(``tests/support``, through ``suite.py``); this module adds only what measuring needs. Every
process started is a child of the bench process and is stopped (SIGTERM, then SIGKILL after a
bound) before the helper that started it returns. Servers bind loopback only. Linux only:
figures come from /proc.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite import DAEMON_SRC, DaemonProcess, wait_until, write_config

BENCH_DIR = Path(__file__).resolve().parent

SCOPE_FMT = "https://bench{i}.example.com/.default"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The daemon source the children run (``run_all.py --daemon-src`` measures another checkout).
source = DAEMON_SRC


class BenchError(Exception):
    """A benchmark could not produce its figure (a child died, or gave no result)."""


# ---------------------------------------------------------------------------------- machine


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (what `uptime` prints)."""
    return [round(x, 2) for x in os.getloadavg()]


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def _meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def source_revision(src: Path) -> str:
    """The git commit of the source root, with "+dirty" when it has uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", ".")
    except OSError:
        return "unknown"
    if not head:
        return "not a git checkout"
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu_info = _lscpu()
    return {
        "cpu_model": cpu_info.get("Model name") or platform.processor() or "unknown",
        "nproc": os.cpu_count(),
        "hypervisor": cpu_info.get("Hypervisor vendor") or None,
        "mem_total_mib": round(_meminfo_kib("MemTotal") / 1024),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {
            name: _version(name)
            for name in (
                "httpx",
                "httpcore",
                "anyio",
                "structlog",
                "prometheus-client",
                "azure-identity",
                "azure-core",
                "msal",
                "cryptography",
            )
        },
    }


# ------------------------------------------------------------------------------------ /proc


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # comm may contain spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and every descendant alive now."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def _status(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "Threads"):
                values[key] = int(parts[0])
    return values


@dataclass
class MemorySample:
    """Memory of a process tree at one moment (KiB); ``hwm`` is the largest process's peak."""

    rss: int = 0
    anon: int = 0
    file: int = 0
    hwm: int = 0
    threads: int = 0
    processes: int = 0

    @property
    def rss_mib(self) -> float:
        """Resident set size of the tree, MiB."""
        return round(self.rss / 1024, 2)


def memory(pid: int) -> MemorySample:
    """RSS of ``pid`` and all its descendants, summed (VmRSS from /proc/PID/status)."""
    sample = MemorySample()
    for p in process_tree(pid):
        try:
            s = _status(p)
        except OSError:
            continue
        sample.rss += s.get("VmRSS", 0)
        sample.anon += s.get("RssAnon", 0)
        sample.file += s.get("RssFile", 0) + s.get("RssShmem", 0)
        sample.hwm = max(sample.hwm, s.get("VmHWM", 0))
        sample.threads += s.get("Threads", 0)
        sample.processes += 1
    return sample


@dataclass
class CpuSample:
    """CPU time consumed so far by a process tree, and how often its threads were woken."""

    seconds: float = 0.0
    voluntary_switches: int = 0
    involuntary_switches: int = 0


def cpu(pid: int) -> CpuSample:
    """utime+stime (+ reaped children) of the tree; context switches summed over its threads.

    utime/stime tick at ``CLK_TCK`` (usually 100 Hz, i.e. 10 ms): over 60 s that resolves
    0.017 % of a core. A voluntary switch is one sleep of a thread, so the count over a window
    is how many times the process woke up.
    """
    sample = CpuSample()
    for p in process_tree(pid):
        try:
            f = _stat_fields(p)
            # fields after comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
            sample.seconds += sum(int(x) for x in f[11:15]) / CLK_TCK
            for task in os.scandir(f"/proc/{p}/task"):
                with open(f"{task.path}/status") as st:
                    for line in st:
                        if line.startswith("voluntary_ctxt_switches"):
                            sample.voluntary_switches += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches"):
                            sample.involuntary_switches += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return sample


class PeakSampler:
    """Samples a process tree's RSS every ``interval`` seconds from a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = MemorySample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """Take one sample now."""
        with contextlib.suppress(OSError):
            s = memory(self.pid)
            if s.rss > self.peak.rss:
                self.peak = s

    def __enter__(self) -> PeakSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()


# -------------------------------------------------------------------------------- processes


@dataclass
class EmulatorProcess:
    """``python -m entra_tokend emulator`` in a subprocess (its own interpreter and GIL).

    ``env`` holds the variables a workload-identity pod would get (its env file); callers may
    replace it (another trust store) for the daemons they start.
    """

    process: DaemonProcess
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The emulator's process id."""
        return self.process.pid


def _read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        for word in shlex.split(line):
            key, sep, value = word.partition("=")
            if sep:
                env[key] = value
    return env


@contextlib.contextmanager
def emulator(
    state_dir: Path,
    *,
    tls: bool = True,
    access_token_lifetime: float = 3600.0,
    delay: float = 0.0,
    delay_count: int = 0,
    pycache: Path | None = None,
) -> Iterator[EmulatorProcess]:
    """Run the emulator on 127.0.0.1 (a free port) until the block ends.

    ``delay`` seconds are added to each of the next ``delay_count`` token requests (the
    emulator's "delay" fault), standing in for Entra's network and processing latency.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    env_file = state_dir / "env"
    args = [
        "emulator",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        str(state_dir),
        "--env-file",
        str(env_file),
        "--rotate-every",
        "0",
        "--access-token-lifetime",
        str(access_token_lifetime),
        "--tls" if tls else "--no-tls",
    ]
    if delay > 0 and delay_count > 0:
        args += ["--delay", f"{delay}:{delay_count}"]
    proc = DaemonProcess(args, {}, state_dir / "emulator.log", daemon_src=source, pycache=pycache)
    try:

        def listening() -> bool:
            if proc.proc.poll() is not None:
                raise BenchError(f"emulator exited {proc.proc.returncode}: {proc.log_text()}")
            return "listening on" in proc.log_text()

        wait_until(listening, 60, what="the emulator to listen", interval=0.02)
        yield EmulatorProcess(proc, _read_env_file(env_file))
    finally:
        proc.stop()


def token_names(n: int) -> list[str]:
    """t0000, t0001, ... (fixed width, so they sort)."""
    return [f"t{i:04d}" for i in range(n)]


@dataclass
class DaemonRun:
    """A daemon subprocess and where its token files go."""

    process: DaemonProcess
    out_dir: Path
    names: list[str]

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.process.pid

    def files_on_disk(self) -> int:
        """How many of the expected token files exist (one directory listing)."""
        try:
            present = set(os.listdir(self.out_dir))
        except FileNotFoundError:
            return 0
        return sum(1 for n in self.names if n in present)

    def wait_all(self, timeout: float, interval: float = 0.001) -> float:
        """Seconds from spawn until every token file is on disk."""
        want = len(self.names)
        proc = self.process.proc

        def done() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"daemon exited {proc.returncode}: {self.process.log_path}")
            return self.files_on_disk() >= want

        wait_until(done, timeout, what=f"{want} token files in {self.out_dir}", interval=interval)
        return time.monotonic() - self.process.spawned


@contextlib.contextmanager
def daemon(
    work: Path,
    emu: EmulatorProcess,
    n_tokens: int,
    *,
    pycache: Path | None,
    listen: str = "127.0.0.1:0",
    extra_config: Mapping[str, Any] | None = None,
) -> Iterator[DaemonRun]:
    """Start ``entra-tokend run`` with ``n_tokens`` tokens against ``emu``; stop it at the end."""
    work.mkdir(parents=True, exist_ok=True)
    out_dir = work / "out"
    names = token_names(n_tokens)
    scopes = {name: SCOPE_FMT.format(i=i) for i, name in enumerate(names)}
    config = write_config(work / "entra-tokend.toml", scopes, **dict(extra_config or {}))
    env = {**emu.env, "ENTRA_TOKEND_OUTPUT_DIR": str(out_dir), "ENTRA_TOKEND_LISTEN": listen}
    proc = DaemonProcess(
        ["run", "--config", str(config)],
        env,
        work / "daemon.log",
        daemon_src=source,
        pycache=pycache,
    )
    try:
        yield DaemonRun(proc, out_dir, names)
    finally:
        code = proc.stop()
        if code not in (0, -signal.SIGTERM):
            print(f"  (daemon exited {code}; log kept at {proc.log_path})", file=sys.stderr)


def log_phases(run: DaemonRun) -> dict[str, float]:
    """Milliseconds from spawn to the daemon's start-up log events (its JSON log timestamps).

    ``starting``: interpreter, imports and configuration done; ``first_token``/``last_token``:
    the first and last "token written"; ``ready``: "ready: every token is on disk".
    """
    marks: dict[str, float] = {}
    names = {
        "entra-tokend starting": "starting",
        "token written": "token",
        "ready: every token is on disk": "ready",
    }
    for event in run.process.events():
        key = names.get(event.get("event", ""))
        if key is None:
            continue
        when = dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
        ms = round((when.timestamp() - run.process.spawned_wall) * 1000, 1)
        if key == "token":
            marks.setdefault("first_token", ms)
            marks["last_token"] = ms
        else:
            marks.setdefault(key, ms)
    return marks


def rmtree(path: Path) -> None:
    """Remove a directory tree, ignoring a missing one."""
    shutil.rmtree(path, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    """Write a result file (parents created), pretty-printed with a final newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
