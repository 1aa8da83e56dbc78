"""Whether text is a CA bundle OpenSSL can load (parsed in memory, no file access)."""

from __future__ import annotations

import ssl

PEM_MARKER = "-----BEGIN CERTIFICATE-----"


def pem_problem(pem: str) -> str | None:
    """Why ``pem`` is not a usable CA bundle (text completing "<file> ..."), or None."""
    if not pem.strip():
        return "is empty; it must hold PEM certificates"
    if PEM_MARKER not in pem:
        return f"holds no PEM certificate ({PEM_MARKER})"
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError):
        return "is not a PEM certificate bundle OpenSSL can load"
    return None
