"""The systemd notification protocol (sd_notify(3)), standard library only.

A service with ``Type=notify`` reports state by sending newline-separated ``VAR=VALUE``
assignments as one datagram to the AF_UNIX socket named in ``$NOTIFY_SOCKET``:
``READY=1`` when it is ready, ``STATUS=...`` free text for ``systemctl status``,
``WATCHDOG=1`` keep-alive pings when ``WatchdogSec=`` is set, ``STOPPING=1`` on shutdown.
Outside systemd the variable is unset and every call is a cheap no-op.
"""

from __future__ import annotations

import os
import socket

__all__ = ["notify", "watchdog_interval"]


def _socket_address(value: str) -> bytes | None:
    """Return the kernel address for ``$NOTIFY_SOCKET``, or None if it is not an AF_UNIX one."""
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@") and len(value) > 1:
        # Linux abstract namespace: the name starts with a NUL byte instead of '@'.
        return b"\0" + os.fsencode(value[1:])
    # Relative paths and other schemes (e.g. vsock:) are not ours to guess at.
    return None


def notify(*lines: str) -> bool:
    """Send ``VAR=VALUE`` lines to systemd as one datagram.

    Returns True if the datagram was handed to the socket, False if ``$NOTIFY_SOCKET`` is unset,
    unusable, or sending failed (including a full receive queue: the call never blocks); it never
    raises for these, since a supervisor's absence must not stop the daemon. A newline inside a
    line is replaced by a space so that free text (a STATUS carrying an error message) cannot
    inject a further assignment such as ``READY=1``.
    """
    if not lines:
        return False
    value = os.environ.get("NOTIFY_SOCKET", "")
    address = _socket_address(value)
    if address is None:
        return False
    payload = "\n".join(line.replace("\r", " ").replace("\n", " ") for line in lines)
    try:
        # Python sockets are close-on-exec already (PEP 446), so hooks never inherit this one.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # Never block the event loop: a full queue means systemd is not reading anyway.
            sock.setblocking(False)
            sock.sendto(payload.encode("utf-8", errors="replace"), address)
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Return systemd's watchdog interval in seconds, or None when no pings are expected.

    Follows sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` must be a positive integer, and if
    ``$WATCHDOG_PID`` is set it must name this process (otherwise the watchdog is meant for
    another process, e.g. a parent that exec'd us under a wrapper). Callers should send
    ``WATCHDOG=1`` at about half the returned interval.
    """
    usec = _parse_unsigned(os.environ.get("WATCHDOG_USEC", ""))
    if usec is None or usec == 0:
        return None
    pid_text = os.environ.get("WATCHDOG_PID", "")
    if pid_text and _parse_unsigned(pid_text) != os.getpid():
        return None
    return usec / 1_000_000


def _parse_unsigned(text: str) -> int | None:
    """Parse plain ASCII decimal digits; int() alone would also take '+', '_' and spaces."""
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text)
