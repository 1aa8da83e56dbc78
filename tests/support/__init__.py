"""The tests' support layer: what test modules share, so that none imports another test module.

Nothing here is part of the daemon, and nothing here mocks it. ``from support import X`` gives
the everyday helpers (re-exported below); the rest is in submodules:

- ``waiting`` — ``wait_until``/``wait_until_async`` poll until a deadline (``WaitTimeout``);
- ``environment`` — ``base_env``, ``emulator_env``, ``offline_env``, ``write_projected_token``;
- ``configs`` — ``write_config`` and the scopes ``STORAGE``, ``VAULT``, ``GRAPH``;
- ``processes`` — ``DaemonProcess``, ``run_cli``, ``cli``, ``stop_process``, ``output_files``;
- ``readers`` — ``jwt_claims`` and the Prometheus text-format readers;
- ``tools`` — ``tool`` (fails when missing), ``require_tool`` (skips, or fails in CI);
- ``fakes`` — the in-process fakes: clock, credential source, exchange, output, and the
  exchange failures tests script; ``harness`` — one runner built on them;
- ``config_keys`` — the configuration's keys, derived from the daemon's schema;
- ``proxy`` — an HTTP CONNECT proxy on loopback;
- per area: ``deploy``, ``inject``, ``hardening`` (+ the ``token_reader`` script),
  ``observability``, ``endpoint``, ``emulator``, ``registry``, ``recipes``, ``watcher``
  (fixtures are imported by their ``*_fixture`` name).

bench/ uses it too (``bench/suite.py`` puts tests/ on its path).
"""

from __future__ import annotations

from support.configs import GRAPH, STORAGE, VAULT, write_config
from support.environment import (
    DAEMON_SRC,
    REPO,
    base_env,
    emulator_env,
    offline_env,
    write_projected_token,
)
from support.processes import (
    STATE_DIR,
    DaemonProcess,
    cli,
    output_files,
    run_cli,
    stop_process,
)
from support.readers import Samples, jwt_claims, sample_names, sample_value, samples
from support.tools import require_tool, tool
from support.waiting import WaitTimeout, wait_until, wait_until_async

__all__ = [
    "DAEMON_SRC",
    "GRAPH",
    "REPO",
    "STATE_DIR",
    "STORAGE",
    "VAULT",
    "DaemonProcess",
    "Samples",
    "WaitTimeout",
    "base_env",
    "cli",
    "emulator_env",
    "jwt_claims",
    "offline_env",
    "output_files",
    "require_tool",
    "run_cli",
    "sample_names",
    "sample_value",
    "samples",
    "stop_process",
    "tool",
    "wait_until",
    "wait_until_async",
    "write_config",
    "write_projected_token",
]
