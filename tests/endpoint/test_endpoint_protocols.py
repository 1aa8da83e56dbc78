"""The endpoint's protocols over real HTTP (issue 23): the audience as the caller sent it,
every identity selector, App Service 2017-09-01, IMDS, and bad input in each protocol's shape.

The emulator issues ``aud`` = the scope minus ``/.default``, so a lost trailing slash shows
both in the recorded scope and in the token's ``aud``.
"""

from __future__ import annotations

import calendar
import time
from typing import Any
from urllib.parse import quote

import pytest

from endpoint.ep_helpers import EndpointDaemon
from testlib import jwt_claims, wait_until

STORAGE = "https://storage.azure.com"
VAULT = "https://vault.azure.net"


def _scopes(ep: EndpointDaemon) -> list[str]:
    return [r.form.get("scope", "") for r in ep.emulator.token_requests()]


@pytest.mark.parametrize(
    ("resource", "scope", "aud"),
    [
        (
            "https://database.windows.net/",
            "https://database.windows.net//.default",
            "https://database.windows.net/",
        ),
        (
            "https://database.windows.net",
            "https://database.windows.net/.default",
            "https://database.windows.net",
        ),
        (
            "https://management.core.windows.net/",
            "https://management.core.windows.net//.default",
            "https://management.core.windows.net/",
        ),
    ],
)
def test_the_audience_is_the_resource_as_sent(
    ep: EndpointDaemon, resource: str, scope: str, aud: str
) -> None:
    status, body = ep.get(resource)
    assert status == 200, body
    assert body["resource"] == resource
    assert jwt_claims(body["access_token"])["aud"] == aud
    assert scope in _scopes(ep)


def test_slash_and_no_slash_are_two_tokens_under_one_allow_entry(ep: EndpointDaemon) -> None:
    _, with_slash = ep.get("https://database.windows.net/")
    _, without = ep.get("https://database.windows.net")
    assert with_slash["access_token"] != without["access_token"]


@pytest.mark.parametrize("selector", ["client_id", "object_id", "principal_id", "mi_res_id"])
def test_app_service_selects_by_each_selector(ep: EndpointDaemon, selector: str) -> None:
    value = {
        "client_id": ep.other_client_id,
        "object_id": ep.other_object_id.upper(),  # ids compare case-insensitively
        "principal_id": ep.other_object_id,
        "mi_res_id": ep.other_resource_id,
    }[selector]
    status, body = ep.get(VAULT, **{selector: value})
    assert status == 200, body
    assert body["client_id"] == ep.other_client_id
    assert jwt_claims(body["access_token"])["appid"] == ep.other_client_id


@pytest.mark.parametrize(
    ("param", "reason"),
    [
        ("Object_Id", "Object_Id is not an identity selector of this protocol"),
        ("Client_Id", "Client_Id is not an identity selector of this protocol"),
        ("MI_RES_ID", "MI_RES_ID is not an identity selector of this protocol"),
        ("clientid", "clientid is not an identity selector of this protocol"),
        ("msi_res_id", "msi_res_id is not an identity selector of this protocol"),
    ],
)
def test_a_misspelt_selector_is_400_never_the_default_identity(
    ep: EndpointDaemon, param: str, reason: str
) -> None:
    status, body = ep.get(STORAGE, **{param: ep.other_client_id})
    assert (status, body["statusCode"]) == (400, 400)
    assert body["message"].startswith(reason)
    assert "access_token" not in body


def _query(
    ep: EndpointDaemon, text: str, version: str = "2019-08-01"
) -> tuple[int, dict[str, Any]]:
    return ep.raw(f"/msi/token?api-version={version}&" + text, {"X-IDENTITY-HEADER": ep.secret})


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (f"resource={STORAGE}&resource={VAULT}", "parameter resource is given twice"),
        (f"resource={STORAGE}&client_id=a&client_id=b", "parameter client_id is given twice"),
        (f"resource={VAULT}&client_id=x&object_id=y", "give one identity selector"),
        (f"resource={STORAGE}&=x", "malformed query string"),
        ("resource=https%3A%2F%2F%FF.example", "malformed query string"),
        ("resource=storage", "resource must be an absolute URI"),
        ("resource=https://bad%ZZhost", "resource must be an absolute URI"),
        ("resource=https://a.example/?x=1", "resource must be an absolute URI"),
        (f"resource={STORAGE}&client_id=", "client_id is empty"),
    ],
)
def test_bad_app_service_input_is_a_clear_400(ep: EndpointDaemon, query: str, reason: str) -> None:
    status, body = _query(ep, query)
    assert (status, body["statusCode"]) == (400, 400), body
    assert body["message"].startswith(reason)


def test_a_denied_request_logs_the_allow_entry_that_would_admit_it(ep: EndpointDaemon) -> None:
    # vault is granted to "other" only; ask for it as the default identity
    status, body = ep.get(VAULT, client_id=ep.emulator.client_id)
    assert status == 403
    assert "entra-tokend's [endpoint] allow list" in body["message"]
    event = ep.daemon.wait_event("endpoint request denied", resource=VAULT)
    assert event["would_admit"] == f'"{VAULT}"'
    assert event["identity"] == "default"
    assert event["selector"] == f"client_id={ep.emulator.client_id}"
    assert ep.secret not in ep.daemon.log_text()


# ---- App Service 2017-09-01 -------------------------------------------------------------


def _legacy(ep: EndpointDaemon, query: str, secret: str | None) -> tuple[int, dict[str, Any]]:
    headers = {} if secret is None else {"secret": secret}
    return ep.raw("/msi/token?api-version=2017-09-01&" + query, headers)


def test_legacy_protocol_answers_the_documented_shape(ep: EndpointDaemon) -> None:
    # Written from the App Service 2017-09-01 documentation: MSI_ENDPOINT, header `secret`,
    # `expires_on` a UTC date "MM/dd/yyyy hh:mm:ss tt +00:00".
    from azure.identity._credentials.azure_ml import _parse_expires_on

    status, body = _legacy(ep, f"resource={STORAGE}", ep.secret)
    assert status == 200, body
    assert set(body) == {"access_token", "expires_on", "resource", "token_type"}
    _, current = ep.get(STORAGE)
    assert body["access_token"] == current["access_token"]
    parsed = time.strptime(body["expires_on"], "%m/%d/%Y %I:%M:%S %p +00:00")
    assert calendar.timegm(parsed) == int(current["expires_on"])
    content: dict[str, object] = {"expires_on": body["expires_on"]}
    _parse_expires_on(content)  # azure-identity's own parser of this version's dates
    assert content["expires_on"] == int(current["expires_on"])


def test_legacy_protocol_selects_by_clientid(ep: EndpointDaemon) -> None:
    status, body = _legacy(ep, f"resource={VAULT}&clientid={ep.other_client_id}", ep.secret)
    assert status == 200, body
    assert jwt_claims(body["access_token"])["appid"] == ep.other_client_id
    status, body = _legacy(ep, f"resource={VAULT}&client_id={ep.other_client_id}", ep.secret)
    assert status == 400
    assert body["message"].startswith("client_id is not an identity selector")


@pytest.mark.parametrize(
    ("secret", "status", "reason"),
    [(None, 401, "secret is missing"), ("wrong", 401, "secret is wrong")],
)
def test_legacy_protocol_needs_its_secret_header(
    ep: EndpointDaemon, secret: str | None, status: int, reason: str
) -> None:
    got, body = _legacy(ep, f"resource={STORAGE}", secret)
    assert (got, body["statusCode"], body["message"]) == (status, status, reason)
    # The 2019 header does not open the 2017 protocol.
    got, _ = ep.raw(
        f"/msi/token?api-version=2017-09-01&resource={STORAGE}", {"X-IDENTITY-HEADER": ep.secret}
    )
    assert got == 401


# ---- IMDS --------------------------------------------------------------------------------


def test_imds_answers_its_shape(ep: EndpointDaemon) -> None:
    before = int(time.time())
    status, body = ep.imds()
    after = int(time.time())
    assert status == 200, body
    assert set(body) == {
        "access_token",
        "client_id",
        "expires_in",
        "expires_on",
        "ext_expires_in",
        "not_before",
        "resource",
        "token_type",
    }
    _, current = ep.get(STORAGE)
    assert body["access_token"] == current["access_token"]
    assert body["expires_on"] == current["expires_on"]
    left = int(body["expires_in"])
    assert int(body["expires_on"]) - after <= left <= int(body["expires_on"]) - before
    assert (body["resource"], body["token_type"]) == (STORAGE, "Bearer")
    assert body["client_id"] == ep.emulator.client_id


@pytest.mark.parametrize("selector", ["client_id", "object_id", "msi_res_id"])
def test_imds_selects_by_each_selector(ep: EndpointDaemon, selector: str) -> None:
    value = {
        "client_id": ep.other_client_id,
        "object_id": ep.other_object_id,
        "msi_res_id": ep.other_resource_id,
    }[selector]
    status, body = ep.imds(f"api-version=2018-02-01&resource={VAULT}&{selector}={quote(value)}")
    assert status == 200, body
    assert body["client_id"] == ep.other_client_id


@pytest.mark.parametrize(
    ("query", "headers", "status", "error", "description"),
    [
        ("", {}, 400, "bad_request_102", "Required metadata header not specified"),
        ("", {"Metadata": "false"}, 400, "bad_request_102", "Required metadata header"),
        ("", {"Metadata": "true", "X-Forwarded-For": "10.0.0.1"}, 400, "invalid_request", ""),
        ("", {"Metadata": "true", "Origin": "https://evil.example"}, 400, "invalid_request", ""),
        ("api-version=2017-09-01&resource=" + STORAGE, None, 400, "invalid_request", "api-ver"),
        ("api-version=2018-02-01", None, 400, "invalid_request", "resource is required"),
        ("api-version=2018-02-01&resource=x", None, 400, "invalid_request", "resource must"),
        (f"api-version=2018-02-01&resource={STORAGE}&mi_res_id=/x", None, 400, "", "mi_res_id"),
        (f"api-version=2018-02-01&resource={STORAGE}&Client_Id=x", None, 400, "", "Client_Id"),
        (f"api-version=2018-02-01&resource={VAULT}&client_id=0", None, 400, "", "Identity not"),
        ("api-version=2018-02-01&resource=https://x.example", None, 403, "access_denied", "res"),
        ("api-version=2018-02-01&api-version=2018-02-01&resource=" + STORAGE, None, 400, "", ""),
    ],
)
def test_bad_imds_input_is_a_clear_4xx_in_its_shape(  # noqa: PLR0917 (parametrized)
    ep: EndpointDaemon,
    query: str,
    headers: dict[str, str] | None,
    status: int,
    error: str,
    description: str,
) -> None:
    got, body = ep.imds(query or f"api-version=2018-02-01&resource={STORAGE}", headers)
    assert got == status, body
    assert set(body) == {"error", "error_description"}
    assert body["error"] == (error or "invalid_request")
    assert body["error_description"].startswith(description)


def test_bad_input_logs_nothing_secret(ep: EndpointDaemon) -> None:
    ep.imds(f"api-version=2018-02-01&resource={ep.secret}")
    _query(ep, f"resource={STORAGE}&client_id={ep.secret}")
    _legacy(ep, f"resource={STORAGE}", ep.secret + "x")
    wait_until(lambda: ep.daemon.count("endpoint request denied") > 0)
    log = ep.daemon.log_text()
    assert ep.secret not in log
    for token in ep.emulator.issued_tokens:
        assert token not in log
