"""A token file is adopted at start-up (or on reload) only if it is provably this token's;
the managed-identity endpoint serves an adopted token as the file path keeps it."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from entra_tokend.emulator import Emulator
from support import DaemonProcess, emulator_env, wait_until

STORAGE = "https://storage.azure.com/.default"
VAULT = "https://vault.azure.net/.default"


def _config(path: Path, scope: str) -> Path:
    path.write_text(f'[token.x]\nscope = "{scope}"\n')
    return path


def _start(
    factory: Callable[..., DaemonProcess], emulator: Emulator, out: Path, config: Path
) -> DaemonProcess:
    return factory("run", "--config", str(config), env=emulator_env(emulator, out))


def _first_run(
    factory: Callable[..., DaemonProcess], emulator: Emulator, out: Path, config: Path
) -> None:
    """A daemon that writes its token and stops cleanly (leaving file and record)."""
    first = _start(factory, emulator, out, config)
    first.wait_event("ready: every token is on disk")
    assert first.stop() == 0


def _not_adopted(
    factory: Callable[..., DaemonProcess], emulator: Emulator, out: Path, config: Path
) -> str:
    """Start again, expect the file refused and re-issued; returns the logged reason."""
    d = _start(factory, emulator, out, config)
    event = d.wait_event("existing token file not adopted; refreshing now")
    d.wait_event("token written", token="x")
    assert d.stop() == 0
    reason: str = event["reason"]
    return reason


def test_a_restart_adopts_the_file_it_wrote(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    out, config = tmp_path / "out", _config(tmp_path / "c.toml", STORAGE)
    first = _start(daemon_factory, emulator, out, config)
    first.wait_event("ready: every token is on disk")
    assert first.stop() == 0
    issued = len(emulator.issued_tokens)
    second = _start(daemon_factory, emulator, out, config)
    second.wait_event("ready: every token is on disk")
    assert second.count("token written") == 0
    assert len(emulator.issued_tokens) == issued
    assert second.stop() == 0


def test_a_changed_scope_is_reissued_at_once_on_reload(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """The example: storage → vault plus SIGHUP used to keep the storage token for hours."""
    out, config = tmp_path / "out", _config(tmp_path / "c.toml", STORAGE)
    d = _start(daemon_factory, emulator, out, config)
    d.wait_event("token written", token="x")
    storage_token = (out / "x").read_text()
    _config(config, VAULT)
    d.signal(signal.SIGHUP)
    d.wait_event("existing token file not adopted; refreshing now", token="x")
    wait_until(lambda: d.count("token written", token="x") == 2)
    assert (out / "x").read_text() != storage_token
    assert (out / "x").read_text() == emulator.issued_tokens[-1]
    assert d.stop() == 0


def test_a_changed_scope_is_reissued_at_once_on_restart(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    out, config = tmp_path / "out", _config(tmp_path / "c.toml", STORAGE)
    _first_run(daemon_factory, emulator, out, config)
    _config(config, VAULT)
    reason = _not_adopted(daemon_factory, emulator, out, config)
    assert reason.startswith("configuration changed")


def test_a_file_another_user_wrote_or_edited_is_never_adopted(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    out, config = tmp_path / "out", _config(tmp_path / "c.toml", STORAGE)
    _first_run(daemon_factory, emulator, out, config)
    genuine = (out / "x").read_text()
    # Same name, a valid-looking JWT with a far expiry, owned by someone else.
    (out / "x").unlink()
    (out / "x").write_text(genuine)
    os.chown(out / "x", 65534, 65534)
    reason = _not_adopted(daemon_factory, emulator, out, config)
    assert reason == "token file owned by another user"
    # Ours, but edited since: its bytes no longer match the record.
    (out / "x").write_text(genuine)
    reason = _not_adopted(daemon_factory, emulator, out, config)
    assert reason == "token file changed since this daemon wrote it"


def test_the_endpoint_serves_a_token_adopted_from_disk_at_once(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """After a restart the endpoint used to answer 500 after 30 s for a shared file token
    until the file's next scheduled refresh: the adopted token was never in its memory."""
    out, config = tmp_path / "out", tmp_path / "c.toml"
    config.write_text(
        f'[token.x]\nscope = "{STORAGE}"\n'
        '[endpoint]\nlisten = "127.0.0.1:0"\nsecret_env = "EP_SECRET"\n'
        'allow = ["https://storage.azure.com"]\n'
    )
    secret = secrets.token_urlsafe(24)
    env = emulator_env(emulator, out, EP_SECRET=secret)
    first = daemon_factory("run", "--config", str(config), env=env)
    first.wait_event("ready: every token is on disk")
    assert first.stop() == 0
    adopted = (out / "x").read_text()
    issued = len(emulator.issued_tokens)
    second = daemon_factory("run", "--config", str(config), env=env)
    listening = second.wait_event("managed-identity endpoint listening")
    second.wait_event("ready: every token is on disk")
    port = int(listening["listen"].rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    query = "api-version=2019-08-01&resource=https://storage.azure.com"
    conn.request("GET", f"/msi/token?{query}", headers={"X-IDENTITY-HEADER": secret})
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 200, body
    assert body["access_token"] == adopted  # the file's token, served from the adoption
    assert len(emulator.issued_tokens) == issued  # no Entra request, no wait for one
    assert second.count("token written") == 0
    assert second.stop() == 0


@pytest.mark.parametrize(
    ("setting", "changed"),
    [('file_mode = "0600"', "file_mode"), ('format = "env"', "format")],
)
def test_not_adopted_names_the_part_of_the_configuration_that_changed(
    emulator: Emulator,
    tmp_path: Path,
    daemon_factory: Callable[..., DaemonProcess],
    setting: str,
    changed: str,
) -> None:
    """The example: only ``file_mode`` changed, and the reason said "identity, scope, format
    or path"; and another part (the format)."""
    out, config = tmp_path / "out", _config(tmp_path / "c.toml", STORAGE)
    _first_run(daemon_factory, emulator, out, config)
    config.write_text(config.read_text() + setting + "\n")
    reason = _not_adopted(daemon_factory, emulator, out, config)
    assert reason == f"configuration changed: {changed}"
