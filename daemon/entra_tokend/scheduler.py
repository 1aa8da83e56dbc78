"""When to refresh: refresh timing, jitter, backoff and Retry-After, as pure functions.

Every "when" of the daemon is decided here: a token's next refresh and retry
(``TokenSchedule``), ``run --once``'s forcing (``TokenSchedule.force_once``), the reuse of a
token whose delivery failed (``reuse_undelivered``), and the managed-identity endpoint's rules
for serving, forcing a refresh or failing fast (``serve_decision``, ``required_lifetime``).

Times are tracked on two clocks. Waiting uses the monotonic clock (immune to NTP steps); expiry
is a wall-clock fact (Entra's). Each deadline is kept on both and the *earlier* one wins: after
a suspend (monotonic stood still) the wall clock is right; after an NTP step backwards the
monotonic clock is. Nothing here sleeps; the daemon asks ``due_in``, and checks the clocks every
``MAX_SLEEP`` seconds so that a jump is noticed within that bound.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum

from entra_tokend.model import Clock, Policy, Reason, SystemClock

__all__ = [
    "MAX_SLEEP",
    "MIN_SERVED_LIFETIME",
    "Clock",
    "Deadline",
    "Policy",
    "Serve",
    "SystemClock",
    "TokenSchedule",
    "backoff_delay",
    "first_refresh_delay",
    "refresh_delay",
    "required_lifetime",
    "reuse_undelivered",
    "serve_decision",
]

SHARED_RNG = random.Random()
"""The process's one source of jitter. A ``random.Random`` holds 2.5 KiB of Mersenne Twister
state; one per schedule was a sixth of the memory per token (bench/FINDINGS.md, issue 18).
The schedules share the event loop's thread, so draws never interleave."""

# How often the daemon compares the wall and monotonic clocks to notice a jump.
MAX_SLEEP = 60.0


def refresh_delay(
    lifetime: float, policy: Policy, rng: random.Random, refresh_in: float | None = None
) -> float:
    """Seconds after issue at which to refresh a token that lives ``lifetime`` seconds.

    ``refresh_at`` of the lifetime, jittered by ±``jitter`` of itself, earlier if Entra's
    ``refresh_in`` says so, and never sooner than ``min_refresh_interval`` — not even for a
    token so short-lived that this means refreshing after its expiry (a floor on requests).
    """
    fraction = policy.refresh_at * (1.0 + rng.uniform(-policy.jitter, policy.jitter))
    delay = lifetime * fraction
    if refresh_in is not None and 0 < refresh_in < delay:
        delay = refresh_in
    latest = lifetime * policy.refresh_at * (1.0 + policy.jitter)
    # The floor wins even past the margin: no answer from outside makes it a hot loop.
    return max(min(delay, latest), policy.min_refresh_interval)


# The first token a process obtains is refreshed anywhere from this fraction of its lifetime to
# the latest normal refresh: a fleet started together spreads over a whole refresh period.
FIRST_REFRESH_EARLIEST = 0.1


def first_refresh_delay(
    lifetime: float, policy: Policy, rng: random.Random, refresh_in: float | None = None
) -> float:
    """Seconds after issue at which to refresh the first token of a schedule (a fresh start).

    Uniform over [``FIRST_REFRESH_EARLIEST``, ``refresh_at`` × (1 + ``jitter``)] of the
    lifetime, so pods started together (a rollout, a node drain) do not refresh together for
    hours; it costs one early refresh per start. ``refresh_in`` and ``min_refresh_interval``
    apply as in ``refresh_delay``; with ``jitter`` 0 it is ``refresh_delay``.
    """
    if policy.jitter <= 0:  # jitter = 0 asks for no randomness at all
        return refresh_delay(lifetime, policy, rng, refresh_in)
    latest = lifetime * policy.refresh_at * (1.0 + policy.jitter)
    delay = rng.uniform(FIRST_REFRESH_EARLIEST * lifetime, latest)
    if refresh_in is not None and 0 < refresh_in < delay:
        delay = refresh_in
    # The floor wins even past the margin: no answer from outside makes it a hot loop.
    return max(min(delay, latest), policy.min_refresh_interval)


def backoff_delay(
    attempt: int,
    policy: Policy,
    rng: random.Random,
    *,
    retry_after: float | None = None,
    configuration_error: bool = False,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based) of a failed exchange.

    Transient failures: exponential backoff with full jitter, capped at ``backoff_max``.
    Configuration errors (a fixed federated credential won't appear within seconds): start at
    twice ``backoff_max`` and double up to ``config_error_backoff_max``, with equal jitter so every
    wait is at least half its step. Retry-After is never undercut.
    """
    exponent = min(attempt, 32)
    if configuration_error:
        ceiling = min(policy.config_error_backoff_max, policy.backoff_max * 2.0 ** (exponent + 1))
        delay = rng.uniform(ceiling / 2, ceiling)
    else:
        ceiling = min(policy.backoff_max, policy.backoff_initial * 2.0**exponent)
        # Full jitter, floored at a tenth of the initial delay so it is never a hot loop.
        delay = max(rng.uniform(0.0, ceiling), min(policy.backoff_initial * 0.1, ceiling))
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return delay


@dataclass(slots=True)
class Deadline:
    """A moment tracked on both clocks; the earlier reading wins."""

    wall: float
    mono: float

    @classmethod
    def after(cls, clock: Clock, seconds: float) -> Deadline:
        """The moment ``seconds`` from now."""
        return cls(clock.wall() + seconds, clock.monotonic() + seconds)

    @classmethod
    def at_wall(cls, clock: Clock, wall: float) -> Deadline:
        """A wall-clock moment (e.g. an expiry), mirrored onto the monotonic clock."""
        return cls(wall, clock.monotonic() + (wall - clock.wall()))

    def remaining(self, clock: Clock) -> float:
        """Seconds until this moment by the more pessimistic clock."""
        return min(self.wall - clock.wall(), self.mono - clock.monotonic())


class TokenSchedule:
    """One token's timing state and every decision about *when*: next wake-up, refresh after
    a success, backoff after a failure (Retry-After, configuration errors), what a rotation of
    the projected token or a missing assertion means for this token.

    The runner reports what happened (``started``, ``succeeded``, ``failed``, ``rotated``) and
    asks ``wake_in``; nothing here sleeps or does I/O. Times are seconds.
    """

    # One per token: slots instead of a per-instance dict (bench/FINDINGS.md, memory per token).
    __slots__ = (
        "_rotated_during_attempt",
        "_rotation_may_fix",
        "attempting",
        "clock",
        "due",
        "expires",
        "failures",
        "last_reason",
        "one_shot",
        "policy",
        "rng",
    )

    def __init__(self, policy: Policy, clock: Clock, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.clock = clock
        self.rng = rng or SHARED_RNG  # tests inject a seeded one
        self.due = Deadline.after(clock, 0.0)
        self.expires: Deadline | None = None
        self.failures = 0
        self.last_reason: Reason | None = None
        self.attempting = False
        self.one_shot = False  # run --once: acquire now, plan no refresh after
        self._rotated_during_attempt = False
        self._rotation_may_fix = False

    def due_in(self) -> float:
        """Seconds until the next exchange should start (<= 0: now)."""
        return self.due.remaining(self.clock)

    def wake_in(self) -> float:
        """Seconds the runner may sleep: until due, or until the current token expires
        (so readiness drops the moment it does), whichever is sooner."""
        wait = self.due_in()
        if self.valid() and self.expires is not None:
            wait = min(wait, self.expires.remaining(self.clock))
        return wait

    def started(self) -> None:
        """An exchange attempt starts now."""
        self.attempting = True
        self._rotated_during_attempt = False

    def succeeded(self, expires_on: float, lifetime: float, refresh_in: float | None) -> float:
        """Record a good token on disk; returns the delay until its refresh (``math.inf``
        under ``force_once``: no refresh follows)."""
        self.attempting = False
        self.failures = 0
        self.last_reason = None
        self._rotation_may_fix = False
        first = self.expires is None  # no token before: a fresh start (adopted() sets one)
        self.expires = Deadline.at_wall(self.clock, expires_on)
        if self.one_shot:
            self.due = Deadline(math.inf, math.inf)
            return math.inf
        # The lifetime left may be shorter than `lifetime` (clock skew); plan on what is left.
        left = min(lifetime, max(self.expires.remaining(self.clock), 0.0))
        plan = first_refresh_delay if first else refresh_delay
        delay = plan(left, self.policy, self.rng, refresh_in)
        self.due = Deadline.after(self.clock, delay)
        return delay

    def adopted(
        self, issued_at: float | None, expires_on: float, lifetime: float | None = None
    ) -> float:
        """Adopt a token found on disk at start-up (a restart): refresh on its own schedule.

        ``lifetime`` (seconds), when known, is what the refresh was planned on — shorter than
        ``expires_on - issued_at`` for a docker config whose Entra token lives less.
        """
        self.expires = Deadline.at_wall(self.clock, expires_on)
        now = self.clock.wall()
        if self.one_shot or issued_at is None or issued_at >= expires_on:
            self.due = Deadline.after(self.clock, 0.0)
            return 0.0
        lifetime = min(expires_on - issued_at, lifetime or float("inf"))
        at = issued_at + lifetime * self.policy.refresh_at * (
            1.0 + self.rng.uniform(-self.policy.jitter, self.policy.jitter)
        )
        delay = max(0.0, at - now)
        self.due = Deadline.after(self.clock, delay)
        return delay

    def failed(
        self,
        reason: Reason,
        *,
        retry_after: float | None = None,
        configuration_error: bool = False,
        rotation_may_fix: bool = False,
    ) -> float:
        """Record a failed attempt; returns the delay until the retry.

        A missing assertion waits for the watcher (a rotation retries at once) with a slow
        safety retry after ``config_error_backoff_max``. Other failures back off (see
        ``backoff_delay``). ``rotation_may_fix`` marks failures a new assertion can fix (expired
        or rejected assertion, federation mismatch): only those retry at once on a rotation —
        also one noticed while this attempt was in flight. Nothing else undercuts its backoff.
        """
        self.attempting = False
        self.last_reason = reason
        self._rotation_may_fix = rotation_may_fix or reason is Reason.ASSERTION_UNAVAILABLE
        if reason is Reason.ASSERTION_UNAVAILABLE:
            delay = self.policy.config_error_backoff_max
        else:
            delay = backoff_delay(
                self.failures,
                self.policy,
                self.rng,
                retry_after=retry_after,
                configuration_error=configuration_error,
            )
            self.failures += 1
        if self._rotated_during_attempt and self._rotation_may_fix:
            # The attempt used the assertion that was just replaced; the new one may work.
            delay = 0.0
        self._rotated_during_attempt = False
        self.due = Deadline.after(self.clock, delay)
        return delay

    def rotated(self) -> bool:
        """The identity's projected token changed (or became readable again). Returns True when
        this token should retry now (wake the runner): its last attempt failed in a way a new
        assertion can fix. Throttling, server errors and write errors keep their backoff.

        During an attempt nothing changes now; if that attempt fails in a way a new assertion
        can fix, it retries at once.
        """
        needs_retry = self.last_reason is not None and self._rotation_may_fix
        if self.attempting:
            self._rotated_during_attempt = True
            return False
        if needs_retry:
            self.due = Deadline.after(self.clock, 0.0)
        return needs_retry

    def retry_now(self) -> None:
        """Make the token due immediately (a forced refresh, a wall-clock jump check)."""
        self.due = Deadline.after(self.clock, 0.0)

    def force_once(self) -> None:
        """``run --once`` means "acquire now": due now (a still-valid file, even one adopted
        later, is replaced), and after the success no refresh is planned."""
        self.one_shot = True
        self.retry_now()

    def valid(self) -> bool:
        """True while the last good token has not expired."""
        return self.expires is not None and self.expires.remaining(self.clock) > 0


def reuse_undelivered(expires_on: float, lifetime: float, now: float) -> bool:
    """Whether a token whose delivery failed (disk full) is written again at the next attempt
    instead of asking Entra for another: while it has at least half its ``lifetime`` (seconds)
    left; ``expires_on`` and ``now`` are unix times."""
    return expires_on - now > lifetime / 2


MIN_SERVED_LIFETIME = 330.0
"""Seconds a token served by the endpoint must still live: Azure SDKs refresh a token once 300 s
or less remain (azure-identity ``DEFAULT_REFRESH_OFFSET``), plus a 30 s margin."""


def required_lifetime(lifetime: float) -> float:
    """Seconds a token granted for ``lifetime`` seconds must still live to be served:
    ``MIN_SERVED_LIFETIME``, or half its lifetime when the issuer grants less than twice that
    (an emulator, a test tenant): no token could meet the SDKs' offset then, and serving the
    cached one costs no Entra request, whereas refusing would fail every call."""
    return min(MIN_SERVED_LIFETIME, lifetime / 2)


class Serve(StrEnum):
    """What the endpoint does with a request, given the token it holds (``serve_decision``)."""

    SERVE = "serve"
    """Hand out the token held."""
    WAIT = "wait"
    """An attempt is in flight: wait for its outcome (bounded)."""
    REFRESH = "refresh"
    """Ask the runner for a token now (wake it), then wait for the attempt."""
    FAIL = "fail"
    """The last attempt failed and none is in flight: answer at once with its reason."""
    TOO_BRIEF = "too_brief"
    """A token was delivered moments ago and is already too short-lived: never a loop."""


def serve_decision(
    *,
    left: float | None,
    lifetime: float | None,
    attempting: bool,
    due: bool,
    failed: bool,
    since_delivery: float | None,
    policy: Policy,
) -> Serve:
    """The endpoint's rule for one request.

    ``left`` is the seconds the held token still lives (None: none held), ``lifetime`` its
    granted lifetime; ``attempting`` whether an attempt runs; ``due`` whether the runner's
    schedule makes it due now (a first attempt, a retry a rotation made due); ``failed``
    whether its last attempt failed; ``since_delivery`` seconds since the held token was
    delivered (None: not delivered by this process, e.g. adopted from disk).

    A token with more than ``required_lifetime`` left is served; otherwise an attempt in flight
    is waited for, and one that is due is started now. Then a failure is answered at once
    (with the still-valid token if there is one, never a wait for the backoff); else a refresh
    is forced, unless a token was delivered less than ``min_refresh_interval`` ago.
    """
    if left is not None and lifetime is not None and left > required_lifetime(lifetime):
        return Serve.SERVE
    if attempting:
        return Serve.WAIT
    if due:
        return Serve.REFRESH
    if failed:
        return Serve.SERVE if left is not None and left > 0 else Serve.FAIL
    if since_delivery is not None and since_delivery < policy.min_refresh_interval:
        return Serve.TOO_BRIEF
    return Serve.REFRESH
