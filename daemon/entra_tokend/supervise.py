"""``exec``: a small supervisor of runner events that runs one program with fresh tokens.

1. ``attach`` listens to every runner's events. ``wait`` (the runners have started) makes each
   token due at once (``refresh_now``: a valid file from an earlier run is replaced, so the
   program starts with tokens acquired now, as under ``run --once``) and waits as ``run --once``
   does (``once.OnceSupervisor``: the same deadline; exit 1 at the deadline or at once on a
   configuration error from Entra).
2. The program starts through ``reaper.REAPER`` (the one owner of ``waitpid``; as PID 1 it also
   reaps every orphan): in our session and process group, stdin, stdout and stderr inherited, no
   signal blocked, SIGKILLed by the kernel if we are (``PR_SET_PDEATHSIG``). Its environment is
   ours plus the tokens (``environment``). It cannot start: exit 127 (not found) or 126 (found
   but not executable, a directory...), the reason logged.
3. ``FORWARDED`` signals sent to us are sent on to it. After SIGTERM or SIGINT it has
   ``Command.grace`` seconds to exit, then SIGKILL (only the program's pid: its process group is
   ours). Before it has started, SIGTERM/SIGINT end ``exec`` with 128+N and the others are
   ignored (logged).
4. A ``Written`` event after the start (a refresh): ``OnRefresh.RESTART`` — SIGTERM, the grace
   period, SIGKILL, then the program starts again with the environment of the newest tokens (one
   restart at a time; a token written meanwhile is in the new environment);
   ``OnRefresh.SIGNAL`` — send ``Command.refresh_signal``; ``OnRefresh.NONE`` — nothing (the
   program reads the files).
5. When the program exits (other than for a restart) ``wait`` returns its exit status: its code,
   or 128+N when signal N ended it (SIGKILL: 137). The daemon then stops.
6. Each generation of the program (every start and restart) gets a fresh
   ``reaper.MARKER_VARIABLE`` value in its environment, inherited by whatever it starts, and
   ``exec`` is a subreaper (``reaper.become_subreaper``): when the generation ends — a
   restart, a stop, or its own exit — every process still carrying its value is SIGKILLed,
   including ones it double-forked away. A program must not rely on leaving background
   processes behind: they would hold the tokens of an older generation in their environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import secrets
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from entra_tokend.model import AccessToken, Clock, TokenSpec
from entra_tokend.once import EXIT_OK, OnceSupervisor
from entra_tokend.outputs import envfile
from entra_tokend.ports import RunnerEvent, Written
from entra_tokend.reaper import MARKER_VARIABLE, REAPER
from entra_tokend.runner import TokenRunner

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
"""The signals sent on to the program."""
STOPPING = frozenset({signal.SIGTERM, signal.SIGINT})
"""Forwarded signals after which the program must exit within the grace period."""
DEFAULT_GRACE = 10.0
"""Seconds between SIGTERM (a stop, a restart) and SIGKILL: docker stop's default, and below
Kubernetes' default terminationGracePeriodSeconds (30), so exec ends before the kubelet kills it."""
EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 126, 127
"""The program cannot start: as a POSIX shell answers."""


class OnRefresh(StrEnum):
    """What a refreshed token does to the running program."""

    RESTART = "restart"
    SIGNAL = "signal"
    NONE = "none"


@dataclass(frozen=True)
class Command:
    """The program (``argv``, looked up on the PATH of its environment) and its policies;
    ``grace`` in seconds."""

    argv: tuple[str, ...]
    on_refresh: OnRefresh = OnRefresh.RESTART
    refresh_signal: int = signal.SIGHUP
    grace: float = DEFAULT_GRACE


def variables(spec: TokenSpec) -> tuple[str, str]:
    """The variables ``spec``'s token sets in the program's environment: (token, expires_on).

    A ``format = "env"`` token: its ``env_name`` and ``env_expires_name`` (its file's lines).
    Any other: ``<NAME>_ACCESS_TOKEN`` and ``<NAME>_ACCESS_TOKEN_EXPIRES_ON``, NAME upper-cased
    with every character other than A-Z, 0-9 and _ made ``_`` (``--token my-db=…`` →
    ``MY_DB_ACCESS_TOKEN``), and a leading ``_`` before a digit.
    """
    if spec.output.format == "env":
        return spec.output.env_name, spec.output.env_expires_name
    base = re.sub(r"[^A-Z0-9_]", "_", spec.name.upper())
    if base[:1].isdigit():
        base = f"_{base}"
    return f"{base}_ACCESS_TOKEN", f"{base}_ACCESS_TOKEN_EXPIRES_ON"


def clashes(specs: Iterable[TokenSpec]) -> list[str]:
    """One configuration problem per variable two tokens would both set (empty: none)."""
    owners: dict[str, list[str]] = {}
    for spec in specs:
        for name in variables(spec):
            owners.setdefault(name, []).append(spec.name)
    return [
        f"token.{names[0]} and token.{names[1]} would both set {var} in exec's environment; "
        'give one of them another env_name (format = "env") or another name'
        for var, names in owners.items()
        if len(names) > 1
    ]


def environment(
    base: Mapping[str, str], specs: Mapping[str, TokenSpec], tokens: Mapping[str, AccessToken]
) -> dict[str, str]:
    """``base`` plus, for each token in ``tokens`` (name → latest token), its ``variables``:
    the value and ``expires_on`` (unix seconds). An env-format token's are its file's lines."""
    env = dict(base)
    for name, token in tokens.items():
        spec = specs[name]
        if spec.output.format == "env":
            for line in envfile.renderer(spec.output)(token).decode().splitlines():
                key, _, value = line.partition("=")
                env[key] = value
        else:
            var, expires = variables(spec)
            env[var] = token.token
            env[expires] = str(int(token.expires_on))
    return env


def exit_status(code: int) -> int:
    """A shell's exit status for ``Reaper.wait``'s result: the code, or 128+N for signal N."""
    return 128 - code if code < 0 else code


class ExecSupervisor:
    """Runs ``command`` with the tokens of ``runners`` (name → runner); see the module doc.

    ``deadline`` (seconds) bounds the first acquisition; ``base_env`` is the program's
    environment before the tokens are added.
    """

    def __init__(
        self,
        runners: Mapping[str, TokenRunner],
        command: Command,
        *,
        clock: Clock,
        deadline: float,
        log: Any,
        base_env: Mapping[str, str],
    ) -> None:
        self._runners = dict(runners)
        self._specs = {name: runner.spec for name, runner in self._runners.items()}
        self._command = command
        self._log = log
        self._base_env = dict(base_env)
        self._first = OnceSupervisor(self._runners, clock, deadline, log)
        self._tokens: dict[str, AccessToken] = {}
        self._pid: int | None = None
        self._starts = 0
        self._restarting = False
        self._stop_signal: int | None = None
        self._kill_timer: asyncio.TimerHandle | None = None

    # ---- Supervisor ----------------------------------------------------------------------

    def attach(self) -> None:
        """Listen to every runner's events (before they start)."""
        for runner in self._runners.values():
            runner.listen(self._first.observe)
            runner.listen(self.observe)

    def signal_handlers(self) -> Mapping[int, Callable[[], None]]:
        """Every ``FORWARDED`` signal is ours (the daemon neither stops nor reloads on them)."""
        return {sig: functools.partial(self._on_signal, sig) for sig in FORWARDED}

    def stop(self) -> None:
        """As a SIGTERM: forwarded, then the grace period."""
        self._on_signal(signal.SIGTERM)

    async def wait(self) -> int:
        """Acquire every token, run the program (again on each restart); its exit status."""
        for runner in self._runners.values():
            runner.refresh_now()
        code = await self._first.wait()
        for runner in self._runners.values():
            runner.unlisten(self._first.observe)
        if self._stop_signal is not None:
            return 128 + self._stop_signal
        if code != EXIT_OK:
            return code
        REAPER.enable()  # the generations' orphans come to us, to be ended with them
        while True:
            marker = secrets.token_hex(8)
            try:
                pid = self._spawn(marker)
            except (OSError, ValueError) as exc:
                return self._not_started(exc)
            try:
                status = await REAPER.wait(pid)
            finally:  # the generation is over (or we are cancelled): nothing of it stays
                REAPER.sweep(kill_marker=marker)
            self._pid = None
            if self._kill_timer is not None:
                self._kill_timer.cancel()
                self._kill_timer = None
            if self._restarting and self._stop_signal is None:
                self._restarting = False
                self._log.info(
                    "program stopped for a restart", pid=pid, exit_status=exit_status(status)
                )
                continue
            self._log.info("program exited", pid=pid, exit_status=exit_status(status))
            return exit_status(status)

    # ---- events and signals --------------------------------------------------------------

    def observe(self, event: RunnerEvent) -> None:
        """The runners' event listener: keep the newest token; act on a refresh."""
        if not isinstance(event, Written):
            return
        self._tokens[event.name] = event.token
        if self._pid is None or self._stop_signal is not None:
            return  # not started yet, or stopping
        policy = self._command.on_refresh
        if policy is OnRefresh.SIGNAL:
            sig = self._command.refresh_signal
            self._log.info(
                "token refreshed; signalling the program", token=event.name, signal=_name(sig)
            )
            self._send(sig)
        elif policy is OnRefresh.RESTART and not self._restarting:
            self._log.info(
                "token refreshed; restarting the program",
                token=event.name,
                grace_seconds=self._command.grace,
            )
            self._restarting = True
            self._terminate(signal.SIGTERM)

    def _on_signal(self, sig: int) -> None:
        if sig in STOPPING and self._stop_signal is None:
            self._stop_signal = sig
        if self._pid is None:
            if sig in STOPPING:
                self._log.info("stopping before the program started", signal=_name(sig))
                self._first.stop()
            else:
                self._log.info("signal ignored: the program has not started", signal=_name(sig))
            return
        self._log.info("forwarding a signal to the program", signal=_name(sig))
        if sig in STOPPING:
            self._terminate(sig)
        else:
            self._send(sig)

    def _terminate(self, sig: int) -> None:
        """Send ``sig``; SIGKILL after the grace period unless it has exited by then."""
        self._send(sig)
        if self._kill_timer is None:
            loop = asyncio.get_running_loop()
            self._kill_timer = loop.call_later(self._command.grace, self._kill)

    def _kill(self) -> None:
        self._kill_timer = None
        self._log.warning(
            "program still running after the grace period; killing it",
            grace_seconds=self._command.grace,
        )
        self._send(signal.SIGKILL)

    def _send(self, sig: int) -> None:
        # Only while the reaper has not collected it: a reaped pid may be someone else's.
        if self._pid is not None and self._pid in REAPER.active:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, sig)

    # ---- the program ---------------------------------------------------------------------

    def _spawn(self, marker: str) -> int:
        env = {**environment(self._base_env, self._specs, self._tokens), MARKER_VARIABLE: marker}
        pid = REAPER.spawn(self._command.argv, env, new_session=False)
        self._pid = pid
        self._log.info(
            "program started" if not self._starts else "program restarted",
            pid=pid,
            program=self._command.argv[0],
            variables=sorted(v for spec in self._specs.values() for v in variables(spec)),
        )
        self._starts += 1
        return pid

    def _not_started(self, exc: OSError | ValueError) -> int:
        code = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_NOT_EXECUTABLE
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self._log.error(
            "program could not start",
            program=self._command.argv[0],
            reason=reason,
            exit_status=code,
        )
        return code


def _name(sig: int) -> str:
    return signal.Signals(sig).name
