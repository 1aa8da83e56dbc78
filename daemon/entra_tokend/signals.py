"""Signals that arrive before the daemon can handle them are held, not fatal.

Python's default action for SIGHUP (and SIGTERM) ends the process. The daemon installs its
handlers only after reading the configuration, locking the output directory and building its
pipeline — a reload signal in that window (a ConfigMap update, an operator's ``kill -HUP``)
used to kill it. ``hold`` blocks the daemon's signals as the first thing the CLI does for a
long-running command; ``release`` unblocks them once the event loop's handlers are in place,
and the kernel then delivers what arrived meanwhile (a held SIGHUP becomes a reload, a held
SIGTERM a clean stop). Children inherit the signal mask across exec, so ``release`` runs before
any hook or supervised program can start.

Not covered: the interpreter's own start-up before ``cli.main`` runs (a few tens of ms).
"""

from __future__ import annotations

import signal

HELD = frozenset({signal.SIGHUP, signal.SIGTERM, signal.SIGINT})
"""The signals the daemon handles: reload, stop, stop."""


def hold() -> None:
    """Block ``HELD`` in this thread (and in threads started after it)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD)


def release() -> None:
    """Unblock ``HELD``; pending ones are delivered to their (now installed) handlers."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)


def parse_signal(text: str) -> int:
    """``HUP``, ``SIGHUP``, ``hup`` or ``1`` → 1. Raises ValueError for an unknown signal."""
    name = text.strip().upper()
    try:
        if name.isdigit():
            return int(signal.Signals(int(name)))
        return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except (KeyError, ValueError):
        raise ValueError(f"unknown signal {text!r} (HUP, USR1, 10...)") from None
