"""Post-write hooks: tell readers a token file was replaced.

A hook runs a command (argv, no shell, with a timeout) and/or sends a signal to the pid in a
pid file. Hooks never block other tokens (each token's hook runs in that token's own task) and
never fail the daemon: a failure is logged and counted, and the token file stays as written.

The command runs in its own session so that a timeout (or the daemon stopping) kills it and
every process it started; its output is read with a cap, so a chatty hook cannot exhaust memory.
It learns which token changed from ``ENTRA_TOKEND_TOKEN`` (the token's name, never the token)
and ``ENTRA_TOKEND_TOKEN_FILE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

from entra_tokend.model import Hook

OUTPUT_LIMIT = 4096  # bytes of a hook's output kept for the log; the rest is read and dropped
_PID_FILE_LIMIT = 64
_REAP_TIMEOUT = 5.0


def signal_name(number: int) -> str:
    """``SIGHUP`` for 1; a realtime or unknown number stays a number."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill the hook and everything in its process group, and reap it."""
    # The hook is a session (and group) leader; its pid is the group id. Killing only the
    # leader would leave a child holding the output pipe, and the wait below hanging on it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    # Bounded: a descendant that left the group (setsid) may still hold the pipe open.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), _REAP_TIMEOUT)


async def _collect(proc: asyncio.subprocess.Process) -> tuple[bytes, bool]:
    """Read the hook's output to EOF keeping the first OUTPUT_LIMIT bytes; wait for its exit."""
    assert proc.stdout is not None
    kept = bytearray()
    truncated = False
    while chunk := await proc.stdout.read(65536):
        room = OUTPUT_LIMIT - len(kept)
        if len(chunk) > room:
            truncated = True
        kept += chunk[: max(room, 0)]
    await proc.wait()
    return bytes(kept), truncated


async def _exec(hook: Hook, token: str, path: Path, log: Any) -> bool:
    command = hook.exec[0]
    env = {**os.environ, "ENTRA_TOKEND_TOKEN": token, "ENTRA_TOKEND_TOKEN_FILE": str(path)}
    spawn = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *hook.exec,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    )
    try:
        # Shielded: a stop that lands mid-spawn must still learn the pid, to kill what started.
        proc = await asyncio.shield(spawn)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await _kill(await spawn)
        raise
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else "invalid argument"
        log.warning("hook command could not start", command=command, detail=detail)
        return False
    try:
        output, truncated = await asyncio.wait_for(_collect(proc), timeout=hook.timeout)
    except TimeoutError:
        await _kill(proc)
        log.warning("hook command timed out", command=command, timeout=hook.timeout)
        return False
    except asyncio.CancelledError:
        # The daemon is stopping (or the token was reconfigured): leave no process behind.
        await _kill(proc)
        raise
    fields: dict[str, Any] = {"command": command, "exit_code": proc.returncode}
    text = output.decode("utf-8", "replace").strip()
    if text:
        fields["output"] = text
        if truncated:
            fields["output_truncated"] = True
    if proc.returncode != 0:
        log.warning("hook command failed", **fields)
        return False
    log.info("hook command ran", **fields)
    return True


def _read_pid(pid_file: Path) -> int | None:
    try:
        with pid_file.open("rb") as f:
            pid = int(f.read(_PID_FILE_LIMIT).decode("ascii").strip())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    # 0, -1 and negative pids address groups or every process; 1 is init; we are not a reader.
    if pid <= 1 or pid == os.getpid():
        return None
    return pid


def _signal(hook: Hook, log: Any) -> bool:
    assert hook.pid_file is not None
    name = signal_name(hook.signal)
    pid = _read_pid(hook.pid_file)
    if pid is None:
        log.warning(
            "hook pid file unusable",
            pid_file=str(hook.pid_file),
            detail="missing, unreadable, or not a single process id",
        )
        return False
    try:
        os.kill(pid, hook.signal)
    except OSError as exc:
        log.warning("hook signal failed", pid=pid, signal=name, detail=exc.strerror)
        return False
    log.info("hook signal sent", pid=pid, signal=name)
    return True


async def run_hook(hook: Hook, token: str, path: Path, log: Any) -> bool:
    """Run ``hook`` for a freshly replaced ``path``; True when every part succeeded.

    Never raises (except CancelledError): a hook's failure is the hook's, not the daemon's.
    """
    ok = True
    try:
        if hook.exec:
            ok = await _exec(hook, token, path, log) and ok
        if hook.pid_file is not None:
            ok = _signal(hook, log) and ok
    except Exception as exc:
        log.error("hook failed unexpectedly", error=type(exc).__name__)
        return False
    return ok
