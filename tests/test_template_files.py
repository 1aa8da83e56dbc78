"""``[file.NAME]`` end to end: the real daemon against the emulator renders one file from
several tokens and their claims, waits for every token, re-renders on a refresh and at a
reload, keeps the old file when a reload is rejected, and counts in /readyz. (The Redis recipe
with the user name from ``oid`` is in tests/recipes/test_redis.py.)"""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from entra_tokend.emulator import Emulator
from testlib import DaemonProcess, emulator_env, jwt_claims, run_cli, wait_until, write_config

STORAGE = "https://storage.azure.com/.default"
VAULT = "https://vault.azure.net/.default"
TWO = f'[token.storage]\nscope="{STORAGE}"\n[token.vault]\nscope="{VAULT}"\n'


def env_lines(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def readyz(daemon: DaemonProcess) -> tuple[int, dict[str, Any]]:
    port = int(daemon.wait_event("listening")["listen"].rpartition(":")[2])
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_two_tokens_and_a_claim_in_one_file(emulator: Emulator, tmp_path: Path) -> None:
    out, hooked = tmp_path / "out", tmp_path / "hooked"
    config = write_config(
        tmp_path / "c.toml",
        body=TWO + '[file.app]\npath="app/app.env"\nfile_mode="0600"\ntemplate="""'
        "STORAGE=$storage.access_token\nVAULT=${vault.access_token}\n"
        'USER=${storage.oid}\nTENANT=$vault.tid\nEXPIRES=$vault.expires_on_rfc3339\n"""\n'
        # The file's hook runs after the write, with the file's name and path.
        '[file.app.hook]\nexec=["sh", "-c", "echo $ENTRA_TOKEND_TOKEN >\\"$0\\"; '
        f'cat \\"$ENTRA_TOKEND_TOKEN_FILE\\" >>\\"$0\\"", "{hooked}"]\n',
    )
    result = run_cli("run", "--once", "--config", str(config), env=emulator_env(emulator, out))
    assert result.returncode == 0, result.stderr
    target = out / "app" / "app.env"
    values = env_lines(target)
    assert values["STORAGE"] == (out / "storage").read_text()
    assert values["VAULT"] == (out / "vault").read_text()
    assert values["STORAGE"] != values["VAULT"]
    assert values["USER"] == jwt_claims(values["STORAGE"])["oid"]
    assert values["TENANT"] == emulator.tenant_id
    assert values["EXPIRES"].endswith("Z")
    assert target.stat().st_mode & 0o777 == 0o600
    assert hooked.read_text() == "app\n" + target.read_text()


@pytest.fixture
def running(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> Callable[[str], DaemonProcess]:
    def start(body: str) -> DaemonProcess:
        config = write_config(
            tmp_path / "c.toml",
            body=body,
            listen="127.0.0.1:0",
            backoff_initial=0.1,
            backoff_max=0.2,
            config_error_backoff_max=0.2,
            min_refresh_interval=1,
        )
        env = emulator_env(emulator, tmp_path / "out")
        env.pop("ENTRA_TOKEND_LISTEN")
        return daemon_factory("run", "--config", str(config), env=env)

    return start


def test_not_written_until_every_token_exists_then_rerendered_on_a_refresh(
    emulator: Emulator, tmp_path: Path, running: Callable[[str], DaemonProcess]
) -> None:
    late = str(uuid.uuid4())  # an app registered only later: its token fails until then
    daemon = running(
        f'[identity.late]\nclient_id="{late}"\ntenant_id="{emulator.tenant_id}"\n'
        f'token_file="{emulator.token_file}"\nauthority_host="{emulator.authority_host}"\n'
        f'[token.a]\nscope="{STORAGE}"\n[token.b]\nscope="{VAULT}"\nidentity="late"\n'
        '[file.app]\ntemplate="A=$a.access_token\\nB=$b.access_token\\nB_USER=$b.oid\\n"\n'
    )
    daemon.wait_event("token written", token="a")
    daemon.wait_event("token refresh failed", token="b")
    target = tmp_path / "out" / "app"
    assert not target.exists()
    status, body = readyz(daemon)
    assert (status, body["tokens"]["file:app"]) == (503, "pending")

    emulator.access_token_lifetime = 8  # b's tokens: refreshed every few seconds
    app = emulator.add_app(late)
    daemon.wait_event("template file written", file="app")
    first = env_lines(target)
    assert first["A"] == (tmp_path / "out" / "a").read_text()
    assert first["B_USER"] == app.object_id
    assert readyz(daemon) == (
        200,
        {"ready": True, "tokens": {"a": "ok", "b": "ok", "file:app": "ok"}},
    )

    wait_until(lambda: daemon.count("template file written", file="app") >= 2, 30)
    second = env_lines(target)
    assert second["A"] == first["A"]  # a was not refreshed: its value is unchanged
    assert second["B"] != first["B"]
    assert second["B"] in emulator.issued_tokens


def test_reload_rerenders_from_held_tokens_and_a_rejected_one_keeps_the_file(
    emulator: Emulator, tmp_path: Path, running: Callable[[str], DaemonProcess]
) -> None:
    daemon = running(TWO + '[file.app]\ntemplate="S=$storage.access_token\\n"\n')
    daemon.wait_event("template file written", file="app")
    target = tmp_path / "out" / "app"
    before = target.read_bytes()
    requests = len(emulator.token_requests())

    config = tmp_path / "c.toml"
    text = config.read_text()
    config.write_text(text.replace("$storage.access_token", "${storage.nope}"))
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_event("configuration reload rejected")
    assert rejected["problem"].startswith("file.app.template: unknown field 'nope'")
    assert target.read_bytes() == before

    config.write_text(
        text.replace("S=$storage.access_token", "T=$storage.access_token U=$storage.oid")
    )
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: daemon.count("template file written", file="app") >= 2)
    values = env_lines(target)
    assert values["T"].partition(" U=")[0] == (tmp_path / "out" / "storage").read_text()
    assert len(emulator.token_requests()) == requests  # rendered from the tokens it holds
