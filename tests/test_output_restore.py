"""What readiness says is what is on disk: a token file another writer deleted or replaced is
noticed at once (the output directory's inotify watch), counted, reported not ready, and put
back from the token the daemon holds — no Entra request; SIGHUP puts back every missing one.

Real daemons against the emulator; the SIGHUP case runs the daemon in process with its watch
stopped, as on a filesystem where inotify is silent."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from entra_tokend.config import Overrides, load_config
from entra_tokend.daemon import Daemon
from entra_tokend.emulator import Emulator
from support import (
    STORAGE,
    DaemonProcess,
    emulator_env,
    sample_value,
    wait_until,
    wait_until_async,
    write_config,
)

VAULT = "https://vault.azure.net/.default"


def _start(
    factory: Callable[..., DaemonProcess], emulator: Emulator, tmp_path: Path, body: str = ""
) -> tuple[DaemonProcess, Path]:
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.toml", {"a": STORAGE, "b": VAULT}, body=body)
    env = emulator_env(emulator, out, ENTRA_TOKEND_LISTEN="127.0.0.1:0")
    d = factory("run", "--config", str(config), env=env)
    d.wait_event("ready: every token is on disk", timeout=30)
    return d, out


def test_deleted_token_files_are_put_back_from_the_held_token_without_an_entra_request(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """The example: both files of a running daemon deleted (1 h tokens)."""
    d, out = _start(daemon_factory, emulator, tmp_path)
    written = {name: (out / name).read_bytes() for name in ("a", "b")}
    requests = len(emulator.token_requests())
    (out / "a").unlink()
    (out / "b").unlink()
    d.wait_event("token file deleted by another writer; restoring it", token="a")
    d.wait_event("not ready: a token is missing or expired")
    for name in ("a", "b"):
        d.wait_event("token file restored", token=name)
    wait_until(lambda: sample_value(d.scrape(), "entra_tokend_ready") == 1, what="ready again")
    transitions = [e["event"] for e in d.events() if "ready" in e["event"]]
    assert transitions[-1] == "ready: every token is on disk"
    assert {name: (out / name).read_bytes() for name in ("a", "b")} == written
    assert len(emulator.token_requests()) == requests  # from the held token, not from Entra
    scrape = d.scrape()
    for name in ("a", "b"):
        assert sample_value(scrape, "entra_tokend_output_redelivered_total", token=name) == 1
    assert d.count("token written") == 2  # a restore is not a refresh
    assert d.stop() == 0


def _replace_by_rename(path: Path) -> None:
    tmp = path.with_name(".neighbour")
    tmp.write_text("not a token\n")
    os.replace(tmp, path)


def _overwrite_in_place(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-4] + b"AAAA")  # same size, other bytes


def _plant_symlink(path: Path) -> None:
    """A symlink to a copy (same bytes, but a neighbour decides what it points to), renamed
    over the file."""
    target = path.with_name(".elsewhere")
    target.write_bytes(path.read_bytes())
    link = path.with_name(".link")
    link.symlink_to(target)
    os.replace(link, path)


@pytest.mark.parametrize(
    "replace", [_replace_by_rename, _overwrite_in_place, _plant_symlink], ids=lambda f: f.__name__
)
def test_a_replaced_token_file_is_put_back_and_the_replacement_logged(
    emulator: Emulator,
    tmp_path: Path,
    daemon_factory: Callable[..., DaemonProcess],
    replace: Callable[[Path], None],
) -> None:
    d, out = _start(daemon_factory, emulator, tmp_path)
    written = (out / "a").read_bytes()
    requests = len(emulator.token_requests())
    replace(out / "a")
    warning = d.wait_event("token file replaced by another writer; restoring it", token="a")
    assert warning["level"] == "warning"
    assert warning["path"] == str(out / "a")
    d.wait_event("token file restored", token="a")
    assert not (out / "a").is_symlink()
    assert (out / "a").read_bytes() == written
    assert len(emulator.token_requests()) == requests
    assert d.count("token file restored", token="b") == 0
    assert d.stop() == 0


def test_a_token_directory_removed_with_its_file_is_made_again(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Another case of the kind: a token's subdirectory removed (moved away and deleted)."""
    body = '[token.c]\nscope = "https://graph.microsoft.com/.default"\npath = "sub/c"\n'
    d, out = _start(daemon_factory, emulator, tmp_path, body)
    written = (out / "sub" / "c").read_bytes()
    requests = len(emulator.token_requests())
    # Moved away first: ``rm -rf`` in place races the put-back (rmdir: "not empty").
    os.rename(out / "sub", tmp_path / "trash")
    shutil.rmtree(tmp_path / "trash")
    d.wait_event("token file restored", token="c")
    assert (out / "sub" / "c").read_bytes() == written
    assert len(emulator.token_requests()) == requests
    assert d.stop() == 0


def test_sighup_puts_back_every_missing_file_no_watch_saw(
    emulator: Emulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = load_config(
        Overrides(tokens=[f"a={STORAGE}", f"b={VAULT}"], output_dir=str(out), listen=""),
        emulator.env(),
    )

    async def scenario() -> None:
        daemon = Daemon(config)
        run = asyncio.create_task(daemon.run())
        await wait_until_async(lambda: daemon.readiness.ready, what="both tokens on disk")
        written = {name: (out / name).read_bytes() for name in ("a", "b")}
        requests = len(emulator.token_requests())
        assert daemon.tokens.output_watch is not None
        daemon.tokens.output_watch.stop()  # as on NFS: no event arrives
        (out / "a").unlink()
        (out / "b").unlink()
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_until_async(
            lambda: all((out / n).exists() for n in ("a", "b")), what="the files put back"
        )
        assert {name: (out / name).read_bytes() for name in ("a", "b")} == written
        assert len(emulator.token_requests()) == requests
        await wait_until_async(lambda: daemon.readiness.ready, what="ready again")
        daemon.stop()
        assert await run == 0

    asyncio.run(scenario())
