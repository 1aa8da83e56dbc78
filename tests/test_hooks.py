"""Hooks in process: which pid a pid file may name, and what of a command's output is logged.

The end-to-end hook behaviour (timeouts, signals, children, ``--once``) is in
tests/hardening/test_hardening_hooks.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from entra_tokend.hooks import OUTPUT_LIMIT, _exec, _read_pid
from entra_tokend.logging import remember_secret
from entra_tokend.model import Hook


def test_a_pid_file_naming_one_of_the_daemons_threads_is_refused() -> None:
    """A thread id is a pid to kill(2): a pid file naming one of the daemon's own threads is
    refused (ValueError naming why), never signalled."""
    started, release = threading.Event(), threading.Event()
    ids: list[int] = []

    def work() -> None:
        ids.append(threading.get_native_id())
        started.set()
        release.wait(30)

    thread = threading.Thread(target=work)
    thread.start()
    try:
        started.wait(30)
        pid_file = Path(f"/tmp/entra-tokend-test-{os.getpid()}.pid")
        pid_file.write_text(f"{ids[0]}\n")
        try:
            with pytest.raises(ValueError, match="never signalled"):
                _read_pid(pid_file)
        finally:
            pid_file.unlink()
    finally:
        release.set()
        thread.join()


def test_a_secret_straddling_the_cut_of_hook_output_is_redacted(tmp_path: Path) -> None:
    """A secret that straddles the hook output's cut is redacted as a whole, not left partly."""
    secret = "opq2345de73fd75b1dfa09a810aca1aa0123456789abcdefgh"
    remember_secret(secret)
    script = f"head -c {OUTPUT_LIMIT - 30} /dev/zero | tr '\\0' x; echo {secret}"
    seen: list[dict[str, Any]] = []

    class Log:
        def info(self, event: str, **fields: Any) -> None:
            seen.append(fields)

        warning = info

    hook = Hook(exec=("/bin/sh", "-c", script), timeout=30)
    assert asyncio.run(_exec(hook, "t", tmp_path / "t", Log()))
    (fields,) = seen
    assert secret[:20] not in fields["output"]
    assert fields["output"].endswith("[REDACTED]")
