"""Token-response parsing and error classification; fuzzed so no input escapes untyped."""

from __future__ import annotations

import contextlib
import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entra_tokend.exchange import (
    InvalidResponse,
    error_details,
    parse_retry_after,
    parse_token_response,
)

NOW = 1_800_000_000.0


def test_success_body_like_entra() -> None:
    body = json.dumps(
        {
            "token_type": "Bearer",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": "a.b.c",
        }
    ).encode()
    token = parse_token_response(body, "s/.default", "rid", NOW)
    assert token.token == "a.b.c"
    assert token.expires_on == NOW + 3599
    assert token.refresh_in is None
    assert "a.b.c" not in repr(token)


def test_numeric_strings_and_refresh_in() -> None:
    body = b'{"access_token":"x","expires_in":"86399","refresh_in":43199}'
    token = parse_token_response(body, "s", "rid", NOW)
    assert token.expires_in == 86399
    assert token.refresh_in == 43199


def test_invalid_bodies_name_the_problem_never_the_token() -> None:
    cases = {
        b"<html>oops</html>": "is not JSON",
        b"[]": "is not a JSON object",
        b'{"expires_in": 10}': "has no access_token",
        b'{"access_token": "secret.token.value"}': "has no usable expires_in",
        b'{"access_token": "secret.token.value", "expires_in": -5}': "has no usable expires_in",
        b'{"access_token": "secret token", "expires_in": 5}': "whitespace",
    }
    for body, why in cases.items():
        with pytest.raises(InvalidResponse) as info:
            parse_token_response(body, "s", "rid", NOW)
        assert why in str(info.value)
        assert "secret" not in str(info.value)


def test_error_details_from_entra_body() -> None:
    body = {
        "error": "invalid_client",
        "error_description": "AADSTS700016: Application with identifier 'x' was not found.\r\n"
        "Trace ID: t\r\nCorrelation ID: c\r\nTimestamp: 2026-01-01 00:00:00Z",
        "error_codes": [700016],
        "trace_id": "t-id",
        "correlation_id": "c-id",
    }
    d = error_details(400, body)
    assert d.aadsts == 700016
    assert d.error == "invalid_client"
    assert d.description == "AADSTS700016: Application with identifier 'x' was not found."
    assert (d.trace_id, d.correlation_id) == ("t-id", "c-id")


def test_aadsts_from_description_when_codes_missing() -> None:
    assert (
        error_details(400, {"error_description": "AADSTS90002: Tenant not found"}).aadsts == 90002
    )


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("120", NOW) == 120
    assert parse_retry_after("Thu, 15 Jan 2027 08:00:00 GMT", 1_799_999_000.0) is not None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 0.0  # in the past
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=6,
)


@given(st.binary())
def test_fuzz_parser_bytes_never_escape_untyped(body: bytes) -> None:
    with contextlib.suppress(InvalidResponse):
        parse_token_response(body, "s", "rid", NOW)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["access_token", "expires_in", "refresh_in", "token_type", "x"]),
        json_values,
    )
)
def test_fuzz_parser_json_shapes(doc: dict[str, object]) -> None:
    try:
        token = parse_token_response(json.dumps(doc).encode(), "s", "rid", NOW)
    except InvalidResponse:
        return
    assert token.token
    assert token.expires_in > 0


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(100, 599), json_values)
def test_fuzz_error_details_any_body(status: int, body: object) -> None:
    details = error_details(status, body)
    assert details.status == status


@given(st.text(alphabet=string.printable, max_size=60))
def test_fuzz_retry_after(value: str) -> None:
    result = parse_retry_after(value, NOW)
    assert result is None or result >= 0
