"""Projected-token rotations in azure-workload-identity v1.6's volume layout.

Webhook v1.6 moved the projected token one directory deeper: the volume is mounted at
``/var/run/secrets/azure/wi`` and the token projected with the subpath
``token/azure-identity-token`` (azure-workload-identity PR #1720), so that the token-proxy CA
can share the volume. kubelet's AtomicWriter publishes a nested path this way: the payload lands
in ``..TIMESTAMP/token/azure-identity-token``, ``..data`` is swapped in the volume root, and the
user-visible entry is the top-level directory ``token -> ..data/token``. The file's own
directory is therefore a symlink that changes target at every rotation, and the directory it
resolved to is deleted afterwards; the swap happens in the directory above it.

The second layout is a token mounted one directory deeper with a flat projection (a volume at
``.../wi/token``, the swap inside ``token/``), as a hand-written manifest may do.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from entra_tokend.emulator import Emulator
from entra_tokend.emulator.kubelet import DATA_DIR, DATA_TMP, ProjectedVolume
from testlib import (
    STORAGE,
    DaemonProcess,
    emulator_env,
    jwt_claims,
    sample_value,
    wait_until,
    write_config,
)

SUBPATH = "token/azure-identity-token"
# A failed refresh waits at least 60 s: a recovery sooner than that came from the rotation.
SLOW_BACKOFF: dict[str, Any] = {
    "backoff_initial": 600,
    "backoff_max": 600,
    "config_error_backoff_max": 600,
}


class NestedProjection:
    """A projected volume whose one file has a subpath (``DIR/FILE``), written as kubelet does.

    ``emulator.kubelet.ProjectedVolume`` covers a top-level file only; the steps are the same,
    with the payload's directory created inside the timestamped directory and the user-visible
    symlink made for the subpath's first component.
    """

    def __init__(self, root: Path, subpath: str = SUBPATH, mode: int = 0o644) -> None:
        self.root = root
        self.top, _, _ = subpath.partition("/")
        self.subpath = subpath
        self.mode = mode

    @property
    def path(self) -> Path:
        """The path a pod is given (AZURE_FEDERATED_TOKEN_FILE)."""
        return self.root / self.subpath

    def write(self, content: str) -> None:
        """Publish ``content`` with AtomicWriter's six steps."""
        self.root.mkdir(parents=True, exist_ok=True)
        data_link = self.root / DATA_DIR
        old = os.readlink(data_link) if data_link.is_symlink() else None
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        ts_name = f"..{stamp}.{secrets.randbelow(10**9):09d}"
        payload = self.root / ts_name / self.subpath
        payload.parent.mkdir(mode=0o755, parents=True)
        with open(payload, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(payload, self.mode)
        tmp_link = self.root / DATA_TMP
        if tmp_link.is_symlink():
            tmp_link.unlink()
        os.symlink(ts_name, tmp_link)
        os.replace(tmp_link, data_link)
        visible = self.root / self.top
        if not visible.is_symlink():
            os.symlink(f"{DATA_DIR}/{self.top}", visible)
        if old and old != ts_name:
            shutil.rmtree(self.root / old)


def layout(kind: str, tmp_path: Path) -> NestedProjection | ProjectedVolume:
    """``nested``: v1.6's volume at .../wi with the token subpath; ``flat``: a volume at
    .../wi/token holding the file itself."""
    base = tmp_path / "var" / "run" / "secrets" / "azure" / "wi"
    if kind == "nested":
        return NestedProjection(base)
    return ProjectedVolume(base / "token")


def start(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any, token_file: Path
) -> DaemonProcess:
    config = write_config(tmp_path / "c.toml", {"a": STORAGE}, **SLOW_BACKOFF)
    env = emulator_env(
        emulator,
        tmp_path / "out",
        ENTRA_TOKEND_LISTEN="127.0.0.1:0",
        AZURE_FEDERATED_TOKEN_FILE=str(token_file),
    )
    daemon: DaemonProcess = daemon_factory("run", "--config", str(config), env=env)
    return daemon


def assertion_expiry(d: DaemonProcess) -> float | None:
    """The expiry of the assertion the daemon holds, from its metrics."""
    value: float | None = sample_value(
        d.scrape(), "entra_tokend_assertion_expiry_timestamp_seconds", identity="default"
    )
    return value


@pytest.mark.parametrize("kind", ["nested", "flat"])
def test_a_rotation_in_the_v16_layout_is_noticed_and_used(
    kind: str, emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    volume = layout(kind, tmp_path)
    assert str(volume.path).endswith("/var/run/secrets/azure/wi/token/azure-identity-token")
    first = emulator.issue_assertion()
    volume.write(first)
    # The assertion on disk is refused as expired: only the rotation can fix the token.
    emulator.tenant.reject_assertion(first)
    d = start(emulator, tmp_path, daemon_factory, volume.path)
    failure = d.wait_event("token refresh failed", token="a", aadsts=700024)
    assert failure["retry_in"] >= 60
    second = emulator.issue_assertion(ttl=3601)
    volume.write(second)
    d.wait_event("projected token rotated")
    d.wait_event("token recovered", token="a", timeout=20)
    assert emulator.token_requests()[-1].form["client_assertion"] == second
    assert (tmp_path / "out" / "a").read_text() in emulator.issued_tokens
    if kind == "nested":
        # kubelet's nesting really was exercised: the file's directory is the swapped symlink.
        assert os.readlink(volume.path.parent) == f"{DATA_DIR}/token"


@pytest.mark.parametrize("kind", ["nested", "flat"])
def test_later_rotations_in_the_v16_layout_are_followed(
    kind: str, emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    # After the first swap the directory the token path first resolved to is gone (nested) or
    # emptied (flat); each later rotation must still reach the daemon.
    volume = layout(kind, tmp_path)
    volume.write(emulator.issue_assertion(ttl=3600))
    d = start(emulator, tmp_path, daemon_factory, volume.path)
    d.wait_event("token written", token="a")
    for i in range(1, 4):
        assertion = emulator.issue_assertion(ttl=3600 + 60 * i)
        volume.write(assertion)
        expected: float = jwt_claims(assertion)["exp"]

        def holds(expected: float = expected) -> bool:
            return assertion_expiry(d) == expected

        wait_until(holds, timeout=20, what=f"the daemon to hold the assertion of rotation {i}")
    assert d.count("projected token rotated") >= 3
    assert d.proc.poll() is None
    assert d.stop() == 0
