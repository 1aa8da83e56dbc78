"""Managed-identity endpoint load: cached-token latency over keep-alive, CPU per request, and
the first-request single-flight (Entra requests per burst).

Starts the emulator (in process) and the real daemon (a child process) with an ``[endpoint]``
table; prints one JSON object. Usage: ``python bench/endpoint_load.py [--requests N]
[--burst N] [--rate R] [--json PATH]``. Nothing is hard-coded: every figure is measured on this
run.

Cached requests go over one keep-alive connection, paced at ``--rate`` requests per second (0:
back to back). The floor is the same client against ``FLOOR_SERVER``, a process that answers
every request at once with a fixed response of the same size from an asyncio stream (no HTTP
parsing): what loopback, the scheduler and this client cost by themselves.
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from benchlib import cpu, machine
from suite import DAEMON_SRC, base_env, stop_process


def _get(conn: http.client.HTTPConnection, resource: str, secret: str) -> float:
    query = urlencode({"api-version": "2019-08-01", "resource": resource})
    started = time.perf_counter()
    conn.request("GET", "/msi/token?" + query, headers={"X-IDENTITY-HEADER": secret})
    resp = conn.getresponse()
    body = resp.read()
    elapsed = time.perf_counter() - started
    if resp.status != 200 or b"access_token" not in body:
        raise RuntimeError(f"endpoint answered {resp.status}")
    return elapsed


FLOOR_SERVER = """
import asyncio, sys
size = int(sys.argv[1])
head = "HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n"
reply = head.encode() % size
reply += b'{"access_token": "' + b"x" * (size - 20) + b'"}'
async def serve(reader, writer):
    while True:
        head = await reader.readuntil(b"\\r\\n\\r\\n")
        if not head:
            return
        writer.write(reply)
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def paced(get: Callable[[], float], requests: int, rate: float) -> list[float]:
    """``requests`` calls of ``get``, started ``1/rate`` s apart (back to back if rate is 0)."""
    latencies = []
    period = 1 / rate if rate > 0 else 0.0
    start = time.perf_counter()
    for i in range(requests):
        if period:
            delay = start + i * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        latencies.append(get())
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    """p50/p99/max in ms."""
    q = statistics.quantiles(latencies, n=100)
    return {
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(q[98] * 1000, 3),
        "max_ms": round(max(latencies) * 1000, 3),
    }


def floor(requests: int, rate: float, size: int) -> dict[str, float]:
    """The same paced client against FLOOR_SERVER (a child process)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOOR_SERVER, str(size)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        _get(conn, "https://storage.azure.com", "floor")
        return summary(paced(lambda: _get(conn, "r", "floor"), requests, rate))
    finally:
        stop_process(proc)


def _size(conn: http.client.HTTPConnection, secret: str) -> int:
    query = urlencode({"api-version": "2019-08-01", "resource": "https://storage.azure.com"})
    conn.request("GET", "/msi/token?" + query, headers={"X-IDENTITY-HEADER": secret})
    return len(conn.getresponse().read())


ALLOWED = ("https://storage.azure.com", "https://vault.azure.net")
"""The endpoint's allow-list: the cached resource, then the one the burst asks for first."""


def start_daemon(root: Path, emu: Any, secret: str) -> tuple[subprocess.Popen[bytes], int]:
    """The daemon with only an ``[endpoint]`` table (no file tokens), against ``emu``; returns
    it and the endpoint's port once it logs that it listens. Raises RuntimeError if it exits or
    does not listen within 30 s (its log in the message)."""
    config = root / "c.toml"
    config.write_text(
        f'output_dir = "{root / "out"}"\nlisten = ""\n[endpoint]\nlisten = "127.0.0.1:0"\n'
        f'secret_env = "EP_SECRET"\nallow = {json.dumps(list(ALLOWED))}\n'
    )
    env = {
        **base_env(),
        **emu.env(),
        "ENTRA_TOKEND_CONFIG": str(config),
        "EP_SECRET": secret,
        "ENTRA_TOKEND_LOG_FORMAT": "json",
        "PYTHONPATH": str(DAEMON_SRC),
    }
    log_path = root / "daemon.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "entra_tokend", "run"], env=env, stdout=log, stderr=log
        )
    deadline = time.monotonic() + 30
    while True:
        if time.monotonic() > deadline or proc.poll() is not None:
            stop_process(proc)
            raise RuntimeError("daemon did not start:\n" + log_path.read_text())
        for line in log_path.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "managed-identity endpoint listening":
                return proc, int(event["listen"].rsplit(":", 1)[1])
        time.sleep(0.01)


def burst(emu: Any, port: int, secret: str, callers: int) -> dict[str, Any]:
    """``callers`` concurrent first requests for a resource nobody asked for yet: how many
    token requests reached the emulator (single-flight: 1) and the slowest caller."""
    before = len(emu.token_requests())

    def first(_: int) -> float:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            return _get(conn, ALLOWED[1], secret)
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=callers) as pool:
        waits = list(pool.map(first, range(callers)))
    return {
        "concurrent_first_requests": callers,
        "entra_requests": len(emu.token_requests()) - before,
        "max_ms": round(max(waits) * 1000, 1),
    }


def cached(pid: int, port: int, secret: str, requests: int, rate: float) -> dict[str, Any]:
    """Paced requests for a cached token over one keep-alive connection: latency percentiles,
    the daemon's CPU per request, and the response size (for the floor)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    _get(conn, ALLOWED[0], secret)  # warm: the token is now cached
    size = _size(conn, secret)
    cpu_before = cpu(pid)
    latencies = paced(lambda: _get(conn, ALLOWED[0], secret), requests, rate)
    cpu_seconds = cpu(pid).seconds - cpu_before.seconds
    conn.close()
    return {
        "requests": requests,
        "rate_per_s": rate,
        **summary(latencies),
        "daemon_cpu_ms_per_request": round(cpu_seconds * 1000 / requests, 4),
        "response_bytes": size,
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: measure, print the JSON (and write it with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s; 0: back to back")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    from entra_tokend.emulator import Emulator

    with tempfile.TemporaryDirectory() as tmp:
        emu: Any = Emulator(Path(tmp) / "emulator")
        emu.start()
        secret = secrets.token_urlsafe(32)
        try:
            proc, port = start_daemon(Path(tmp), emu, secret)
            try:
                first = burst(emu, port, secret, args.burst)
                warm = cached(proc.pid, port, secret, args.requests, args.rate)
            finally:
                stop_process(proc)
        finally:
            emu.stop()
    size = warm.pop("response_bytes")
    result = {
        "machine": machine(),
        "cached": warm,
        "floor": {"response_bytes": size, **floor(args.requests, args.rate, size)},
        "burst": first,
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
