"""Helpers of the endpoint tests: one request, the SDK subprocesses' clean environment."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from testlib import DAEMON_SRC, DaemonProcess

SDK_DIR = Path(__file__).resolve().parent.parent / "sdk"
NPM_DIR = SDK_DIR / ".npm"


@dataclass
class EndpointDaemon:
    """The running daemon, its emulator, the endpoint's secret and ports."""

    daemon: DaemonProcess
    emulator: Any
    secret: str
    port: int
    metrics_port: int
    out: Path
    other_client_id: str
    other_object_id: str = ""
    other_resource_id: str = ""
    ghost_client_id: str = ""

    @property
    def url(self) -> str:
        """IDENTITY_ENDPOINT."""
        return f"http://127.0.0.1:{self.port}/msi/token"

    @property
    def imds_base(self) -> str:
        """AZURE_POD_IDENTITY_AUTHORITY_HOST: the IMDS protocol's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def raw(self, target: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        """GET ``target`` (path and query exactly as given); (status, JSON body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", target, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def imds(
        self,
        query: str = "api-version=2018-02-01&resource=https://storage.azure.com",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One IMDS request (``Metadata: true`` unless ``headers`` says otherwise)."""
        sent = {"Metadata": "true"} if headers is None else headers
        return self.raw("/metadata/identity/oauth2/token?" + query, sent)

    def sdk_env(self, **extra: str) -> dict[str, str]:
        """A clean environment with only IDENTITY_ENDPOINT/IDENTITY_HEADER (no AZURE_*)."""
        keep = ("PATH", "HOME", "LANG", "SYSTEMROOT")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update(IDENTITY_ENDPOINT=self.url, IDENTITY_HEADER=self.secret, **extra)
        return env

    def get(
        self,
        resource: str | None = "https://storage.azure.com",
        *,
        header: str | None = "<secret>",
        api_version: str = "2019-08-01",
        **params: str,
    ) -> tuple[int, dict[str, Any]]:
        """One endpoint request; (status, JSON body). ``header="<secret>"`` sends the secret."""
        query = {"api-version": api_version, **params}
        if resource is not None:
            query["resource"] = resource
        headers = {}
        if header is not None:
            headers["X-IDENTITY-HEADER"] = self.secret if header == "<secret>" else header
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", "/msi/token?" + urlencode(query), headers=headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()


def run_python(code: str, env: dict[str, str]) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter with ``env``; its last stdout line is JSON."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": str(DAEMON_SRC)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed
