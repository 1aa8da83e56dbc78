"""The commands that load a configuration: ``run`` (``--once``), ``exec`` and
``check-config`` — each returns its exit code (see ``cliargs.EXIT_CODES``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence

from entra_tokend import preflight, supervise
from entra_tokend.cliargs import EXIT_CONFIG, EXIT_OK
from entra_tokend.config import Config, ConfigError, Overrides, load_config, render_config
from entra_tokend.daemon import Daemon
from entra_tokend.logging import configure_logging, get_logger


def _overrides(args: argparse.Namespace) -> Overrides:
    return Overrides(
        config=args.config,
        tokens=list(args.token),
        output_dir=args.output_dir,
        listen=args.listen,
        log_format=args.log_format,
        log_level=args.log_level,
        once_deadline=getattr(args, "deadline", None),
    )


def _print_problems(problems: Sequence[str]) -> int:
    for line in problems:
        print(f"entra-tokend: config: {line}", file=sys.stderr)
    return EXIT_CONFIG


def check_config(args: argparse.Namespace) -> int:
    """``check-config``: the configuration (pure), then — unless ``--offline`` — the host
    checks ``run`` makes; the effective configuration as TOML on stdout."""
    overrides = _overrides(args)
    if args.offline:
        try:
            config = load_config(overrides, os.environ, offline=True)
        except ConfigError as exc:
            return _print_problems(exc.problems)
        sys.stdout.write(render_config(config, offline=True))
        return EXIT_OK
    found = preflight.Findings()
    try:
        config = preflight.load(overrides, os.environ, found)
    except ConfigError as exc:
        return _print_problems(exc.problems)
    checked = preflight.check_host(config, os.environ, time.time())
    if checked.problems:
        return _print_problems(checked.problems)
    notes = [*checked.notes, *(f"warning: {line}" for line in found.warnings)]
    trust = preflight.default_trust(os.environ)
    sys.stdout.write(render_config(config, notes, default_trust=trust))
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """``run`` (``--once``) and ``exec``: the configuration, the host checks, then the daemon."""
    overrides = _overrides(args)
    found = preflight.Findings()
    try:
        config = preflight.load(overrides, os.environ, found)
    except ConfigError as exc:
        return _print_problems(exc.problems)
    problems = preflight.startup_checks(config, os.environ)
    if problems:
        return _print_problems(problems)
    configure_logging(config.log_format, config.log_level)
    for line in found.warnings:
        get_logger().warning("configuration accepted with a risk", detail=line)
    if args.command == "exec":
        return exec_command(config, args, _print_problems)

    def reload() -> Config:
        found = preflight.Findings()
        config = preflight.load(overrides, os.environ, found)
        for line in found.warnings:
            get_logger().warning("configuration accepted with a risk", detail=line)
        return config

    async def main() -> int:
        daemon = Daemon(config, reload=reload)
        return await daemon.run(once=args.once)

    return asyncio.run(main())


def exec_command(
    config: Config, args: argparse.Namespace, problems: Callable[[Sequence[str]], int]
) -> int:
    """Run ``exec`` with a loaded and host-checked ``config``; returns the
    exit status. ``problems`` prints configuration problems and returns their exit code."""
    argv = list(args.argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(
            "entra-tokend: exec: a command is needed: exec [FLAGS] -- CMD [ARGS...]",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    clashing = supervise.clashes(config.tokens.values())
    if clashing:
        return problems(list(clashing))
    if args.refresh_signal is not None:
        policy = supervise.OnRefresh.SIGNAL
    else:
        policy = supervise.OnRefresh(args.on_refresh or "restart")
    command = supervise.Command(
        tuple(argv),
        on_refresh=policy,
        refresh_signal=args.refresh_signal or 0,
        grace=args.grace or supervise.DEFAULT_GRACE,
    )

    async def main() -> int:
        daemon = Daemon(config)  # no reload: SIGHUP is the program's
        supervisor = supervise.ExecSupervisor(
            daemon.tokens.runners,
            command,
            clock=daemon.clock,
            deadline=config.once_deadline,
            log=daemon.log,
            base_env=os.environ,
        )
        return await daemon.run(supervisor=supervisor)

    return asyncio.run(main())
