"""The token runner in process: a fake clock, a fake exchange, a fake output, no network.

Each test drives one ``TokenRunner`` attempt by attempt (``refresh``) and checks what the
runner decided: state, schedule, metrics, what was delivered. The daemon-level ``--once`` test
runs the real ``Daemon`` with an injected exchange and real files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from entra_tokend.config import Overrides, load_config
from entra_tokend.daemon import Daemon
from entra_tokend.model import Reason
from entra_tokend.outputs import ExistingToken, WriteError
from entra_tokend.ports import Expired, Failed, Written
from entra_tokend.runner import State
from support import STORAGE
from support.fakes import (
    POLICY,
    FakeClock,
    FakeExchange,
    assertion_expired,
    config_error,
    make_assertion,
    server_error,
    throttled,
)
from support.harness import Harness


def test_success_delivers_and_schedules_the_refresh_before_expiry() -> None:
    async def scenario() -> None:
        h = Harness()
        await h.runner.refresh()
        assert h.output.delivered == ["token-1"]
        assert h.runner.state is State.OK
        # First token of a start: refreshed between 10 % and 50 % of its hour (jitter 0).
        assert 360 <= h.runner.schedule.due_in() <= 1800

    asyncio.run(scenario())


def test_rotation_during_an_in_flight_request_retries_at_once_when_that_request_fails() -> None:
    async def scenario() -> None:
        h = Harness()
        h.exchange.script = [assertion_expired()]
        h.exchange.gate = asyncio.Event()
        attempt = asyncio.create_task(h.runner.refresh())
        await h.exchange.entered.wait()
        h.source.assertion = make_assertion(1)  # kubelet rotates while the request is out
        h.runner.on_rotation()
        h.exchange.gate.set()
        await attempt
        assert h.runner.state is State.FAILING
        assert h.runner.schedule.due_in() == 0  # not the backoff: the new assertion may work
        h.exchange.gate = None
        await h.runner.refresh()
        assert h.exchange.sent[-1] == make_assertion(1).token
        assert h.output.delivered == ["token-2"]

    asyncio.run(scenario())


def test_rotation_leaves_a_healthy_token_on_its_schedule() -> None:
    async def scenario() -> None:
        h = Harness()
        await h.runner.refresh()
        due = h.runner.schedule.due_in()
        h.source.assertion = make_assertion(1)
        h.runner.on_rotation()
        assert h.runner.schedule.due_in() == due

    asyncio.run(scenario())


def test_configuration_error_backs_off_longer_than_any_transient_failure() -> None:
    async def scenario() -> None:
        h = Harness()
        h.exchange.script = [config_error()]
        await h.runner.refresh()
        assert h.runner.state is State.FAILING
        assert isinstance(h.events[-1], Failed)
        assert h.events[-1].configuration
        # Configuration errors start at 2 × backoff_max, equal jitter: at least backoff_max.
        assert POLICY.backoff_max <= h.runner.schedule.due_in() <= 2 * POLICY.backoff_max
        assert h.failures(Reason.CLIENT_ERROR) == 1

    asyncio.run(scenario())


def test_expiry_drops_readiness_and_keeps_the_last_token() -> None:
    async def scenario() -> None:
        h = Harness()
        h.exchange.script = [120.0, server_error()]
        await h.runner.refresh()
        h.readiness.changed("storage")
        assert h.readiness.ready
        h.clock.advance(100)
        await h.runner.refresh()  # fails; the token on disk still has 20 s
        h.readiness.changed("storage")
        assert h.readiness.ready
        h.clock.advance(21)
        h.readiness.changed("storage")
        assert not h.readiness.ready
        assert h.runner.state is State.EXPIRED
        assert h.readiness.snapshot() == (False, {"storage": "expired"})
        assert h.output.delivered == ["token-1"]

    asyncio.run(scenario())


def test_write_failure_counts_as_write_error_and_keeps_the_old_file() -> None:
    async def scenario() -> None:
        h = Harness()
        await h.runner.refresh()
        h.output.fail = WriteError("cannot write /out/storage: disk full")
        await h.runner.refresh()
        assert h.runner.state is State.FAILING
        assert h.failures(Reason.WRITE_ERROR) == 1
        assert h.output.delivered == ["token-1"]
        assert h.runner.valid()

    asyncio.run(scenario())


def test_missing_assertion_waits_for_the_watcher_and_a_rotation_retries_at_once() -> None:
    async def scenario() -> None:
        h = Harness()
        h.source.assertion = None
        await h.runner.refresh()
        assert h.failures(Reason.ASSERTION_UNAVAILABLE) == 1
        assert h.exchange.sent == []
        assert h.runner.schedule.due_in() == POLICY.config_error_backoff_max
        h.source.assertion = make_assertion(2)
        h.runner.on_rotation()
        assert h.runner.schedule.due_in() == 0

    asyncio.run(scenario())


def test_run_once_gives_up_at_once_on_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "sa").write_text(make_assertion(0).token)
    env = {
        "AZURE_TENANT_ID": "tenant",
        "AZURE_CLIENT_ID": "client",
        "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "sa"),
    }
    overrides = Overrides(tokens=[f"a={STORAGE}"], output_dir=str(tmp_path / "out"), listen="")
    config = load_config(overrides, env)

    async def scenario() -> int:
        clock = FakeClock()
        clock.now = 0.0  # the assertion's exp lies far ahead of this clock
        exchange = FakeExchange(clock)
        exchange.script = [config_error()]
        daemon = Daemon(config, clock=clock, exchange=exchange)
        return await daemon.run(once=True)

    assert asyncio.run(scenario()) == 1
    assert not (tmp_path / "out" / "a").exists()


@pytest.mark.parametrize("lifetime", [3600.0, 600.0])
def test_refresh_is_always_scheduled_before_expiry(lifetime: float) -> None:
    async def scenario() -> None:
        h = Harness()
        for _ in range(5):
            h.exchange.script = [lifetime]
            await h.runner.refresh()
            due = h.runner.schedule.due_in()
            assert 0 < due < lifetime
            h.clock.advance(due)

    asyncio.run(scenario())


def test_rotation_never_undercuts_retry_after_or_a_server_error_backoff() -> None:
    async def scenario() -> None:
        h = Harness()
        h.exchange.script = [throttled(120.0)]
        await h.runner.refresh()
        h.source.assertion = make_assertion(1)
        h.runner.on_rotation()
        assert h.runner.schedule.due_in() >= 120.0
        h.exchange.script = [server_error()]
        h.exchange.gate = asyncio.Event()
        h.clock.advance(120.0)
        attempt = asyncio.create_task(h.runner.refresh())
        await h.exchange.entered.wait()
        h.source.assertion = make_assertion(2)
        h.runner.on_rotation()  # mid-flight; a 503 is not the assertion's fault
        h.exchange.gate.set()
        await attempt
        assert h.runner.schedule.due_in() > 0
        assert len(h.exchange.sent) == 2

    asyncio.run(scenario())


def test_write_failure_retries_the_write_with_the_token_it_holds() -> None:
    async def scenario() -> None:
        h = Harness()
        h.output.fail = WriteError("cannot write /out/storage: disk full")
        await h.runner.refresh()
        await h.runner.refresh()
        assert len(h.exchange.sent) == 1  # the second attempt asked Entra for nothing
        h.output.fail = None
        await h.runner.refresh()
        assert h.output.delivered == ["token-1"]
        assert len(h.exchange.sent) == 1
        assert h.runner.state is State.OK

    asyncio.run(scenario())


def test_unexpected_errors_are_counted_as_internal_and_backed_off() -> None:
    async def scenario() -> None:
        h = Harness()
        h.exchange.script = [RuntimeError("a bug quoting eyJsecret")]
        task = asyncio.create_task(h.runner.run())
        while h.failures(Reason.INTERNAL) == 0:
            await asyncio.sleep(0)
        task.cancel()
        assert h.runner.state is State.FAILING
        assert h.runner.schedule.due_in() > 0

    asyncio.run(scenario())


def test_a_running_runner_is_subscribed_to_its_source_and_a_stopped_one_is_not() -> None:
    async def scenario() -> None:
        h = Harness()
        assert h.source.subscribers == []
        h.runner.start()
        assert h.source.subscribers == [h.runner.on_rotation]
        h.runner.stop()
        assert h.source.subscribers == []

    asyncio.run(scenario())


def test_start_adopts_what_an_earlier_run_left() -> None:
    async def scenario() -> None:
        h = Harness()
        now = h.clock.wall()
        h.output.existing = ExistingToken(issued_at=now - 60, expires_on=now + 3540)
        h.runner.start()
        assert h.runner.state is State.OK
        assert h.runner.schedule.due_in() > 0  # refreshed on its own schedule, not now
        assert h.readiness.snapshot() == (True, {"storage": "ok"})
        h.runner.stop()

    asyncio.run(scenario())


def test_events_tell_front_ends_what_happened() -> None:
    async def scenario() -> None:
        h = Harness()
        h.exchange.script = [120.0, server_error()]
        await h.runner.refresh()
        h.clock.advance(100)
        await h.runner.refresh()
        h.clock.advance(21)
        task = asyncio.create_task(h.runner.run())
        while not any(isinstance(e, Expired) for e in h.events):
            await asyncio.sleep(0)
        task.cancel()
        written, failed, expired = h.events[:3]
        assert isinstance(written, Written)
        assert written.token.token == "token-1"
        assert failed == Failed("storage", Reason.SERVER_ERROR, "HTTP 503", configuration=False)
        assert expired == Expired("storage")

    asyncio.run(scenario())
