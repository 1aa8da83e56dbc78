"""The ACR exchange stage in process: challenge discovery, the exchange request, the earliest
expiry, error classes — against httpx.MockTransport playing the registry (Entra is a fake
inner stage); then the bounds on what a registry answers, the reuse of the held Entra token and
its cost in Entra requests per hour, against the emulator on a simulated clock."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from entra_tokend.emulator import Emulator
from entra_tokend.emulator.faults import Fault
from entra_tokend.exchange import (
    AcrExchange,
    ClientError,
    ClientPool,
    EntraExchange,
    ExchangeError,
    InvalidResponse,
    RequestTimeout,
    ServerError,
    Throttled,
)
from entra_tokend.exchange import acr as acr_module
from entra_tokend.exchange.acr import MIN_REFRESH_LIFETIME, REUSE_FRACTION
from entra_tokend.logging import redact_text
from entra_tokend.model import AccessToken, Identity, Policy, Reason
from entra_tokend.outputs import dockerconfig
from entra_tokend.scheduler import TokenSchedule

IDENT = Identity(
    name="default",
    tenant_id="tenant-1",
    client_id="client-1",
    token_file=Path("/nonexistent"),
    authority_host="https://login.example",
)
NOW = 1_800_000_000.0


class FakeClock:
    def wall(self) -> float:
        return NOW

    def monotonic(self) -> float:
        return 0.0


def jwt(exp: float, marker: str) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': int(exp), 'iat': int(NOW), 'm': marker})}.sig"


ENTRA_TOKEN = jwt(NOW + 3600, "entra")


class FakeEntra:
    async def exchange(self, identity: Identity, scope: str, assertion: str) -> AccessToken:
        return AccessToken(
            token=ENTRA_TOKEN,
            token_type="Bearer",
            expires_in=3600,
            expires_on=NOW + 3600,
            refresh_in=1800,
            scope=scope,
            request_id="rid",
            tenant_id=identity.tenant_id,
            client_id=identity.client_id,
        )


class Registry:
    """httpx.MockTransport handler: per-host status and refresh-token lifetime."""

    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.life: dict[str, float] = {}
        self.realm: dict[str, str] = {}
        self.posts: list[tuple[str, dict[str, list[str]]]] = []
        self.issued: dict[str, str] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.netloc.decode()
        if request.url.path == "/v2/":
            realm = self.realm.get(host, f"https://{host}/oauth2/token")
            challenge = f'Bearer realm="{realm}",service="{host}"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        assert request.url.path == "/oauth2/exchange"
        form = parse_qs(request.content.decode())
        self.posts.append((str(request.url), form))
        service = form["service"][0]
        status = self.status.get(service, 200)
        if status != 200:
            headers = {"x-ms-correlation-request-id": "corr-42", "Retry-After": "7"}
            return httpx.Response(status, headers=headers, json={"errors": []})
        token = jwt(NOW + self.life.get(service, 10800), f"acr-{service}")
        self.issued[service] = token
        return httpx.Response(200, json={"refresh_token": token})


def run_exchange(registry: Registry, registries: list[str]) -> AccessToken:
    async def go() -> AccessToken:
        pool = ClientPool(transport=httpx.MockTransport(registry))
        try:
            stage = AcrExchange(FakeEntra(), registries, pool, FakeClock())
            return await stage.exchange(IDENT, "https://containerregistry.azure.net/.default", "a")
        finally:
            await pool.aclose()

    return asyncio.run(go())


def test_two_registries_form_fields_and_docker_config() -> None:
    reg = Registry()
    token = run_exchange(reg, ["a.azurecr.io", "b.azurecr.cn:8443"])
    assert dict(token.extra) == {
        "a.azurecr.io": reg.issued["a.azurecr.io"],
        "b.azurecr.cn:8443": reg.issued["b.azurecr.cn:8443"],
    }
    url, form = reg.posts[0]
    assert url == "https://a.azurecr.io/oauth2/exchange"
    assert form == {
        "grant_type": ["access_token"],
        "service": ["a.azurecr.io"],
        "tenant": ["tenant-1"],
        "access_token": [ENTRA_TOKEN],
    }
    doc = json.loads(dockerconfig.render(token))
    auth = base64.b64decode(doc["auths"]["b.azurecr.cn:8443"]["auth"]).decode()
    assert auth == f"00000000-0000-0000-0000-000000000000:{reg.issued['b.azurecr.cn:8443']}"
    assert "extra" not in repr(token)
    assert reg.issued["a.azurecr.io"] not in repr(token)


def test_expiry_is_the_shortest_lived_credential() -> None:
    reg = Registry()
    reg.life["b.azurecr.io"] = 600  # shorter than the Entra token's hour
    token = run_exchange(reg, ["a.azurecr.io", "b.azurecr.io"])
    assert token.expires_on == NOW + 600  # the file ends with its first refresh token
    assert token.expires_in == 600  # planned on the shortest-lived credential
    assert token.refresh_in is None  # Entra's hint is about the Entra token, not this one
    reg2 = Registry()
    token2 = run_exchange(reg2, ["a.azurecr.io"])  # refresh token 3 h, Entra token 1 h
    assert token2.expires_on == NOW + 10800  # what is on disk lasts 3 h
    assert token2.expires_in == 3600  # but the refresh is planned on the Entra token's hour
    assert token2.refresh_in == 1800


def test_realm_elsewhere_is_used_and_http_realm_off_loopback_refused() -> None:
    reg = Registry()
    reg.realm["127.0.0.1:5000"] = "http://127.0.0.1:9999/oauth2/token"
    run_exchange(reg, ["http://127.0.0.1:5000"])
    assert reg.posts[0][0] == "http://127.0.0.1:9999/oauth2/exchange"
    assert reg.posts[0][1]["service"] == ["127.0.0.1:5000"]
    bad = Registry()
    bad.realm["r.azurecr.io"] = "http://evil.example/oauth2/token"
    with pytest.raises(ClientError) as info:
        run_exchange(bad, ["r.azurecr.io"])
    assert info.value.configuration
    assert not bad.posts


@pytest.mark.parametrize(
    ("status", "cls", "configuration"),
    [
        (401, ClientError, True),
        (403, ClientError, True),
        (429, Throttled, False),
        (503, ServerError, False),
    ],
)
def test_errors_name_the_registry_and_correlation_id_never_a_token(
    status: int, cls: type[Exception], configuration: bool
) -> None:
    reg = Registry()
    reg.status["bad.azurecr.io"] = status
    with pytest.raises(cls) as info:
        run_exchange(reg, ["good.azurecr.io", "bad.azurecr.io"])
    exc = info.value
    assert isinstance(exc, ClientError | Throttled | ServerError)
    assert "bad.azurecr.io" in exc.message
    assert exc.details.correlation_id == "corr-42"
    assert exc.configuration is configuration
    if configuration:
        assert exc.hint is not None
        assert "AcrPull" in exc.hint
    else:
        assert exc.retry_after == 7
    text = f"{exc} {exc.message} {exc.hint} {exc.details.fields()}"
    for secret in [ENTRA_TOKEN, *reg.issued.values()]:
        assert secret not in text
        assert secret.rsplit(".", 1)[0] not in text


def test_refresh_tokens_are_redacted_by_value_in_logs() -> None:
    reg = Registry()
    token = run_exchange(reg, ["a.azurecr.io"])
    secret = token.extra["a.azurecr.io"]
    assert secret not in redact_text(f"oops {secret} leaked")


def test_a_trickling_registry_ends_within_the_request_timeout() -> None:
    """request_timeout bounds the whole token exchange with a registry, as with Entra: a body
    arriving a byte at a time never ends httpx's per-read timeout."""

    async def trickle() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.05)
            yield b" "

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            challenge = 'Bearer realm="https://slow.azurecr.io/oauth2/token",service="slow"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200, content=trickle())

    async def go() -> None:
        pool = ClientPool(timeout=0.5, transport=httpx.MockTransport(answer))
        try:
            stage = AcrExchange(FakeEntra(), ["slow.azurecr.io"], pool, FakeClock())
            with pytest.raises(RequestTimeout, match=r"slow\.azurecr\.io"):
                await stage.exchange(IDENT, "https://containerregistry.azure.net/.default", "a")
        finally:
            await pool.aclose()

    asyncio.run(go())


# ------------------------------------------------ against the emulator, on a simulated clock
class SimClock:
    """Wall and monotonic time moved by the test; the emulator reads the same wall clock."""

    def __init__(self) -> None:
        self.now = time.time()
        self.mono = 0.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


class Emulated:
    """An HTTPS emulator (Entra and a registry it serves itself) and the daemon's two exchange
    stages pointed at it, all on one simulated clock."""

    def __init__(self, emu: Emulator, clock: SimClock) -> None:
        self.emu = emu
        self.clock = clock
        self.registry = emu.authority_host.removeprefix("https://")
        emu.add_registry(self.registry)
        self.identity = Identity(
            name="default",
            tenant_id=emu.tenant_id,
            client_id=emu.client_id,
            token_file=emu.token_file,
            authority_host=emu.authority_host,
            ca_file=emu.ca_file,
        )
        self.assertion = emu.issue_assertion(ttl=7 * 86400.0)

    def exchanges(self, count: int = 1) -> list[AccessToken | ExchangeError]:
        """``count`` ACR exchanges with one stage (so a held Entra token carries over)."""

        async def go() -> list[AccessToken | ExchangeError]:
            pool = ClientPool(env={})
            stage = AcrExchange(EntraExchange(pool, self.clock), [self.registry], pool, self.clock)
            results: list[AccessToken | ExchangeError] = []
            try:
                for _ in range(count):
                    try:
                        results.append(await stage.exchange(self.identity, ACR, self.assertion))
                    except ExchangeError as exc:
                        results.append(exc)
            finally:
                await pool.aclose()
            return results

        return asyncio.run(go())

    def entra_requests(self) -> int:
        return len(self.emu.token_requests())

    def acr_exchanges(self) -> int:
        return sum(r.endpoint == "acr_exchange" for r in self.emu.acr_requests())


ACR = "https://containerregistry.azure.net/.default"


@pytest.fixture(name="emulated")
def emulated_fixture(tmp_path: Path) -> Iterator[Emulated]:
    clock = SimClock()
    with Emulator(tmp_path / "emu", tls=True, clock=clock.wall) as emu:
        yield Emulated(emu, clock)


@pytest.mark.parametrize(
    "exp",
    [
        "past",  # a refresh token already ended
        "near",  # ends in 2 s: an exchange every few seconds
        "NaN",
        "1e400",  # inf once parsed
        "1" + "0" * 400,  # an integer no float holds
        "-1e400",
    ],
)
def test_a_refresh_token_exp_out_of_bounds_is_an_invalid_response(
    emulated: Emulated, exp: str
) -> None:
    now = emulated.clock.wall()
    text = {"past": str(int(now - 60)), "near": str(int(now + 2))}.get(exp, exp)
    emulated.emu.inject(Fault("refresh_exp", target="acr_exchange", exp=text))
    failed, recovered = emulated.exchanges(2)
    assert isinstance(failed, InvalidResponse)
    assert failed.reason is Reason.INVALID_RESPONSE
    assert "exp" in failed.message
    assert emulated.registry in failed.message
    # The next attempt works, with a new Entra token: a failed exchange drops the held one.
    assert isinstance(recovered, AccessToken)
    assert math.isfinite(recovered.expires_on)
    assert emulated.entra_requests() == 2


def test_a_refresh_token_at_the_lower_bound_is_accepted(emulated: Emulated) -> None:
    exp = int(emulated.clock.wall()) + MIN_REFRESH_LIFETIME + 1
    emulated.emu.inject(Fault("refresh_exp", target="acr_exchange", exp=str(exp)))
    (token,) = emulated.exchanges()
    assert isinstance(token, AccessToken)
    assert token.expires_on == exp


@pytest.mark.parametrize("status", [200, 401])
def test_an_echoed_entra_token_is_refused_and_never_in_the_correlation_id(
    emulated: Emulated, status: int
) -> None:
    emulated.emu.inject(Fault("echo", target="acr_exchange", status=status))
    (failed,) = emulated.exchanges()
    assert isinstance(failed, InvalidResponse if status == 200 else ClientError)
    if status == 200:
        assert "echoed" in failed.message
    sent = emulated.emu.issued_tokens[-1]
    correlation = failed.details.correlation_id or ""
    assert correlation  # said, but redacted
    text = f"{failed} {failed.message} {failed.hint} {failed.details.fields()}"
    for start in range(0, len(sent) - 16, 8):
        assert sent[start : start + 16] not in text


def test_the_held_entra_token_is_reused_while_half_its_life_is_left(emulated: Emulated) -> None:
    lifetime = emulated.emu.access_token_lifetime
    first = emulated.exchanges()[0]
    assert isinstance(first, AccessToken)

    async def at(offsets: list[float]) -> list[str]:
        pool = ClientPool(env={})
        clock = emulated.clock
        stage = AcrExchange(EntraExchange(pool, clock), [emulated.registry], pool, clock)
        start = clock.wall()
        tokens: list[str] = []
        try:
            for offset in offsets:
                clock.now = start + offset
                got = await stage.exchange(emulated.identity, ACR, emulated.assertion)
                tokens.append(got.token)
        finally:
            await pool.aclose()
        return tokens

    before = emulated.entra_requests()
    tokens = asyncio.run(at([0, 60, lifetime * REUSE_FRACTION, lifetime * REUSE_FRACTION + 1]))
    assert emulated.entra_requests() - before == 2
    assert tokens[0] == tokens[1] == tokens[2] != tokens[3]
    assert emulated.acr_exchanges() == 5  # every exchange still asked the registry


def entra_requests_per_hour(emulated: Emulated, hours: float) -> tuple[float, float]:
    """Run the ACR exchange on the scheduler's plan for ``hours`` of simulated time: (Entra
    requests, registry exchanges) per hour."""
    clock = emulated.clock
    schedule = TokenSchedule(Policy(), clock, random.Random(7))

    async def go() -> None:
        pool = ClientPool(env={})
        stage = AcrExchange(EntraExchange(pool, clock), [emulated.registry], pool, clock)
        end = clock.wall() + hours * 3600
        try:
            while clock.wall() < end:
                schedule.started()
                token = await stage.exchange(emulated.identity, ACR, emulated.assertion)
                delay = schedule.succeeded(token.expires_on, token.expires_in, token.refresh_in)
                clock.advance(delay)
        finally:
            await pool.aclose()

    entra, acr = emulated.entra_requests(), emulated.acr_exchanges()
    asyncio.run(go())
    return (emulated.entra_requests() - entra) / hours, (emulated.acr_exchanges() - acr) / hours


def test_acr_costs_fewer_entra_requests_with_hour_long_entra_tokens(
    emulated: Emulated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60-minute Entra tokens, 3-hour refresh tokens, the default policy (refresh at half the
    lifetime ±10 %), 24 simulated hours: the refresh is planned on the Entra token's hour, so
    about two exchanges an hour either way; without reuse each costs an Entra request, with it
    every refresh that lands with half the Entra token's life left (about half of them, by the
    jitter) costs none. The registry is asked as often as before."""
    assert emulated.emu.access_token_lifetime == 3600
    assert emulated.emu.acr_refresh_token_lifetime == 10800
    monkeypatch.setattr(acr_module, "REUSE_FRACTION", math.inf)  # never reuse: as before
    entra_before, acr_before = entra_requests_per_hour(emulated, 24)
    monkeypatch.undo()
    entra_after, acr_after = entra_requests_per_hour(emulated, 24)
    assert 1.9 <= entra_before <= 2.3
    assert entra_after <= 0.75 * entra_before
    assert acr_after <= acr_before * 1.05


def test_each_exchange_carries_the_entra_token_with_its_own_expiry(emulated: Emulated) -> None:
    """What the endpoint serves of a docker-config token (``bearer``): the Entra token and its
    own ``exp``, not the refresh tokens' — for a fresh Entra token and for a held one."""
    results = emulated.exchanges(2)
    assert emulated.entra_requests() == 1  # the second reused the held Entra token
    for result in results:
        assert isinstance(result, AccessToken)
        assert result.bearer.token == result.token
        assert int(result.bearer.expires_on) == acr_module.jwt_exp(result.token)
        assert result.expires_on > result.bearer.expires_on  # the file lives longer
        assert result.bearer.entra is None
