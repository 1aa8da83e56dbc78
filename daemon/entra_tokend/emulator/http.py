"""The HTTP(S) layer: a threaded stdlib server that parses requests and performs outcomes.

It knows nothing of Entra, kubelet or registries. For each request it reads the body
(Content-Length, or chunked framing decoded here because ``http.server`` does not: skopeo
posts its refresh-token form chunked), builds a ``wire.Request`` with the TLS server name the
client sent (SNI, captured by an ``sni_callback``), asks its ``Service`` for an outcome and
performs it: an answer, a delayed answer, a TCP reset or a hung connection. The service is
told the final status before the client can read the answer, so records never race tests.

``stop()`` shuts every open connection, which releases handlers parked on keep-alive reads
or in a "hang" (they wait on the ``stopping`` event).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from entra_tokend.emulator.wire import Delay, Endpoint, Hang, Request, Reset, Response, Service

MAX_BODY = 1 << 20
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")
ContextProvider = Callable[[], ssl.SSLContext | None]


class Readable(Protocol):
    """A buffered binary stream (the handler's ``rfile``, or ``io.BytesIO`` in tests)."""

    def read(self, size: int, /) -> bytes:
        """Up to ``size`` bytes."""
        ...

    def readline(self, size: int, /) -> bytes:
        """One line of at most ``size`` bytes."""
        ...


def read_chunked(rfile: Readable, limit: int = MAX_BODY) -> bytes:
    """Decode a chunked request body (RFC 9112 section 7.1) from ``rfile``, trailers skipped.

    Reads exactly the body's bytes, so a keep-alive connection stays in sync. Raises
    ``ValueError`` on a malformed or truncated body or one larger than ``limit`` bytes.
    """
    body = bytearray()
    while True:
        line = rfile.readline(1024)
        if not line.endswith(b"\n"):
            raise ValueError("truncated or overlong chunk-size line")
        size_text = line.split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise ValueError("malformed chunk size")
        size = int(size_text, 16)
        if size == 0:
            break
        if len(body) + size > limit:
            raise ValueError(f"chunked body larger than {limit} bytes")
        chunk = rfile.read(size)
        if len(chunk) != size or rfile.read(2) != b"\r\n":
            raise ValueError("truncated chunk")
        body += chunk
    for _ in range(64):  # trailer fields, then the empty line
        line = rfile.readline(8192)
        if line in (b"\r\n", b"\n", b""):
            return bytes(body)
    raise ValueError("too many trailer fields")


class HttpServer:
    """One listener serving ``service`` from background threads.

    ``context`` returns the TLS context to wrap each new connection with (None: plain
    HTTP); it is called per connection, so a listener can change certificates while it runs.
    """

    def __init__(
        self,
        host: str,
        port: int,
        service: Service,
        *,
        context: ContextProvider = lambda: None,
        verbose: bool = False,
        name: str = "entra-emulator-http",
    ) -> None:
        self.host = host
        self.requested_port = port
        self.service = service
        self.context = context
        self.verbose = verbose
        self.name = name
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server_names: dict[object, str] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the requested one before ``start``)."""
        return self._server.server_address[1] if self._server else self.requested_port

    def start(self) -> None:
        """Bind and serve; ``OSError`` if the address is taken."""
        self.stopping.clear()
        self._server = _Server((self.host, self.requested_port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=self.name,
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, drop every open connection, and join the serving thread."""
        server = self._server
        if server is None:
            return
        self.stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            # Wakes handler threads parked on keep-alive reads; clients see the close.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    # ----------------------------------------------------------------- connection tracking
    def wrap(self, sock: socket.socket) -> socket.socket:
        """Wrap an accepted socket in TLS when the listener serves it (handshake deferred)."""
        context = self.context()
        if context is None:
            return sock
        context.sni_callback = self._remember_server_name
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)

    def _remember_server_name(
        self, conn: Any, server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        if server_name is not None:
            with self._lock:
                self._server_names[conn] = server_name

    def opened(self, conn: socket.socket) -> str | None:
        """Track ``conn``; return the SNI it sent. A connection accepted just as ``stop()``
        swept the others is shut at once."""
        with self._lock:
            self._connections.add(conn)
            name = self._server_names.pop(conn, None)
        if self.stopping.is_set():
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        return name

    def closed(self, conn: socket.socket) -> None:
        """Stop tracking ``conn``."""
        with self._lock:
            self._connections.discard(conn)
            self._server_names.pop(conn, None)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: HttpServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.owner = owner
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # The handshake runs in the handler's thread, not in the accept loop.
        return self.owner.wrap(sock), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.owner.verbose:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "entra-tokend-emulator"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _Server
    server_name: str | None = None

    def setup(self) -> None:
        super().setup()
        conn = self.connection
        if isinstance(conn, ssl.SSLSocket):
            conn.settimeout(10)
            try:
                conn.do_handshake()
            finally:
                self.server_name = self.owner.opened(conn)
            conn.settimeout(None)
        else:
            self.owner.opened(conn)

    def finish(self) -> None:
        self.owner.closed(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    @property
    def owner(self) -> HttpServer:
        return self.server.owner

    def log_message(self, format: str, *args: Any) -> None:
        if self.owner.verbose:
            # Paths and statuses only: bodies (assertions, tokens) are never logged.
            sys.stderr.write(f"emulator: {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    # ------------------------------------------------------------- request
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return read_chunked(self.rfile)
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        n = int(length)
        if n < 0 or n > MAX_BODY:
            raise ValueError(f"Content-Length must be between 0 and {MAX_BODY}")
        return self.rfile.read(n)

    def _request(self, body: bytes) -> Request:
        split = urlsplit(self.path)
        return Request(
            method=self.command,
            target=self.path,
            path=split.path,
            query=tuple(parse_qsl(split.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            peer=(str(self.client_address[0]), int(self.client_address[1])),
            server_name=self.server_name,
        )

    def _serve(self) -> None:
        try:
            body = self._read_body()
        except ValueError as exc:
            # The framing is unknown from here on: answer and drop the connection.
            self.close_connection = True
            req = self._request(b"")
            answer = Response.json(400, {"error": "invalid_request", "error_description": str(exc)})
            self._send(req, Endpoint.OTHER, answer)
            return
        req = self._request(body)
        endpoint, outcome = self.owner.service.serve(req)
        if isinstance(outcome, Reset):
            self.owner.service.record(req, endpoint, 0)
            self._reset()
            return
        if isinstance(outcome, Hang):
            self.owner.service.record(req, endpoint, 0)
            self.owner.stopping.wait(outcome.seconds)
            self.close_connection = True
            return
        if isinstance(outcome, Delay):
            self.owner.stopping.wait(outcome.seconds)
            outcome = outcome.then()
        self._send(req, endpoint, outcome)

    # ------------------------------------------------------------- answer
    def _send(self, req: Request, endpoint: Endpoint, answer: Response) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Pragma", "no-cache")
        for k, v in answer.headers.items():
            self.send_header(k, v)
        # Recorded before the client can see the answer, so tests never race the record.
        self.owner.service.record(req, endpoint, answer.status)
        self.end_headers()
        self.wfile.write(answer.body)

    def _reset(self) -> None:
        conn = self.connection
        with contextlib.suppress(OSError):
            # SO_LINGER with a zero timeout turns close() into an RST.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.owner.closed(conn)
        with contextlib.suppress(OSError):
            # Close the descriptor now: socket.close() would wait for rfile/wfile to close,
            # and an SSLSocket would first try to send close_notify.
            os.close(conn.detach())
