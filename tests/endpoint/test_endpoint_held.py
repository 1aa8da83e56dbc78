"""The endpoint serves what it holds: each token with its own expiry, and a token Entra issued
even when its file cannot be written. And the log says which credential each figure describes.

One real daemon against the emulator (Entra tokens of 600 s, ACR refresh tokens of 3000 s; the
emulator plays the registry too), asked through the endpoint with its secret."""

from __future__ import annotations

import http.client
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from entra_tokend.emulator import Emulator
from support import DaemonProcess, jwt_claims, sample_value

ACR = "https://containerregistry.azure.net"
STORAGE = "https://storage.azure.com"
GRAPH = "https://graph.microsoft.com"
VAULT = "https://vault.azure.net"


@dataclass
class Held:
    daemon: DaemonProcess
    emulator: Emulator
    out: Path
    secret: str
    port: int

    def get(self, resource: str) -> tuple[int, dict[str, Any]]:
        query = urlencode({"api-version": "2019-08-01", "resource": resource})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", f"/msi/token?{query}", headers={"X-IDENTITY-HEADER": self.secret})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def issued_for(self, resource: str) -> list[str]:
        return [t for t in self.emulator.issued_tokens if jwt_claims(t)["aud"] == resource]


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Held]:
    root = tmp_path_factory.mktemp("held")
    emu = Emulator(root / "emulator")
    emu.start()
    emu.access_token_lifetime = 600
    emu.acr_refresh_token_lifetime = 3000
    registry = emu.authority_host.removeprefix("http://")
    emu.add_registry(registry)
    out = root / "out"
    (out / "planted").mkdir(parents=True)  # a directory where the storage token's file goes
    (out / "blocked").write_text("a file where the graph token's directory goes\n")
    secret = secrets.token_urlsafe(32)
    config = root / "c.toml"
    config.write_text(
        f'output_dir = "{out}"\nlisten = "127.0.0.1:0"\nbackoff_initial = 60\n'
        f'[token.acr]\nformat = "docker-config"\nregistry = ["http://{registry}"]\n'
        f'[token.planted]\nscope = "{STORAGE}/.default"\n'
        f'[token.graph]\nscope = "{GRAPH}/.default"\npath = "blocked/graph"\n'
        '[endpoint]\nlisten = "127.0.0.1:0"\nsecret_env = "EP_SECRET"\n'
        f'allow = ["{ACR}", "{STORAGE}", "{GRAPH}", "{VAULT}"]\n'
    )
    env = {**emu.env(), "ENTRA_TOKEND_CONFIG": str(config), "EP_SECRET": secret}
    daemon = DaemonProcess(["run"], env, root / "daemon.log")
    try:
        started = daemon.wait_event("managed-identity endpoint listening", timeout=30)
        daemon.wait_event("token written", timeout=30, token="acr")
        port = int(started["listen"].rsplit(":", 1)[1])
        yield Held(daemon, emu, out, secret, port)
    finally:
        daemon.stop()
        emu.stop()


def test_a_docker_config_tokens_entra_token_is_served_with_its_own_expiry(held: Held) -> None:
    """The example: the endpoint answered the Entra token with the ACR refresh token's expiry
    (3000 s instead of 600 s)."""
    status, body = held.get(ACR)
    assert status == 200, body
    (entra,) = held.issued_for(ACR)  # the docker config's; no second request
    assert body["access_token"] == entra
    assert _its_own(int(body["expires_on"]), entra)


def test_the_docker_config_line_says_which_credential_each_figure_describes(held: Held) -> None:
    written = held.daemon.wait_event("token written", token="acr")
    (entra,) = held.issued_for(ACR)
    refresh = held.emulator.issued_acr_refresh_tokens[-1]
    # expires_at/expires_in: what is on disk (the refresh tokens); entra_*: the Entra token.
    assert written["expires_at"] == _iso(jwt_claims(refresh)["exp"])
    entra_expires = datetime.fromisoformat(written["entra_expires_at"]).timestamp()
    assert _its_own(entra_expires, entra)
    assert written["expires_in"] > written["entra_expires_in"]
    plain = held.daemon.events()
    assert not any("entra_expires_in" in e for e in plain if e.get("token") != "acr")


@pytest.mark.parametrize(
    ("token", "resource"),
    [("planted", STORAGE), ("graph", GRAPH)],
    ids=["dir-at-path", "file-at-dir"],
)
def test_a_token_whose_file_cannot_be_written_is_still_served(
    held: Held, token: str, resource: str
) -> None:
    """The example (a directory planted at the file's path) and a file where its directory
    should be: the endpoint answered 500 although Entra issued the token."""
    failed = held.daemon.wait_event("token refresh failed", token=token)
    assert failed["reason"] == "write_error"
    status, body = held.get(resource)
    assert status == 200, body
    issued = held.issued_for(resource)
    assert len(issued) == 1  # the one the file could not take; the endpoint asked for no other
    assert body["access_token"] == issued[0]
    assert _its_own(int(body["expires_on"]), issued[0])
    assert (held.out / "planted").is_dir()  # and readiness does not pretend it is on disk
    scrape = held.daemon.scrape()
    assert sample_value(scrape, "entra_tokend_ready") == 0


def test_an_on_demand_token_is_logged_without_a_path(held: Held) -> None:
    """Its name is not a path: it was logged as ``https:/vault…``."""
    status, _ = held.get(VAULT)
    assert status == 200
    name = f"endpoint:default:{VAULT}/.default"
    held.daemon.wait_event("token written", token=name)
    mine = [e for e in held.daemon.events() if e.get("token") == name]
    assert mine
    assert not any("path" in e for e in mine)
    assert all("https:/vault" not in json.dumps(e) for e in held.daemon.events())


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _its_own(expires_on: float, token: str) -> bool:
    """``expires_on`` is ``token``'s own expiry (600 s tokens): the daemon measures it from when
    it sent the request, so it is its ``exp`` or up to the request's latency before — never the
    ACR refresh tokens' 3000 s."""
    exp = jwt_claims(token)["exp"]
    return bool(exp - 600 < expires_on <= exp)
