"""The daemon's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz``.

Served by :mod:`entra_tokend.httpserver` (h11) *in the daemon's event loop*: ``/healthz``
answering therefore proves that the loop is not blocked, which is what the liveness probe is
meant to learn. GET and HEAD on three paths and nothing else; no response ever contains a token,
an assertion or a request header. The bounds below (read per connection, so tests may lower
them) are documented in ``httpserver``: head size, read timeout, connection count (idle
connections are evicted oldest first, so they cannot starve the probes).

``/metrics`` renders on the loop in steps, formatting only the tokens whose values changed since
the last scrape of the same format (:class:`~entra_tokend.exposition.Exposition`): a scrape of
1,000 unchanged tokens is little more than a join, and a first scrape holds the loop for one
batch of tokens at a time. The format comes from ``Accept`` (``exposition.negotiate``); a header
it cannot parse gets the classic text format rather than an error.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Callable

from entra_tokend.exposition import Exposition, Format, negotiate
from entra_tokend.httpserver import Handler, HttpServer, Limits, Request, Response, bound_port
from entra_tokend.metrics import Metrics

__all__ = ["MAX_CONNECTIONS", "MAX_HEAD_BYTES", "READ_TIMEOUT", "bound_port", "start_server"]

ReadinessFn = Callable[[], tuple[bool, dict[str, str]]]
"""Returns ``(ready, {token_name: state})``; supplied by the daemon."""

MAX_HEAD_BYTES = 8192
READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 32

# Each listening server's HttpServer, so stop_server() can reach its open connections.
_servers: weakref.WeakKeyDictionary[asyncio.AbstractServer, HttpServer] = (
    weakref.WeakKeyDictionary()
)


def _limits() -> Limits:
    return Limits(
        max_head_bytes=MAX_HEAD_BYTES,
        read_timeout=READ_TIMEOUT,
        write_timeout=WRITE_TIMEOUT,
        max_connections=MAX_CONNECTIONS,
    )


async def _render(exposition: Exposition, fmt: Format) -> bytes:
    """``exposition.render`` driven on the event loop, which gets at least as long as each
    step took before the next one runs.

    On the loop, not in a worker thread: a render in a thread holds the GIL for its whole
    length, and whenever the kernel preempts that thread (2 cores, other processes) or it runs
    a garbage collection, the loop cannot run either, so ``/healthz`` would wait for the whole
    render. A render formats only the tokens that changed since the last scrape of its format,
    ``RENDER_BATCH`` per step.

    Sleeping as long as the step took, not just yielding: answering a request takes the loop
    several iterations (read, parse, write, each its own callback), and with a bare yield every
    iteration would run one more step first. This way a render takes at most half of the
    loop's time, and other work waits for at most one step.
    """
    loop = asyncio.get_running_loop()
    steps = exposition.render(fmt)
    while True:
        started = loop.time()
        try:
            next(steps)
        except StopIteration as done:
            body: bytes = done.value
            return body
        await asyncio.sleep(loop.time() - started)


class _SingleFlight:
    """Concurrent renders of one format share one, and renders of different formats take
    turns: a flood of scrapes (pipelined requests on many connections, every format there is)
    costs one render at a time, not one per request or per format."""

    def __init__(self, exposition: Exposition) -> None:
        self._exposition = exposition
        self._pending: dict[Format, asyncio.Future[bytes]] = {}
        self._turn = asyncio.Lock()

    async def render(self, fmt: Format) -> bytes:
        pending = self._pending.get(fmt)
        if pending is None:
            pending = asyncio.ensure_future(self._in_turn(fmt))
            self._pending[fmt] = pending
            pending.add_done_callback(lambda _: self._pending.pop(fmt, None))
        return await asyncio.shield(pending)

    async def _in_turn(self, fmt: Format) -> bytes:
        async with self._turn:
            return await _render(self._exposition, fmt)


def _routes(exposition: Exposition, readiness: ReadinessFn) -> dict[str, Handler]:
    renders = _SingleFlight(exposition)

    async def healthz(_: Request) -> Response:
        return Response(200, b"ok\n")

    async def readyz(_: Request) -> Response:
        try:
            ready, tokens = readiness()
        except Exception:
            # The probe must still get an answer; the daemon logs its own faults.
            return Response(500, b"readiness unavailable\n")
        body = json.dumps({"ready": ready, "tokens": tokens}, sort_keys=True).encode()
        return Response(200 if ready else 503, body + b"\n", "application/json")

    async def metrics_page(request: Request) -> Response:
        fmt = negotiate(request.headers.get("accept", ""))
        body = await renders.render(fmt)
        return Response(200, body, fmt.content_type)

    return {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics_page}


async def start_server(
    host: str,
    port: int,
    metrics: Metrics,
    readiness: ReadinessFn,
    exposition: Exposition | None = None,
) -> asyncio.AbstractServer:
    """Start serving ``/metrics``, ``/healthz`` and ``/readyz`` on *host*:*port* in the
    running event loop (port 0 picks a free port; see :func:`bound_port`). ``/metrics``
    renders *metrics* through *exposition* (a new one by default; tests pass theirs to read
    its cache). Raises OSError."""
    routes = _routes(exposition or Exposition(metrics), readiness)
    http = HttpServer(routes, _limits)
    server = await http.start(host, port)
    _servers[server] = http
    return server


async def stop_server(server: asyncio.AbstractServer) -> None:
    """Stop listening and drop open connections (idle keep-alive ones included), so that
    shutdown does not wait for scrapers to hang up (``wait_closed`` does on Python >= 3.12)."""
    http = _servers.pop(server, None)
    if http is not None:
        await http.stop()
    else:
        server.close()
        await server.wait_closed()
