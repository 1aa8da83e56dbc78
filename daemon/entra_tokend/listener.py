"""Listening sockets: the dual-stack default and addresses as the logs show them.

The default listen address ``[::]:9464`` is dual-stack: one IPv6 socket with ``IPV6_V6ONLY``
off also accepts IPv4 clients (as IPv4-mapped addresses; RFC 3493 section 5.3, and Linux
ipv6(7)). asyncio sets ``IPV6_V6ONLY`` on every IPv6 socket it binds itself, so the socket is
made here and handed to ``asyncio.start_server(sock=...)``. On a host without IPv6 (the address
family is not supported, or ``::`` cannot be assigned: ``ipv6.disable=1``) it binds ``0.0.0.0``.
"""

from __future__ import annotations

import errno
import socket

from entra_tokend.util.net import address_text

__all__ = ["address_text", "bind_listener", "listening_text"]

_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


def bind_listener(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket for ``host``:``port`` (port 0 picks a free port).

    ``::`` is dual-stack (``IPV6_V6ONLY`` off); where the host has no IPv6 (the family is not
    supported, or ``::`` cannot be assigned) it binds ``0.0.0.0`` instead. Any other host is
    bound as ``getaddrinfo`` resolves it (its first address). Raises OSError.
    """
    if host == "::":
        try:
            return _bind(socket.AF_INET6, ("::", port), dual_stack=True)
        except OSError as exc:
            if exc.errno not in _NO_IPV6:
                raise
        return _bind(socket.AF_INET, ("0.0.0.0", port), dual_stack=False)
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = info[0]
    return _bind(family, address, dual_stack=False)


def _bind(family: int, address: tuple[object, ...], *, dual_stack: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def listening_text(sock: socket.socket) -> str:
    """The address ``sock`` listens on, IPv6 in brackets; ``[::]`` marks dual-stack."""
    host, port = sock.getsockname()[:2]
    return address_text(str(host), int(port))


def server_address(server: object) -> str:
    """The address an ``asyncio`` server listens on (its first socket), IPv6 in brackets."""
    # AbstractServer does not declare `sockets`; every server asyncio.start_server makes has it.
    sockets = getattr(server, "sockets", ())
    return listening_text(sockets[0]) if sockets else "unknown"
