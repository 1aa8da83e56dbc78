"""``entra-tokend webhook``: a mutating admission webhook over ``inject.inject_template``.

The API server POSTs an ``AdmissionReview`` (``admission.k8s.io/v1``) to ``/mutate`` over HTTPS;
the answer allows the pod with a JSON Patch (base64, ``patchType: JSONPatch``) from the pod as
received to the injected pod, allows it without a patch when nothing changes, or refuses it
(``allowed: false``, ``status.code`` 400, the annotation problems as the message) — the API server
shows that message to whoever created the pod (for a Deployment: in the ReplicaSet's events).
``GET /healthz`` answers 200 (the webhook's own probes).

TLS: the certificate and key files (a ``kubernetes.io/tls`` Secret's ``tls.crt``/``tls.key``) are
read again when they change on disk (cert-manager renews them in the Secret, kubelet swaps the
mounted files), so a renewal needs no restart. One JSON log line per review on stderr, and one
per request answered 400/413/500 or dropped at its deadline.

Bounds (the webhook's failurePolicy is Fail: a webhook out of memory blocks every pod creation):

- A body is at most ``MAX_BODY`` (1 MiB; a Pod's AdmissionReview is rarely over a few hundred
  KiB), else 413. A pod template over ``injectcheck.MAX_VALUES`` JSON values or
  ``injectcheck.MAX_DEPTH`` levels is refused (``allowed: false``) before it is copied; JSON
  nested deeper than the parser recurses is answered 400.
- At most ``MAX_CONNECTIONS`` connections are served at once; one more is closed as soon as it
  is accepted (one log line when the limit is first reached).
- Each request (on a new connection: with the TLS handshake) must arrive whole, headers and
  body, within ``REQUEST_DEADLINE`` seconds of the webhook starting to wait for it, else the
  connection is closed — a client dripping a byte at a time holds a connection that long.
- One review is parsed and computed at a time (``_REVIEWING``): peak memory is the baseline, the
  bodies being received (``MAX_CONNECTIONS`` × ``MAX_BODY`` at worst) and one review.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.server
import io
import json
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from entra_tokend.inject import DEFAULT_IMAGE, InjectError, inject_template, requested
from entra_tokend.listener import bind_listener, listening_text

MAX_BODY = 1024 * 1024  # bytes
MAX_CONNECTIONS = 32  # served at once; the API server keeps a few open per replica
REQUEST_DEADLINE = 10.0  # seconds: the API server's default webhook timeout
WRITE_TIMEOUT = 10.0  # seconds per write of an answer
API_VERSION = "admission.k8s.io/v1"
_REVIEWING = threading.Lock()


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")  # RFC 6901, section 3


def json_patch(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """RFC 6902 operations turning ``old`` into ``new`` (JSON values): objects key by key, lists of
    equal length item by item, anything else (a list that grew) replaced whole."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict[str, Any]] = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
        for key, value in new.items():
            where = f"{path}/{_escape(key)}"
            if key in old:
                ops += json_patch(old[key], value, where)
            else:
                ops.append({"op": "add", "path": where, "value": value})
        return ops
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            op
            for i, (a, b) in enumerate(zip(old, new, strict=True))
            for op in json_patch(a, b, f"{path}/{i}")
        ]
    return [{"op": "replace", "path": path, "value": new}]


def review(body: Any, image: str) -> tuple[dict[str, Any], str]:
    """The ``AdmissionReview`` answering the request ``body`` (parsed JSON), and what was done
    (``injected``, ``unchanged``, ``refused``, ``ignored``). Raises ValueError for a body that
    is no AdmissionReview request (answered with HTTP 400)."""
    if not isinstance(body, dict) or body.get("kind") != "AdmissionReview":
        raise ValueError("not an AdmissionReview")
    if body.get("apiVersion") != API_VERSION:
        raise ValueError(f"apiVersion must be {API_VERSION} (set admissionReviewVersions: [v1])")
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise ValueError("AdmissionReview without request.uid")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    pod, kind = request.get("object"), request.get("kind")
    if not isinstance(kind, dict):  # a GroupVersionKind
        return _refused(response, "request.kind: must be an object (group, version, kind)")
    if kind.get("kind") != "Pod" or request.get("operation") != "CREATE":
        outcome = "ignored"
    elif not isinstance(pod, dict):
        return _refused(response, "request.object: must be an object (the Pod)")
    elif not requested(pod):
        outcome = "unchanged"  # not copied, not walked: whatever its size
    else:
        try:
            patch = json_patch(pod, inject_template(pod, image))
        except InjectError as exc:
            return _refused(response, "; ".join(exc.problems))
        else:
            if patch:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
            outcome = "injected" if patch else "unchanged"
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}, outcome


def _refused(response: dict[str, Any], message: str) -> tuple[dict[str, Any], str]:
    refusal = {
        **response,
        "allowed": False,
        "status": {"code": 400, "message": "entra-tokend: " + message},
    }
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": refusal}, "refused"


class _DeadlineReader(io.RawIOBase):
    """A connection's reads, each bounded by the time left until the handler's ``deadline``
    (``time.monotonic()`` seconds): TimeoutError once it has passed. The ssl module bounds one
    read (with the handshake it may do) by the socket's timeout as a whole, so the sum of the
    reads of a request is bounded too, however slowly its bytes come."""

    def __init__(self, handler: _Handler) -> None:
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._handler.deadline - time.monotonic()
        message = f"the request did not arrive within {REQUEST_DEADLINE:g} s"
        if left <= 0:
            raise TimeoutError(message)
        sock = self._handler.connection
        sock.settimeout(left)
        try:
            count = int(sock.recv_into(buffer))
        except TimeoutError:  # waited for all that was left
            raise TimeoutError(message) from None
        self._handler.received += count
        return count


class _Certificate:
    """The TLS context, made again when the certificate or key file changes."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self._lock = threading.Lock()
        self._seen: tuple[object, ...] = ()
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext:
        """The current context. Raises OSError/ssl.SSLError when the files cannot be loaded."""
        seen = tuple(
            (s.st_ino, s.st_mtime_ns, s.st_size) for s in map(os.stat, (self.cert, self.key))
        )
        with self._lock:
            if self._context is None or seen != self._seen:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.load_cert_chain(self.cert, self.key)
                self._context, self._seen = context, seen
            return self._context


class _Handler(http.server.BaseHTTPRequestHandler):
    server: WebhookServer
    protocol_version = "HTTP/1.1"
    deadline = 0.0  # time.monotonic() by which the current request must have arrived
    received = 0  # bytes of the current request read so far

    def setup(self) -> None:
        super().setup()
        self.deadline = time.monotonic() + REQUEST_DEADLINE
        self.rfile = io.BufferedReader(_DeadlineReader(self))

    def handle_one_request(self) -> None:
        self.deadline = time.monotonic() + REQUEST_DEADLINE  # keep-alive: each request anew
        self.received = 0
        super().handle_one_request()  # a TimeoutError in it closes the connection

    def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
        self.connection.settimeout(WRITE_TIMEOUT)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        length_text = self.headers.get("Content-Length", "")
        if self.path.partition("?")[0] != "/mutate":
            self._send(404, b"not found\n", "text/plain")
            return
        if not length_text.isdigit() or int(length_text) > MAX_BODY:
            self.close_connection = True
            self._fail(413, f"a Content-Length up to {MAX_BODY} bytes is required")
            return
        body = self.rfile.read(int(length_text))
        try:
            with _REVIEWING:
                answer, outcome = review(json.loads(body), self.server.image)
                payload = json.dumps(answer).encode()
        except RecursionError:
            self._fail(400, "the JSON nests too deeply")
        except ValueError as exc:  # json.JSONDecodeError is one
            self._fail(400, str(exc))
        except Exception as exc:  # answer (the policy is Fail) and log it; never go silent
            self._fail(500, f"internal error: {type(exc).__name__}")
        else:
            self._send(200, payload)
            self.server.log_review(answer["response"], outcome)

    def _fail(self, status: int, reason: str) -> None:
        """Answer ``status`` with ``reason`` (our own text, never the body's) and log it."""
        self._send(status, f"{reason}\n".encode(), "text/plain")
        _log({"event": "admission request failed", "status": status, "reason": reason})

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per review instead (log_review)

    def log_error(self, format: str, *args: Any) -> None:
        # http.server's own failures: a malformed request line or headers, a missed deadline.
        if not self.received:
            return  # an idle (keep-alive) connection closed at its deadline: nothing failed
        _log({"event": "admission request failed", "reason": (format % args)[:200]})


def _log(line: dict[str, Any]) -> None:
    print(json.dumps(line), file=sys.stderr, flush=True)


class WebhookServer(http.server.ThreadingHTTPServer):
    """HTTPS on an already bound listening socket; a thread per connection, at most
    ``MAX_CONNECTIONS`` of them (one more is closed at once)."""

    daemon_threads = True

    def __init__(self, sock: socket.socket, certificate: _Certificate, image: str) -> None:
        self.address_family = sock.family
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.certificate, self.image = certificate, image
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._full = False  # the limit was reached and logged; cleared by the next accepted

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            if not self._full:
                self._full = True
                _log({"event": "webhook connection limit reached", "limit": MAX_CONNECTIONS})
            return
        self._full = False
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started: nobody else releases it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        sock.settimeout(REQUEST_DEADLINE)
        # The handshake happens on the first read, in the connection's thread, so a slow client
        # never holds up accept().
        try:
            context = self.certificate.context()
        except (OSError, ssl.SSLError):  # e.g. caught between two files of a renewal
            sock.close()
            raise  # socketserver drops this one connection; the next reads the files again
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that fails its handshake or goes away: nothing to do

    def log_review(self, response: dict[str, Any], outcome: str) -> None:
        """One JSON line on stderr: the review's uid and the outcome (never the pod's content)."""
        line = {"event": "admission review", "uid": response["uid"][:64], "outcome": outcome}
        if outcome == "refused":
            line["message"] = response["status"]["message"]
        _log(line)


def build_parser() -> argparse.ArgumentParser:
    """``webhook``'s flags."""
    parser = argparse.ArgumentParser(
        prog="entra-tokend webhook",
        description="Serve the mutating admission webhook that injects the entra-tokend sidecar "
        "(POST /mutate, GET /healthz) over HTTPS. Install: config/kubernetes/webhook/.",
    )
    parser.add_argument(
        "--listen",
        default="[::]:8443",
        metavar="HOST:PORT",
        help="default [::]:8443 (0.0.0.0:8443 on hosts without IPv6)",
    )
    parser.add_argument("--tls-cert", required=True, metavar="FILE", help="PEM certificate chain")
    parser.add_argument("--tls-key", required=True, metavar="FILE", help="PEM private key")
    parser.add_argument(
        "--image",
        default=DEFAULT_IMAGE,
        help=f"the sidecar's image unless a pod's entra-tokend.io/image says "
        f"(default {DEFAULT_IMAGE})",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``entra-tokend webhook``: serve until SIGTERM/SIGINT. Exit 2 when the
    listen address or the TLS files are unusable."""
    args = build_parser().parse_args(argv)
    host, _, port_text = args.listen.rpartition(":")
    if not port_text.isdigit() or int(port_text) > 65535:
        print(f"entra-tokend: webhook: --listen: {args.listen!r} is not HOST:PORT", file=sys.stderr)
        return 2
    certificate = _Certificate(args.tls_cert, args.tls_key)
    try:
        certificate.context()
        sock = bind_listener(host.strip("[]") or "::", int(port_text))
    except (OSError, ssl.SSLError) as exc:
        print(
            f"entra-tokend: webhook: {exc} (check --tls-cert, --tls-key, --listen)", file=sys.stderr
        )
        return 2
    sock.setblocking(True)
    server = WebhookServer(sock, certificate, args.image)
    import signal  # noqa: PLC0415

    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(
        json.dumps({"event": "webhook listening", "address": listening_text(sock)}),
        file=sys.stderr,
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.server_close()
    return 0
