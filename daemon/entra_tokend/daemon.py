"""Lifecycle only: lock, listeners, signals, reload → diff → apply.

``Daemon.run`` locks and prepares output_dir, opens the listeners (metrics server, endpoint;
each stopped through one ``stop()``), installs the signal handlers and starts the token
runners, then waits for SIGTERM/SIGINT — or for a supervisor's verdict: ``once.OnceSupervisor``
(``run --once``) or ``supervise.ExecSupervisor`` (``exec``), which may take signals over.
SIGHUP re-reads the configuration and applies the difference (``wiring.FileTokens``); the
endpoint gets a new ``ondemand.Lookup``. What happens to a token, and when, is the runner's
and the scheduler's business; nothing here knows about HTTP requests or file formats.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Callable
from typing import Any

from entra_tokend import __version__, sdnotify, signals
from entra_tokend.config import Config, ConfigError
from entra_tokend.configwatch import ConfigWatch
from entra_tokend.exchange import ClientPool, EntraExchange
from entra_tokend.hooks import hide_from_hooks, run_hook
from entra_tokend.logging import get_logger, remember_secret
from entra_tokend.metrics import Metrics
from entra_tokend.model import Clock, EndpointSpec, SystemClock
from entra_tokend.once import OnceSupervisor
from entra_tokend.ondemand import EndpointService, OnDemandTokens
from entra_tokend.outputdir import OutputDirectory
from entra_tokend.ports import Exchange, Supervisor
from entra_tokend.readiness import Readiness
from entra_tokend.reaper import REAPER
from entra_tokend.runner import Deps
from entra_tokend.scheduler import MAX_SLEEP
from entra_tokend.startup import Listening, open_listeners, prepare_output
from entra_tokend.wiring import FileTokens

ReloadFn = Callable[[], Config]
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


class Daemon:
    """Keeps every configured token fresh on disk (and serves the endpoint, if configured).

    ``clock``, ``exchange`` and ``metrics`` may be injected (tests); ``reload`` re-reads the
    configuration on SIGHUP.
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
        self._output_dir = OutputDirectory(
            config.output_dir, self.metrics, allow_world_writable=config.allow_world_writable
        )
        deps = Deps(
            self.metrics,
            self.readiness,
            self.clock,
            asyncio.Semaphore(config.concurrency),
            config.policy,
            run_hook=run_hook,
        )
        self.tokens = FileTokens(
            deps,
            exchange=self.exchange,
            pool=self._pool,
            output_dir=self._output_dir,
            readiness=self.readiness,
            metrics=self.metrics,
            share=config.endpoint is not None,  # fixed for the process's life
        )
        self.endpoint: EndpointService | None = None
        self._listeners: list[Listening] = []
        self._supervisor: Supervisor | None = None
        self._config_watch: ConfigWatch | None = None
        self._stopping = asyncio.Event()
        self.clock_check_interval = MAX_SLEEP
        if config.endpoint is not None:  # also in --once, which serves no endpoint
            _protect_endpoint_secret(config.endpoint)
        self.tokens.apply(config)

    # ---- reload --------------------------------------------------------------------------

    def reload(self) -> None:
        """Put back every token file deleted or replaced, then re-read the configuration
        (SIGHUP); a bad one is logged and the running one kept."""
        self.tokens.check_outputs()
        config = self._reloaded()
        if config is None:
            return
        before = set(self.tokens.runners)
        self.tokens.apply(config)
        self.config = config
        if self.endpoint is not None:
            self.endpoint.provider.replace(self.tokens.lookup(config))
        self._output_dir.make_token_dirs({s.path.parent for s in config.written}, clean=False)
        self.tokens.watch(config.poll_interval)
        self.log.info(
            "configuration reloaded",
            added=sorted(set(self.tokens.runners) - before),
            removed=sorted(before - set(self.tokens.runners)),
        )

    def _reloaded(self) -> Config | None:
        """The new configuration to apply, or None (rejected: logged)."""
        if self._reload is None:
            return None
        try:
            config = self._reload()
        except ConfigError as exc:
            for problem in exc.problems:
                self.log.error("configuration reload rejected", problem=problem)
            return None
        except Exception as exc:  # the loader must never take the daemon down
            self.log.error(
                "configuration reload failed; keeping the running one", error=type(exc).__name__
            )
            return None
        if config.output_dir != self.config.output_dir:
            # The lock and the stale-file cleanup belong to the directory we started with.
            self.log.error(
                "configuration reload rejected",
                problem="output_dir cannot change while running; restart to use the new one",
            )
            return None
        if config.listen != self.config.listen:
            self.log.warning("listen changed; it takes effect at the next restart")
        return _keep_endpoint_listener(self.config.endpoint, config, self.log)

    # ---- run and stop --------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the daemon to finish (SIGTERM/SIGINT)."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.stop()

    async def run(self, *, once: bool = False, supervisor: Supervisor | None = None) -> int:
        """Run until a signal, or until ``supervisor``'s ``wait`` returns (``once``: a
        ``OnceSupervisor``, every token on disk). Returns the exit code: 0, 1 (``once``:
        deadline or configuration error from Entra), 2 (output_dir or a listen address
        unusable) or the supervisor's."""
        if not prepare_output(self._output_dir, self.config, self.log):
            return EXIT_CONFIG
        loop = asyncio.get_running_loop()
        if once:
            supervisor = OnceSupervisor(
                self.tokens.runners, self.clock, self.config.once_deadline, self.log
            )
        self._supervisor = supervisor
        self._install_signals(loop)
        if not once and not await self._open_listeners():
            self._output_dir.release()
            return EXIT_CONFIG
        self.log.info(
            "entra-tokend starting",
            version=__version__,
            mode="once" if once else "exec" if supervisor else "run",
            tokens=sorted(self.tokens.runners),
            output_dir=str(self.config.output_dir),
            pid=os.getpid(),
        )
        self.tokens.watch(self.config.poll_interval)
        if supervisor is None and self.config.source is not None:  # a ConfigMap edit applies
            self._config_watch = ConfigWatch(
                self.config.source, self.reload, loop=loop, poll_interval=self.config.poll_interval
            )
            self._config_watch.start()
        helpers = [asyncio.create_task(self._clock_watch())]
        if supervisor is not None:
            supervisor.attach()
        if not once:
            helpers.append(asyncio.create_task(self._watchdog()))
        self.tokens.start()
        if not once:  # --once has no readiness to announce: its verdict is OnceSupervisor's line
            self.readiness.start()
        try:
            if supervisor is not None:
                return await supervisor.wait()
            await self._stopping.wait()
            return EXIT_OK
        finally:
            await self._shutdown(helpers)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.set_exception_handler(self._loop_exception)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        hooks = any(spec.hook for spec in self.config.written)
        # Hooks' escaped descendants, and every orphan when we are PID 1, become ours to reap.
        if (hooks or os.getpid() == 1) and REAPER.enable():
            loop.add_signal_handler(signal.SIGCHLD, REAPER.on_sigchld)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self._supervisor is not None:  # --once ignores SIGHUP; exec forwards signals
            for number, handler in self._supervisor.signal_handlers().items():
                loop.add_signal_handler(number, handler)
        signals.release()  # held since the CLI's first line (``signals``): delivered now

    async def _open_listeners(self) -> bool:
        provider = None
        spec = self.config.endpoint
        if spec is not None:
            provider = OnDemandTokens(
                self.tokens.lookup(self.config),
                deps=self.tokens.deps,
                exchange=self.exchange,
                idle_timeout=spec.idle_timeout,
            )
        opened = await open_listeners(self.config, self.metrics, self.readiness, provider, self.log)
        if opened is None:
            return False
        self._listeners, self.endpoint = opened
        return True

    async def _shutdown(self, helpers: list[asyncio.Task[None]]) -> None:
        sdnotify.notify("STOPPING=1")
        self.log.info("entra-tokend stopping")
        if self._config_watch is not None:
            self._config_watch.stop()
        for listener in self._listeners:  # the endpoint first: its runners stop with it
            await listener.stop()
        self._listeners, self.endpoint = [], None
        tasks: list[Any] = [*helpers, *self.tokens.stop()]
        for task in helpers:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._pool.aclose()
        self._output_dir.release()

    def _loop_exception(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio's unhandled-error reports as one structured log line (JSON in json mode),
        with the exception's type only: its text or a traceback may quote what it handled."""
        exc = context.get("exception")
        self.log.error(
            "unexpected error in the event loop",
            detail=str(context.get("message", ""))[:200],
            error=type(exc).__name__ if exc is not None else None,
        )

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
                self.tokens.wake()
            offset = now

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval()
        if not interval:
            return
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval / 2)


def _protect_endpoint_secret(spec: EndpointSpec) -> None:
    """The endpoint's secret is redacted from every log line by value, and the variable it comes
    from is never passed to a hook (a hook printing its environment would show it)."""
    remember_secret(spec.secret, pin=True)
    if spec.secret_source.startswith("secret_env = "):
        hide_from_hooks(spec.secret_source.removeprefix("secret_env = "))


def _keep_endpoint_listener(running: EndpointSpec | None, config: Config, log: Any) -> Config:
    """A reload applies the endpoint's allow-list, selectors, secret and ``imds`` at once (the
    lookup is replaced); a new ``listen``, or the table added, waits for a restart (said so)."""
    new = config.endpoint
    if running is None and new is not None:
        log.warning("[endpoint] added; it takes effect at the next restart")
        return dataclasses.replace(config, endpoint=None)
    if running is not None and new is not None and new.listen != running.listen:
        log.warning("endpoint.listen changed; it takes effect at the next restart")
        return dataclasses.replace(config, endpoint=dataclasses.replace(new, listen=running.listen))
    return config
