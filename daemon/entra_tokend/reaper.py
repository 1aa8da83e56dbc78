"""Child processes: one owner of ``waitpid``, hooks that die with the daemon, and orphans.

Every child the daemon starts (a hook's command) is started by ``Reaper.spawn`` and its exit
status collected by ``Reaper.sweep`` on SIGCHLD — one place calls ``waitpid``, so reaping an
orphan can never steal a hook's exit status (asyncio's child watcher is not used for them).

- A hook's command runs in its own session (so its whole group can be killed) with
  ``PR_SET_PDEATHSIG = SIGKILL`` (prctl(2)): if the daemon is SIGKILLed, the kernel kills the
  hook too. Processes the hook itself starts are not covered by that signal (it is not
  inherited); in a container they die with the container's PID 1, under systemd with the
  unit's cgroup (``KillMode=control-group``).
- ``exec``'s program gets the same signal but stays in our session and process group (a
  terminal stays its controlling terminal) and inherits stdin, stdout and stderr. Every child
  starts with an empty signal mask and ``CHILD_DEFAULT_SIGNALS`` at their default action (the
  daemon holds and handles them; a program must inherit neither).
- With ``PR_SET_CHILD_SUBREAPER`` orphans a hook leaves (``setsid cmd &``) are re-parented to the
  daemon rather than to init, so the daemon can kill and reap them once the hook is over: each
  hook run — and each generation of ``exec``'s program — carries a fresh
  ``ENTRA_TOKEND_HOOK_RUN`` value in its environment, inherited by everything it starts;
  ``sweep(kill_marker=…)`` SIGKILLs every descendant that carries it, however deep (a process
  double-forked away is re-parented to us; one still under a living parent is found there).
- As PID 1 (a container without an init) every orphan in the container is ours; ``sweep``
  then reaps with ``waitpid(-1, WNOHANG)``, which works whatever ``/proc`` is mounted (a PID
  namespace whose ``/proc`` is the host's names other pids there). Otherwise it reaps only the
  children ``/proc/self/task/*/children`` lists, leaving processes a test harness or an embedding
  program started alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
MARKER_VARIABLE = "ENTRA_TOKEND_HOOK_RUN"
"""Set to a fresh value in each hook's environment; what the hook leaves behind inherits it."""

_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no subreaper, no parent-death signal
    _prctl = None


def become_subreaper() -> bool:
    """Ask the kernel to re-parent our orphaned descendants to us. False where unsupported."""
    return _prctl is not None and int(_prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


CHILD_DEFAULT_SIGNALS = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
"""Signals every child starts with at their default action (an inherited SIG_IGN is dropped)."""


def _child_setup() -> None:
    """In the child between fork and exec: SIGKILL when the daemon (its parent) dies; no
    signal blocked; ``CHILD_DEFAULT_SIGNALS`` at their default action.

    ``_prctl`` is resolved before the fork so the child makes one foreign call."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    with contextlib.suppress(ValueError, OSError):  # never fail a start over this
        for sig in CHILD_DEFAULT_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)


def descendants() -> set[int]:
    """Every process below this one (children, theirs...), from /proc, as ``children`` reads."""
    found: set[int] = set()
    todo = list(children())
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children(pid)
    return found


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
    """Starts the daemon's children and collects every exit status (see the module doc)."""

    def __init__(self) -> None:
        self._waiters: dict[int, tuple[subprocess.Popen[bytes], asyncio.Future[int]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.enabled = False

    @property
    def active(self) -> set[int]:
        """Pids of the children started by ``spawn`` that have not been reaped yet."""
        return set(self._waiters)

    def enable(self) -> bool:
        """Become a subreaper (and, as PID 1, reap orphans); True when in effect."""
        self.enabled = become_subreaper() or os.getpid() == 1
        return self.enabled

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Collect exit statuses on ``loop``'s SIGCHLD (idempotent; the main thread's loop)."""
        if self._loop is not loop:
            loop.add_signal_handler(signal.SIGCHLD, self.sweep)
            self._loop = loop

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        stdout: int | None = None,
        *,
        new_session: bool = True,
    ) -> int:
        """Start ``argv`` so that it dies with the daemon; returns its pid (see ``wait``).

        With ``stdout`` (a descriptor) stdin is /dev/null and stdout and stderr go to
        ``stdout`` (a hook); without, the child inherits all three (``exec``'s program).
        ``new_session`` False keeps it in our session and process group. Raises OSError
        (``FileNotFoundError``, ``PermissionError``...) or ValueError when it cannot start."""
        loop = asyncio.get_running_loop()
        self.attach(loop)  # before the fork: an exit must find the handler in place
        proc = subprocess.Popen(
            argv,
            stdin=None if stdout is None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=None if stdout is None else subprocess.STDOUT,
            env=env,
            start_new_session=new_session,
            preexec_fn=_child_setup,  # noqa: PLW1509 - prctl and signal state, nothing else
        )
        self._waiters[proc.pid] = (proc, loop.create_future())
        return proc.pid

    async def wait(self, pid: int) -> int:
        """The exit status of a child ``spawn`` started: its code, or -N for signal N."""
        entry = self._waiters.get(pid)
        if entry is None:
            raise ChildProcessError(f"{pid} was not started by this reaper")
        self.sweep()  # it may have exited before anyone waited
        return await asyncio.shield(entry[1])

    def _collect(self, pid: int, status: int) -> None:
        entry = self._waiters.pop(pid, None)
        if entry is None:
            return
        proc, future = entry
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code  # Popen must never poll a pid the reaper owns
        if not future.done():
            future.set_result(code)

    def sweep(self, kill_marker: str | None = None) -> list[int]:
        """Collect every exited child (SIGCHLD handler). With ``kill_marker``, first SIGKILL
        the descendants whose environment holds it (what a finished hook or program generation
        left behind; ``kill_marked``); other orphans are only reaped once they exit, never
        killed. Returns the pids reaped."""
        reaped = []
        for pid in list(self._waiters):
            with contextlib.suppress(ChildProcessError):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == pid:
                    self._collect(pid, status)
                    reaped.append(pid)
        if not self.enabled:
            return reaped
        if kill_marker is not None:
            self.kill_marked(kill_marker)
        if os.getpid() == 1:
            reaped += self._reap_any()
        else:
            for pid in children() - self.active:
                with contextlib.suppress(ChildProcessError, OSError):
                    # WNOHANG: never block the loop; one not dead yet is reaped at its SIGCHLD.
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        reaped.append(pid)
        return reaped

    def kill_marked(self, marker: str) -> int:
        """SIGKILL every descendant (other than ``active`` ones) whose environment holds
        ``MARKER_VARIABLE=marker``, walking the tree again until a walk finds none not yet
        killed (one forked while we walked). Returns how many were signalled; their exit
        statuses are collected at their SIGCHLD (``sweep``)."""
        killed: set[int] = set()
        while True:
            found = {
                pid for pid in descendants() - self.active - killed if _has_marker(pid, marker)
            }
            if not found:
                return len(killed)
            for pid in found:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            killed |= found

    def _reap_any(self) -> list[int]:
        """As PID 1: every exited child, whoever started it."""
        reaped: list[int] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return reaped
            if pid == 0:
                return reaped
            self._collect(pid, status)
            reaped.append(pid)

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
