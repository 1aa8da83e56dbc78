"""The daemon's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz``.

Served by :mod:`entra_tokend.httpserver` (h11) *in the daemon's event loop*: ``/healthz``
answering therefore proves that the loop is not blocked, which is what the liveness probe is
meant to learn. GET and HEAD on three paths and nothing else; no response ever contains a token,
an assertion or a request header. The bounds below (read per connection, so tests may lower
them) are documented in ``httpserver``: head size, read timeout, connection count (idle
connections are evicted oldest first, so they cannot starve the probes).

``/metrics`` renders on the loop in steps, formatting only the tokens whose values changed since
the last scrape of the same format (``Metrics.render``): a scrape of 1,000 unchanged tokens is
little more than a join, and a first scrape holds the loop for one batch of tokens at a time.

An ``Accept`` header that prometheus_client cannot parse (``application/openmetrics-text;
version=abc``) gets the classic text format rather than an error.
"""

from __future__ import annotations

import asyncio
import functools
import json
import weakref
from collections.abc import Callable

from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder, generate_latest
from prometheus_client.utils import parse_version

from entra_tokend.httpserver import Handler, HttpServer, Limits, Request, Response, bound_port
from entra_tokend.metrics import Encoder, Metrics

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


async def _render(metrics: Metrics, encoder: Encoder, key: str) -> bytes:
    """``metrics.render`` driven on the event loop, which gets at least as long as each step
    took before the next one runs.

    On the loop, not in a worker thread: a render in a thread holds the GIL for its whole
    length, and whenever the kernel preempts that thread (2 cores, other processes) or it runs
    a garbage collection, the loop cannot run either; with 1,000 tokens that made ``/healthz``
    wait up to 30-80 ms during scrapes (bench/FINDINGS.md, issue 18). A render formats only the
    tokens that changed since the last scrape of its format, ``RENDER_BATCH`` per step.

    Sleeping as long as the step took, not just yielding: answering a request takes the loop
    several iterations (read, parse, write, each its own callback), and with a bare yield every
    iteration would run one more step first — a request arriving during the first scrape of
    1,000 tokens waited ~20 ms in OpenMetrics that way. Now such a render takes at most half of
    the loop's time, and other work waits for at most one step.
    """
    loop = asyncio.get_running_loop()
    steps = metrics.render(encoder, key)
    while True:
        started = loop.time()
        try:
            next(steps)
        except StopIteration as done:
            body: bytes = done.value
            return body
        await asyncio.sleep(loop.time() - started)


def negotiate(accept: str) -> tuple[Encoder, str]:
    """The exposition format for an ``Accept`` header: prometheus_client's choice, with the
    OpenMetrics version it echoes reduced to ``1.0.0`` or ``2.0.0`` (the only distinction its
    encoder makes). The set of answers is closed — at most 14 content types — so a client
    cannot mint a new format, and a full render with it, per request (``version=1.0.1``,
    ``1.0.2``, ...: review of round 4). An unparsable header gets the classic text format."""
    try:
        encoder, content_type = choose_encoder(accept)
    except (ValueError, TypeError):  # e.g. version=abc
        return generate_latest, CONTENT_TYPE_LATEST
    if isinstance(encoder, functools.partial) and "version" in encoder.keywords:
        asked = str(encoder.keywords["version"])
        try:
            canonical = "2.0.0" if parse_version(asked) >= (2, 0, 0) else "1.0.0"
        except (ValueError, TypeError):
            return generate_latest, CONTENT_TYPE_LATEST
        if asked != canonical:
            encoder = functools.partial(encoder.func, **{**encoder.keywords, "version": canonical})
            content_type = content_type.replace(f"version={asked};", f"version={canonical};", 1)
    return encoder, content_type


class _SingleFlight:
    """Concurrent renders of one format share one, and renders of different formats take
    turns: a flood of scrapes (pipelined requests on many connections, every format there is)
    costs one render at a time, not one per request or per format."""

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._turn = asyncio.Lock()

    async def render(self, metrics: Metrics, encoder: Encoder, key: str) -> bytes:
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._in_turn(metrics, encoder, key))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)

    async def _in_turn(self, metrics: Metrics, encoder: Encoder, key: str) -> bytes:
        async with self._turn:
            return await _render(metrics, encoder, key)


def _routes(metrics: Metrics, readiness: ReadinessFn) -> dict[str, Handler]:
    renders = _SingleFlight()

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
        encoder, content_type = negotiate(request.headers.get("accept", ""))
        body = await renders.render(metrics, encoder, content_type)
        return Response(200, body, content_type)

    return {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics_page}


async def start_server(
    host: str, port: int, metrics: Metrics, readiness: ReadinessFn
) -> asyncio.AbstractServer:
    """Start serving ``/metrics``, ``/healthz`` and ``/readyz`` on *host*:*port* in the
    running event loop (port 0 picks a free port; see :func:`bound_port`). Raises OSError."""
    http = HttpServer(_routes(metrics, readiness), _limits)
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
