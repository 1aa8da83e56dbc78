"""The refresh policy as pure functions and a state machine, on a fake clock (no waiting)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entra_tokend.model import Reason
from entra_tokend.scheduler import (
    MIN_SERVED_LIFETIME,
    Deadline,
    Policy,
    Serve,
    TokenSchedule,
    backoff_delay,
    first_refresh_delay,
    refresh_delay,
    reuse_undelivered,
    serve_decision,
)
from support.fakes import FakeClock

policies = st.builds(
    Policy,
    refresh_at=st.floats(0.1, 0.8),
    jitter=st.floats(0.0, 0.18),
    min_refresh_interval=st.floats(0.0, 30.0),
    backoff_initial=st.floats(0.01, 10.0),
    backoff_max=st.floats(10.0, 600.0),
    config_error_backoff_max=st.floats(600.0, 3600.0),
)


@given(
    policy=policies,
    lifetime=st.floats(60.0, 7 * 86400.0),
    refresh_in=st.none() | st.floats(1.0, 7 * 86400.0),
    seed=st.integers(0, 2**32),
)
def test_refresh_always_before_expiry_minus_margin(
    policy: Policy, lifetime: float, refresh_in: float | None, seed: int
) -> None:
    delay = refresh_delay(lifetime, policy, random.Random(seed), refresh_in)
    margin = lifetime * (1 - policy.refresh_at * (1 + policy.jitter))
    assert margin > 0
    # Before expiry minus the margin — unless min_refresh_interval, a floor, is later still.
    assert policy.min_refresh_interval <= delay
    assert delay <= max(lifetime - margin, policy.min_refresh_interval) + 1e-6


@given(policy=policies, lifetime=st.floats(600.0, 86400.0), seed=st.integers(0, 2**32))
def test_jitter_stays_in_its_band(policy: Policy, lifetime: float, seed: int) -> None:
    delay = refresh_delay(lifetime, policy, random.Random(seed))
    low = lifetime * policy.refresh_at * (1 - policy.jitter)
    high = lifetime * policy.refresh_at * (1 + policy.jitter)
    assert min(max(low, policy.min_refresh_interval), high) - 1e-6 <= delay <= high + 1e-6


@given(
    policy=policies,
    attempt=st.integers(0, 100),
    configuration=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_backoff_never_exceeds_its_cap(
    policy: Policy, attempt: int, configuration: bool, seed: int
) -> None:
    delay = backoff_delay(attempt, policy, random.Random(seed), configuration_error=configuration)
    cap = policy.config_error_backoff_max if configuration else policy.backoff_max
    assert 0 < delay <= cap


@given(
    policy=policies,
    attempt=st.integers(0, 100),
    retry_after=st.floats(0.0, 7200.0),
    seed=st.integers(0, 2**32),
)
def test_retry_after_is_never_undercut(
    policy: Policy, attempt: int, retry_after: float, seed: int
) -> None:
    assert (
        backoff_delay(attempt, policy, random.Random(seed), retry_after=retry_after) >= retry_after
    )


def test_backoff_grows_exponentially_on_average() -> None:
    policy = Policy(backoff_initial=1.0, backoff_max=60.0)
    rng = random.Random(7)
    means = [sum(backoff_delay(a, policy, rng) for _ in range(2000)) / 2000 for a in range(7)]
    # full jitter: the mean is about half the ceiling (1, 2, 4, ... capped at 60)
    for attempt, mean in enumerate(means):
        ceiling = min(60.0, 2.0**attempt)
        assert 0.4 * ceiling <= mean <= 0.6 * ceiling


def test_configuration_errors_back_off_longer() -> None:
    policy = Policy()
    rng = random.Random(1)
    normal = sum(backoff_delay(0, policy, rng) for _ in range(500))
    config = sum(backoff_delay(0, policy, rng, configuration_error=True) for _ in range(500))
    assert config > 4 * normal


def test_refresh_in_is_honoured_when_earlier() -> None:
    policy = Policy(jitter=0.0, min_refresh_interval=0)
    assert refresh_delay(86400, policy, random.Random(), refresh_in=3600) == 3600
    assert refresh_delay(3600, policy, random.Random(), refresh_in=7200) == 1800


def test_long_and_short_tokens_use_the_same_fraction() -> None:
    policy = Policy(jitter=0.0, min_refresh_interval=5)
    assert refresh_delay(86400, policy, random.Random()) == 43200
    assert refresh_delay(300, policy, random.Random()) == 150


def test_min_interval_is_a_floor_even_past_the_margin() -> None:
    """No success path refreshes more often than min_refresh_interval (issue: a 1 ms
    expires_in used to make ~1,700 exchanges in 4 s)."""
    policy = Policy(refresh_at=0.5, jitter=0.0, min_refresh_interval=5)
    assert refresh_delay(4, policy, random.Random()) == 5.0
    assert refresh_delay(12, policy, random.Random()) == 6.0
    assert refresh_delay(8, policy, random.Random()) == 5.0


def test_schedule_success_then_failure_then_retry_now() -> None:
    clock = FakeClock()
    s = TokenSchedule(Policy(jitter=0.0), clock, random.Random(3))
    assert s.due_in() <= 0
    delay = s.succeeded(clock.wall() + 3600, 3600, None)
    assert delay == 1800
    assert s.valid()
    clock.advance(1800)
    assert s.due_in() <= 0
    backoff = s.failed(Reason.NETWORK)
    assert 0 < backoff <= 1.0
    assert s.due_in() > 0
    s.retry_now()
    assert s.due_in() <= 0
    clock.advance(1801)
    assert not s.valid()


def test_wall_clock_jump_forward_makes_token_due_and_expired() -> None:
    """Suspend/resume: monotonic stood still while wall time moved on."""
    clock = FakeClock()
    s = TokenSchedule(Policy(jitter=0.0), clock)
    s.succeeded(clock.wall() + 3600, 3600, None)
    clock.jump_wall(4000)
    assert s.due_in() <= 0
    assert not s.valid()


def test_wall_clock_step_backwards_does_not_postpone_refresh() -> None:
    """NTP step back: the monotonic clock still says when the refresh is due."""
    clock = FakeClock()
    s = TokenSchedule(Policy(jitter=0.0), clock)
    s.succeeded(clock.wall() + 3600, 3600, None)
    clock.jump_wall(-7200)
    clock.advance(1800)
    assert s.due_in() <= 0


def test_adopting_a_token_from_a_previous_run() -> None:
    clock = FakeClock()
    s = TokenSchedule(Policy(jitter=0.0), clock)
    now = clock.wall()
    # issued 10 min ago, lives an hour: refresh at the half-way mark, 20 min from now
    assert s.adopted(now - 600, now + 3000) == 1200
    assert s.valid()
    # issued long ago: due now
    assert s.adopted(now - 3000, now + 600) == 0


def test_deadline_remaining_takes_the_earlier_clock() -> None:
    clock = FakeClock()
    d = Deadline.after(clock, 100)
    clock.jump_wall(50)
    assert d.remaining(clock) == 50
    clock.jump_wall(-500)
    assert d.remaining(clock) == 100


@settings(max_examples=200)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["ok", "fail", "throttle", "config", "wait"]), st.floats(0, 500)),
        max_size=40,
    ),
    seed=st.integers(0, 2**32),
)
def test_state_machine_invariants(steps: list[tuple[str, float]], seed: int) -> None:
    clock = FakeClock()
    policy = Policy()
    s = TokenSchedule(policy, clock, random.Random(seed))
    for action, value in steps:
        if action == "ok":
            lifetime = max(value, 60.0) * 10
            delay = s.succeeded(clock.wall() + lifetime, lifetime, None)
            assert delay < lifetime
            assert s.expires is not None
            assert s.due.wall < s.expires.wall
        elif action == "fail":
            assert s.failed(Reason.NETWORK) <= policy.backoff_max
        elif action == "throttle":
            assert s.failed(Reason.THROTTLED, retry_after=value) >= value
        elif action == "config":
            assert (
                s.failed(Reason.CLIENT_ERROR, configuration_error=True)
                <= policy.config_error_backoff_max
            )
        else:
            clock.advance(value)
        assert s.failures >= 0


@given(
    policy=policies,
    lifetime=st.floats(600.0, 86400.0),
    refresh_in=st.none() | st.floats(1.0, 86400.0),
    seed=st.integers(0, 2**32),
)
def test_first_refresh_spreads_over_the_whole_period(
    policy: Policy, lifetime: float, refresh_in: float | None, seed: int
) -> None:
    delay = first_refresh_delay(lifetime, policy, random.Random(seed), refresh_in)
    latest = lifetime * policy.refresh_at * (1 + policy.jitter)
    assert delay <= latest + 1e-6  # never later than a normal refresh: promise 3 holds
    if policy.jitter > 0 and refresh_in is None:
        assert delay >= min(max(0.1 * lifetime, policy.min_refresh_interval), latest) - 1e-6


def test_first_refresh_after_start_is_spread_later_ones_are_not() -> None:
    policy = Policy(refresh_at=0.5, jitter=0.1, min_refresh_interval=0)
    firsts = [first_refresh_delay(3600, policy, random.Random(i)) for i in range(2000)]
    # a fleet started together spreads its first refreshes over 6-33 min, not 27-33 min
    assert min(firsts) < 0.15 * 3600
    assert max(firsts) > 0.5 * 3600
    clock = FakeClock()
    s = TokenSchedule(policy, clock, random.Random(5))
    s.succeeded(clock.wall() + 3600, 3600, None)
    later = s.succeeded(clock.wall() + 3600, 3600, None)
    assert 0.45 * 3600 <= later <= 0.55 * 3600


def test_force_once_replaces_an_adopted_token_and_plans_no_refresh() -> None:
    clock = FakeClock()
    schedule = TokenSchedule(Policy(jitter=0.0), clock)
    schedule.force_once()
    now = clock.wall()
    assert schedule.adopted(now - 60, now + 3540) == 0.0  # a still-valid file is replaced
    assert schedule.due_in() <= 0
    assert math.isinf(schedule.succeeded(now + 3600, 3600, None))
    assert schedule.wake_in() == pytest.approx(3600)  # it sleeps until expiry, never refreshes


def test_an_undelivered_token_is_reused_while_half_its_lifetime_is_left() -> None:
    assert reuse_undelivered(expires_on=1000 + 1801, lifetime=3600, now=1000)
    assert not reuse_undelivered(expires_on=1000 + 1800, lifetime=3600, now=1000)


HOUR = 3600.0


@pytest.mark.parametrize(
    ("state", "verdict"),
    [
        ({"left": MIN_SERVED_LIFETIME + 1}, Serve.SERVE),
        ({"left": MIN_SERVED_LIFETIME - 1, "attempting": True}, Serve.WAIT),
        ({"left": MIN_SERVED_LIFETIME - 1}, Serve.REFRESH),
        ({"left": None}, Serve.REFRESH),  # adopted from disk without the token in memory
        ({"left": None, "due": True, "failed": True}, Serve.REFRESH),  # a rotation's retry
        ({"left": None, "failed": True}, Serve.FAIL),  # backing off: answer at once
        ({"left": 10.0, "failed": True}, Serve.SERVE),  # still valid beats an error
        ({"left": MIN_SERVED_LIFETIME - 1, "since_delivery": 1.0}, Serve.TOO_BRIEF),
        ({"left": 101.0, "lifetime": 200.0}, Serve.SERVE),  # short-lived: half is enough
        ({"left": 99.0, "lifetime": 200.0}, Serve.REFRESH),
    ],
)
def test_the_endpoints_serve_rules(state: dict[str, object], verdict: Serve) -> None:
    args: dict[str, object] = {
        "lifetime": HOUR,
        "attempting": False,
        "due": False,
        "failed": False,
        "since_delivery": None,
        **state,
    }
    if args["left"] is None:
        args["lifetime"] = None
    policy = Policy(min_refresh_interval=5.0)
    assert serve_decision(policy=policy, **args) is verdict  # type: ignore[arg-type]
