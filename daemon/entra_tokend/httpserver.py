"""A small HTTP/1.1 server on h11, run in the daemon's event loop; shared by every listener.

Request parsing is h11's (the sans-I/O HTTP/1.1 implementation httpx uses, already in the
dependency tree); this module only moves bytes and enforces bounds. Its users (``server`` for
``/metrics``/``/healthz``/``/readyz``, ``endpoint`` for the managed-identity endpoint) give a map
of path → handler; every route answers GET and HEAD, other methods get 405 with ``Allow``.

Guarding against hostile or broken clients (every bound is a :class:`Limits` field):

1. a request head is at most ``max_head_bytes`` (h11 answers larger ones with 431) and must
   arrive completely within ``read_timeout`` seconds of the first byte being awaited, so a slow
   or silent client cannot pin a connection; the same bound applies between keep-alive requests;
2. at most ``max_connections`` connections are open at once. When a new one arrives at the
   limit, the *oldest connection that is waiting on its client* — for a request head (idle
   keep-alive, half-open, slowloris) or to read a response it asked for (a client pipelining
   requests without reading) — is closed to make room, and when every open connection is busy
   computing an answer, the oldest of all: a new connection (a probe) is never refused.
   Idle, stalled or flooding connections therefore cannot starve the probes: a ``/healthz``
   request is answered as long as it completes before ``max_connections`` newer connections
   arrive;
3. no request body is read: a request that declares one is answered and the connection closed
   after a bounded linger (``linger_bytes``/``linger_timeout``), so unread input does not turn
   into a reset that destroys the response in flight;
4. a client that disconnects early, resets, or stops reading ends its connection quietly (no
   traceback); a handler that raises is answered with 500 and logged by type only;
5. responses carry ``Cache-Control: no-store`` and never echo a request header.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

import h11

from entra_tokend.listener import bind_listener
from entra_tokend.logging import get_logger

__all__ = [
    "Handler",
    "HttpServer",
    "Limits",
    "Request",
    "Response",
    "bound_port",
]


@dataclass(frozen=True)
class Limits:
    """Bounds of one listener: bytes, seconds and a connection count."""

    max_head_bytes: int = 8192
    read_timeout: float = 10.0
    write_timeout: float = 10.0
    max_connections: int = 32
    linger_bytes: int = 65536
    linger_timeout: float = 1.0


@dataclass(frozen=True)
class Request:
    """One parsed request. ``headers`` has lower-case names (repeats joined with ``", "``);
    ``query`` maps each parameter to its *last* value; ``peer`` is ``host:port``."""

    method: str
    path: str
    query: Mapping[str, str]
    query_pairs: tuple[tuple[str, str], ...]
    headers: Mapping[str, str]
    peer: str


@dataclass(frozen=True)
class Response:
    """What a handler returns; ``headers`` are extra response headers."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())


Handler = Callable[[Request], Awaitable[Response]]
"""An async function answering one route."""


def _peer(writer: asyncio.StreamWriter) -> str:
    info = writer.get_extra_info("peername")
    if isinstance(info, tuple) and len(info) >= 2:
        host = str(info[0])
        return f"[{host}]:{info[1]}" if ":" in host else f"{host}:{info[1]}"
    return "unknown"


class _Connection:
    """One client connection's state, for the eviction rule."""

    __slots__ = ("busy", "order", "writer")

    def __init__(self, order: int, writer: asyncio.StreamWriter) -> None:
        self.order = order
        self.writer = writer
        self.busy = False  # a response is being computed: never evicted


class HttpServer:
    """Serves ``routes`` (path → handler, GET and HEAD) with the bounds of ``limits()``.

    ``limits`` is called per connection, so a test may change a bound on a running server.
    """

    def __init__(self, routes: Mapping[str, Handler], limits: Callable[[], Limits]) -> None:
        self._routes = dict(routes)
        self._limits = limits
        self._log = get_logger()
        self._counter = itertools.count()
        self.connections: dict[int, _Connection] = {}
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> asyncio.AbstractServer:
        """Listen on *host*:*port* (0 picks a free port; ``::`` is dual-stack, see
        ``listener``). Raises OSError."""
        self._server = await asyncio.start_server(self._accept, sock=bind_listener(host, port))
        return self._server

    async def stop(self) -> None:
        """Stop listening and drop open connections (idle keep-alive ones included), so that
        shutdown does not wait for clients to hang up."""
        if self._server is None:
            return
        self._server.close()
        for conn in list(self.connections.values()):
            conn.writer.transport.abort()
        await self._server.wait_closed()

    # ---- connections ---------------------------------------------------------------------

    def _make_room(self, limits: Limits) -> bool:
        """Make room for a new connection (evicting one at the limit); always True."""
        if len(self.connections) < limits.max_connections:
            return True
        # Oldest connection waiting on its client first; when every one is computing an
        # answer (a flood of requests), the oldest of all: a new connection — a probe — is
        # never refused, and a flood only ever costs its own oldest connections.
        idle = [c for c in self.connections.values() if not c.busy]
        oldest = min(idle or self.connections.values(), key=lambda c: c.order)
        self.connections.pop(oldest.order, None)
        oldest.writer.transport.abort()
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self._limits()
        if not self._make_room(limits):
            writer.transport.abort()
            return
        conn = _Connection(next(self._counter), writer)
        self.connections[conn.order] = conn
        try:
            await self._serve(conn, reader, writer, limits)
        except (ConnectionError, TimeoutError, OSError, asyncio.IncompleteReadError):
            pass  # the client went away, was too slow, or was evicted; nothing to tell anyone
        except Exception as exc:  # never let asyncio print a traceback for one connection
            self._log.error("http connection failed", error=type(exc).__name__)
        finally:
            self.connections.pop(conn.order, None)
            writer.close()
            try:
                # A peer that stopped reading would keep a graceful close waiting forever.
                await asyncio.wait_for(writer.wait_closed(), limits.write_timeout)
            except TimeoutError:
                writer.transport.abort()
            except (ConnectionError, OSError):
                pass

    async def _serve(
        self,
        conn: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: Limits,
    ) -> None:
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        peer = _peer(writer)
        while True:
            conn.busy = False
            try:
                event = await self._next_request(h, reader, limits)
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if exc.error_status_hint in (400, 431) else 400
                text = b"request head too large\n" if status == 431 else b"bad request\n"
                with contextlib.suppress(h11.LocalProtocolError):
                    await self._send(
                        h, writer, Response(status, text), is_head=False, close=True, limits=limits
                    )
                await self._linger(reader, writer, limits)
                return
            if event is None:
                return  # clean close or timeout between requests
            conn.busy = True
            has_body = any(
                name == b"transfer-encoding" or (name == b"content-length" and value != b"0")
                for name, value in event.headers
            )
            response = await self._respond(event, peer)
            is_head = event.method == b"HEAD"
            close = has_body or not _keep_alive(event)
            await self._deliver(
                conn, h, writer, response=response, is_head=is_head, close=close, limits=limits
            )
            if not close:
                # A request without a body ends with its head: h11 yields EndOfMessage at once.
                close = not isinstance(h.next_event(), h11.EndOfMessage)
            if close or h.our_state is not h11.DONE or h.their_state is not h11.DONE:
                await self._linger(reader, writer, limits)
                return
            h.start_next_cycle()

    async def _next_request(
        self, h: h11.Connection, reader: asyncio.StreamReader, limits: Limits
    ) -> h11.Request | None:
        """The next request head, or None on a clean close/timeout. Raises RemoteProtocolError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.read_timeout
        received = 0
        while True:
            event = h.next_event()
            if isinstance(event, h11.Request):
                return event
            if event is h11.NEED_DATA:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                # Never buffer more than the head bound (+1 byte to notice the excess): h11
                # alone would parse any complete head that arrived in one read.
                room = limits.max_head_bytes + 1 - received
                if room <= 0:
                    raise h11.RemoteProtocolError("request head too large", 431)
                try:
                    data = await asyncio.wait_for(reader.read(min(4096, room)), remaining)
                except TimeoutError:
                    return None
                received += len(data)
                h.receive_data(data)  # b"" marks EOF; h11 raises on a truncated head
                continue
            return None  # ConnectionClosed, PAUSED or a stray event: end quietly

    async def _respond(self, event: h11.Request, peer: str) -> Response:
        target = event.target.decode("latin-1")
        path, _, query_text = target.partition("?")
        handler = self._routes.get(path)
        if handler is None:
            return Response(404, b"not found\n")
        method = event.method.decode("latin-1")
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", headers=(("Allow", "GET, HEAD"),))
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        pairs = tuple(parse_qsl(query_text, keep_blank_values=True))
        request = Request(method, path, dict(pairs), pairs, headers, peer)
        try:
            return await handler(request)
        except Exception as exc:  # the client still gets an answer; no detail leaves the process
            self._log.error("http handler failed", path=path, error=type(exc).__name__)
            return Response(500, b"internal error\n")

    @staticmethod
    async def _send(
        h: h11.Connection,
        writer: asyncio.StreamWriter,
        response: Response,
        *,
        is_head: bool,
        close: bool,
        limits: Limits,
    ) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Cache-Control", "no-store"),
            *response.headers,
        ]
        if close:
            headers.append(("Connection", "close"))
        reason = HTTPStatus(response.status).phrase.encode("ascii")
        data = h.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if not is_head and response.body:
            data += h.send(h11.Data(data=response.body))
        data += h.send(h11.EndOfMessage())
        writer.write(data)
        await asyncio.wait_for(writer.drain(), limits.write_timeout)

    async def _deliver(
        self, conn: _Connection, h: h11.Connection, writer: asyncio.StreamWriter, **kw: Any
    ) -> None:
        """``_send``, with the connection evictable while the client is slow to read: a client
        that pipelines requests and never reads the answers holds no slot a probe needs."""
        conn.busy = False
        await self._send(h, writer, **kw)

    @staticmethod
    async def _linger(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits
    ) -> None:
        """Half-close and discard what the client still sends (bounded), so that closing with
        unread input does not make the kernel answer with a reset that destroys our response."""
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            if writer.can_write_eof():
                writer.write_eof()
            discarded = 0
            async with asyncio.timeout(limits.linger_timeout):
                while discarded < limits.linger_bytes:
                    chunk = await reader.read(4096)
                    if not chunk:
                        return
                    discarded += len(chunk)


def _keep_alive(event: h11.Request) -> bool:
    if event.http_version != b"1.1":
        return False
    for name, value in event.headers:
        if name == b"connection" and b"close" in value.lower():
            return False
    return True


def bound_port(server: asyncio.AbstractServer) -> int:
    """The TCP port *server* listens on (useful after binding port 0)."""
    # AbstractServer does not declare `sockets`; every server asyncio.start_server makes has it.
    sockets = getattr(server, "sockets", ())
    for sock in sockets:
        port = sock.getsockname()[1]
        if isinstance(port, int):
            return port
    raise RuntimeError("server has no listening socket")
