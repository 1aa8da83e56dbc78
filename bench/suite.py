"""The test suite's process helpers, for the benchmarks: the one module of bench/ that imports
them (from the tests' support package, ``tests/support``), so a daemon or the emulator is
started, configured and waited for the same way in tests and benchmarks. Every other bench
module imports them from here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))

from support import (
    DAEMON_SRC,
    REPO,
    DaemonProcess,
    WaitTimeout,
    base_env,
    offline_env,
    stop_process,
    wait_until,
    write_config,
)

if importlib.util.find_spec("entra_tokend") is None:  # not installed: this checkout's
    sys.path.append(str(DAEMON_SRC))

__all__ = [
    "DAEMON_SRC",
    "REPO",
    "DaemonProcess",
    "WaitTimeout",
    "base_env",
    "offline_env",
    "stop_process",
    "wait_until",
    "write_config",
]
