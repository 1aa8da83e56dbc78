"""`entra-tokend dev`: the newcomer's first command, run as a newcomer would."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

from support import base_env, cli, wait_until


def test_dev_writes_tokens_serves_readiness_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    log = tmp_path / "dev.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cli("dev", "--listen", "127.0.0.1:0", "--log-format", "json"),
            cwd=tmp_path,
            env=base_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: (
                    (tmp_path / "tokens" / "storage").exists()
                    and (tmp_path / "tokens" / "graph").exists()
                ),
                timeout=20,
            )
            text = log.read_text()
            assert "entra-tokend dev" in text
            listen = wait_until(
                lambda: re.search(r'"listen": "127\.0\.0\.1:(\d+)"', log.read_text())
            )
            url = f"http://127.0.0.1:{listen.group(1)}/readyz"
            body = wait_until(lambda: _ready(url), timeout=10)
            tokens = {"graph": "ok", "registry": "ok", "storage": "ok"}
            assert body == {"ready": True, "tokens": tokens}
            # The registry token is a docker config for the emulator's own registry service.
            docker = json.loads((tmp_path / "tokens" / "docker" / "config.json").read_text())
            (entry,) = docker["auths"].values()
            user, _, refresh_token = base64.b64decode(entry["auth"]).decode().partition(":")
            assert user == "00000000-0000-0000-0000-000000000000"
            assert refresh_token.count(".") == 2
            env_file = (tmp_path / ".entra-tokend-dev" / "env").read_text()
            assert "AZURE_AUTHORITY_HOST='https://127.0.0.1:" in env_file
            assert "SSL_CERT_FILE=" in env_file
            # The printed IDENTITY_ENDPOINT/IDENTITY_HEADER are enough for an SDK app.
            endpoint = re.search(r"export IDENTITY_ENDPOINT=(\S+)", text)
            header = re.search(r"export IDENTITY_HEADER=(\S+)", text)
            assert endpoint
            assert header
            query = "?api-version=2019-08-01&resource=https://storage.azure.com"
            request = urllib.request.Request(
                endpoint.group(1) + query, headers={"X-IDENTITY-HEADER": header.group(1)}
            )
            with urllib.request.urlopen(request, timeout=10) as resp:
                served = json.loads(resp.read())
            assert served["access_token"] == (tmp_path / "tokens" / "storage").read_text()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    token = (tmp_path / "tokens" / "storage").read_text()
    assert token.count(".") == 2
    assert token not in log.read_text()


def _ready(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except OSError:
        return None
