"""Files from outside are read only as far as needed (issue 26 §6): a neighbour in the volume's
group renames a huge sparse file over a token file while the daemon is down. Adoption used to
read it whole (3 GiB: ``MemoryError`` at every start; 1 GiB: 2 GB of memory) before noticing
that it is another user's. Type, size and owner now come from ``fstat`` before any read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from entra_tokend.emulator import Emulator
from support import STORAGE, DaemonProcess, write_config

GIB = 1024**3


@pytest.mark.parametrize(
    ("size", "owner", "reason"),
    [
        (3 * GIB, None, "token file larger than"),  # the example: no token is that large
        (3 * GIB, 65534, "token file larger than"),  # and another user's: refused all the same
        (1024, 65534, "token file owned by another user"),  # small, but nobody's
    ],
)
def test_a_huge_file_renamed_over_a_token_is_refused_unread(
    emulator: Emulator, tmp_path: Path, size: int, owner: int | None, reason: str
) -> None:
    if owner is not None and os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.toml", body=f'[token.a]\nscope = "{STORAGE}"\n', listen="")
    env = {**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(out)}
    first = DaemonProcess(["run", "--once", "--config", str(config)], env, tmp_path / "1.log")
    assert first.proc.wait(timeout=60) == 0
    # While the daemon is down, a neighbour renames a sparse file (no disk used) over it.
    planted = out / ".planted"
    with planted.open("wb") as f:
        f.truncate(size)
    if owner is not None:
        os.chown(planted, owner, owner)
    planted.rename(out / "a")

    second = DaemonProcess(["run", "--config", str(config)], env, tmp_path / "2.log")
    try:
        refused = second.wait_event("existing token file not adopted; refreshing now", timeout=60)
        assert refused["reason"].startswith(reason)
        second.wait_event("token written", token="a", timeout=60)
        assert (out / "a").read_text() in emulator.issued_tokens
        assert second.stop() == 0
    finally:
        if second.proc.poll() is None:
            second.proc.kill()
            second.proc.wait()
