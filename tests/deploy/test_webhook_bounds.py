"""`entra-tokend webhook` against hostile requests: oversized bodies and pods, malformed shapes,
deep nesting, too many connections, clients that drip their request. Each gets an answer (or a
closed connection) and a log line; the webhook keeps serving."""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from entra_tokend import webhook as webhook_module
from entra_tokend.injectcheck import MAX_DEPTH, MAX_VALUES
from support import DaemonProcess, wait_until
from support.inject import MALFORMED_SHAPES, malformed_shape, template, valid_annotations
from support.webhook import Webhook, admission_review, api_server_pod


@pytest.fixture
def hook(tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]) -> Iterator[Webhook]:
    served = Webhook(tmp_path, daemon_factory)
    yield served
    served.process.stop()


def _refusal(hook: Webhook, body: dict[str, Any]) -> str:
    response = hook.review(body)
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "patch" not in response
    message: str = response["status"]["message"]
    assert "\n" not in message
    return message


def _failures(hook: Webhook) -> list[dict[str, Any]]:
    return [e for e in hook.process.events() if e["event"] == "admission request failed"]


def test_a_body_over_1_mib_is_refused_413_unread(hook: Webhook) -> None:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", hook.port, context=ssl.create_default_context(cafile=str(hook.ca)), timeout=60
    )
    conn.putrequest("POST", "/mutate")
    conn.putheader("Content-Length", str(webhook_module.MAX_BODY + 1))
    conn.endheaders()  # the body never comes: the answer must not wait for it
    response = conn.getresponse()
    assert response.status == 413
    assert str(webhook_module.MAX_BODY) in response.read().decode()
    conn.close()
    assert wait_until(lambda: [f["status"] for f in _failures(hook)] == [413], what="a log line")
    assert hook.request("GET", "/healthz") == (200, b"ok\n")


@pytest.mark.parametrize(
    ("extra", "named"),
    [([{}] * (MAX_VALUES + 1), f"over {MAX_VALUES} values"), ("deep", f"over {MAX_DEPTH} levels")],
)
def test_a_pod_over_the_bounds_is_refused_before_injection(
    hook: Webhook, extra: Any, named: str
) -> None:
    pod = api_server_pod(template(valid_annotations()))
    if extra == "deep":
        extra = []
        for _ in range(MAX_DEPTH + 10):  # parseable, but deeper than any pod
            extra = [extra]
    pod["spec"]["x"] = extra
    message = _refusal(hook, admission_review(pod))
    assert (
        message == f"entra-tokend: entra-tokend.io/inject: the pod is too large to inject ({named})"
    )
    # Unrequested, the same pod is not walked or copied: allowed unchanged.
    del pod["metadata"]["annotations"]["entra-tokend.io/inject"]
    body = admission_review(pod)
    assert hook.review(body) == {"uid": body["request"]["uid"], "allowed": True}


def test_json_nested_deeper_than_the_parser_goes_is_answered_400(hook: Webhook) -> None:
    depth = 100_000
    body = b'{"kind": "AdmissionReview", "request": ' + b"[" * depth + b"]" * depth + b"}"
    status, payload = hook.request("POST", "/mutate", body)
    assert (status, payload) == (400, b"the JSON nests too deeply\n")
    assert wait_until(lambda: [f["status"] for f in _failures(hook)] == [400], what="a log line")


@pytest.mark.parametrize("case", sorted(MALFORMED_SHAPES))
def test_a_pod_of_the_wrong_shape_is_refused_naming_the_field(hook: Webhook, case: str) -> None:
    pod, named = malformed_shape(case)
    message = _refusal(hook, admission_review({"apiVersion": "v1", "kind": "Pod", **pod}))
    assert message.startswith(f"entra-tokend: {named}: must be ")
    refused = hook.process.wait_event("admission review", outcome="refused")
    assert refused["message"] == message


def test_a_null_security_context_counts_as_absent(hook: Webhook) -> None:
    pod = api_server_pod(template(valid_annotations()))
    pod["spec"]["securityContext"] = None
    response = hook.review(admission_review(pod))
    assert response["allowed"] is True
    assert "patch" in response


def test_a_request_kind_that_is_no_object_is_refused(hook: Webhook) -> None:
    body = admission_review(api_server_pod(template(valid_annotations())))
    body["request"]["kind"] = "Pod"
    assert _refusal(hook, body).startswith("entra-tokend: request.kind: must be an object")


def _raw_tls(hook: Webhook) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(hook.ca))
    raw = socket.create_connection(("127.0.0.1", hook.port), timeout=60)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True


def test_connections_over_the_limit_are_closed_at_once(hook: Webhook) -> None:
    held = [
        socket.create_connection(("127.0.0.1", hook.port), timeout=60)
        for _ in range(webhook_module.MAX_CONNECTIONS)
    ]
    try:
        # Accepted in order: when one more is closed, every held one has been taken.
        extra = socket.create_connection(("127.0.0.1", hook.port), timeout=60)
        assert _closed_by_peer(extra)  # at once, not after a deadline
        extra.close()
        hook.process.wait_event("webhook connection limit reached")
        assert not any(select.select(held, [], [], 0)[0])  # the held ones are still served
    finally:
        for sock in held:
            sock.close()
    # Their slots are free again (each thread ends as its client goes away).
    assert wait_until(lambda: _healthy(hook), timeout=60, what="a free slot")


def _healthy(hook: Webhook) -> bool:
    try:
        return hook.request("GET", "/healthz") == (200, b"ok\n")
    except (ConnectionError, ssl.SSLError, OSError):
        return False


def test_a_client_dripping_its_request_is_cut_off_at_the_deadline(hook: Webhook) -> None:
    sock = _raw_tls(hook)
    sock.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    started = time.monotonic()
    closed = False
    # A byte every 0.2 s is far within the per-read timeout: only an overall deadline ends it.
    while not closed and time.monotonic() - started < 6 * webhook_module.REQUEST_DEADLINE:
        readable = select.select([sock], [], [], 0.2)[0]
        if readable:
            closed = _closed_by_peer(sock)
        else:
            try:
                sock.sendall(b" ")
            except (ConnectionError, ssl.SSLError):
                closed = True
    sock.close()
    assert closed
    reasons = [f["reason"] for f in _failures(hook)]
    assert any("did not arrive within" in r for r in reasons), reasons
