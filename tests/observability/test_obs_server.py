"""The HTTP endpoints, exercised with real HTTP on loopback."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket

import pytest

from entra_tokend import server as server_module
from observability.obs_helpers import LiveServer, populate, request
from testlib import sample_names

METRIC_FAMILIES = (
    "entra_tokend_token_expiry_timestamp_seconds",
    "entra_tokend_token_last_success_timestamp_seconds",
    "entra_tokend_token_refreshes_total",
    "entra_tokend_token_refresh_failures_total",
    "entra_tokend_exchange_duration_seconds_bucket",
    "entra_tokend_assertion_expiry_timestamp_seconds",
    "entra_tokend_assertion_rotations_total",
    "entra_tokend_ready",
    "entra_tokend_build_info",
    "entra_tokend_hook_failures_total",
)


def test_healthz_answers_ok(live: LiveServer) -> None:
    reply = request(live.port, "/healthz")
    assert (reply.status, reply.body) == (200, b"ok\n")
    assert reply.headers["content-type"].startswith("text/plain")


def test_head_sends_headers_without_body(live: LiveServer) -> None:
    get = request(live.port, "/healthz")
    head = request(live.port, "/healthz", method="HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == str(len(get.body))


def test_metrics_text_format_has_every_family(live: LiveServer) -> None:
    populate(live.metrics)
    reply = request(live.port, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = sample_names(reply.body.decode())
    missing = [name for name in METRIC_FAMILIES if name not in names]
    assert not missing


def test_metrics_openmetrics_when_asked(live: LiveServer) -> None:
    populate(live.metrics)
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    reply = request(live.port, "/metrics", headers={"Accept": accept})
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("application/openmetrics-text")
    assert reply.body.endswith(b"# EOF\n")
    assert b"# TYPE entra_tokend_token_refreshes counter" in reply.body


def test_metrics_text_when_openmetrics_not_asked(live: LiveServer) -> None:
    reply = request(live.port, "/metrics", headers={"Accept": "text/plain"})
    assert reply.headers["content-type"].startswith("text/plain")
    assert b"# EOF" not in reply.body


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text;version=1.0.0"])
def test_no_created_series(live: LiveServer, accept: str) -> None:
    populate(live.metrics)
    reply = request(live.port, "/metrics", headers={"Accept": accept} if accept else None)
    assert b"entra_tokend_token_refreshes" in reply.body
    assert b"_created" not in reply.body


def test_readyz_flips_from_503_to_200(live: LiveServer) -> None:
    live.readiness.tokens = {"graph": "pending", "storage": "valid"}
    reply = request(live.port, "/readyz")
    assert reply.status == 503
    assert reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body) == {
        "ready": False,
        "tokens": {"graph": "pending", "storage": "valid"},
    }

    live.readiness.tokens = {"graph": "valid", "storage": "valid"}
    live.readiness.ready = True
    reply = request(live.port, "/readyz")
    assert reply.status == 200
    assert json.loads(reply.body) == {
        "ready": True,
        "tokens": {"graph": "valid", "storage": "valid"},
    }


def test_readyz_answers_500_when_readiness_raises(live: LiveServer) -> None:
    live.readiness.fail = True
    reply = request(live.port, "/readyz")
    assert reply.status == 500
    assert b"readiness broke" not in reply.body
    assert request(live.port, "/healthz").status == 200


@pytest.mark.parametrize("path", ["/", "/metrics/", "/token", "/../etc/passwd", "/readyzz"])
def test_unknown_paths_are_404(live: LiveServer, path: str) -> None:
    assert request(live.port, path).status == 404


def test_query_string_is_ignored(live: LiveServer) -> None:
    assert request(live.port, "/healthz?verbose=1").body == b"ok\n"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_are_405(live: LiveServer, method: str) -> None:
    reply = request(live.port, "/metrics", method=method, body=b"x=1")
    assert reply.status == 405
    assert reply.headers["allow"] == "GET, HEAD"


def test_keep_alive_serves_several_requests_on_one_connection(live: LiveServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:
        for path in ("/healthz", "/metrics", "/readyz", "/healthz"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status in (200, 503)
            assert resp.getheader("connection") is None  # not closing
        assert conn.sock is not None
    finally:
        conn.close()


def test_connection_close_is_honoured(live: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = _read_to_eof(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in data
    assert data.endswith(b"\r\n\r\nok\n")


def test_malformed_request_line_is_400(live: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        data = _read_to_eof(sock)
    assert data.startswith(b"HTTP/1.1 400 ")


def test_oversized_request_head_is_refused(live: LiveServer) -> None:
    pad = b"a" * (server_module.MAX_HEAD_BYTES + 2000)
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Pad: " + pad + b"\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        data = _read_to_eof(sock)
    assert data.startswith(b"HTTP/1.1 431 ")
    assert request(live.port, "/healthz").status == 200


def test_slow_client_is_cut_off_without_blocking_others(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "READ_TIMEOUT", 0.5)
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
        assert request(live.port, "/healthz").status == 200  # served meanwhile
        assert _read_to_eof(slow) == b""  # the server closed it without answering


def test_idle_connections_at_the_limit_are_evicted_oldest_first(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Policy (httpserver, rule 2): at the limit the oldest connection waiting for a request
    head makes room, so idle keep-alive or half-open clients cannot starve the probes."""
    monkeypatch.setattr(server_module, "MAX_CONNECTIONS", 2)
    held = [http.client.HTTPConnection("127.0.0.1", live.port, timeout=30) for _ in range(2)]
    try:
        for conn in held:  # each stays open (keep-alive) and counts against the limit
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() == b"ok\n"
        assert request(live.port, "/healthz").status == 200  # served: the oldest was evicted
        oldest = held[0].sock
        assert oldest is not None
        with contextlib.suppress(ConnectionResetError):
            assert oldest.recv(1) == b""  # closed by the server
    finally:
        for conn in held:
            conn.close()


def test_many_half_open_connections_do_not_starve_healthz(live: LiveServer) -> None:
    """Issue 13 item 6: 40 idle half-open connections (more than MAX_CONNECTIONS) and a
    slowloris still leave /healthz answering."""
    idle = [socket.create_connection(("127.0.0.1", live.port), timeout=30) for _ in range(40)]
    try:
        idle[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # an unfinished head
        for _ in range(3):
            assert request(live.port, "/healthz").status == 200
    finally:
        for sock in idle:
            sock.close()


def test_unparsable_openmetrics_version_is_answered(live: LiveServer) -> None:
    accept = "application/openmetrics-text; version=abc"
    reply = request(live.port, "/metrics", headers={"Accept": accept})
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert request(live.port, "/healthz").status == 200


def test_early_disconnects_are_quiet(live: LiveServer, capfd: pytest.CaptureFixture[str]) -> None:
    for payload in (b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b""):
        sock = socket.create_connection(("127.0.0.1", live.port), timeout=30)
        if payload:
            sock.sendall(payload)
        # RST instead of FIN: the harshest early disconnect.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    assert request(live.port, "/healthz").status == 200
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert "Exception" not in out + err


def test_request_body_is_not_read_and_connection_closes(live: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nxyz")
        data = _read_to_eof(sock)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in data


def test_no_endpoint_echoes_request_secrets(live: LiveServer) -> None:
    populate(live.metrics)
    secret = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    for path in ("/metrics", "/healthz", "/readyz", "/nope", f"/healthz?{secret}"):
        reply = request(live.port, path, headers={"Authorization": f"Bearer {secret}"})
        assert secret.encode() not in reply.body
        assert all(secret not in v for v in reply.headers.values())


def _read_to_eof(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    for _ in range(10_000):  # bounded; each recv blocks at most the socket timeout
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    raise AssertionError("server kept sending")


def test_stop_server_drops_idle_keep_alive_connections(live: LiveServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b"ok\n"  # the connection now idles in keep-alive
        live.stop_server()
        assert conn.sock is not None
        with contextlib.suppress(ConnectionResetError):  # an abort (RST) is closed too
            assert conn.sock.recv(1) == b""
    finally:
        conn.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", live.port), timeout=30).close()


def test_a_client_cannot_mint_formats_with_version_numbers(live: LiveServer) -> None:
    """Every OpenMetrics 1.x version asked for is answered as 1.0.0 and rendered (and cached)
    once: a scraper counting up version numbers cannot force a full render per request or
    evict the real Prometheus server's cached format."""
    populate(live.metrics)
    types = set()
    for minor in range(12):
        accept = f"application/openmetrics-text; version=1.0.{minor}"
        reply = request(live.port, "/metrics", headers={"Accept": accept})
        assert reply.status == 200
        types.add(reply.headers["content-type"])
    assert types == {
        "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=underscores"
    }
    assert live.exposition.formats_cached == sorted(types)
    reply = request(
        live.port, "/metrics", headers={"Accept": "application/openmetrics-text; version=2.7.1"}
    )
    assert "version=2.0.0;" in reply.headers["content-type"]
