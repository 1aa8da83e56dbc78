"""Start-up steps of the daemon that touch the host: lock and prepare output_dir, open the
listeners. Each failure is logged and printed as a configuration error (exit 2) naming the
flag, variable or key that fixes it (texts from ``preflight``).

Both listeners — the metrics server (``/metrics``, ``/healthz``, ``/readyz``) and the
managed-identity endpoint — are returned as ``Listening`` objects with one ``stop()``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from entra_tokend.config import Config
from entra_tokend.listener import address_text, server_address
from entra_tokend.lock import LockError, LockHeld
from entra_tokend.metrics import Metrics
from entra_tokend.ondemand import EndpointService, OnDemandTokens, start_endpoint
from entra_tokend.outputdir import OutputDirectory
from entra_tokend.preflight import listen_problem, output_dir_problem, print_problems
from entra_tokend.readiness import Readiness
from entra_tokend.server import start_server, stop_server


class Listening(Protocol):
    """A running listener."""

    async def stop(self) -> None:
        """Stop listening and close its connections."""
        ...


class MetricsListener:
    """The running metrics server."""

    def __init__(self, server: asyncio.AbstractServer) -> None:
        self._server = server

    async def stop(self) -> None:
        """Stop listening and drop open connections."""
        await stop_server(self._server)


def prepare_output(output_dir: OutputDirectory, config: Config, log: Any) -> bool:
    """Lock output_dir and clean it (the token files' directories: ``config``'s). False when
    that fails (logged, and printed as a configuration error)."""
    out = str(config.output_dir)
    try:
        output_dir.acquire({spec.path.parent for spec in config.written})
    except (LockError, OSError) as exc:
        if isinstance(exc, LockHeld):
            log.error(
                "output_dir is in use by another entra-tokend",
                path=out,
                holder_pid=exc.pid,
                detail=str(exc),
            )
        elif isinstance(exc, LockError):
            log.error("cannot lock output_dir", detail=str(exc))
        else:
            log.error("cannot prepare output_dir", path=out, detail=exc.strerror)
        print_problems([output_dir_problem(config.output_dir, exc)])
        return False
    return True


async def open_listeners(
    config: Config,
    metrics: Metrics,
    readiness: Readiness,
    provider: OnDemandTokens | None,
    log: Any,
) -> tuple[list[Listening], EndpointService | None] | None:
    """Start the metrics listener (if ``listen`` is set) and the endpoint (if ``provider``).
    None when one cannot listen (logged, printed; whatever was opened is stopped again)."""
    opened: list[Listening] = []
    if config.listen:
        host, port = config.listen
        try:
            server = await start_server(host, port, metrics, readiness.snapshot)
        except OSError as exc:
            log.error("cannot listen", listen=address_text(host, port), detail=exc.strerror)
            print_problems([listen_problem("listen", host, port, exc)])
            return None
        opened.append(MetricsListener(server))
        log.info("listening", listen=server_address(server))
    if provider is None or config.endpoint is None:
        return opened, None
    host, port = config.endpoint.listen
    try:
        endpoint = await start_endpoint(config.endpoint, provider, metrics)
    except OSError as exc:
        log.error("cannot listen", key="endpoint.listen", port=port, detail=exc.strerror)
        print_problems([listen_problem("endpoint.listen", host, port, exc)])
        for listener in opened:
            await listener.stop()
        return None
    log.info("managed-identity endpoint listening", listen=address_text(host, endpoint.port))
    return [*opened, endpoint], endpoint
