"""Lifecycle: build the pipeline from the configuration, run it until a signal, reload it.

``Daemon`` takes the directory lock, prepares output_dir, starts the HTTP listener, installs
signal handlers, and builds one ``CredentialSource`` per identity and one ``TokenRunner`` per
token (each with its own task). A reload (SIGHUP) diffs the new configuration against the
running one: unchanged tokens keep their runner and schedule, changed ones get a new runner,
removed ones stop (their files are left). What happens to a token, and when, is the runner's
and the scheduler's business; nothing here knows about HTTP requests or file formats.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entra_tokend import __version__, sdnotify
from entra_tokend.config import Config, ConfigError
from entra_tokend.credentials import CredentialSource
from entra_tokend.exchange import AcrExchange, ClientPool, EntraExchange
from entra_tokend.hooks import hide_from_hooks
from entra_tokend.listener import address_text, server_address
from entra_tokend.lock import LockError, LockHeld
from entra_tokend.logging import get_logger, remember_secret
from entra_tokend.metrics import Metrics
from entra_tokend.model import Clock, EndpointSpec, SystemClock, TokenSpec
from entra_tokend.outputdir import OutputDirectory
from entra_tokend.outputs import FileOutput, Output
from entra_tokend.outputs.memory import MemoryOutput
from entra_tokend.outputs.provenance import fingerprint
from entra_tokend.preflight import listen_problem, output_dir_problem, print_problems
from entra_tokend.readiness import Readiness
from entra_tokend.reaper import REAPER
from entra_tokend.runner import Exchange, TokenRunner
from entra_tokend.scheduler import MAX_SLEEP, TokenSchedule

if TYPE_CHECKING:
    from entra_tokend.ondemand import EndpointService

ReloadFn = Callable[[], Config]
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


class Daemon:
    """Keeps every configured token fresh on disk.

    ``clock`` and ``exchange`` may be injected (tests); ``reload`` re-reads the configuration
    on SIGHUP.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        reload: ReloadFn | None = None,
        exchange: Exchange | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._reload = reload
        self.log = get_logger()
        self.metrics = metrics or Metrics()
        self.readiness = Readiness(self.metrics, allow_empty=config.endpoint is not None)
        self._pool = ClientPool(config.request_timeout, max_connections=config.concurrency)
        self.exchange: Exchange = exchange or EntraExchange(self._pool, self.clock)
        self._limiter = asyncio.Semaphore(config.concurrency)
        self.sources: dict[str, CredentialSource] = {}
        self.runners: dict[str, TokenRunner] = {}
        # Each file token's latest token, so the managed-identity endpoint can share it.
        self.latest: dict[str, MemoryOutput] = {}
        self.endpoint: EndpointService | None = None
        self._stopping = asyncio.Event()
        self._progress = asyncio.Event()  # a refresh attempt finished (run --once re-checks)
        self._done: set[str] = set()
        self._running = False
        self._output_dir = OutputDirectory(
            config.output_dir, self.metrics, allow_world_writable=config.allow_world_writable
        )
        self.clock_check_interval = MAX_SLEEP
        if config.endpoint is not None:  # also in --once, which serves no endpoint
            self._protect_endpoint_secret(config.endpoint)
        self._apply(config)

    # ---- configuration -------------------------------------------------------------------

    def _apply(self, config: Config) -> None:
        """Make the running sources and runners match ``config``."""
        for name, ident in config.identities.items():
            current = self.sources.get(name)
            if current is None or current.identity != ident:
                if current is not None:
                    current.close()
                self.sources[name] = CredentialSource(ident, self.clock, self.metrics)
        for name in set(self.sources) - set(config.identities):
            self.sources.pop(name).close()
        old = self.runners
        self.runners = {}
        for name, spec in config.tokens.items():
            runner = old.pop(name, None)
            source = self.sources[spec.identity]
            if runner is not None and runner.spec == spec and runner.source is source:
                runner.schedule.policy = config.policy  # new tunables from its next decision
            else:
                if runner is not None:
                    self._retire(runner)
                runner = self._new_runner(spec, config)
            self.runners[name] = runner
        for name, runner in old.items():
            self._retire(runner)
            self.metrics.token_removed(name)
            self.log.info("token removed from configuration; its file is left", token=name)
        self.config = config
        if self._running:
            for runner in self.runners.values():
                runner.start()
            self.readiness.update()

    def _new_runner(self, spec: TokenSpec, config: Config) -> TokenRunner:
        source = self.sources[spec.identity]
        file = FileOutput(
            spec.output,
            config.output_dir,
            name=spec.name,
            print_=fingerprint(spec, source.identity),
            store=self._output_dir.provenance,
        )
        output: Output = file
        on_attempt: Callable[[TokenRunner], None] = self._attempted
        if config.endpoint is not None:  # fixed for the process's life (reload keeps it)
            # The endpoint serves a file token's latest token; without an endpoint nothing
            # reads it, so the wrapper (and its closure) is not kept per token.
            shared = MemoryOutput(file, monotonic=self.clock.monotonic)
            self.latest[spec.name] = output = shared

            def attempted(runner: TokenRunner) -> None:
                self._attempted(runner)
                shared.attempt_finished()

            on_attempt = attempted
        runner = TokenRunner(
            spec,
            schedule=TokenSchedule(config.policy, self.clock),
            source=source,
            exchange=(
                AcrExchange(self.exchange, spec.registries, self._pool, self.clock)
                if spec.registries
                else self.exchange
            ),
            output=output,
            metrics=self.metrics,
            readiness=self.readiness,
            clock=self.clock,
            limiter=self._limiter,
            on_attempt=on_attempt,
        )
        runner.adopt()
        source.subscribe(runner.on_rotation)
        self.readiness.track(spec.name, runner)
        return runner

    def _retire(self, runner: TokenRunner) -> None:
        """Stop a token's task and take it out of readiness, subscriptions and counts."""
        runner.stop()
        name = runner.spec.name
        self.latest.pop(name, None)
        if isinstance(runner.source, CredentialSource):
            runner.source.unsubscribe(runner.on_rotation)
        self.readiness.untrack(name)
        self._done.discard(name)

    def _attempted(self, runner: TokenRunner) -> None:
        if runner.done and self.runners.get(runner.spec.name) is runner:
            self._done.add(runner.spec.name)
        self._progress.set()

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
        except Exception as exc:  # the loader must never take the daemon down
            self.log.error(
                "configuration reload failed; keeping the running one", error=type(exc).__name__
            )
            return
        if config.output_dir != self.config.output_dir:
            # The lock and the stale-file cleanup belong to the directory we started with.
            self.log.error(
                "configuration reload rejected",
                problem="output_dir cannot change while running; restart to use the new one",
            )
            return
        if config.listen != self.config.listen:
            self.log.warning("listen changed; it takes effect at the next restart")
        if config.endpoint != self.config.endpoint:
            self.log.warning("[endpoint] changed; it takes effect at the next restart")
            config = dataclasses.replace(config, endpoint=self.config.endpoint)
        before = set(self.runners)
        self._apply(config)
        if self.endpoint is not None:
            self.endpoint.provider.drop_stale_sources()
        self._output_dir.make_token_dirs(self._token_dirs(), clean=False)
        self._watch()
        self.log.info(
            "configuration reloaded",
            added=sorted(set(self.runners) - before),
            removed=sorted(before - set(self.runners)),
        )

    # ---- start-up and shutdown -----------------------------------------------------------

    @staticmethod
    def _protect_endpoint_secret(spec: EndpointSpec) -> None:
        """The endpoint's secret is redacted from every log line by value, and the variable it
        comes from is never passed to a hook (a hook printing its environment would show it)."""
        remember_secret(spec.secret)
        if spec.secret_source.startswith("secret_env = "):
            hide_from_hooks(spec.secret_source.removeprefix("secret_env = "))

    def _token_dirs(self) -> set[Path]:
        return {spec.path.parent for spec in self.config.tokens.values()}

    def _prepare_output(self) -> int | None:
        """Lock output_dir and clean it; an exit code when that fails (the problem is printed
        as a configuration error naming the flag and variable that fix it)."""
        out = str(self.config.output_dir)
        try:
            self._output_dir.acquire(self._token_dirs())
        except LockHeld as exc:
            self.log.error(
                "output_dir is in use by another entra-tokend",
                path=out,
                holder_pid=exc.pid,
                detail=str(exc),
            )
            print_problems([output_dir_problem(self.config.output_dir, exc)])
            return EXIT_CONFIG
        except LockError as exc:
            self.log.error("cannot lock output_dir", detail=str(exc))
            print_problems([output_dir_problem(self.config.output_dir, exc)])
            return EXIT_CONFIG
        except OSError as exc:
            self.log.error("cannot prepare output_dir", path=out, detail=exc.strerror)
            print_problems([output_dir_problem(self.config.output_dir, exc)])
            return EXIT_CONFIG
        return None

    async def _listen(self) -> asyncio.AbstractServer | None:
        """Start the HTTP listener if configured. Raises OSError when the address is unusable."""
        if not self.config.listen:
            return None
        from entra_tokend.server import start_server  # noqa: PLC0415

        host, port = self.config.listen
        server = await start_server(host, port, self.metrics, self.readiness.snapshot)
        self.log.info("listening", listen=server_address(server))
        return server

    def _shared(self, identity: str, scope: str) -> tuple[TokenRunner, MemoryOutput] | None:
        """A file token's runner and latest token for (identity, scope), if one is configured."""
        for name, runner in self.runners.items():
            if runner.spec.identity == identity and runner.spec.scope == scope:
                return runner, self.latest[name]
        return None

    async def _start_endpoint(self) -> None:
        """Start the managed-identity endpoint if configured. Raises OSError."""
        spec = self.config.endpoint
        if spec is None:
            return
        from entra_tokend.ondemand import OnDemandTokens, start_endpoint  # noqa: PLC0415

        provider = OnDemandTokens(
            idle_timeout=spec.idle_timeout,
            policy=lambda: self.config.policy,
            clock=self.clock,
            exchange=self.exchange,
            metrics=self.metrics,
            readiness=self.readiness,
            limiter=self._limiter,
            source_for=self.sources.get,
            shared=self._shared,
        )
        self.endpoint = await start_endpoint(
            spec, lambda: self.config.identities, provider, self.metrics
        )
        self.log.info(
            "managed-identity endpoint listening",
            listen=address_text(spec.listen[0], self.endpoint.port),
        )

    async def _open_listeners(self) -> tuple[bool, asyncio.AbstractServer | None]:
        """Start the metrics listener and the endpoint (if configured). Returns (ok, the
        metrics server or None); not ok when one cannot listen (said on stderr in the
        config-error format, naming the key that fixes it)."""
        server = None
        try:
            server = await self._listen()
        except OSError as exc:
            assert self.config.listen is not None
            host, port = self.config.listen
            self.log.error("cannot listen", listen=address_text(host, port), detail=exc.strerror)
            print_problems([listen_problem("listen", host, port, exc)])
            return False, None
        try:
            await self._start_endpoint()
        except OSError as exc:
            assert self.config.endpoint is not None
            host, port = self.config.endpoint.listen
            self.log.error("cannot listen", key="endpoint.listen", port=port, detail=exc.strerror)
            print_problems([listen_problem("endpoint.listen", host, port, exc)])
            if server is not None:
                from entra_tokend.server import stop_server  # noqa: PLC0415

                await stop_server(server)
            return False, None
        return True, server

    def _watch(self) -> None:
        for source in self.sources.values():
            source.watch(self.config.poll_interval)

    def stop(self) -> None:
        """Ask the daemon to finish (SIGTERM/SIGINT)."""
        self._stopping.set()
        self._progress.set()

    async def run(self, *, once: bool = False) -> int:
        """Run until a signal (or, with ``once``, until every token is on disk).

        Returns the exit code: 0, 1 (``once`` failed: deadline or configuration error from
        Entra) or 2 (output_dir or the listen address unusable).
        """
        code = self._prepare_output()
        if code is not None:
            return code
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        server = None
        needs_reaper = any(spec.hook for spec in self.config.tokens.values()) or os.getpid() == 1
        # Hooks' escaped descendants, and every orphan when we are PID 1, become ours to reap.
        if needs_reaper and REAPER.enable():
            loop.add_signal_handler(signal.SIGCHLD, REAPER.on_sigchld)
        if not once:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            ok, server = await self._open_listeners()
            if not ok:
                self._release_lock()
                return EXIT_CONFIG
        self.log.info(
            "entra-tokend starting",
            version=__version__,
            mode="once" if once else "run",
            tokens=sorted(self.runners),
            output_dir=str(self.config.output_dir),
            pid=os.getpid(),
        )
        self._watch()
        helpers = [asyncio.create_task(self._clock_watch())]
        if not once:
            helpers.append(asyncio.create_task(self._watchdog()))
        deadline = self.clock.monotonic() + self.config.once_deadline
        self._running = True
        for runner in self.runners.values():
            if once:  # `--once` means "acquire now": a still-valid file is replaced
                runner.schedule.retry_now()
                runner.once = True
            runner.start()
        self.readiness.start()
        try:
            if once:
                return await self._run_once(deadline)
            await self._stopping.wait()
            return EXIT_OK
        finally:
            await self._shutdown(helpers, server)

    async def _shutdown(self, helpers: list[asyncio.Task[None]], server: object) -> None:
        self._running = False
        sdnotify.notify("STOPPING=1")
        self.log.info("entra-tokend stopping")
        if self.endpoint is not None:
            await self.endpoint.stop()
            self.endpoint = None
        tasks = [*helpers, *(r.task for r in self.runners.values() if r.task)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for source in self.sources.values():
            source.close()
        if server is not None:
            from entra_tokend.server import stop_server  # noqa: PLC0415

            assert isinstance(server, asyncio.AbstractServer)
            await stop_server(server)
        await self._pool.aclose()
        self._release_lock()

    def _loop_exception(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's unhandled-error reports as one structured log line (JSON in json mode),
        with the exception's type only: its text or a traceback may quote what it handled."""
        exc = context.get("exception")
        self.log.error(
            "unexpected error in the event loop",
            detail=str(context.get("message", ""))[:200],
            error=type(exc).__name__ if exc is not None else None,
        )

    def _release_lock(self) -> None:
        self._output_dir.release()

    # ---- run --once ----------------------------------------------------------------------

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
        return EXIT_FAILURE

    def _once_result(self, deadline: float) -> int | None:
        runners = self.runners.values()
        # `done` is set when a refresh (and its post-write hook) has finished with a success.
        if len(self._done) == len(self.runners):
            self.log.info("every token is on disk", tokens=len(self.runners))
            return EXIT_OK
        fatal = {r.spec.name: r.fatal for r in runners if r.fatal and not r.succeeded_once}
        if fatal:
            for name, why in fatal.items():
                self.log.error("configuration error from Entra; giving up", token=name, detail=why)
            return EXIT_FAILURE
        if self.clock.monotonic() >= deadline:
            missing = {
                r.spec.name: r.last_failure or "no attempt finished"
                for r in runners
                if not r.succeeded_once
            }
            # Repeated failures are logged once (at warning), so the cause may be far up: each
            # missing token's last failure is repeated here.
            self.log.error(
                "deadline reached before every token was on disk",
                missing=sorted(missing),
                last_failure=missing,
                deadline_seconds=self.config.once_deadline,
            )
            return EXIT_FAILURE
        return None

    # ---- background checks ---------------------------------------------------------------

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
                    runner.wake()
            offset = now

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval()
        if not interval:
            return
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval / 2)
