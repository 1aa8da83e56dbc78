"""The token runner in process: a fake clock, a fake exchange, a fake output, no network.

Each test drives one ``TokenRunner`` attempt by attempt (``refresh``) and checks what the
runner decided: state, schedule, metrics, what was delivered. The daemon-level ``--once`` test
runs the real ``Daemon`` with an injected exchange and real files.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from entra_tokend.assertion import Assertion, AssertionMissing, parse_assertion
from entra_tokend.config import Overrides, load_config
from entra_tokend.daemon import Daemon
from entra_tokend.exchange import ClientError, ErrorDetails, ServerError, Throttled
from entra_tokend.exposition import registry
from entra_tokend.metrics import Metrics
from entra_tokend.model import AccessToken, Identity, OutputSpec, Policy, Reason, TokenSpec
from entra_tokend.outputs import ExistingToken, WriteError
from entra_tokend.ports import Expired, Failed, RunnerEvent, Subscriber, Written
from entra_tokend.readiness import Readiness
from entra_tokend.runner import Deps, State, build
from support import STORAGE

T0 = 1_800_000_000.0
POLICY = Policy(jitter=0.0, backoff_initial=1.0, backoff_max=60.0, config_error_backoff_max=300.0)


class FakeClock:
    """Wall and monotonic time that move only when the test says so."""

    def __init__(self) -> None:
        self.now = T0
        self.mono = 1000.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


def make_assertion(n: int, exp: float = T0 + 3600) -> Assertion:
    """A projected-token-shaped JWT (unsigned: the daemon never verifies it)."""

    def seg(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    claims = {"iss": "https://issuer", "sub": "system:serviceaccount:ns:sa", "aud": "x", "exp": exp}
    return parse_assertion(f"{seg({'alg': 'RS256'})}.{seg({**claims, 'n': n})}.sig".encode())


class FakeSource:
    """A credential source whose assertion the test replaces; ``rotate`` also tells the
    subscribers, as the real source does when its watcher sees the new file."""

    def __init__(self) -> None:
        self.identity = Identity("default", "tenant", "client", Path("/sa"), "https://login")
        self.assertion: Assertion | None = make_assertion(0)
        self.subscribers: list[Subscriber] = []

    def current(self) -> Assertion:
        if self.assertion is None:
            raise AssertionMissing("projected token file /sa does not exist")
        return self.assertion

    def subscribe(self, callback: Subscriber) -> None:
        self.subscribers.append(callback)

    def unsubscribe(self, callback: Subscriber) -> None:
        if callback in self.subscribers:
            self.subscribers.remove(callback)

    def rotate(self, assertion: Assertion | None) -> None:
        self.assertion = assertion
        for callback in list(self.subscribers):
            callback()


class FakeExchange:
    """Answers from a script; ``gate`` (when set) holds the request in flight."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.script: list[Exception | float] = []  # an error to raise, or a lifetime
        self.sent: list[str] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def exchange(self, identity: Identity, scope: str, assertion: str) -> AccessToken:
        self.sent.append(assertion)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        step = self.script.pop(0) if self.script else 3600.0
        if isinstance(step, Exception):
            raise step
        return AccessToken(
            token=f"token-{len(self.sent)}",
            token_type="Bearer",
            expires_in=step,
            expires_on=self.clock.wall() + step,
            refresh_in=None,
            scope=scope,
            request_id=f"r{len(self.sent)}",
        )


class FakeOutput:
    """Records delivered tokens; raises ``fail`` when set; ``existing`` is what an earlier
    run left (adoptable); ``lost`` what ``check`` reports; ``restored`` counts restores."""

    location = Path("/out/storage")

    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.fail: WriteError | None = None
        self.existing: ExistingToken | None = None
        self.lost: str | None = None
        self.restored = 0

    def check(self) -> str | None:
        return self.lost

    async def restore(self) -> bool:
        if self.fail is not None:
            raise self.fail
        self.restored += 1
        self.lost = None
        return bool(self.delivered)

    async def deliver(self, token: AccessToken) -> None:
        if self.fail is not None:
            raise self.fail
        self.delivered.append(token.token)
        self.lost = None

    def adoptable(self, now: float) -> ExistingToken | str | None:
        return self.existing


class Harness:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.source = FakeSource()
        self.exchange = FakeExchange(self.clock)
        self.output = FakeOutput()
        self.metrics = Metrics()
        self.readiness = Readiness(self.metrics)
        self.events: list[RunnerEvent] = []
        spec = TokenSpec("storage", STORAGE, "default", OutputSpec(Path("/out/storage")))
        deps = Deps(self.metrics, self.readiness, self.clock, asyncio.Semaphore(1), POLICY)
        self.runner = build(
            spec, deps, self.source, self.exchange, self.output, listeners=[self.events.append]
        )
        self.readiness.track("storage", self.runner)
        self.readiness.start()

    def failures(self, reason: Reason) -> float:
        value = registry(self.metrics).get_sample_value(
            "entra_tokend_token_refresh_failures_total",
            {"token": "storage", "reason": str(reason)},
        )
        return value or 0.0  # a reason's series appears with its first failure


def server_error() -> ServerError:
    return ServerError("HTTP 503", request_id="r", details=ErrorDetails(status=503))


def assertion_expired() -> ClientError:
    details = ErrorDetails(status=400, error="invalid_client", aadsts=700024)
    return ClientError("HTTP 400", request_id="r", details=details, rotation_may_fix=True)


def throttled(retry_after: float) -> Throttled:
    details = ErrorDetails(status=429)
    return Throttled("HTTP 429", request_id="r", details=details, retry_after=retry_after)


def config_error() -> ClientError:
    details = ErrorDetails(status=400, error="unauthorized_client", aadsts=700016)
    return ClientError("HTTP 400", request_id="r", details=details, configuration=True)


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
