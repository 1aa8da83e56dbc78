#!/usr/bin/env python3
"""The memory floor of the daemon's design: a process that imports the same stack and makes one
HTTPS request, then idles.

Imports what the daemon imports at run time (asyncio, ssl, httpx with httpcore/anyio, h11,
structlog, prometheus_client, the daemon's ctypes inotify binding), makes one HTTPS request with an
``httpx.AsyncClient`` trusting the same store as the daemon (``SSL_CERT_FILE``/``SSL_CERT_DIR``)
to ``AZURE_AUTHORITY_HOST`` (the emulator), prints ``ready`` and sleeps until killed: its RSS is
what any daemon built on these libraries pays before keeping a single token. ``run_all.py``
measures it beside the 1-token daemon, in the same run.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys


async def one_request(url: str) -> int:
    """GET ``url`` once over TLS; the HTTP status."""
    import httpx

    cafile = os.environ.get("SSL_CERT_FILE") or None
    capath = os.environ.get("SSL_CERT_DIR") or None
    context = ssl.create_default_context(cafile=cafile, capath=capath)
    async with httpx.AsyncClient(verify=context) as client:
        response = await client.get(url)
        return response.status_code


async def main() -> int:
    """Import, request, report, idle."""
    import h11  # noqa: F401 - part of the stack being measured
    import prometheus_client  # noqa: F401
    import structlog  # noqa: F401

    import entra_tokend.watcher  # noqa: F401 - the daemon's own inotify binding (ctypes)

    status = await one_request(os.environ["AZURE_AUTHORITY_HOST"].rstrip("/") + "/")
    print(f"ready {status}", flush=True)
    await asyncio.Event().wait()  # idle until killed, like the daemon between refreshes
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
