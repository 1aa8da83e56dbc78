"""Wiring: builds the pieces from the configuration and runs them until a signal.

One asyncio loop; one task per token runs that token's state machine (``_token_loop``): it
sleeps until the token is due (or expires), refreshes it, and is woken early by a rotation, a
reload or a wall-clock jump. Only these tasks decide *when* a token is exchanged, from the pure
timing functions in ``scheduler``; ``exchange`` knows *how* to talk to Entra and ``sink`` how to
put bytes on disk. watchdog's thread only posts events into the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from entra_tokend import __version__, sdnotify
from entra_tokend.assertion import (
    Assertion,
    AssertionUnavailable,
    check_unexpired,
    read_assertion,
)
from entra_tokend.config import Config, ConfigError, Identity, TokenSpec
from entra_tokend.exchange import FEDERATION_CODES, ClientError, ExchangeError, Exchanger
from entra_tokend.lock import DirectoryLock, LockError, LockHeld
from entra_tokend.logging import get_logger
from entra_tokend.metrics import Metrics
from entra_tokend.scheduler import MAX_SLEEP, Clock, Policy, SystemClock, TokenSchedule
from entra_tokend.sink import (
    SinkError,
    read_existing,
    remove_stale_temp_files,
    render,
    write_atomic,
)

ReloadFn = Callable[[], Config]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def policy_of(config: Config) -> Policy:
    """The scheduler policy a configuration asks for."""
    return Policy(
        refresh_at=config.refresh_at,
        jitter=config.jitter,
        min_interval=config.min_refresh_interval,
        backoff_initial=config.backoff_initial,
        backoff_max=config.backoff_max,
        config_backoff_max=config.config_error_backoff_max,
    )


@dataclass
class IdentityState:
    """An identity's current projected token and what was last said about it."""

    identity: Identity
    assertion: Assertion | None = None
    problem: str | None = None  # last logged problem, to log once per change
    watcher: Any = None


@dataclass
class TokenRunner:
    """One token's live state."""

    spec: TokenSpec
    schedule: TokenSchedule
    state: str = "pending"  # pending | ok | failing | expired
    inflight: bool = False
    rotated_in_flight: bool = False
    succeeded_once: bool = False
    fatal: str | None = None  # a configuration error (run --once fails on it)
    last_failure: tuple[str, Any] | None = None  # to log repeats quietly
    valid: bool = False  # as last counted in Daemon._valid_count
    done: bool = False  # counted in Daemon._done_count (run --once)
    retired: bool = False  # removed or replaced by a reload; counts no more
    wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Daemon:
    """Keeps every configured token fresh on disk."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        reload: ReloadFn | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._reload = reload
        self.log = get_logger()
        self.metrics = Metrics()
        self.metrics.set_ready(False)
        self.exchanger = Exchanger(config.request_timeout, max_connections=config.concurrency)
        self._sem = asyncio.Semaphore(config.concurrency)
        self.identities: dict[str, IdentityState] = {}
        self.runners: dict[str, TokenRunner] = {}
        self._stopping = asyncio.Event()
        self.clock_check_interval = MAX_SLEEP
        self._progress = asyncio.Event()  # a refresh finished (run --once re-checks)
        self._running = False
        # Counters kept as tokens change state, so no event costs a pass over every token.
        self._valid_count = 0
        self._done_count = 0
        self._ready_notified = False
        self._ready = False
        self._lock: DirectoryLock | None = None
        self._apply_config(config, initial=True)

    # ---- configuration -------------------------------------------------------------------

    def _apply_config(self, config: Config, *, initial: bool = False) -> None:
        old_tokens = {} if initial else dict(self.runners)
        policy = policy_of(config)
        for name, ident in config.identities.items():
            current = self.identities.get(name)
            if current is None or current.identity != ident:
                if current and current.watcher:
                    current.watcher.stop()
                self.identities[name] = IdentityState(ident)
        for name in list(self.identities):
            if name not in config.identities:
                state = self.identities.pop(name)
                if state.watcher:
                    state.watcher.stop()
        new_runners: dict[str, TokenRunner] = {}
        for name, spec in config.tokens.items():
            old = old_tokens.get(name)
            if old is not None and old.spec == spec:
                old.schedule.policy = policy  # new tunables apply from its next decision
                new_runners[name] = old
                continue
            if old is not None:
                self._retire(old)
            runner = TokenRunner(spec, TokenSchedule(policy, self.clock))
            self.metrics.token_configured(name, spec.identity)
            existing = read_existing(spec.path, spec.format)
            if existing and existing.expires_on > self.clock.wall():
                runner.schedule.adopted(existing.issued_at, existing.expires_on)
                runner.state = "ok"
                self.metrics.token_adopted(name, existing.expires_on)
            new_runners[name] = runner
        for name, old in old_tokens.items():
            if name not in config.tokens:
                self._retire(old)
                self.metrics.token_removed(name)
                self.log.info("token removed from configuration; its file is left", token=name)
        self.runners = new_runners
        self.config = config
        if self._running:
            for runner in new_runners.values():
                self._start_runner(runner)
            self._update_ready()

    def _retire(self, runner: TokenRunner) -> None:
        """Stop a token's task and take it out of the counters."""
        if runner.task is not None:
            runner.task.cancel()
        self._valid_count -= runner.valid
        self._done_count -= runner.done
        runner.retired = True

    def _start_runner(self, runner: TokenRunner) -> None:
        if runner.task is None:
            runner.task = asyncio.create_task(self._token_loop(runner), name=runner.spec.name)

    def reload(self) -> None:
        """Re-read the configuration (SIGHUP); a bad one is logged and the running one kept."""
        if self._reload is None:
            return
        try:
            config = self._reload()
        except ConfigError as exc:
            for problem in exc.problems:
                self.log.error("configuration reload rejected", problem=problem)
            return
        if config.listen != self.config.listen:
            self.log.warning("listen changed; it takes effect at the next restart")
        before = set(self.runners)
        self._apply_config(config)
        for directory in {spec.path.parent for spec in config.tokens.values()}:
            try:
                directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            except OSError as exc:
                self.log.error(
                    "cannot create token directory", path=str(directory), detail=exc.strerror
                )
        self._start_watchers()
        self.log.info(
            "configuration reloaded",
            added=sorted(set(self.runners) - before),
            removed=sorted(before - set(self.runners)),
        )

    # ---- readiness -----------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, {token: state}); ready when every token is on disk and unexpired."""
        states: dict[str, str] = {}
        for name, runner in self.runners.items():
            valid = runner.schedule.valid()
            states[name] = "expired" if runner.schedule.expires and not valid else runner.state
        ready = bool(states) and all(r.schedule.valid() for r in self.runners.values())
        return ready, states

    def _note_validity(self, runner: TokenRunner) -> None:
        valid = runner.schedule.valid()
        if valid != runner.valid and not runner.retired:
            runner.valid = valid
            self._valid_count += 1 if valid else -1
            self._update_ready()

    def _update_ready(self) -> bool:
        ready = bool(self.runners) and self._valid_count == len(self.runners)
        self.metrics.set_ready(ready)
        if ready == self._ready:
            return ready
        self._ready = ready
        _, states = self.readiness()
        if ready:
            status = f"STATUS=all {len(states)} tokens on disk"
            self.log.info("ready: every token is on disk", tokens=len(states))
            # READY=1 once: systemd reads it as "start-up finished", not as a health signal.
            if self._ready_notified:
                sdnotify.notify(status)
            else:
                sdnotify.notify("READY=1", status)
                self._ready_notified = True
        else:
            missing = {name: state for name, state in states.items() if state != "ok"}
            self.log.warning("not ready: a token is missing or expired", tokens=missing)
            sdnotify.notify(f"STATUS=not ready: {', '.join(sorted(missing))}")
        return ready

    # ---- assertions and rotations --------------------------------------------------------

    def _load_assertion(self, ident: IdentityState) -> Assertion:
        """Read the projected token fresh; notice rotations; raise when unusable."""
        try:
            assertion = read_assertion(ident.identity.token_file)
        except AssertionUnavailable as exc:
            self._assertion_problem(ident, str(exc), exc.kind)
            raise
        if ident.assertion is None or assertion.fingerprint != ident.assertion.fingerprint:
            self._rotated(ident, assertion)
        try:
            check_unexpired(assertion, self.clock.wall(), ident.identity.token_file)
        except AssertionUnavailable as exc:
            self._assertion_problem(ident, str(exc), exc.kind)
            raise
        if ident.problem is not None:
            ident.problem = None
            self.log.info("projected token usable again", identity=ident.identity.name)
        return assertion

    def _assertion_problem(self, ident: IdentityState, message: str, kind: str) -> None:
        if ident.problem != message:
            ident.problem = message
            self.log.warning(
                "projected token unavailable",
                identity=ident.identity.name,
                problem=kind,
                detail=message,
            )

    def _rotated(self, ident: IdentityState, assertion: Assertion) -> None:
        first = ident.assertion is None
        ident.assertion = assertion
        name = ident.identity.name
        self.metrics.assertion_loaded(name, assertion.expires_on)
        if not first:
            self.metrics.assertion_rotated(name)
        self.log.info(
            "projected token loaded" if first else "projected token rotated",
            identity=name,
            expires_at=_iso(assertion.expires_on),
            iss=assertion.iss,
            sub=assertion.sub,
            aud=list(assertion.aud),
        )
        # A fresh assertion: every token of this identity whose last exchange failed retries now.
        for runner in self.runners.values():
            if runner.spec.identity != name or runner.state not in (
                "failing",
                "pending",
                "expired",
            ):
                continue
            if runner.inflight:
                runner.rotated_in_flight = True
            else:
                runner.schedule.retry_now()
                runner.wake.set()

    def _on_watch(self, name: str) -> None:
        """Watcher callback (on the loop): the token file may have changed."""
        ident = self.identities.get(name)
        if ident is None:
            return
        with contextlib.suppress(AssertionUnavailable):
            self._load_assertion(ident)

    def _start_watchers(self) -> None:
        from entra_tokend.watcher import DirectoryWatcher  # noqa: PLC0415 - after config is valid

        loop = asyncio.get_running_loop()
        for name, ident in self.identities.items():
            if ident.watcher is None:
                ident.watcher = DirectoryWatcher(
                    ident.identity.token_file,
                    lambda n=name: self._on_watch(n),  # type: ignore[misc]
                    loop=loop,
                    poll_interval=self.config.poll_interval,
                )
                ident.watcher.start()
            with contextlib.suppress(AssertionUnavailable):
                self._load_assertion(ident)

    # ---- one refresh ---------------------------------------------------------------------

    async def _refresh(self, runner: TokenRunner) -> None:
        spec = runner.spec
        ident = self.identities[spec.identity]
        log = self.log.bind(token=spec.name, identity=spec.identity)
        try:
            async with self._sem:
                runner.rotated_in_flight = False
                runner.schedule.started()
                try:
                    assertion = self._load_assertion(ident)
                except AssertionUnavailable as exc:
                    self._failed(runner, log, "assertion_unavailable", {"detail": str(exc)})
                    # A rotation (watcher) retries it; the schedule keeps a slow safety net.
                    runner.schedule.wait_for_event()
                    return
                started = self.clock.monotonic()
                try:
                    token = await self.exchanger.exchange(
                        ident.identity, spec.scope, assertion.token
                    )
                except ExchangeError as exc:
                    self.metrics.exchange_observed(spec.identity, self.clock.monotonic() - started)
                    self._exchange_failed(runner, log, exc, assertion)
                    return
                self.metrics.exchange_observed(spec.identity, self.clock.monotonic() - started)
                data = render(
                    token, spec.format, ident.identity.tenant_id, ident.identity.client_id
                )
                try:
                    await asyncio.to_thread(
                        write_atomic,
                        spec.path,
                        data,
                        self.config.file_mode,
                        self.config.file_owner,
                        self.config.file_group,
                        root=self.config.output_dir,
                    )
                except SinkError as exc:
                    self._failed(runner, log, "write_error", {"detail": str(exc)})
                    runner.schedule.failed()
                    return
                delay = runner.schedule.succeeded(
                    token.expires_on, token.expires_in, token.refresh_in
                )
                recovered = runner.state != "ok" and runner.last_failure is not None
                runner.state = "ok"
                runner.succeeded_once = True
                runner.fatal = None
                runner.last_failure = None
                self.metrics.token_written(spec.name, token.expires_on, self.clock.wall())
                log.info(
                    "token recovered" if recovered else "token written",
                    path=str(spec.path),
                    expires_at=_iso(token.expires_on),
                    expires_in=int(token.expires_in),
                    next_refresh_in=round(delay, 1),
                    request_id=token.request_id,
                )
            if spec.hook is not None:
                from entra_tokend.hooks import run_hook  # noqa: PLC0415 - only when configured

                ok = await run_hook(spec.hook, spec.name, spec.path, log)
                if not ok:
                    self.metrics.hook_failed(spec.name)
        finally:
            if runner.rotated_in_flight and runner.state != "ok":
                runner.rotated_in_flight = False
                runner.schedule.retry_now()

    def _exchange_failed(
        self, runner: TokenRunner, log: Any, exc: ExchangeError, assertion: Assertion
    ) -> None:
        fields: dict[str, Any] = {"request_id": exc.request_id, "detail": exc.message}
        fields.update(exc.details.fields())
        configuration = isinstance(exc, ClientError) and exc.is_configuration
        if isinstance(exc, ClientError):
            if exc.details.aadsts in FEDERATION_CODES:
                fields["hint"] = (
                    "compare the federated credential's issuer, subject and audience "
                    "with the projected token's claims"
                )
                fields["assertion_claims"] = assertion.describe()
            elif exc.assertion_expired:
                fields["hint"] = "the projected token expired; waiting for kubelet to rotate it"
            elif configuration:
                fields["hint"] = "check the client id, tenant id and scope in the configuration"
        if configuration:
            runner.fatal = f"{exc.message}"
        delay = runner.schedule.failed(
            retry_after=exc.retry_after, configuration_error=configuration
        )
        fields["retry_in"] = round(delay, 2)
        self._failed(runner, log, exc.reason, fields, error=configuration)

    def _failed(
        self,
        runner: TokenRunner,
        log: Any,
        reason: str,
        fields: dict[str, Any],
        *,
        error: bool = False,
    ) -> None:
        runner.state = "failing"
        self.metrics.refresh_failed(runner.spec.name, reason)
        key = (reason, fields.get("aadsts") or fields.get("status") or fields.get("detail"))
        repeat = runner.last_failure == key
        runner.last_failure = key
        if runner.schedule.valid() and runner.schedule.expires is not None:
            fields["current_token_expires_in"] = int(runner.schedule.expires.remaining(self.clock))
        method = log.debug if repeat else (log.error if error else log.warning)
        method("token refresh failed", reason=reason, **fields)

    # ---- the loop ------------------------------------------------------------------------

    async def _token_loop(self, runner: TokenRunner) -> None:
        """One token's state machine: sleep until due (or until its token expires), refresh."""
        while True:
            self._note_validity(runner)
            wait = runner.schedule.due_in()
            if wait > 0:
                if runner.valid and runner.schedule.expires is not None:
                    # Wake at the expiry too, so readiness drops the moment the token expires.
                    wait = min(wait, runner.schedule.expires.remaining(self.clock))
                runner.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(runner.wake.wait(), timeout=max(wait, 0.0))
                continue
            runner.inflight = True
            try:
                await self._refresh(runner)
            except Exception as exc:  # a bug must not end this token's refreshes for good
                runner.state = "failing"
                delay = runner.schedule.failed()
                self.log.error(
                    "unexpected error while refreshing; retrying",
                    token=runner.spec.name,
                    error=type(exc).__name__,
                    retry_in=round(delay, 2),
                )
            finally:
                runner.inflight = False
                if runner.succeeded_once and not runner.done and not runner.retired:
                    runner.done = True
                    self._done_count += 1
                self._progress.set()

    async def _clock_watch(self) -> None:
        """Wake every token when the wall clock jumps (NTP step, suspend/resume).

        Token sleeps run on the monotonic clock; this once-a-minute check is what notices
        that wall time (and so every expiry) moved under them.
        """
        offset = self.clock.wall() - self.clock.monotonic()
        while True:
            await asyncio.sleep(self.clock_check_interval)
            now = self.clock.wall() - self.clock.monotonic()
            if abs(now - offset) > 1.0:
                self.log.info("wall clock jumped; rescheduling", seconds=round(now - offset, 1))
                for runner in self.runners.values():
                    runner.wake.set()
            offset = now

    def stop(self) -> None:
        """Ask the daemon to finish (SIGTERM/SIGINT)."""
        self._stopping.set()
        self._progress.set()

    def _prepare_output(self) -> None:
        self.config.output_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        # Lock before cleaning: a live writer's temp files look exactly like stale ones.
        self._lock = DirectoryLock.acquire(self.config.output_dir)
        for directory in {spec.path.parent for spec in self.config.tokens.values()}:
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            removed = remove_stale_temp_files(directory)
            if removed:
                self.log.info("removed temp files of an interrupted run", files=removed)

    async def run(self, *, once: bool = False) -> int:
        """Run until a signal (or, with ``once``, until every token is on disk)."""
        loop = asyncio.get_running_loop()
        try:
            self._prepare_output()
        except LockHeld as exc:
            self.log.error(
                "output_dir is in use by another entra-tokend",
                path=str(self.config.output_dir),
                holder_pid=exc.pid,
                detail=str(exc),
            )
            return 2
        except LockError as exc:
            self.log.error("cannot lock output_dir", detail=str(exc))
            return 2
        except OSError as exc:
            self._release_lock()
            self.log.error(
                "cannot prepare output_dir", path=str(self.config.output_dir), detail=exc.strerror
            )
            return 2
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        if not once:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        server = None
        if self.config.listen and not once:
            from entra_tokend.server import bound_port, start_server  # noqa: PLC0415

            host, port = self.config.listen
            try:
                server = await start_server(host, port, self.metrics, self.readiness)
                self.log.info("listening", listen=f"{host}:{bound_port(server)}")
            except OSError as exc:
                self.log.error("cannot listen", listen=f"{host}:{port}", detail=exc.strerror)
                self._release_lock()
                return 2
        self.log.info(
            "entra-tokend starting",
            version=__version__,
            mode="once" if once else "run",
            tokens=sorted(self.runners),
            output_dir=str(self.config.output_dir),
            pid=os.getpid(),
        )
        self._start_watchers()
        helpers = [asyncio.create_task(self._clock_watch())]
        if not once:
            helpers.append(asyncio.create_task(self._watchdog()))
        deadline = self.clock.monotonic() + self.config.once_deadline
        if once:
            # `--once` means "acquire now": a still-valid file from an earlier run is replaced.
            for runner in self.runners.values():
                runner.schedule.retry_now()
        self._running = True
        for runner in self.runners.values():
            self._start_runner(runner)
        code = 0
        try:
            if once:
                code = await self._run_once(deadline)
            else:
                await self._stopping.wait()
        finally:
            self._running = False
            sdnotify.notify("STOPPING=1")
            self.log.info("entra-tokend stopping")
            tasks = [*helpers, *(r.task for r in self.runners.values() if r.task)]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for ident in self.identities.values():
                if ident.watcher:
                    ident.watcher.stop()
            if server is not None:
                from entra_tokend.server import stop_server  # noqa: PLC0415

                await stop_server(server)
            await self.exchanger.aclose()
            self._release_lock()
        return code

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def _run_once(self, deadline: float) -> int:
        """Wait until every token is on disk, a configuration error, or the deadline."""
        while not self._stopping.is_set():
            result = self._once_result(deadline)
            if result is not None:
                return result
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._progress.wait(), timeout=max(0.0, deadline - self.clock.monotonic())
                )
        return 1

    def _once_result(self, deadline: float) -> int | None:
        runners = self.runners.values()
        # `done` is set when a refresh (and its post-write hook) has finished with a success.
        if self._done_count == len(self.runners):
            self.log.info("every token is on disk", tokens=len(self.runners))
            return 0
        fatal = {r.spec.name: r.fatal for r in runners if r.fatal and not r.succeeded_once}
        if fatal:
            for name, why in fatal.items():
                self.log.error("configuration error from Entra; giving up", token=name, detail=why)
            return 1
        if self.clock.monotonic() >= deadline:
            missing = sorted(r.spec.name for r in runners if not r.succeeded_once)
            self.log.error(
                "deadline reached before every token was on disk",
                missing=missing,
                deadline_seconds=self.config.once_deadline,
            )
            return 1
        return None

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval()
        if not interval:
            return
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval / 2)
