"""Command line: ``run``, ``run --once``, ``check-config``, ``dev``, ``emulator``, ``healthcheck``.

Exit codes: 0 success; 1 runtime failure (``run --once`` could not get every token in time);
2 configuration or usage error, one line per problem on stderr, never a traceback.
Heavy modules are imported by the command that needs them, not at start-up.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from entra_tokend import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """Usage errors: one line and exit 2, like configuration errors."""
        self.exit(EXIT_CONFIG, f"entra-tokend: {message} (see --help)\n")


def _config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="TOML config file (env ENTRA_TOKEND_CONFIG)")
    p.add_argument(
        "--token",
        metavar="NAME=SCOPE",
        action="append",
        default=[],
        help="a token to keep fresh; repeatable (env ENTRA_TOKEND_TOKENS)",
    )
    p.add_argument("--output-dir", metavar="DIR", help="env ENTRA_TOKEND_OUTPUT_DIR")
    p.add_argument("--listen", metavar="HOST:PORT", help="metrics/health address ('' disables)")
    p.add_argument("--log-format", choices=("auto", "json", "console"))
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = _Parser(
        prog="entra-tokend",
        description="Keeps Microsoft Entra access tokens fresh on disk using Workload ID.",
    )
    parser.add_argument("--version", action="version", version=f"entra-tokend {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser("run", help="keep tokens fresh until SIGTERM")
    _config_flags(run)
    run.add_argument("--once", action="store_true", help="acquire every token once, then exit")
    run.add_argument(
        "--deadline", type=float, metavar="SECONDS", help="with --once: give up after (default 60)"
    )
    check = sub.add_parser("check-config", help="validate and print the effective configuration")
    _config_flags(check)
    dev = sub.add_parser("dev", help="run the daemon against the built-in local emulator")
    dev.add_argument("--output-dir", metavar="DIR", default="tokens")
    dev.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:9464")
    dev.add_argument("--state-dir", metavar="DIR", default=".entra-tokend-dev")
    dev.add_argument(
        "--access-token-lifetime",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="short, so refreshes show within minutes",
    )
    dev.add_argument("--log-format", choices=("auto", "json", "console"), default="console")
    dev.add_argument(
        "--identity-binding",
        action="store_true",
        help="AKS identity bindings: token requests go through the emulator's token proxy "
        "(the env file gains AZURE_KUBERNETES_TOKEN_PROXY, _SNI_NAME and _CA_FILE)",
    )
    sub.add_parser("emulator", help="run the local Entra + kubelet emulator", add_help=False)
    health = sub.add_parser(
        "healthcheck",
        help="GET a running daemon's /healthz; exit 0 if it answers 200, else 1",
        description="For container HEALTHCHECKs: needs no shell or curl, only this command.",
    )
    health.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="the daemon's listen address (env ENTRA_TOKEND_LISTEN; default 0.0.0.0:9464, "
        "reached on loopback)",
    )
    health.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="default 5")
    return parser


def _overrides(args: argparse.Namespace) -> object:
    from entra_tokend.config import Overrides  # noqa: PLC0415

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


def _run(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from entra_tokend.config import ConfigError, Overrides, load_config  # noqa: PLC0415

    overrides = _overrides(args)
    assert isinstance(overrides, Overrides)
    try:
        config = load_config(overrides, os.environ)
    except ConfigError as exc:
        return _print_problems(exc.problems)
    if args.command == "check-config":
        from entra_tokend.config import render_config  # noqa: PLC0415

        sys.stdout.write(render_config(config))
        return EXIT_OK
    from entra_tokend.daemon import Daemon  # noqa: PLC0415
    from entra_tokend.logging import configure_logging  # noqa: PLC0415

    configure_logging(config.log_format, config.log_level)

    async def main() -> int:
        daemon = Daemon(config, reload=lambda: load_config(overrides, os.environ))
        return await daemon.run(once=args.once)

    return asyncio.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``entra-tokend`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["emulator"]:
        try:
            from entra_tokend.emulator.cli import main as emulator_main  # noqa: PLC0415
        except ImportError as exc:
            missing = (exc.name or "a module").split(".")[0]  # the package to install
            from entra_tokend.dev import EMULATOR_INSTALL_HINT  # noqa: PLC0415

            print(
                f"entra-tokend: the emulator needs the emulator extra ({missing} is missing); "
                f"install it {EMULATOR_INSTALL_HINT}",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        return emulator_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    if args.command == "healthcheck":
        from entra_tokend.healthcheck import healthcheck  # noqa: PLC0415

        status, line = healthcheck(args.listen, os.environ, args.timeout)
        print(line, file=sys.stderr)
        return status
    try:
        if args.command == "dev":
            from entra_tokend.dev import run_dev  # noqa: PLC0415

            return run_dev(args)
        return _run(args)
    except KeyboardInterrupt:
        return EXIT_FAILURE
