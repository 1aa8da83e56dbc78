"""How long an SDK call takes to fail when Entra rejects the identity (issue 23's "under 5 s"),
beside a floor from the same run: the same SDK call against a stub endpoint that answers the
same 400 at once without any Entra request.

    .venv/bin/python bench/fail_fast.py [--rounds N]

Prints one JSON object: the daemon's p50/max seconds per call, the floor's, and their ratio.
azure-identity's ManagedIdentityCredential (App Service protocol) is the client; the identity is
one the emulator does not know (AADSTS700016).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from tempfile import TemporaryDirectory

from entra_tokend.emulator import Emulator
from suite import DaemonProcess, base_env

CALL = """
import sys, time
from azure.identity import ManagedIdentityCredential
started = time.monotonic()
try:
    ManagedIdentityCredential(client_id=sys.argv[1]).get_token("api://ghost/.default")
except Exception as exc:
    assert "AADSTS700016" in str(exc), str(exc)
print(time.monotonic() - started)
"""
ANSWER = json.dumps({"statusCode": 400, "message": "AADSTS700016: Application not found"})


class _Stub(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = ANSWER.encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        return


def _calls(url: str, secret: str, client_id: str, rounds: int) -> list[float]:
    env = base_env({"IDENTITY_ENDPOINT": url, "IDENTITY_HEADER": secret})
    times = []
    for _ in range(rounds):
        done = subprocess.run(
            [sys.executable, "-c", CALL, client_id],
            env=env, capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        times.append(float(done.stdout.strip().splitlines()[-1]))
    return times


def _daemon_times(root: Path, rounds: int) -> list[float]:
    with Emulator(root / "emu") as emu:
        ghost, secret = str(uuid.uuid4()), secrets.token_urlsafe(32)
        config = root / "c.toml"
        config.write_text(
            f'listen = ""\n[identity.ghost]\ntenant_id = "{emu.tenant_id}"\n'
            f'client_id = "{ghost}"\ntoken_file = "{emu.token_file}"\n'
            f'authority_host = "{emu.authority_host}"\n'
            '[endpoint]\nlisten = "127.0.0.1:0"\nsecret_env = "EP_SECRET"\n'
            'allow = [{resource = "api://ghost", identity = "ghost"}]\n'
        )
        env = {**emu.env(), "EP_SECRET": secret, "ENTRA_TOKEND_OUTPUT_DIR": str(root / "out")}
        d = DaemonProcess(["run", "--config", str(config)], env, root / "daemon.log")
        try:
            port = d.wait_event("managed-identity endpoint listening", timeout=60)["listen"]
            url = f"http://{port}/msi/token"
            return _calls(url, secret, ghost, rounds)
        finally:
            d.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    stub = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    floor = _calls(f"http://127.0.0.1:{stub.server_port}/msi/token", "x" * 32, "c", rounds)
    stub.shutdown()
    with TemporaryDirectory() as tmp:
        daemon = _daemon_times(Path(tmp), rounds)
    print(json.dumps({
        "rounds": rounds,
        "load_1min": round(os.getloadavg()[0], 2),
        "daemon_p50_s": round(statistics.median(daemon), 3),
        "daemon_max_s": round(max(daemon), 3),
        "floor_p50_s": round(statistics.median(floor), 3),
        "floor_max_s": round(max(floor), 3),
        "ratio_p50": round(statistics.median(daemon) / statistics.median(floor), 2),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
