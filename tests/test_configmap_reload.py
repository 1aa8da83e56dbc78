"""A configuration edited the way kubelet updates a ConfigMap volume (a new timestamped
directory, then the ``..data`` symlink swapped) is applied without a signal; an invalid edit is
rejected and the daemon keeps running with what it had (issue 24)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entra_tokend.emulator import Emulator
from entra_tokend.emulator.kubelet import ProjectedVolume
from testlib import STORAGE, VAULT, wait_until

BASE = 'listen = "127.0.0.1:0"\nmin_refresh_interval = 0\n'


def test_a_configmap_edit_is_applied_and_a_bad_one_rejected(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    volume = ProjectedVolume(tmp_path / "config", filename="entra-tokend.toml")
    volume.write(BASE + f'[token.a]\nscope = "{STORAGE}"\n')
    env = {**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(out)}
    d = daemon_factory("run", "--config", str(volume.path), env=env)
    d.wait_event("token written", token="a", timeout=30)

    # Kubelet publishes an edit: token b is added, with no SIGHUP from anyone.
    volume.write(BASE + f'[token.a]\nscope = "{STORAGE}"\n[token.b]\nscope = "{VAULT}"\n')
    reloaded = d.wait_event("configuration reloaded", timeout=30)
    assert reloaded["added"] == ["b"]
    d.wait_event("token written", token="b", timeout=30)
    assert (out / "b").read_text() in emulator.issued_tokens

    # An invalid edit: rejected naming the problem; both tokens stay, the daemon runs on.
    volume.write(BASE + f'[token.a]\nscope = "{STORAGE}"\n[token.b]\nscope = 3\n')
    d.wait_event("configuration reload rejected", timeout=30)
    assert d.count("configuration reloaded") == 1
    assert d.proc.poll() is None
    assert {"a", "b"} <= {p.name for p in out.iterdir()}

    # Republishing the same content (kubelet resyncs) reloads nothing; a fix applies again.
    volume.write(BASE + f'[token.a]\nscope = "{STORAGE}"\n[token.b]\nscope = 3\n')
    volume.write(BASE + f'[token.a]\nscope = "{STORAGE}"\n')
    removed = wait_until(
        lambda: [e for e in d.events() if e.get("event") == "configuration reloaded"][1:],
        timeout=30,
    )
    assert removed[0]["removed"] == ["b"]
    assert d.count("configuration reload rejected") == 1
    assert d.stop() == 0
