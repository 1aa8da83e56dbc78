"""Post-write hooks: tell readers a token file was replaced.

A hook runs a command (argv, no shell, with a timeout) and/or sends a signal to the pid in a
pid file. Hooks never block other tokens and never fail the daemon: a failure is logged and
counted, and the token file stays as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

from entra_tokend.config import Hook

_OUTPUT_LIMIT = 4096


async def _exec(hook: Hook, token: str, path: Path, log: Any) -> bool:
    env = {**os.environ, "ENTRA_TOKEND_TOKEN": token, "ENTRA_TOKEND_TOKEN_FILE": str(path)}
    try:
        proc = await asyncio.create_subprocess_exec(
            *hook.exec,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        log.warning("hook command could not start", command=hook.exec[0], detail=exc.strerror)
        return False
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=hook.timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        log.warning("hook command timed out", command=hook.exec[0], timeout=hook.timeout)
        return False
    text = output[:_OUTPUT_LIMIT].decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        log.warning(
            "hook command failed", command=hook.exec[0], exit_code=proc.returncode, output=text
        )
        return False
    log.debug("hook command ran", command=hook.exec[0], output=text)
    return True


def _signal(hook: Hook, log: Any) -> bool:
    assert hook.pid_file is not None
    try:
        pid = int(hook.pid_file.read_text().strip())
        if pid <= 1:
            raise ValueError
    except (OSError, ValueError):
        log.warning("hook pid file unusable", pid_file=str(hook.pid_file))
        return False
    try:
        os.kill(pid, hook.signal)
    except OSError as exc:
        log.warning("hook signal failed", pid=pid, detail=exc.strerror)
        return False
    log.debug("hook signal sent", pid=pid, signal=signal.Signals(hook.signal).name)
    return True


async def run_hook(hook: Hook, token: str, path: Path, log: Any) -> bool:
    """Run ``hook`` for a freshly replaced ``path``; True when every part succeeded."""
    ok = True
    if hook.exec:
        ok = await _exec(hook, token, path, log) and ok
    if hook.pid_file is not None:
        ok = _signal(hook, log) and ok
    return ok
