"""The daemon's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz``.

Served by :mod:`entra_tokend.httpserver` (h11) *in the daemon's event loop*: ``/healthz``
answering therefore proves that the loop is not blocked, which is what the liveness probe is
meant to learn. GET and HEAD on three paths and nothing else; no response ever contains a token,
an assertion or a request header. The bounds below (read per connection, so tests may lower
them) are documented in ``httpserver``: head size, read timeout, connection count (idle
connections are evicted oldest first, so they cannot starve the probes).

``/metrics`` renders the exposition in a worker thread, so a scrape never holds the loop for
longer than the interpreter's switch interval at a time.

An ``Accept`` header that prometheus_client cannot parse (``application/openmetrics-text;
version=abc``) gets the classic text format rather than an error.
"""

from __future__ import annotations

import asyncio
import json
import sys
import weakref
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder, generate_latest

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


RENDER_SWITCH_INTERVAL = 0.001
"""Seconds: the interpreter's switch interval while an exposition renders in a thread."""
_rendering = [0, 0.0]  # renders in progress, the switch interval to restore


async def _render_off_loop(
    encoder: Callable[[CollectorRegistry], bytes], registry: CollectorRegistry
) -> bytes:
    """``encoder(registry)`` in a worker thread. With 1,000 tokens the exposition takes tens of
    milliseconds of CPU, which refreshes and rotations would otherwise wait behind
    (bench/FINDINGS.md, issue 18). prometheus_client copies each family's children under its
    lock, so the loop may update metrics meanwhile.

    Meanwhile the switch interval is 1 ms instead of 5: every socket call the loop makes
    releases the GIL, and getting it back from a busy thread takes one interval, so a request
    answered on the loop (``/healthz``, the token endpoint) waited several intervals per scrape
    (measured: p99 12 ms, max 27 ms at 5 ms; 2.7 / 5 ms at 1 ms).
    """
    if _rendering[0] == 0:
        _rendering[1] = sys.getswitchinterval()
        sys.setswitchinterval(min(_rendering[1], RENDER_SWITCH_INTERVAL))
    _rendering[0] += 1
    try:
        return await asyncio.to_thread(encoder, registry)
    finally:
        _rendering[0] -= 1
        if _rendering[0] == 0:
            sys.setswitchinterval(_rendering[1])


class _SingleFlight:
    """Concurrent renders of one format share one: a flood of scrapes (pipelined requests on
    many connections) costs one render at a time, not one per request."""

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[bytes]] = {}

    async def render(
        self, key: str, encoder: Callable[[CollectorRegistry], bytes], registry: CollectorRegistry
    ) -> bytes:
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(_render_off_loop(encoder, registry))
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        return await asyncio.shield(pending)


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
        try:
            encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        except (ValueError, TypeError):  # e.g. version=abc: answer in the classic format
            encoder, content_type = generate_latest, CONTENT_TYPE_LATEST
        body = await renders.render(content_type, encoder, metrics.registry)
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
