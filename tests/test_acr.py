"""The ACR exchange stage in process: challenge discovery, the exchange request, the earliest
expiry, error classes — against httpx.MockTransport playing the registry (Entra is a fake
inner stage; the end-to-end test with the emulator and a real registry is in test_outputs_e2e)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from entra_tokend.exchange import (
    AcrExchange,
    ClientError,
    ClientPool,
    RequestTimeout,
    ServerError,
    Throttled,
)
from entra_tokend.logging import redact_text
from entra_tokend.model import AccessToken, Identity
from entra_tokend.outputs import dockerconfig

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
