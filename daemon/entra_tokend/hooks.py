"""Post-write hooks: tell readers a token file was replaced.

A hook runs a command (argv, no shell, with a timeout) and/or sends a signal to the pid in a
pid file. Hooks never block other tokens (each token's hook runs in that token's own task) and
never fail the daemon: a failure is logged and counted, and the token file stays as written.

The command runs in its own session so that a timeout (or the daemon stopping) kills it and
every process in its group; a process that left the group (``setsid cmd &``) is re-parented to
the daemon (a subreaper, see ``reaper``) and killed when the hook ends, and the output pipe is
the daemon's to close. A hook may not leave processes behind. Its output is read with a cap, so
a chatty hook cannot exhaust memory.
It learns which token changed from ``ENTRA_TOKEND_TOKEN`` (the token's name, never the token)
and ``ENTRA_TOKEND_TOKEN_FILE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Any

from entra_tokend.logging import redact_cut
from entra_tokend.model import Hook
from entra_tokend.reaper import MARKER_VARIABLE, REAPER
from entra_tokend.util.files import NotRegularFile, read_regular

OUTPUT_LIMIT = 4096  # bytes of a hook's output kept for the log; the rest is read and dropped
_PID_FILE_LIMIT = 64
PID_RETRY_SECONDS = 5.0
"""How long a signal hook retries while its pid file names no live process (missing, being
rewritten, or a pid that has exited): a reader restarting around a refresh."""
_PID_RETRY_FIRST, _PID_RETRY_MAX = 0.05, 0.5
_REAP_TIMEOUT = 5.0


HIDDEN_FROM_HOOKS: set[str] = set()
"""Environment variables a hook never inherits (the endpoint's secret, when it comes from one)."""


def hide_from_hooks(*names: str) -> None:
    """Never pass ``names`` to a hook's environment."""
    HIDDEN_FROM_HOOKS.update(names)


def signal_name(number: int) -> str:
    """``SIGHUP`` for 1; a realtime or unknown number stays a number."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


async def _kill(pid: int) -> None:
    """Kill the hook and everything in its process group, and wait until it is reaped."""
    # The hook is a session (and group) leader; its pid is the group id. Killing only the
    # leader would leave a child holding the output pipe.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError, ChildProcessError):
        await asyncio.wait_for(REAPER.wait(pid), _REAP_TIMEOUT)


# Kept beyond OUTPUT_LIMIT until the text is redacted: a secret that straddles the cut must be
# whole when the redaction looks for it (tokens are a few KiB).
_REDACTION_MARGIN = 16384


async def _read_capped(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Read to EOF keeping the first OUTPUT_LIMIT + margin bytes; True when some were dropped."""
    kept = bytearray()
    truncated = False
    while chunk := await reader.read(65536):
        room = OUTPUT_LIMIT + _REDACTION_MARGIN - len(kept)
        if len(chunk) > room:
            truncated = True
        kept += chunk[: max(room, 0)]
    return bytes(kept), truncated


async def _exec(hook: Hook, token: str, path: Path, log: Any) -> bool:
    command = hook.exec[0]
    marker = secrets.token_hex(8)
    env = {
        **{k: v for k, v in os.environ.items() if k not in HIDDEN_FROM_HOOKS},
        "ENTRA_TOKEND_TOKEN": token,
        "ENTRA_TOKEND_TOKEN_FILE": str(path),
        MARKER_VARIABLE: marker,
    }
    # Our own pipe, so that its read end is ours to close: a descendant that escaped the
    # hook's process group (setsid) may hold the write end open for ever.
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        pid = REAPER.spawn(hook.exec, env, write_fd)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        os.close(read_fd)
        detail = exc.strerror if isinstance(exc, OSError) else "invalid argument"
        log.warning("hook command could not start", command=command, detail=detail)
        return False
    finally:
        os.close(write_fd)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=OUTPUT_LIMIT)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0)
    )
    try:
        # Read while it runs: a hook writing more than a pipe holds would otherwise block on
        # its write until the timeout.
        reading = asyncio.ensure_future(_read_capped(reader))
        try:
            async with asyncio.timeout(hook.timeout):
                exit_code = await REAPER.wait(pid)
                # The hook is done; whatever it left behind (re-parented to us) goes now, so
                # the pipe reaches EOF instead of staying open until the timeout.
                REAPER.sweep(kill_marker=marker)
                output, truncated = await reading
        finally:
            reading.cancel()
    except TimeoutError:
        await _kill(pid)
        log.warning("hook command timed out", command=command, timeout=hook.timeout)
        return False
    except asyncio.CancelledError:
        # The daemon is stopping (or the token was reconfigured): leave no process behind.
        await _kill(pid)
        raise
    finally:
        transport.close()
        REAPER.sweep(kill_marker=marker)
    fields: dict[str, Any] = {"command": command, "exit_code": exit_code}
    # Redacted before it is cut (the log's own redaction would see only the cut piece).
    full = output.decode("utf-8", "replace")
    truncated = truncated or len(full) > OUTPUT_LIMIT
    text = redact_cut(full, OUTPUT_LIMIT).strip()
    if text:
        fields["output"] = text
        if truncated:
            fields["output_truncated"] = True
    if exit_code != 0:
        log.warning("hook command failed", **fields)
        return False
    log.info("hook command ran", **fields)
    return True


class _NoReader(Exception):
    """The pid file names no live process *yet* (a restarting reader): worth retrying."""


def _read_pid(pid_file: Path) -> int:
    """The pid in ``pid_file``. The file is another program's: a FIFO or device planted there
    is refused, never waited on (that would stall the whole daemon).

    Raises ``_NoReader`` for a missing file or one that holds no number (being rewritten),
    ValueError with the reason for one that can never be right."""
    try:
        data = read_regular(pid_file, _PID_FILE_LIMIT)
    except FileNotFoundError:
        raise _NoReader("no such file") from None
    except NotRegularFile:
        raise ValueError("not a regular file") from None
    except OSError as exc:
        raise ValueError(exc.strerror or "unreadable") from None
    try:
        pid = int(data[:_PID_FILE_LIMIT].decode("ascii").strip())
    except ValueError:  # UnicodeDecodeError is a ValueError
        raise _NoReader("does not hold a single process id") from None
    # 0, -1 and negative pids address groups or every process; 1 is init; we are not a reader.
    # A thread id of ours is a pid to kill(2) too: signalling it would signal the daemon.
    if pid <= 1 or pid == os.getpid() or os.path.exists(f"/proc/self/task/{pid}"):
        raise ValueError(
            f"holds pid {pid}, which is never signalled (0, 1, negative or the daemon itself)"
        )
    return pid


def _send(hook: Hook) -> int:
    """Signal the pid ``hook.pid_file`` names; returns it. Raises ``_NoReader`` while no live
    process is named, ValueError or OSError for what retrying cannot fix."""
    assert hook.pid_file is not None
    pid = _read_pid(hook.pid_file)
    try:
        os.kill(pid, hook.signal)
    except ProcessLookupError:
        raise _NoReader(f"pid {pid} is not running") from None
    return pid


async def _signal(hook: Hook, log: Any) -> bool:
    """Send the hook's signal, retrying for ``PID_RETRY_SECONDS`` while the pid file names no
    live process: a reader that restarts around a refresh writes its new pid a moment later,
    and a signal lost then would leave it with the old token until the next refresh."""
    name = signal_name(hook.signal)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PID_RETRY_SECONDS
    delay, attempts = _PID_RETRY_FIRST, 0
    while True:
        attempts += 1
        try:
            pid = _send(hook)
        except _NoReader as exc:
            if loop.time() + delay > deadline:
                log.warning(
                    "hook pid file unusable",
                    pid_file=str(hook.pid_file),
                    detail=str(exc),
                    attempts=attempts,
                    retried_for=PID_RETRY_SECONDS,
                )
                return False
            if attempts == 1:
                log.info("hook pid file names no live process; retrying", detail=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, _PID_RETRY_MAX)
            continue
        except ValueError as exc:
            log.warning("hook pid file unusable", pid_file=str(hook.pid_file), detail=str(exc))
            return False
        except OSError as exc:
            log.warning("hook signal failed", signal=name, detail=exc.strerror)
            return False
        log.info("hook signal sent", pid=pid, signal=name, attempts=attempts)
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
            ok = await _signal(hook, log) and ok
    except Exception as exc:
        log.error("hook failed unexpectedly", error=type(exc).__name__)
        return False
    return ok
