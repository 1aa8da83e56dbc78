"""Child processes that outlive their welcome: a subreaper, and reaping what it inherits.

A hook may start a process that leaves the hook's process group (``setsid cmd &``) and so
escapes the group kill at its timeout, keeping the hook's output pipe open. With
``PR_SET_CHILD_SUBREAPER`` (Linux prctl(2)) such orphans are re-parented to the daemon rather
than to init, so the daemon can kill and reap them once the hook is over. When the daemon is
PID 1 (a container without an init) every orphan in the container is re-parented to it anyway,
and must be reaped or it stays a zombie.

Each hook run carries a fresh ``ENTRA_TOKEND_HOOK_RUN`` value in its environment, inherited by
everything it starts; when the run ends, ``Reaper.sweep`` SIGKILLs the children that carry it and
reaps every exited child. Other orphans (as PID 1: anyone's) are reaped, never killed. Running
hook leaders are left to asyncio's own child watcher.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
MARKER_VARIABLE = "ENTRA_TOKEND_HOOK_RUN"
"""Set to a fresh value in each hook's environment; what the hook leaves behind inherits it."""


def become_subreaper() -> bool:
    """Ask the kernel to re-parent our orphaned descendants to us. False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def children(pid: int | None = None) -> set[int]:
    """The pids whose parent is ``pid`` (default: this process), from /proc.

    ``/proc/self`` rather than our pid: in a PID namespace whose /proc is the host's, our own
    pid (1) would name another process there.
    """
    found: set[int] = set()
    try:
        for task in Path(f"/proc/{'self' if pid is None else pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (task / "children").read_text().split())
    except OSError:
        pass
    return found


class Reaper:
    """Kills and reaps children that are not running hooks (see the module doc)."""

    def __init__(self) -> None:
        self.active: set[int] = set()  # hook leaders still running (asyncio reaps them)
        self.spawning = 0  # a spawn in flight: its pid is not registered yet, so wait
        self.enabled = False

    def enable(self) -> bool:
        """Become a subreaper (and, as PID 1, reap orphans); True when in effect."""
        self.enabled = become_subreaper() or os.getpid() == 1
        return self.enabled

    def sweep(self, kill_marker: str | None = None) -> list[int]:
        """Reap every exited child that is no running hook; with ``kill_marker``, first SIGKILL
        the children whose environment holds it (what a finished hook left behind). Other
        orphans (as PID 1: anyone's) are only reaped once they exit, never killed.
        Returns the pids reaped."""
        if not self.enabled or self.spawning:
            return []
        reaped = []
        for pid in children() - self.active:
            if kill_marker is not None and _has_marker(pid, kill_marker):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, OSError):
                # WNOHANG: never block the loop; one not dead yet is reaped at its SIGCHLD.
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
        return reaped

    def on_sigchld(self) -> None:
        """SIGCHLD handler: reap (never kill)."""
        self.sweep()


def _has_marker(pid: int, marker: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER_VARIABLE}={marker}".encode() in environ.split(b"\0")


REAPER = Reaper()
"""The process's reaper (there is one process, so one reaper)."""
