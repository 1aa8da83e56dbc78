"""Command line: ``run``, ``run --once``, ``exec``, ``check-config``, ``dev``, ``emulator``,
``healthcheck``, ``inject``, ``webhook``.

Exit codes: 0 success; 1 runtime failure (``run --once`` could not get every token in time);
2 configuration or usage error, one line per problem on stderr, never a traceback.
Each command's module is imported when that command runs (``main`` is the one place that
does): ``healthcheck`` runs every few seconds in a container and loads nothing of the daemon,
and ``emulator``/``dev`` need an optional extra.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from entra_tokend import signals
from entra_tokend.cliargs import EXIT_CONFIG, EXIT_FAILURE, build_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``entra-tokend`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] in (["run"], ["dev"], ["exec"]):
        signals.hold()  # until the daemon's handlers are in place (see ``signals``)
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
    if args_list[:1] == ["inject"]:
        try:
            from entra_tokend.injectcli import main as inject_main  # noqa: PLC0415
        except ImportError as exc:
            if exc.name != "yaml":
                raise
            print(
                "entra-tokend: inject needs PyYAML: from a clone of the repository: "
                "pip install '.[inject]'",
                file=sys.stderr,
            )
            return EXIT_CONFIG

        return inject_main(args_list[1:])
    if args_list[:1] == ["webhook"]:
        from entra_tokend.webhook import main as webhook_main  # noqa: PLC0415

        return webhook_main(args_list[1:])
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
        from entra_tokend import runcli  # noqa: PLC0415

        if args.command == "check-config":
            return runcli.check_config(args)
        return runcli.run(args)
    except KeyboardInterrupt:
        return EXIT_FAILURE
