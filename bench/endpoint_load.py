"""Managed-identity endpoint load: cached-token latency over keep-alive, CPU per request, and
the first-request single-flight (Entra requests per burst).

Starts the emulator (in process) and the real daemon (a child process) with an ``[endpoint]``
table; prints one JSON object. Usage: ``python bench/endpoint_load.py [--requests N]
[--burst N]``. Nothing is hard-coded: every figure is measured on this run.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "daemon"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from benchlib import cpu, machine  # noqa: E402
from testlib import base_env, stop_process  # noqa: E402


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=100)
    args = parser.parse_args()
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
            cpu_before = cpu(proc.pid)
            latencies = [
                _get(conn, "https://storage.azure.com", secret) for _ in range(args.requests)
            ]
            cpu_after = cpu(proc.pid)
            conn.close()
        finally:
            stop_process(proc)
            emu.stop()
    cpu_seconds = cpu_after.seconds - cpu_before.seconds
    q = statistics.quantiles(latencies, n=100)
    result = {
        "machine": machine(),
        "cached": {
            "requests": args.requests,
            "p50_ms": round(statistics.median(latencies) * 1000, 3),
            "p99_ms": round(q[98] * 1000, 3),
            "daemon_cpu_ms_per_request": round(cpu_seconds * 1000 / args.requests, 4),
        },
        "burst": {
            "concurrent_first_requests": args.burst,
            "entra_requests": burst_entra,
            "max_ms": round(max(burst) * 1000, 1),
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
