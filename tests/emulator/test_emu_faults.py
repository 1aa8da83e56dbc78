"""Every injectable fault, observed from a real client over loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from emu_helpers import (
    assert_entra_error,
    client_fixture,  # noqa: F401 - pytest fixtures
    post_token,
    token_form,
)

from entra_tokend.emulator import Emulator, Fault


def test_status_429_with_retry_after(emulator: Emulator, client: httpx.Client) -> None:
    emulator.inject(Fault("status", status=429, retry_after="7"))
    resp = post_token(client, emulator, token_form(emulator))
    assert_entra_error(resp, 429, "temporarily_unavailable", 90055)
    assert resp.headers["retry-after"] == "7"
    assert post_token(client, emulator, token_form(emulator)).status_code == 200


def test_status_fault_counts_and_overrides(emulator: Emulator, client: httpx.Client) -> None:
    emulator.inject(Fault("status", count=2, status=503), Fault("status", error="x", aadsts=1234))
    assert emulator.pending_faults() == 3
    first = post_token(client, emulator, token_form(emulator))
    second = post_token(client, emulator, token_form(emulator))
    third = post_token(client, emulator, token_form(emulator))
    fourth = post_token(client, emulator, token_form(emulator))
    assert [first.status_code, second.status_code] == [503, 503]
    assert "retry-after" not in first.headers
    assert first.json()["error"] == "temporarily_unavailable"
    assert_entra_error(third, 500, "x", 1234)
    assert fourth.status_code == 200
    assert [r.status for r in emulator.token_requests()] == [503, 503, 500, 200]


def test_clear_faults(emulator: Emulator, client: httpx.Client) -> None:
    emulator.inject(Fault("status", count=5))
    emulator.clear_faults()
    assert emulator.pending_faults() == 0
    assert post_token(client, emulator, token_form(emulator)).status_code == 200


def test_faults_spare_discovery_requests(emulator: Emulator, client: httpx.Client) -> None:
    emulator.inject(Fault("status"))
    assert client.get(f"{emulator.authority_host}/openid/v1/jwks").status_code == 200
    assert post_token(client, emulator, token_form(emulator)).status_code == 500


def test_delay_then_normal_answer(emulator: Emulator, client: httpx.Client) -> None:
    emulator.inject(Fault("delay", delay=0.3))
    started = time.monotonic()
    resp = post_token(client, emulator, token_form(emulator))
    assert resp.status_code == 200
    assert time.monotonic() - started >= 0.3
    assert resp.json()["access_token"] in emulator.issued_tokens


def test_delay_outlasts_a_short_client_timeout(emulator: Emulator) -> None:
    emulator.inject(Fault("delay", delay=30))
    with httpx.Client(trust_env=False, timeout=0.2) as short, pytest.raises(httpx.ReadTimeout):
        post_token(short, emulator, token_form(emulator))


def _raw_post(emu: Emulator, body: bytes) -> socket.socket:
    url = urlsplit(emu.token_endpoint)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10)
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


def test_reset_sends_a_tcp_rst(emulator: Emulator, client: httpx.Client) -> None:
    emulator.inject(Fault("reset"))
    with (
        _raw_post(emulator, b"grant_type=client_credentials") as sock,
        pytest.raises(ConnectionResetError),
    ):
        sock.recv(65536)
    emulator.inject(Fault("reset"))
    with pytest.raises(httpx.TransportError):
        post_token(client, emulator, token_form(emulator))
    assert [r.status for r in emulator.token_requests()] == [0, 0]
    assert post_token(client, emulator, token_form(emulator)).status_code == 200


def test_html_body(emulator: Emulator, client: httpx.Client) -> None:
    emulator.inject(Fault("html"))
    resp = post_token(client, emulator, token_form(emulator))
    assert resp.status_code == 502
    assert resp.headers["content-type"].startswith("text/html")
    assert resp.text.startswith("<!DOCTYPE html>")
    with pytest.raises(json.JSONDecodeError):
        resp.json()


def test_non_json_body(emulator: Emulator, client: httpx.Client) -> None:
    emulator.inject(Fault("non_json"))
    resp = post_token(client, emulator, token_form(emulator))
    assert resp.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        resp.json()


def test_no_access_token(emulator: Emulator, client: httpx.Client) -> None:
    emulator.inject(Fault("no_access_token"))
    body = post_token(client, emulator, token_form(emulator)).json()
    assert body["token_type"] == "Bearer"
    assert "expires_in" in body
    assert "access_token" not in body


def test_no_expires_in(emulator: Emulator, client: httpx.Client) -> None:
    emulator.inject(Fault("no_expires_in"))
    resp = post_token(client, emulator, token_form(emulator))
    assert resp.status_code == 200
    body = resp.json()
    assert body["access_token"]
    assert "expires_in" not in body
    assert emulator.issued_tokens == []  # a broken answer carries no real token


def test_hang_holds_until_timeout_elapses_then_closes(emulator: Emulator) -> None:
    emulator.inject(Fault("hang", delay=0.3))
    with httpx.Client(trust_env=False, timeout=10) as c, pytest.raises(httpx.RemoteProtocolError):
        post_token(c, emulator, token_form(emulator))
    assert [r.status for r in emulator.token_requests()] == [0]


def test_hang_is_released_by_stop(emulator: Emulator) -> None:
    emulator.inject(Fault("hang"))
    outcome: list[BaseException] = []

    def call() -> None:
        with httpx.Client(trust_env=False, timeout=30) as c:
            try:
                post_token(c, emulator, token_form(emulator))
            except httpx.TransportError as exc:
                outcome.append(exc)

    t = threading.Thread(target=call)
    t.start()
    emulator.wait_for_requests(1, timeout=10)
    assert t.is_alive()  # held: no answer yet
    emulator.stop()
    t.join(timeout=10)
    assert not t.is_alive()
    assert len(outcome) == 1


def test_stop_closes_idle_keep_alive_connections(emulator: Emulator, client: httpx.Client) -> None:
    assert post_token(client, emulator, token_form(emulator)).status_code == 200
    emulator.stop()
    with pytest.raises(httpx.TransportError):
        post_token(client, emulator, token_form(emulator))


def test_fault_from_dict_rejects_unknown_input() -> None:
    with pytest.raises(ValueError, match="unknown fault fields"):
        Fault.from_dict({"kind": "status", "colour": "red"})
    with pytest.raises(ValueError, match="fault kind"):
        Fault.from_dict({"kind": "explode"})
    with pytest.raises(ValueError, match="count"):
        Fault("status", count=0)
    assert Fault.from_dict({"kind": "status", "status": 429, "retry_after": 5}) == Fault(
        "status", status=429, retry_after="5"
    )


def test_registry_answer_faults_need_the_exchange_target_and_a_number() -> None:
    with pytest.raises(ValueError, match="acr_exchange"):
        Fault("echo")  # aimed at Entra's token endpoint, which cannot echo a sent token
    with pytest.raises(ValueError, match="JSON number"):
        Fault("refresh_exp", target="acr_exchange", exp="soon")
    with pytest.raises(ValueError, match="JSON number"):
        Fault("refresh_exp", target="acr_exchange")
    fault = Fault.from_dict({"kind": "refresh_exp", "target": "acr_exchange", "exp": "1e400"})
    assert fault.exp == "1e400"


def test_malformed_chunked_body_gets_400_and_a_closed_connection(emulator: Emulator) -> None:
    url = urlsplit(emulator.token_endpoint)
    with socket.create_connection((url.hostname or "", url.port or 80), timeout=10) as sock:
        sock.sendall(
            f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".encode()
        )
        answer = b""
        while data := sock.recv(65536):  # the server closes: framing is lost
            answer += data
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"malformed chunk size" in answer
    assert [r.status for r in emulator.requests] == [400]


def test_chunked_token_request_is_decoded(emulator: Emulator) -> None:
    body = str(httpx.QueryParams(token_form(emulator))).encode()

    def chunks() -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    with httpx.Client(trust_env=False, timeout=10) as c:
        resp = c.post(
            emulator.token_endpoint,
            content=chunks(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert resp.status_code == 200, resp.text
    (rec,) = emulator.token_requests()
    assert rec.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in rec.headers
