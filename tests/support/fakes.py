"""In-process fakes of the runner's collaborators: time, the credential source, Entra, a file;
and the exchange failures the tests script (``server_error``, ``throttled``...).

Each stands for one port of the runner (``Clock``, the credential source, ``Exchange``,
``Output``) and does only what a test scripts: time moves when the test says so, the exchange
answers from a script, the source rotates when told. Times are seconds (``T0`` is the fakes'
wall-clock epoch); assertions are unsigned projected-token-shaped JWTs.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

from entra_tokend.assertion import Assertion, AssertionMissing, parse_assertion
from entra_tokend.exchange import ClientError, ErrorDetails, ServerError, Throttled
from entra_tokend.model import AccessToken, Identity, Policy
from entra_tokend.outputs import ExistingToken, WriteError
from entra_tokend.ports import Subscriber

T0 = 1_800_000_000.0
POLICY = Policy(jitter=0.0, backoff_initial=1.0, backoff_max=60.0, config_error_backoff_max=300.0)
"""No jitter, so that the scheduler's answers are exact."""


class FakeClock:
    """Wall and monotonic time (``now``, ``mono``) that move only when the test says so."""

    def __init__(self, wall: float = T0, mono: float = 1000.0) -> None:
        self.now = wall
        self.mono = mono

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        """Both clocks move on."""
        self.now += seconds
        self.mono += seconds

    def jump_wall(self, seconds: float) -> None:
        """NTP step or suspend: wall time moves, monotonic does not."""
        self.now += seconds


def make_assertion(n: int, exp: float = T0 + 3600) -> Assertion:
    """A projected-token-shaped JWT numbered ``n`` (unsigned: the daemon never verifies it)."""

    def seg(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    claims = {"iss": "https://issuer", "sub": "system:serviceaccount:ns:sa", "aud": "x", "exp": exp}
    return parse_assertion(f"{seg({'alg': 'RS256'})}.{seg({**claims, 'n': n})}.sig".encode())


class FakeSource:
    """A credential source whose assertion the test replaces; ``rotate`` tells subscribers.

    ``assertion = None`` makes ``current`` raise ``AssertionMissing`` (the file is gone).
    """

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
        """Kubelet wrote a new token (or removed it): hold it and call every subscriber."""
        self.assertion = assertion
        for callback in list(self.subscribers):
            callback()


class FakeExchange:
    """Answers from ``script`` (an error to raise, or a lifetime in seconds; 3600 when empty);
    ``gate`` (when set) holds each request in flight until it is set; ``sent`` lists the
    assertions received."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.script: list[Exception | float] = []
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
    """Records delivered tokens; raises ``fail`` when set; ``existing`` is what an earlier run
    left (adoptable; None: nothing on disk); ``lost`` what ``check`` reports (None: the output
    is in place); ``restored`` counts restores."""

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


# ---- scripted exchange failures (what ``FakeExchange.script`` raises) -------------------------


def server_error() -> ServerError:
    """Entra answered 503."""
    return ServerError("HTTP 503", request_id="r", details=ErrorDetails(status=503))


def assertion_expired() -> ClientError:
    """AADSTS700024: the client assertion expired (a rotation may fix it)."""
    details = ErrorDetails(status=400, error="invalid_client", aadsts=700024)
    return ClientError("HTTP 400", request_id="r", details=details, rotation_may_fix=True)


def throttled(retry_after: float) -> Throttled:
    """Entra answered 429 with Retry-After ``retry_after`` seconds."""
    details = ErrorDetails(status=429)
    return Throttled("HTTP 429", request_id="r", details=details, retry_after=retry_after)


def config_error() -> ClientError:
    """AADSTS700016: no such application (only a configuration change fixes it)."""
    details = ErrorDetails(status=400, error="unauthorized_client", aadsts=700016)
    return ClientError("HTTP 400", request_id="r", details=details, configuration=True)
