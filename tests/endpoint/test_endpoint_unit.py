"""The endpoint in process, with a provider of our own (no daemon): how each protocol renders a
provider failure (configuration → 4xx at once, transient → 5xx, the AADSTS detail shown), and
that the allow-list, ``imds`` and identity selectors are read per request (a reload replaces
them)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from entra_tokend.endpoint import Endpoint, TokenUnavailable
from entra_tokend.httpserver import Request, Response
from entra_tokend.metrics import Metrics
from entra_tokend.model import AccessToken, EndpointSpec, Grant, Identity, Reason

SECRET = "s3cr3t-s3cr3t-s3cr3t"
STORAGE = "https://storage.azure.com"
HOST = "127.0.0.1:8081"


def _identity(name: str, client_id: str, object_id: str | None = None) -> Identity:
    return Identity(
        name=name,
        tenant_id="t",
        client_id=client_id,
        token_file=Path("/dev/null"),
        authority_host="https://login.example",
        object_id=object_id,
    )


class Provider:
    """Answers with a token for the scope asked, or raises ``failure``; records each ask."""

    def __init__(self) -> None:
        self.failure: TokenUnavailable | None = None
        self.asked: list[tuple[str, str]] = []

    async def get(self, identity: str, scope: str) -> AccessToken:
        self.asked.append((identity, scope))
        if self.failure is not None:
            raise self.failure
        return AccessToken(
            token=f"token-for-{identity}",
            token_type="Bearer",
            expires_in=3600,
            expires_on=2_000_000_000,
            refresh_in=None,
            scope=scope,
            request_id="r",
        )


class Setup:
    def __init__(self) -> None:
        self.spec = EndpointSpec(
            listen=("127.0.0.1", 0),
            secret=SECRET,
            secret_source="secret_env = S",
            grants=(Grant(STORAGE, "default"),),
        )
        self.identities = {"default": _identity("default", "c-default")}
        self.provider = Provider()
        self.endpoint = Endpoint(
            lambda: self.spec, lambda: self.identities, self.provider, Metrics()
        )

    def app_service(self, query: str, version: str = "2019-08-01") -> tuple[int, Any]:
        pairs = tuple(
            (k, v)
            for k, _, v in (p.partition("=") for p in f"api-version={version}&{query}".split("&"))
        )
        header = "x-identity-header" if version == "2019-08-01" else "secret"
        headers = {header: SECRET, "host": HOST}
        request = Request("GET", "/msi/token", dict(pairs), pairs, headers, "127.0.0.1:1")
        return _parsed(asyncio.run(self.endpoint.handle(request)))

    def imds(self, query: str) -> tuple[int, Any]:
        pairs = tuple(
            (k, v)
            for k, _, v in (p.partition("=") for p in f"api-version=2018-02-01&{query}".split("&"))
        )
        request = Request(
            "GET",
            "/metadata/identity/oauth2/token",
            dict(pairs),
            pairs,
            {"metadata": "true", "host": HOST},
            "p",
        )
        return _parsed(asyncio.run(self.endpoint.handle_imds(request)))


def _parsed(response: Response) -> tuple[int, Any]:
    try:
        return response.status, json.loads(response.body)
    except ValueError:
        return response.status, response.body.decode()


AADSTS = "AADSTS700016: Application not found in the directory (check client_id)"


@pytest.mark.parametrize(
    ("configuration", "app_service", "imds"),
    [(True, 400, (400, "invalid_request")), (False, 500, (500, "unknown"))],
)
def test_provider_failures_are_rendered_per_protocol_with_the_detail(
    configuration: bool, app_service: int, imds: tuple[int, str]
) -> None:
    setup = Setup()
    setup.spec = replace(setup.spec, imds=True)
    setup.provider.failure = TokenUnavailable(
        "Entra rejected the identity",
        reason=Reason.CLIENT_ERROR,
        configuration=configuration,
        detail=AADSTS,
    )
    status, body = setup.app_service(f"resource={STORAGE}")
    assert (status, body["statusCode"]) == (app_service, app_service)
    assert AADSTS in body["message"]
    status, body = setup.imds(f"resource={STORAGE}")
    assert (status, body["error"]) == imds
    assert AADSTS in body["error_description"]


def test_a_transient_failure_is_a_5xx_with_its_message() -> None:
    setup = Setup()
    setup.provider.failure = TokenUnavailable("timed out waiting for the token")
    status, body = setup.app_service(f"resource={STORAGE}")
    assert (status, body["message"]) == (500, "timed out waiting for the token")


def test_allow_list_imds_and_selectors_are_read_per_request() -> None:
    setup = Setup()
    vault = "https://vault.azure.net"
    assert setup.app_service(f"resource={vault}")[0] == 403
    assert setup.imds(f"resource={STORAGE}")[0] == 404  # imds is off
    assert setup.app_service(f"resource={STORAGE}&object_id=o-1")[0] == 400
    # A reload replaces the spec and the identities whole.
    setup.spec = replace(
        setup.spec, grants=(*setup.spec.grants, Grant(vault, "default")), imds=True
    )
    setup.identities = {"default": _identity("default", "c-default", object_id="O-1")}
    assert setup.app_service(f"resource={vault}")[0] == 200
    assert setup.imds(f"resource={STORAGE}")[0] == 200
    status, body = setup.app_service(f"resource={STORAGE}&object_id=o-1")
    assert (status, body["client_id"]) == (200, "c-default")


def test_the_scope_keeps_the_callers_resource() -> None:
    setup = Setup()
    setup.spec = replace(setup.spec, grants=(Grant("https://database.windows.net", "default"),))
    for resource in ("https://database.windows.net/", "https://database.windows.net"):
        assert setup.app_service(f"resource={resource}")[0] == 200
    assert setup.app_service("resource=https://database.windows.net//.default")[0] == 200
    assert [scope for _, scope in setup.provider.asked] == [
        "https://database.windows.net//.default",
        "https://database.windows.net/.default",
        "https://database.windows.net//.default",
    ]


def test_an_endpoint_removed_by_reload_answers_404() -> None:
    setup = Setup()
    spec: EndpointSpec | None = setup.spec
    endpoint = Endpoint(lambda: spec, lambda: setup.identities, setup.provider, Metrics())
    spec = None
    request = Request("GET", "/msi/token", {}, (), {}, "p")
    assert asyncio.run(endpoint.handle(request)).status == 404
