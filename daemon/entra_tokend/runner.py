"""``TokenRunner``: one token's life — wait until due, get an assertion, exchange, deliver.

Each configured token has one runner and one asyncio task (``run``). The runner owns the
token's state machine and its failure handling (log once per distinct failure, count it by
``Reason``, back off); it asks its ``TokenSchedule`` *when*, and is handed every collaborator —
the identity's credential source, an exchange stage, an output, metrics, readiness, a clock and
the shared concurrency limiter — so it can be driven in process on a fake clock with fakes.

States::

    PENDING ──success──► OK ◄──success── FAILING
       └─────failure───────────────────────►┘
    (EXPIRED is reported while the last good token has passed its expiry, whatever the state.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from entra_tokend.assertion import Assertion, AssertionUnavailable
from entra_tokend.credentials import AssertionProvider, iso
from entra_tokend.exchange.errors import ExchangeError
from entra_tokend.logging import get_logger, remember_secret
from entra_tokend.metrics import Metrics
from entra_tokend.model import AccessToken, Clock, Identity, Reason, TokenSpec
from entra_tokend.outputs import Output, WriteError
from entra_tokend.readiness import Readiness
from entra_tokend.scheduler import TokenSchedule


class State(StrEnum):
    """A token's state as ``/readyz`` and the logs report it."""

    PENDING = "pending"
    """No token yet and no failed attempt."""
    OK = "ok"
    """The last attempt succeeded (or a valid file was adopted)."""
    FAILING = "failing"
    """The last attempt failed; a retry is scheduled."""
    EXPIRED = "expired"
    """The last good token has expired (derived: see ``TokenRunner.state``)."""


class Exchange(Protocol):
    """An exchange stage: turns an assertion into an access token."""

    async def exchange(self, identity: Identity, scope: str, assertion: str) -> AccessToken:
        """Raises ``ExchangeError``; its text never holds a secret."""
        ...


class TokenRunner:
    """Keeps one token fresh. Create, ``adopt`` a file from an earlier run, then ``start``."""

    # One per token: slots instead of a per-instance dict (bench/FINDINGS.md, memory per token).
    __slots__ = (
        "_clock",
        "_exchange",
        "_last_failure",
        "_limiter",
        "_metrics",
        "_on_attempt",
        "_output",
        "_readiness",
        "_state",
        "_undelivered",
        "_waiter",
        "done",
        "fatal",
        "last_failure",
        "once",
        "schedule",
        "source",
        "spec",
        "succeeded_once",
        "task",
    )

    def __init__(
        self,
        spec: TokenSpec,
        *,
        schedule: TokenSchedule,
        source: AssertionProvider,
        exchange: Exchange,
        output: Output,
        metrics: Metrics,
        readiness: Readiness,
        clock: Clock,
        limiter: asyncio.Semaphore,
        on_attempt: Callable[[TokenRunner], None] | None = None,
    ) -> None:
        self.spec = spec
        self.schedule = schedule
        self.source = source
        self._exchange = exchange
        self._output = output
        self._metrics = metrics
        self._readiness = readiness
        self._clock = clock
        self._limiter = limiter
        self._on_attempt = on_attempt
        self._state = State.PENDING
        self._last_failure: tuple[Any, ...] | None = None  # to log repeats quietly
        # Set while the task sleeps; wake() resolves it. One future and one timer handle per
        # sleeping token (an Event under wait_for cost two more tasks and futures each).
        self._waiter: asyncio.Future[None] | None = None
        # A token whose delivery failed (disk full): the next attempt writes it again rather
        # than asking Entra for another, while it has at least half its lifetime left.
        self._undelivered: AccessToken | None = None
        self.task: asyncio.Task[None] | None = None
        self.succeeded_once = False
        self.done = False  # a refresh (and its hook) finished with a success
        self.fatal: str | None = None  # a configuration error (run --once gives up on it)
        self.last_failure: str | None = None  # "reason: detail" of the latest failed attempt
        self.once = False  # run --once: no refresh follows a success, so none is announced
        metrics.token_configured(spec.name, spec.identity, hook=spec.hook is not None)

    @property
    def _log(self) -> Any:
        # Bound when a line is logged (a few per refresh at most), not kept: a bound structlog
        # logger and its context dict were ~0.6 KiB per token.
        return get_logger(token=self.spec.name, identity=self.spec.identity)

    # ---- state ---------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state; EXPIRED while the last good token has passed its expiry."""
        if self.schedule.expires is not None and not self.schedule.valid():
            return State.EXPIRED
        return self._state

    @property
    def state_name(self) -> str:
        """``state`` as text (for ``/readyz``)."""
        return str(self.state)

    def valid(self) -> bool:
        """True while the token on disk is unexpired."""
        return self.schedule.valid()

    # ---- lifecycle -----------------------------------------------------------------------

    def adopt(self) -> None:
        """Take over a still-valid token an earlier run delivered (refresh on its schedule);
        one that is not provably this token's is refreshed at once, and the reason logged."""
        found = self._output.adoptable(self._clock.wall())
        if isinstance(found, str):
            self._log.info("existing token file not adopted; refreshing now", reason=found)
        elif found is not None:
            self.schedule.adopted(found.issued_at, found.expires_on, found.lifetime)
            self._state = State.OK
            self._metrics.token_adopted(self.spec.name, found.expires_on)

    def start(self) -> None:
        """Start the token's task (idempotent)."""
        if self.task is None:
            self.task = asyncio.create_task(self.run(), name=self.spec.name)

    def stop(self) -> None:
        """Cancel the task (a reload removed or replaced this token, or the daemon stops)."""
        if self.task is not None:
            self.task.cancel()

    def wake(self) -> None:
        """Re-evaluate the schedule now (a wall-clock jump, a forced refresh). A no-op while
        an attempt runs: the loop asks the schedule again when it ends."""
        _resolve(self._waiter)

    def refresh_now(self) -> None:
        """Make the token due now and wake it (``run --once``)."""
        self.schedule.retry_now()
        self.wake()

    def on_rotation(self) -> None:
        """Subscription callback: the identity's assertion changed."""
        if self.schedule.rotated():
            self.wake()

    # ---- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Sleep until due (or until the token expires), refresh; forever."""
        while True:
            self._readiness.changed(self.spec.name)
            wait = self.schedule.wake_in()
            if wait > 0:
                await self._sleep(wait)
                continue
            try:
                await self.refresh()
            except Exception as exc:  # a bug must not end this token's refreshes for good
                delay = self.schedule.failed(Reason.INTERNAL)
                # The type only: an exception's text may quote what it was handling.
                self._failed(
                    Reason.INTERNAL,
                    {"error": type(exc).__name__, "retry_in": round(delay, 2)},
                    error=True,
                )
            finally:
                if self.succeeded_once and not self.done:
                    self.done = True
                if self._on_attempt is not None:
                    self._on_attempt(self)

    async def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` or until ``wake``."""
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(seconds, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def refresh(self) -> None:
        """One attempt: assertion → exchange → output → hook. Failures are handled here."""
        async with self._limiter:
            try:
                # Before `started`: a rotation this read notices is not "during the attempt".
                assertion = self.source.current()
            except AssertionUnavailable as exc:
                # A rotation (watcher) retries it; the schedule keeps a slow safety net.
                self.schedule.failed(Reason.ASSERTION_UNAVAILABLE)
                self._failed(Reason.ASSERTION_UNAVAILABLE, {"detail": str(exc)})
                return
            self.schedule.started()
            token = self._reusable_undelivered() or await self._exchange_once(assertion)
        if token is None:
            return
        # Outside the limiter: `concurrency` bounds token requests in flight. A write waits for
        # the disk (two fsyncs per file), and holding a request slot meanwhile left Entra's
        # latency unused (bench/FINDINGS.md, issue 18).
        try:
            await self._output.deliver(token)
        except WriteError as exc:
            self._undelivered = token
            delay = self.schedule.failed(Reason.WRITE_ERROR)
            self._failed(Reason.WRITE_ERROR, {"detail": str(exc), "retry_in": round(delay, 2)})
            return
        self._undelivered = None
        self._succeeded(token)
        if self.spec.hook is not None:
            from entra_tokend.hooks import run_hook  # noqa: PLC0415 - only when configured

            if not await run_hook(self.spec.hook, self.spec.name, self.spec.path, self._log):
                self._metrics.hook_failed(self.spec.name)

    def _reusable_undelivered(self) -> AccessToken | None:
        token = self._undelivered
        if token is not None and token.expires_on - self._clock.wall() > token.expires_in / 2:
            return token
        self._undelivered = None
        return None

    async def _exchange_once(self, assertion: Assertion) -> AccessToken | None:
        started = self._clock.monotonic()
        try:
            token = await self._exchange.exchange(
                self.source.identity, self.spec.scope, assertion.token
            )
        except ExchangeError as exc:
            self._metrics.exchange_observed(self.spec.identity, self._clock.monotonic() - started)
            self._exchange_failed(exc, assertion)
            return None
        self._metrics.exchange_observed(self.spec.identity, self._clock.monotonic() - started)
        remember_secret(token.token)
        return token

    def _succeeded(self, token: AccessToken) -> None:
        delay = self.schedule.succeeded(token.expires_on, token.expires_in, token.refresh_in)
        recovered = self._state is not State.OK and self._last_failure is not None
        self._state = State.OK
        self.succeeded_once = True
        self.fatal = None
        self._last_failure = None
        self.last_failure = None
        self._metrics.token_written(self.spec.name, token.expires_on, self._clock.wall())
        fields: dict[str, Any] = {} if self.once else {"next_refresh_in": round(delay, 1)}
        self._log.info(
            "token recovered" if recovered else "token written",
            path=str(self.spec.path),
            expires_at=iso(token.expires_on),
            expires_in=int(token.expires_in),
            request_id=token.request_id,
            **fields,
        )

    def _exchange_failed(self, exc: ExchangeError, assertion: Assertion) -> None:
        fields: dict[str, Any] = {"request_id": exc.request_id, "detail": exc.message}
        fields.update(exc.details.fields())
        if exc.hint:
            fields["hint"] = exc.hint
        if exc.needs_assertion_claims:
            fields["assertion_claims"] = assertion.describe()
        if exc.configuration:
            self.fatal = exc.message
        delay = self.schedule.failed(
            exc.reason,
            retry_after=exc.retry_after,
            configuration_error=exc.configuration,
            rotation_may_fix=exc.rotation_may_fix,
        )
        fields["retry_in"] = round(delay, 2)
        self._failed(exc.reason, fields, error=exc.configuration)

    def _failed(self, reason: Reason, fields: dict[str, Any], *, error: bool = False) -> None:
        self._state = State.FAILING
        self._metrics.refresh_failed(self.spec.name, reason)
        key = (reason, fields.get("aadsts") or fields.get("status") or fields.get("detail"))
        repeat = self._last_failure == key
        self._last_failure = key
        cause = fields.get("detail") or fields.get("error")
        self.last_failure = f"{reason}: {cause}" if cause else str(reason)
        if self.schedule.valid() and self.schedule.expires is not None:
            fields["current_token_expires_in"] = int(self.schedule.expires.remaining(self._clock))
        method = self._log.debug if repeat else (self._log.error if error else self._log.warning)
        method("token refresh failed", reason=str(reason), **fields)


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
