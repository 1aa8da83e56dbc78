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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "daemon"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from benchlib import cpu, machine  # noqa: E402
from support import base_env, stop_process  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s; 0: back to back")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    from entra_tokend.emulator import Emulator

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        emu: Any = Emulator(root / "emulator")
        emu.start()
        secret = secrets.token_urlsafe(32)
        config = root / "c.toml"
        config.write_text(
            f'output_dir = "{root / "out"}"\nlisten = ""\n[endpoint]\nlisten = "127.0.0.1:0"\n'
            'secret_env = "EP_SECRET"\n'
            'allow = ["https://storage.azure.com", "https://vault.azure.net"]\n'
        )
        env = {
            **base_env(),
            **emu.env(),
            "ENTRA_TOKEND_CONFIG": str(config),
            "EP_SECRET": secret,
            "ENTRA_TOKEND_LOG_FORMAT": "json",
            "PYTHONPATH": str(REPO / "daemon"),
        }
        log_path = root / "daemon.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "entra_tokend", "run"], env=env, stdout=log, stderr=log
            )
        try:
            port = 0
            deadline = time.monotonic() + 30
            while not port:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("daemon did not start:\n" + log_path.read_text())
                for line in log_path.read_text().splitlines():
                    event = json.loads(line)
                    if event.get("event") == "managed-identity endpoint listening":
                        port = int(event["listen"].rsplit(":", 1)[1])
                time.sleep(0.01)
            # Burst: N concurrent first requests for a resource nobody asked for yet.
            before = len(emu.token_requests())

            def first(_: int) -> float:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                try:
                    return _get(conn, "https://vault.azure.net", secret)
                finally:
                    conn.close()

            with ThreadPoolExecutor(max_workers=args.burst) as pool:
                burst = list(pool.map(first, range(args.burst)))
            burst_entra = len(emu.token_requests()) - before
            # Cached: one keep-alive connection, sequential requests.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            _get(conn, "https://storage.azure.com", secret)  # warm: the token is now cached
            size = _size(conn, secret)
            cpu_before = cpu(proc.pid)
            latencies = paced(
                lambda: _get(conn, "https://storage.azure.com", secret), args.requests, args.rate
            )
            cpu_after = cpu(proc.pid)
            conn.close()
        finally:
            stop_process(proc)
            emu.stop()
    cpu_seconds = cpu_after.seconds - cpu_before.seconds
    result = {
        "machine": machine(),
        "cached": {
            "requests": args.requests,
            "rate_per_s": args.rate,
            **summary(latencies),
            "daemon_cpu_ms_per_request": round(cpu_seconds * 1000 / args.requests, 4),
        },
        "floor": {"response_bytes": size, **floor(args.requests, args.rate, size)},
        "burst": {
            "concurrent_first_requests": args.burst,
            "entra_requests": burst_entra,
            "max_ms": round(max(burst) * 1000, 1),
        },
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
