"""What the endpoint refuses before it asks Entra, over real HTTP against its own daemon: a
resource with an empty path segment (so callers cannot mint scopes, runners and Entra requests
without bound), a ``Host`` that is not the loopback listener (DNS rebinding), and the headers a
browser or a proxy adds (IMDS refuses both kinds; App Service, which has a secret, the
browser's)."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from entra_tokend.endpoint.guards import loopback_host
from support import samples
from support.endpoint import EndpointDaemon

# Only the resource-shape test asks for storage in this module (its daemon is the module's).
STORAGE = "https://storage.azure.com"
VAULT = "https://vault.azure.net"
IMDS_QUERY = f"api-version=2018-02-01&resource={quote(VAULT)}&client_id="


def _storage_scopes(ep: EndpointDaemon) -> list[str]:
    scopes = (r.form.get("scope", "") for r in ep.emulator.token_requests())
    return sorted(s for s in scopes if s.startswith(STORAGE))


def _storage_runners(ep: EndpointDaemon) -> set[str]:
    conn = http.client.HTTPConnection("127.0.0.1", ep.metrics_port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        scrape = conn.getresponse().read().decode()
    finally:
        conn.close()
    tokens = {dict(labels).get("token", "") for _, labels in samples(scrape)}
    return {t for t in tokens if t.startswith(f"endpoint:default:{STORAGE}")}


def test_extra_slashes_are_400_and_start_no_runner(ep: EndpointDaemon) -> None:
    # The reviewer's repro: each count of trailing slashes was a scope of its own.
    for count in range(2, 51):
        status, body = ep.get(STORAGE + "/" * count)
        assert (status, body["statusCode"]) == (400, 400), body
        assert body["message"].startswith("resource must not have an empty path segment")
    for resource in (f"{STORAGE}//x", f"{STORAGE}/x//", f"{STORAGE}///.default"):
        status, body = ep.get(resource)
        assert status == 400, (resource, body)
    status, body = ep.imds(f"api-version=2018-02-01&resource={STORAGE}//")
    assert (status, body["error"]) == (400, "invalid_request")
    assert body["error_description"].startswith("resource must not")
    # The two forms of the allowed resource still work, each its own audience; the scope form
    # of the slashed one is the same scope.
    for resource in (STORAGE, STORAGE + "/", STORAGE + "//.default", STORAGE, STORAGE + "/"):
        status, body = ep.get(resource)
        assert status == 200, (resource, body)
    assert _storage_scopes(ep) == [f"{STORAGE}/.default", f"{STORAGE}//.default"]
    assert _storage_runners(ep) == {
        f"endpoint:default:{STORAGE}/.default",
        f"endpoint:default:{STORAGE}//.default",
    }


def _send(ep: EndpointDaemon, target: str, headers: dict[str, str]) -> tuple[int, Any]:
    """GET ``target`` with exactly ``headers`` (a ``Host`` given here replaces http.client's)."""
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=60)
    try:
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _imds(ep: EndpointDaemon, **headers: str) -> tuple[int, Any]:
    target = "/metadata/identity/oauth2/token?" + IMDS_QUERY + ep.other_client_id
    return _send(ep, target, {"Metadata": "true", **headers})


def _app_service(ep: EndpointDaemon, **headers: str) -> tuple[int, Any]:
    query = {"api-version": "2019-08-01", "resource": VAULT, "client_id": ep.other_client_id}
    target = "/msi/token?" + urlencode(query)
    return _send(ep, target, {"X-IDENTITY-HEADER": ep.secret, **headers})


BROWSER = {
    "Origin": "https://evil.example",
    "Sec-Fetch-Site": "same-origin",
    "Sec-Fetch-Dest": "empty",
    "Sec-Fetch-User": "?1",
}
PROXY = {
    "Forwarded": "for=10.0.0.1",
    "X-Forwarded-For": "10.0.0.1",
    "X-Forwarded-Host": "evil.example",
    "X-Real-IP": "10.0.0.1",
    "Via": "1.1 squid",
}
BAD_HOSTS = ["evil.example", "evil.example:8081", "127.0.0.1.nip.io", "127.1", "10.0.0.1:80"]


@pytest.mark.parametrize(("header", "value"), [*BROWSER.items(), *PROXY.items()])
def test_imds_refuses_browser_and_proxy_headers_naming_them(
    ep: EndpointDaemon, header: str, value: str
) -> None:
    status, body = _imds(ep, **{header: value})
    assert (status, body["error"]) == (400, "invalid_request"), body
    # Header names are case-insensitive: the message spells them Capitalized-Per-Part.
    assert f"the {header.lower()} header are refused" in body["error_description"].lower()
    assert value not in body["error_description"]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_a_host_that_is_not_the_loopback_listener_is_refused(ep: EndpointDaemon, host: str) -> None:
    status, body = _imds(ep, Host=host)
    assert (status, body["error"]) == (400, "invalid_request"), body
    assert body["error_description"].startswith("the Host header must name the loopback")
    status, body = _app_service(ep, Host=host)
    assert (status, body["statusCode"]) == (400, 400), body
    assert body["message"].startswith("the Host header must name the loopback")


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1", "127.0.0.1", "127.0.0.9:8081"])
def test_loopback_hosts_are_served(ep: EndpointDaemon, host: str) -> None:
    assert _imds(ep, Host=host)[0] == 200
    assert _app_service(ep, Host=host)[0] == 200


@pytest.mark.parametrize(("header", "value"), BROWSER.items())
def test_app_service_refuses_browser_headers(ep: EndpointDaemon, header: str, value: str) -> None:
    status, body = _app_service(ep, **{header: value})
    assert (status, body["statusCode"]) == (400, 400), body
    assert f"the {header.lower()} header are refused" in body["message"].lower()


def test_sec_fetch_mode_alone_is_node_fetch_and_served(ep: EndpointDaemon) -> None:
    # Node's built-in fetch (msal-node's) sends exactly this; a browser sends Sec-Fetch-Site
    # with it, which is refused.
    assert _imds(ep, **{"Sec-Fetch-Mode": "cors"})[0] == 200
    assert _app_service(ep, **{"Sec-Fetch-Mode": "cors"})[0] == 200
    browser = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}
    status, body = _imds(ep, **browser)
    assert status == 400
    assert "sec-fetch-site header are refused" in body["error_description"].lower()
    status, body = _app_service(ep, **browser)
    assert status == 400
    assert "sec-fetch-site header are refused" in body["message"].lower()


def test_app_service_serves_a_request_through_a_local_proxy(ep: EndpointDaemon) -> None:
    # The secret protects App Service; an egress proxy on the host may add these.
    status, body = _app_service(ep, **PROXY)
    assert status == 200, body


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:8081", True),
        ("[::1]:8081", True),
        ("[::1]", True),
        ("localhost", True),
        ("::1", False),
        ("[127.0.0.1]", False),
        ("[::1]x", False),
        ("[::1", False),
        ("127.0.0.1:80x", False),
        ("0.0.0.0:8081", False),
        ("localhost.evil.example", False),
        ("", False),
    ],
)
def test_loopback_host(host: str, loopback: bool) -> None:
    assert loopback_host(host) is loopback
