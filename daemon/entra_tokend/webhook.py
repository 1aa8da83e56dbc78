"""``entra-tokend webhook``: a mutating admission webhook over ``inject.inject_template``.

The API server POSTs an ``AdmissionReview`` (``admission.k8s.io/v1``) to ``/mutate`` over HTTPS;
the answer allows the pod with a JSON Patch (base64, ``patchType: JSONPatch``) from the pod as
received to the injected pod, allows it without a patch when nothing changes, or refuses it
(``allowed: false``, ``status.code`` 400, the annotation problems as the message) — the API server
shows that message to whoever created the pod (for a Deployment: in the ReplicaSet's events).
``GET /healthz`` answers 200 (the webhook's own probes).

TLS: the certificate and key files (a ``kubernetes.io/tls`` Secret's ``tls.crt``/``tls.key``) are
read again when they change on disk (cert-manager renews them in the Secret, kubelet swaps the
mounted files), so a renewal needs no restart. One JSON log line per review on stderr.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.server
import json
import os
import socket
import ssl
import sys
import threading
from collections.abc import Sequence
from typing import Any

from entra_tokend.inject import DEFAULT_IMAGE, InjectError, inject_template
from entra_tokend.listener import bind_listener, listening_text

MAX_BODY = 4 * 1024 * 1024  # bytes; the API server's requests are limited to 3 MiB
READ_TIMEOUT = 10.0  # seconds a client may take for its TLS handshake and request
API_VERSION = "admission.k8s.io/v1"


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
    pod = request.get("object")
    kind = (request.get("kind") or {}).get("kind")
    if kind != "Pod" or request.get("operation") != "CREATE" or not isinstance(pod, dict):
        outcome = "ignored"
    else:
        try:
            patch = json_patch(pod, inject_template(pod, image))
        except InjectError as exc:
            response = {
                **response,
                "allowed": False,
                "status": {"code": 400, "message": "entra-tokend: " + "; ".join(exc.problems)},
            }
            outcome = "refused"
        else:
            if patch:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
            outcome = "injected" if patch else "unchanged"
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}, outcome


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

    def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
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
            self._send(413, b"a Content-Length up to 4 MiB is required\n", "text/plain")
            return
        try:
            answer, outcome = review(
                json.loads(self.rfile.read(int(length_text))), self.server.image
            )
        except ValueError as exc:  # json.JSONDecodeError is one
            self._send(400, f"{exc}\n".encode(), "text/plain")
            return
        self._send(200, json.dumps(answer).encode())
        self.server.log_review(answer["response"], outcome)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per review instead (log_review)


class WebhookServer(http.server.ThreadingHTTPServer):
    """HTTPS on an already bound listening socket; a thread per connection."""

    daemon_threads = True

    def __init__(self, sock: socket.socket, certificate: _Certificate, image: str) -> None:
        self.address_family = sock.family
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.certificate, self.image = certificate, image

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        sock.settimeout(READ_TIMEOUT)
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
        line = {"event": "admission review", "uid": response["uid"], "outcome": outcome}
        if outcome == "refused":
            line["message"] = response["status"]["message"]
        print(json.dumps(line), file=sys.stderr, flush=True)


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
