"""``entra-tokend healthcheck``: ask a running daemon's ``/healthz``, exit 0 or 1.

Made for a container HEALTHCHECK in an image without a shell or curl (the distroless runtime):
the exec form runs the console script, which speaks HTTP with the standard library only.
``/healthz`` is answered from the daemon's event loop, so 200 means the loop is running.
"""

from __future__ import annotations

import http.client
import ipaddress
from collections.abc import Mapping

from entra_tokend.config import parse_listen
from entra_tokend.config.schema import TOP_LEVEL

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
DEFAULT_TIMEOUT = 5.0  # seconds; Docker's own HEALTHCHECK default --timeout is 30 s


def probe_address(listen: str) -> tuple[str, int]:
    """Where to reach a daemon listening on ``listen`` (``HOST:PORT``, ``[V6]:PORT``).

    A wildcard bind (``0.0.0.0``, ``::``, empty host) is reached on the matching loopback
    address. Raises ValueError for an unparsable value, and for ``''`` (listener disabled).
    """
    if not listen:
        raise ValueError("the listener is disabled (listen = ''); there is no /healthz to ask")
    host, port = parse_listen(listen)
    if port == 0:
        raise ValueError("port 0 picks a random port at start-up; give the daemon a fixed one")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host, port  # a host name, e.g. localhost
    if address.is_unspecified:
        # `::` is dual-stack, or 0.0.0.0 on a host without IPv6 (listener.py): either way
        # IPv4 loopback reaches it.
        return "127.0.0.1", port
    return host, port


def healthcheck(listen: str | None, env: Mapping[str, str], timeout: float) -> tuple[int, str]:
    """GET ``/healthz`` of the daemon at ``listen`` (else ``ENTRA_TOKEND_LISTEN``, else the
    default listen address). Returns (exit status, one line for stderr)."""
    value = listen if listen is not None else env.get("ENTRA_TOKEND_LISTEN")
    if value is None:
        value = str(TOP_LEVEL["listen"][1])
    try:
        host, port = probe_address(value)
    except ValueError as exc:
        return EXIT_UNHEALTHY, f"entra-tokend: healthcheck: listen {value!r}: {exc}"
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/healthz")
        status = connection.getresponse().status
    except OSError as exc:
        return EXIT_UNHEALTHY, f"entra-tokend: healthcheck: http://{shown}/healthz: {exc}"
    finally:
        connection.close()
    if status == 200:
        return EXIT_HEALTHY, f"entra-tokend: healthcheck: http://{shown}/healthz: 200"
    return EXIT_UNHEALTHY, f"entra-tokend: healthcheck: http://{shown}/healthz: HTTP {status}"
