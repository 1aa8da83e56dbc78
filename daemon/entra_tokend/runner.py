"""``TokenRunner``: one token's life — wait until due, get an assertion, exchange, deliver.

Each token has one runner and one asyncio task (``run``), whoever asked for it: a configured
token file, ``run --once`` or the managed-identity endpoint. ``build`` is the one way to make a
runner outside tests, and ``start``/``stop`` the one way its life begins and ends: ``start``
adopts a token an earlier run left (``Output.adoptable``) and subscribes to the identity's
credential source (a rotation retries a failed attempt at once); ``stop`` unsubscribes.

The runner owns the token's state machine and its failure handling (any ``ports.Failure`` is
logged once per distinct cause, counted by its ``Reason``, backed off); it asks its
``TokenSchedule`` *when*, and is handed every collaborator through ``ports`` interfaces, so it
imports no HTTP, metrics or file-writing module and runs in process on a fake clock with fakes.

Front ends never set anything on a runner: they consume its events (``listen``; the types are
in ``ports``) — ``Written(name, token)`` after a delivery (and its hook), ``Failed(name, reason,
detail, configuration)`` after a failed attempt, ``Expired(name)`` when the last good token
passes its expiry.

States::

    PENDING ──success──► OK ◄──success── FAILING
       └─────failure───────────────────────►┘
    (EXPIRED is reported while the last good token has passed its expiry, whatever the state;
    MISSING while the output another writer deleted or replaced is not back: see
    ``output_changed``.)
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from entra_tokend.logging import get_logger, remember_secret
from entra_tokend.model import AccessToken, Clock, Policy, Reason, TokenSpec, iso
from entra_tokend.ports import (
    AssertionProvider,
    ClientAssertion,
    Exchange,
    Expired,
    Failed,
    Failure,
    HookRunner,
    Listener,
    Output,
    ReadinessSink,
    RunnerEvent,
    TokenMetrics,
    Written,
)
from entra_tokend.scheduler import TokenSchedule, reuse_undelivered


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
    MISSING = "missing"
    """Another writer deleted or replaced the delivered file; it is being put back."""


@dataclass(frozen=True)
class Deps:
    """What every runner of a process shares: metrics, readiness, the clock, the limiter of
    token requests in flight (``concurrency``), the refresh policy and the hook runner
    (``hooks.run_hook``; None: hooks are not run)."""

    metrics: TokenMetrics
    readiness: ReadinessSink
    clock: Clock
    limiter: asyncio.Semaphore
    policy: Policy
    run_hook: HookRunner | None = None


def build(
    spec: TokenSpec,
    deps: Deps,
    source: AssertionProvider,
    exchange: Exchange,
    output: Output,
    *,
    listeners: Iterable[Listener] = (),
) -> TokenRunner:
    """The runner of ``spec`` (not started): its own ``TokenSchedule`` on ``deps.policy``,
    ``listeners`` subscribed to its events."""
    runner = TokenRunner(
        spec,
        schedule=TokenSchedule(deps.policy, deps.clock),
        source=source,
        exchange=exchange,
        output=output,
        deps=deps,
    )
    for listener in listeners:
        runner.listen(listener)
    return runner


class TokenRunner:
    """Keeps one token fresh. Made by ``build``; ``start``, ``stop``; events via ``listen``."""

    # One per token: slots instead of a per-instance dict (bench/FINDINGS.md, memory per token).
    __slots__ = (
        "_attempting",
        "_clock",
        "_exchange",
        "_expired_sent",
        "_last_failure",
        "_limiter",
        "_listeners",
        "_lost",
        "_metrics",
        "_output",
        "_readiness",
        "_restore",
        "_run_hook",
        "_started",
        "_state",
        "_undelivered",
        "_waiter",
        "schedule",
        "source",
        "spec",
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
        deps: Deps,
    ) -> None:
        self.spec = spec
        self.schedule = schedule
        self.source = source
        self._exchange = exchange
        self._output = output
        self._metrics = deps.metrics
        self._readiness = deps.readiness
        self._clock = deps.clock
        self._limiter = deps.limiter
        self._run_hook = deps.run_hook
        self._listeners: tuple[Listener, ...] = ()
        self._state = State.PENDING
        self._last_failure: tuple[Any, ...] | None = None  # to log repeats quietly
        self._attempting = False
        self._expired_sent = False
        self._started = False
        # Set while the task sleeps; wake() resolves it. One future and one timer handle per
        # sleeping token (an Event under wait_for cost two more tasks and futures each).
        self._waiter: asyncio.Future[None] | None = None
        # A token whose delivery failed (disk full): the next attempt may write it again
        # rather than ask Entra for another (``scheduler.reuse_undelivered``).
        self._undelivered: AccessToken | None = None
        # "missing"/"replaced" while the delivered output is not in place; _restore: put it
        # back at the loop's next turn.
        self._lost: str | None = None
        self._restore = False
        self.task: asyncio.Task[None] | None = None
        deps.metrics.token_configured(spec.name, spec.identity, hook=spec.hook is not None)

    @property
    def _log(self) -> Any:
        # Bound when a line is logged (a few per refresh at most), not kept: a bound structlog
        # logger and its context dict were ~0.6 KiB per token.
        return get_logger(token=self.spec.name, identity=self.spec.identity)

    # ---- state ---------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state; EXPIRED while the last good token has passed its expiry, MISSING
        while its output is deleted or replaced."""
        if self.schedule.expires is not None and not self.schedule.valid():
            return State.EXPIRED
        return State.MISSING if self._lost is not None else self._state

    @property
    def state_name(self) -> str:
        """``state`` as text (for ``/readyz``)."""
        return str(self.state)

    def valid(self) -> bool:
        """True while the last delivered (or adopted) token is unexpired and in place."""
        return self._lost is None and self.schedule.valid()

    @property
    def attempting(self) -> bool:
        """True while an attempt runs (from the assertion's read to its event)."""
        return self._attempting

    # ---- events --------------------------------------------------------------------------

    def listen(self, listener: Listener) -> None:
        """Call ``listener`` with every later event of this runner."""
        self._listeners = (*self._listeners, listener)

    def unlisten(self, listener: Listener) -> None:
        """Stop calling ``listener`` (an equal one will do); unknown ones are ignored."""
        self._listeners = tuple(x for x in self._listeners if x != listener)

    def _emit(self, event: RunnerEvent) -> None:
        for listener in self._listeners:
            listener(event)

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Adopt a token an earlier run left, subscribe to the credential source's rotations,
        start the task (idempotent; a stopped runner is not restarted)."""
        if self._started:
            return
        self._started = True
        self._adopt()
        self._readiness.changed(self.spec.name)
        self.source.subscribe(self.on_rotation)
        self.task = asyncio.create_task(self.run(), name=self.spec.name)

    def stop(self) -> None:
        """Unsubscribe and cancel the task (a reload removed or replaced this token, it
        retired, or the daemon stops)."""
        self.source.unsubscribe(self.on_rotation)
        if self.task is not None:
            self.task.cancel()

    def _adopt(self) -> None:
        """Take over a still-valid token an earlier run delivered (refresh on its schedule);
        one that is not provably this token's is refreshed at once, and the reason logged."""
        found = self._output.adoptable(self._clock.wall())
        if isinstance(found, str):
            self._log.info("existing token file not adopted; refreshing now", reason=found)
        elif found is not None:
            self.schedule.adopted(found.issued_at, found.expires_on, found.lifetime)
            self._state = State.OK
            self._metrics.token_adopted(self.spec.name, found.expires_on)

    def wake(self) -> None:
        """Re-evaluate the schedule now (a wall-clock jump, a forced refresh). A no-op while
        an attempt runs: the loop asks the schedule again when it ends."""
        _resolve(self._waiter)

    def refresh_now(self) -> None:
        """Make the token due now and wake it (the endpoint needs a fresher token)."""
        self.schedule.retry_now()
        self.wake()

    def on_rotation(self) -> None:
        """Subscription callback: the identity's assertion changed or became usable again."""
        if self.schedule.rotated():
            self.wake()

    def output_changed(self) -> None:
        """The output watch's callback (and SIGHUP's): the delivered output may have been
        deleted or replaced. If it was (``Output.check``), the token is not valid (readiness)
        until it is back: the loop puts back the held token while it is valid — no token
        request — else refreshes now."""
        lost = self._output.check()
        if lost is None or lost == self._lost:
            return
        self._lost, self._restore = lost, True
        path = str(self._output.location)
        if lost == "replaced":
            self._log.warning("token file replaced by another writer; restoring it", path=path)
        else:
            self._log.warning("token file deleted by another writer; restoring it", path=path)
        self._readiness.changed(self.spec.name)
        self.wake()

    async def _put_back(self) -> None:
        """Restore the lost output from the held token, or make a refresh due now."""
        self._restore = False
        try:
            restored = self.schedule.valid() and await self._output.restore()
        except Failure as exc:
            self._failed(exc, None)  # backed off; the refresh then delivers a new token
            return
        if not restored:
            self.schedule.retry_now()
            return
        self._lost = None
        self._metrics.output_redelivered(self.spec.name)
        self._log.info("token file restored", path=str(self._output.location))
        self.output_changed()  # deleted again meanwhile?

    # ---- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Sleep until due (or until the token expires), refresh; forever."""
        while True:
            if self._restore:
                await self._put_back()
            self._readiness.changed(self.spec.name)
            if self.state is State.EXPIRED and not self._expired_sent:
                self._expired_sent = True
                self._emit(Expired(self.spec.name))
            wait = self.schedule.wake_in()
            if wait > 0:
                await self._sleep(wait)
                continue
            try:
                await self.refresh()
            except Exception as exc:  # a bug must not end this token's refreshes for good
                self._attempting = False
                delay = self.schedule.failed(Reason.INTERNAL)
                # The type only: an exception's text may quote what it was handling.
                fields = {"error": type(exc).__name__, "retry_in": round(delay, 2)}
                self._report(Reason.INTERNAL, fields, error=True)
                self._emit(Failed(self.spec.name, Reason.INTERNAL, "internal error"))

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
        """One attempt: assertion → exchange → output → hook → event. Every ``Failure`` of
        any stage is handled here, in one place."""
        self._attempting = True
        assertion: ClientAssertion | None = None
        try:
            async with self._limiter:
                # Before `started`: a rotation this read notices is not "during the attempt".
                assertion = self.source.current()
                self.schedule.started()
                token = self._reusable_undelivered() or await self._exchange_once(assertion)
            # Outside the limiter: `concurrency` bounds token requests in flight; a write waits
            # for the disk (two fsyncs per file) and must not hold a request slot meanwhile.
            self._undelivered = token
            await self._output.deliver(token)
            self._undelivered = None
        except Failure as exc:
            self._attempting = False
            self._failed(exc, assertion)
            return
        self._attempting = False
        self._succeeded(token)
        self.output_changed()  # deleted or replaced while this attempt ran?
        hook = self.spec.hook
        run_hook = self._run_hook
        if hook is not None and run_hook is not None:
            ok = await run_hook(hook, self.spec.name, self.spec.path, self._log)
            if not ok:
                self._metrics.hook_failed(self.spec.name)
        self._emit(Written(self.spec.name, token))

    def _reusable_undelivered(self) -> AccessToken | None:
        token = self._undelivered
        if token and reuse_undelivered(token.expires_on, token.expires_in, self._clock.wall()):
            return token
        self._undelivered = None
        return None

    async def _exchange_once(self, assertion: ClientAssertion) -> AccessToken:
        started = self._clock.monotonic()
        identity = self.source.identity
        try:
            token = await self._exchange.exchange(identity, self.spec.scope, assertion.token)
        except Failure:
            self._metrics.exchange_observed(identity.name, self._clock.monotonic() - started)
            raise
        self._metrics.exchange_observed(identity.name, self._clock.monotonic() - started)
        remember_secret(token.token)
        return token

    def _succeeded(self, token: AccessToken) -> None:
        delay = self.schedule.succeeded(token.expires_on, token.expires_in, token.refresh_in)
        recovered = self._state is not State.OK and self._last_failure is not None
        self._state = State.OK
        self._last_failure = None
        self._expired_sent = False
        self._lost, self._restore = None, False
        now = self._clock.wall()
        self._metrics.token_written(self.spec.name, token.expires_on, now)
        self._log.info(
            "token recovered" if recovered else "token written",
            **_written_fields(token, self._output.location, now, delay),
        )

    def _failed(self, exc: Failure, assertion: ClientAssertion | None) -> None:
        fields = exc.fields()
        if exc.needs_assertion_claims and assertion is not None:
            fields["assertion_claims"] = assertion.describe()
        delay = self.schedule.failed(
            exc.reason,
            retry_after=exc.retry_after,
            configuration_error=exc.configuration,
            rotation_may_fix=exc.rotation_may_fix,
        )
        if exc.reason is not Reason.ASSERTION_UNAVAILABLE:  # a rotation retries that one
            fields["retry_in"] = round(delay, 2)
        self._report(exc.reason, fields, error=exc.configuration)
        self._emit(Failed(self.spec.name, exc.reason, exc.safe_detail(), exc.configuration))

    def _report(self, reason: Reason, fields: dict[str, Any], *, error: bool) -> None:
        self._state = State.FAILING
        self._metrics.refresh_failed(self.spec.name, reason)
        key = (reason, fields.get("aadsts") or fields.get("status") or fields.get("detail"))
        repeat = self._last_failure == key
        self._last_failure = key
        if self.schedule.valid() and self.schedule.expires is not None:
            fields["current_token_expires_in"] = int(self.schedule.expires.remaining(self._clock))
        method = self._log.debug if repeat else (self._log.error if error else self._log.warning)
        method("token refresh failed", reason=str(reason), **fields)


def _written_fields(
    token: AccessToken, path: Path | None, now: float, delay: float
) -> dict[str, Any]:
    """The "token written" line: ``expires_at``/``expires_in`` describe what was delivered
    (for a docker config, its refresh tokens); ``entra_expires_at``/``entra_expires_in`` the
    Entra token it came from, when that is another credential. No path for an output only in
    memory; no ``next_refresh_in`` when none follows (``run --once``: an infinite delay)."""
    fields: dict[str, Any] = {} if path is None else {"path": str(path)}
    fields["expires_at"] = iso(token.expires_on)
    fields["expires_in"] = round(token.expires_on - now)
    if token.entra is not None:
        fields["entra_expires_at"] = iso(token.entra.expires_on)
        fields["entra_expires_in"] = round(token.entra.expires_on - now)
    fields["request_id"] = token.request_id
    if not math.isinf(delay):
        fields["next_refresh_in"] = round(delay, 1)
    return fields


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
