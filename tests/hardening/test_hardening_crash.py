"""Crash safety: readers never see a partial, empty or foreign token file, whatever kills us.

Several reader processes read and parse the token files in a tight loop while the daemon
refreshes them several times a second and is SIGKILLed (at random points of its refresh cycle)
and restarted again and again. Then a clean start removes whatever temp files the kills left.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from entra_tokend.emulator import Emulator
from support import STORAGE, VAULT, base_env, output_files, wait_until, write_config
from support.hardening import FAST, READER, sha, temp_files
from support.token_reader import classify

KILLS = 15
READERS = 3


def test_reader_classifier_flags_partial_empty_and_foreign_content() -> None:
    """The stress test is only as good as its reader: it must flag every broken content."""
    header = "eyJhbGciOiJSUzI1NiJ9"  # {"alg":"RS256"}
    payload = "eyJleHAiOjF9"  # {"exp":1}
    token = f"{header}.{payload}.c2lnbmF0dXJl"
    assert classify(token.encode(), "raw") == ("ok", sha(token))
    doc = json.dumps({"access_token": token, "expires_on": 1}).encode()
    assert classify(doc, "json") == ("ok", sha(token))
    assert classify(b"", "raw")[0] == "empty"
    for cut in (5, len(header) + 3, len(header) + len(payload) + 1):
        assert classify(token[:cut].encode(), "raw")[0] == "unparsable"
    assert classify(doc[: len(doc) // 2], "json")[0] == "unparsable"
    # A truncated signature still parses, which is why the test compares every token seen
    # with the tokens the emulator issued.
    assert classify(token[:-3].encode(), "raw") == ("ok", sha(token[:-3]))


def _start_reader(stop: Path, result: Path, out: Path) -> subprocess.Popen[bytes]:
    """A token_reader process reading out/a (raw) and out/j.json (json) until ``stop`` exists;
    its summary goes to ``result``."""
    return subprocess.Popen(
        [
            sys.executable,
            str(READER),
            str(stop),
            str(result),
            "90",  # a bound, in case the test dies before creating the stop file
            f"{out / 'a'}:raw",
            f"{out / 'j.json'}:json",
        ],
        env=base_env(),
    )


def _assert_saw_only_issued_tokens(result: Path, issued: set[str]) -> None:
    """A reader's summary: only complete, parsable files, each a token Entra issued."""
    summary = json.loads(result.read_text())
    assert summary["bad"] == {}, summary["bad"]
    assert summary["reads"] > 0
    # Every token a reader saw is one Entra issued, byte for byte: nothing partial/foreign.
    assert set(summary["seen"]) <= issued
    assert len(summary["seen"]) >= 10  # the files really changed under the readers


def test_sigkill_during_rapid_refresh_never_exposes_a_partial_file(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    emulator.access_token_lifetime = 1  # refreshed every ~0.1 s with refresh_at = 0.1
    config = write_config(
        tmp_path / "c.toml",
        body="refresh_at = 0.1\njitter = 0\n"
        f'[token.a]\nscope = "{STORAGE}"\n'
        f'[token.j]\nscope = "{VAULT}"\nformat = "json"\npath = "j.json"\n',
        listen="",
        **FAST,
    )
    env = {**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(out)}

    def start() -> Any:
        return daemon_factory("run", "--config", str(config), env=env)

    daemon = start()
    daemon.wait_event("token written", token="a")
    daemon.wait_event("token written", token="j")

    stop = tmp_path / "stop-readers"
    results = [tmp_path / f"reader-{i}.json" for i in range(READERS)]
    readers = [_start_reader(stop, result, out) for result in results]
    try:
        wait_until(lambda: all(Path(f"{r}.started").exists() for r in results), timeout=20)
        rng = random.Random(8)
        leftovers = 0
        for _ in range(KILLS):
            # Kill right after Entra answered: the write is about to happen or happening.
            target = len(emulator.issued_tokens) + rng.randint(1, 4)

            def enough(t: int = target) -> bool:
                return len(emulator.issued_tokens) >= t

            wait_until(enough, timeout=30)
            daemon.proc.kill()
            daemon.proc.wait()
            leftovers += len(temp_files(out))
            daemon = start()
        daemon.wait_event("token written", timeout=20)
        daemon.proc.kill()
        daemon.proc.wait()

        # The final clean run removes stale temp files (a planted one too), and only those.
        planted = out / ".a.entra-tokend-0123456789abcdef.tmp"
        planted.write_bytes(b"half a tok")
        stale = temp_files(out)
        final = start()
        removed = final.wait_event("removed temp files of an interrupted run")
        assert removed["files"] == stale
        final.wait_event("token written", token="a")
        final.wait_event("token written", token="j")
    finally:
        stop.touch()
        for reader in readers:
            reader.wait(timeout=30)
    assert final.stop() == 0
    assert output_files(out) == ["a", "j.json"]  # no temp files, no lock file

    issued = {sha(t) for t in emulator.issued_tokens}
    for result in results:
        _assert_saw_only_issued_tokens(result, issued)
    # Informational: how often a kill landed between creating a temp file and the rename.
    print(f"temp files left by {KILLS} SIGKILLs: {leftovers}")
