"""CredentialSource against real files, kubelet's real write sequence and real inotify.

While its watcher runs, a source hands out the assertion it holds as long as the token file's
signature is the one taken before that assertion was read. What these tests check: the file is
not opened again while unchanged (seen through an inotify watch for IN_OPEN on the file itself),
any change is read by the very next ``current()``, and failures are never covered by the
assertion held. Last, the parser's bounds: a claim out of range is a malformed assertion.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import os
import struct
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from entra_tokend.assertion import (
    Assertion,
    AssertionExpired,
    AssertionMalformed,
    AssertionMissing,
    parse_assertion,
)
from entra_tokend.credentials import CredentialSource
from entra_tokend.emulator.kubelet import ProjectedVolume
from entra_tokend.metrics import Metrics
from entra_tokend.model import Identity, SystemClock
from support import write_projected_token

IN_OPEN = 0x20
DEADLINE = 10.0


class Opens:
    """Counts opens of one file (its resolved path now) with an inotify watch of its own."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        target = os.fsencode(os.path.realpath(path))
        if self.fd < 0 or libc.inotify_add_watch(self.fd, target, IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), "inotify")

    def since_last(self) -> int:
        """IN_OPEN events since the last call (identical unread events coalesce: call this
        after each operation to tell "opened" from "not opened")."""
        count = 0
        while True:
            try:
                buffer = os.read(self.fd, 4096)
            except BlockingIOError:
                return count
            offset = 0
            while offset + 16 <= len(buffer):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", buffer, offset)
                count += bool(mask & IN_OPEN)
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def jwt(tmp_path: Path, n: int, *, exp: float | None = None) -> str:
    """A projected-token text; the same length for every ``n`` below 10 and the same ``exp``
    (an hour from now by default, in whole seconds)."""
    exp = exp if exp is not None else float(int(time.time()) + 3600)
    path = write_projected_token(tmp_path / f"jwt-{n}", sub=f"system:sa:app-{n}", exp=exp)
    return path.read_text()


def source_for(path: Path) -> CredentialSource:
    identity = Identity(
        name="default",
        tenant_id="t",
        client_id="c",
        token_file=path,
        authority_host="https://login.microsoftonline.com",
    )
    return CredentialSource(identity, SystemClock(), Metrics())


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


def test_an_unchanged_token_file_is_not_read_again_while_watched(tmp_path: Path) -> None:
    volume = ProjectedVolume(tmp_path / "tokens")
    volume.write(jwt(tmp_path, 0))

    async def scenario() -> None:
        source = source_for(volume.path)
        source.watch(3600)
        try:
            held = source.current()
            opens = Opens(volume.path)
            try:
                for _ in range(20):
                    assert source.current() is held
                    assert opens.since_last() == 0
            finally:
                opens.close()
        finally:
            source.close()

    run(scenario())


def test_without_a_watcher_every_call_reads_the_file(tmp_path: Path) -> None:
    # `run --once` watches nothing: nothing would tell it about an in-place rewrite.
    path = tmp_path / "token"
    path.write_text(jwt(tmp_path, 0))
    source = source_for(path)
    source.current()
    opens = Opens(path)
    try:
        for _ in range(3):
            source.current()
            assert opens.since_last() == 1
    finally:
        opens.close()


def test_a_rotation_is_read_by_the_next_call_before_the_watcher_runs(tmp_path: Path) -> None:
    volume = ProjectedVolume(tmp_path / "tokens")
    volume.write(jwt(tmp_path, 0))
    rotated: list[Assertion | None] = []

    async def scenario() -> None:
        source = source_for(volume.path)
        source.subscribe(lambda: rotated.append(source.assertion))
        source.watch(3600)
        try:
            source.current()
            for n in range(1, 4):
                new = jwt(tmp_path, n)
                volume.write(new)
                # No await in between: the watcher has not run, the signature tells.
                assert source.current().token == new
                assert rotated[-1] is not None
                assert rotated[-1].token == new
        finally:
            source.close()

    run(scenario())


def test_a_rewrite_in_place_that_keeps_inode_size_and_mtime_is_read_again(
    tmp_path: Path,
) -> None:
    # Only the ctime tells this rewrite apart: same inode, same size, mtime put back.
    path = tmp_path / "token"
    exp = float(int(time.time()) + 3600)
    old, new = jwt(tmp_path, 1, exp=exp), jwt(tmp_path, 2, exp=exp)
    assert len(old) == len(new)
    path.write_text(old)

    async def scenario() -> None:
        source = source_for(path)
        source.watch(3600)
        try:
            assert source.current().token == old
            before = os.stat(path)
            end = time.monotonic() + DEADLINE
            # The ctime moves in clock ticks; rewrite until it has moved (usually at once).
            while os.stat(path).st_ctime_ns == before.st_ctime_ns:
                assert time.monotonic() < end, "the ctime never changed"
                with open(path, "r+") as f:
                    f.write(new)
                os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            after = os.stat(path)
            assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
                before.st_ino,
                before.st_size,
                before.st_mtime_ns,
            )
            assert source.current().token == new
        finally:
            source.close()

    run(scenario())


def test_failures_are_never_covered_by_the_assertion_held(tmp_path: Path) -> None:
    volume = ProjectedVolume(tmp_path / "tokens")
    good = jwt(tmp_path, 0)
    volume.write(good)

    async def scenario() -> None:
        source = source_for(volume.path)
        source.watch(3600)
        try:
            assert source.current().token == good
            volume.write("not a jwt")
            with pytest.raises(AssertionMalformed):
                source.current()
            volume.write(good)  # the same content again: usable, no rotation
            assert source.current().token == good
            volume.write(jwt(tmp_path, 1, exp=float(int(time.time()) - 60)))
            for _ in range(2):  # the second call finds the file unchanged
                with pytest.raises(AssertionExpired):
                    source.current()
            volume.path.unlink()
            with pytest.raises(AssertionMissing):
                source.current()
            volume.write(good)
            assert source.current().token == good
        finally:
            source.close()

    run(scenario())


def test_while_the_watcher_only_polls_every_call_reads_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No inotify instance: no event would report an in-place rewrite between two polls.
    from entra_tokend import watcher as watcher_module

    monkeypatch.setattr(watcher_module, "_open_inotify", lambda: None)
    volume = ProjectedVolume(tmp_path / "tokens")
    volume.write(jwt(tmp_path, 0))

    async def scenario() -> None:
        source = source_for(volume.path)
        source.watch(3600)
        try:
            source.current()
            opens = Opens(volume.path)
            try:
                for _ in range(3):
                    source.current()
                    assert opens.since_last() == 1
            finally:
                opens.close()
        finally:
            source.close()

    run(scenario())


@pytest.mark.parametrize("exp", ["99999999999999999999999999", "1e300", "253402300800", "-5"])
def test_an_out_of_range_exp_claim_is_malformed_not_a_crash(exp: str) -> None:
    """An exp beyond what datetime holds is a malformed assertion, not a crash."""
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=")
    payload = base64.urlsafe_b64encode(f'{{"exp":{exp}}}'.encode()).rstrip(b"=")
    with pytest.raises(AssertionMalformed, match="exp claim is out of range"):
        parse_assertion(header + b"." + payload + b".")
