"""The daemon's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz``.

A deliberately tiny HTTP/1.1 server that runs *in the daemon's event loop*: ``/healthz``
answering therefore proves that the loop is not blocked, which is what the liveness probe is
meant to learn. It serves GET and HEAD on three paths and nothing else; no response ever
contains a token, an assertion or a request header.

Guarding against misbehaving clients:

1. a request head is read with a size cap (:data:`MAX_HEAD_BYTES`) and must arrive completely
   within :data:`READ_TIMEOUT` seconds, so a slow or silent client cannot pin a connection;
2. at most :data:`MAX_CONNECTIONS` connections are served at once, further ones are closed;
3. requests with a body are answered and then the connection is closed (no body is read);
4. keep-alive is honoured for HTTP/1.1 clients (Prometheus reuses its connection), bounded by
   the same read timeout between requests; :func:`stop_server` drops idle ones at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import Callable

from prometheus_client.exposition import choose_encoder

from entra_tokend.metrics import Metrics

ReadinessFn = Callable[[], tuple[bool, dict[str, str]]]
"""Returns ``(ready, {token_name: state})``; supplied by the daemon."""

MAX_HEAD_BYTES = 8192
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 32
LINGER_BYTES = 65536
LINGER_TIMEOUT = 1.0

_PATHS = ("/metrics", "/healthz", "/readyz")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"
# Each server's handler, so stop_server() can reach its open connections.
_handlers: weakref.WeakKeyDictionary[asyncio.AbstractServer, _Handler] = weakref.WeakKeyDictionary()


class _Response:
    __slots__ = ("body", "content_type", "extra", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = _TEXT,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.extra = extra


class _Handler:
    def __init__(self, metrics: Metrics, readiness: ReadinessFn) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._open = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._open += 1
        self.writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or was too slow; nothing to tell anyone
        finally:
            self._open -= 1
            self.writers.discard(writer)
            writer.close()
            try:
                # A peer that stopped reading would keep a graceful close waiting forever.
                await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT)
            except TimeoutError:
                writer.transport.abort()
            except (ConnectionError, OSError):
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Bounded: each pass needs a complete request within READ_TIMEOUT, else the connection ends.
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except asyncio.LimitOverrunError:
                await self._send(writer, _Response(431, b"request head too large\n"), False, True)
                await _linger(reader, writer)
                return
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    await self._send(writer, _Response(400, b"bad request\n"), False, True)
                return
            keep_alive, is_head, response = self._handle(head)
            await self._send(writer, response, is_head, not keep_alive)
            if not keep_alive:
                await _linger(reader, writer)
                return

    def _handle(self, head: bytes) -> tuple[bool, bool, _Response]:
        """Parse one request head; returns (keep_alive, is_head_request, response)."""
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
        except ValueError:
            return False, False, _Response(400, b"bad request\n")
        if not version.startswith("HTTP/1."):
            return False, False, _Response(400, b"bad request\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                return False, False, _Response(400, b"bad request\n")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = version == "HTTP/1.1" and "close" not in connection
        if "content-length" in headers and headers["content-length"] != "0":
            keep_alive = False  # we never read bodies; closing avoids misparsing the next request
        if "transfer-encoding" in headers:
            keep_alive = False
        path = target.split("?", 1)[0]
        if path not in _PATHS:
            return keep_alive, method == "HEAD", _Response(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            allow = (("Allow", "GET, HEAD"),)
            return keep_alive, False, _Response(405, b"method not allowed\n", extra=allow)
        return keep_alive, method == "HEAD", self._route(path, headers)

    def _route(self, path: str, headers: dict[str, str]) -> _Response:
        if path == "/healthz":
            return _Response(200, b"ok\n")
        if path == "/readyz":
            try:
                ready, tokens = self._readiness()
            except Exception:
                # The probe must still get an answer; the daemon logs its own faults.
                return _Response(500, b"readiness unavailable\n")
            body = json.dumps({"ready": ready, "tokens": tokens}, sort_keys=True).encode()
            return _Response(200 if ready else 503, body + b"\n", "application/json")
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        return _Response(200, encoder(self._metrics.registry), content_type)

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter, response: _Response, is_head: bool, close: bool
    ) -> None:
        lines = [
            f"HTTP/1.1 {response.status} {_REASONS[response.status]}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Cache-Control: no-store",
        ]
        lines.extend(f"{name}: {value}" for name, value in response.extra)
        if close:
            lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not is_head:
            writer.write(response.body)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close and discard what the client still sends (bounded), so that closing with unread
    input does not make the kernel answer with a reset that destroys our response in flight."""
    if writer.can_write_eof():
        writer.write_eof()
    discarded = 0
    with contextlib.suppress(TimeoutError, ConnectionError, OSError):
        async with asyncio.timeout(LINGER_TIMEOUT):
            while discarded < LINGER_BYTES:
                chunk = await reader.read(4096)
                if not chunk:
                    return
                discarded += len(chunk)


async def start_server(
    host: str, port: int, metrics: Metrics, readiness: ReadinessFn
) -> asyncio.AbstractServer:
    """Start serving ``/metrics``, ``/healthz`` and ``/readyz`` on *host*:*port* in the
    running event loop (port 0 picks a free port; see :func:`bound_port`)."""
    handler = _Handler(metrics, readiness)
    server = await asyncio.start_server(handler, host, port, limit=MAX_HEAD_BYTES)
    _handlers[server] = handler
    return server


async def stop_server(server: asyncio.AbstractServer) -> None:
    """Stop listening and drop open connections (idle keep-alive ones included), so that
    shutdown does not wait for scrapers to hang up (``wait_closed`` does on Python >= 3.12)."""
    server.close()
    handler = _handlers.pop(server, None)
    if handler is not None:
        for writer in list(handler.writers):
            writer.transport.abort()
    await server.wait_closed()


def bound_port(server: asyncio.AbstractServer) -> int:
    """The TCP port *server* listens on (useful after binding port 0)."""
    # AbstractServer does not declare `sockets`; every server asyncio.start_server makes has it.
    sockets = getattr(server, "sockets", ())
    for sock in sockets:
        port = sock.getsockname()[1]
        if isinstance(port, int):
            return port
    raise RuntimeError("server has no listening socket")
