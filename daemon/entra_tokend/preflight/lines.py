"""The host checks' words: problem lines in the configuration-error format, and ``Findings``."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from entra_tokend.config.schema import ENV_LISTEN
from entra_tokend.listener import address_text
from entra_tokend.lock import LockError, LockHeld
from entra_tokend.preflight.files import OUTPUT_DIR_FIX

LISTEN_FIX = f"--listen or {ENV_LISTEN}; '' disables the listener"
ENDPOINT_LISTEN_FIX = "endpoint.listen"


@dataclass
class Findings:
    """What the checks found: ``problems`` (one line each, exit 2), ``notes`` (facts) and
    ``warnings`` (accepted risks, logged by ``run``, printed by ``check-config``)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def print_problems(problems: Iterable[str]) -> None:
    """Write each problem to stderr as ``entra-tokend: config: LINE`` (the format of every
    configuration error)."""
    for line in problems:
        print(f"entra-tokend: config: {line}", file=sys.stderr, flush=True)


def listen_problem(key: str, host: str, port: int, exc: OSError) -> str:
    """The one-line problem for a listener that cannot be opened, naming what fixes it."""
    fix = LISTEN_FIX if key == "listen" else ENDPOINT_LISTEN_FIX
    why = exc.strerror or str(exc)
    return f"{key}: cannot listen on {address_text(host, port)}: {why} (change it with {fix})"


def output_dir_problem(path: Path, exc: OSError | LockError) -> str:
    """The one-line problem for an output_dir that cannot be prepared."""
    if isinstance(exc, LockHeld):
        holder = f" (pid {exc.pid})" if exc.pid else ""
        return (
            f"output_dir: {path} is in use by another entra-tokend{holder}; give each daemon "
            f"its own directory with {OUTPUT_DIR_FIX}"
        )
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"output_dir: cannot prepare {path}: {why} (choose another with {OUTPUT_DIR_FIX})"
