"""Command line: ``run``, ``run --once``, ``exec``, ``check-config``, ``dev``, ``emulator``,
``healthcheck``, ``inject``, ``webhook``.

Exit codes: 0 success; 1 runtime failure (``run --once`` could not get every token in time);
2 configuration or usage error, one line per problem on stderr, never a traceback.
Heavy modules are imported by the command that needs them, not at start-up.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from entra_tokend import __version__, execcli, signals

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


DEFAULT_OUTPUT_DIR = "/run/entra-tokend"
DEFAULT_LISTEN = "[::]:9464"
DEFAULT_DEADLINE = 60
# The defaults above are documented in --help; tests/test_cli.py checks them against the
# schema's (config.schema.TOP_LEVEL is not imported here: --help stays light).

EXIT_CODES = """\
exit codes:
  0  success (run: stopped by SIGTERM/SIGINT; run --once: every token is on disk)
  1  run --once could not get every token before the deadline, or Entra answered
     with a configuration error (the log line says which)
  2  configuration or usage error: one line per problem on stderr, naming the
     key, flag or variable to fix"""

MAIN_EPILOG = f"""\
examples:
  entra-tokend run --output-dir /tokens --token storage=https://storage.azure.com/.default
  entra-tokend run --once --deadline 30 --config /etc/entra-tokend/entra-tokend.toml
  entra-tokend exec --config /etc/entra-tokend/entra-tokend.toml -- ./job.sh
  entra-tokend check-config --config /etc/entra-tokend/entra-tokend.toml
  entra-tokend check-config --offline --config entra-tokend.toml   # CI, no host checks
  entra-tokend dev                                                 # try it locally

{EXIT_CODES}

Run `entra-tokend COMMAND --help` for a command's flags."""

RUN_EPILOG = f"""\
examples:
  entra-tokend run --output-dir /tokens --token storage=https://storage.azure.com/.default
  entra-tokend run --config /etc/entra-tokend/entra-tokend.toml --listen 127.0.0.1:9464
  entra-tokend run --once --deadline 30 --token graph=https://graph.microsoft.com/.default

Signals: SIGTERM/SIGINT stop, SIGHUP reloads the configuration.

{EXIT_CODES}"""

CHECK_EPILOG = """\
Without --offline, check-config makes every start-up check `run` makes: output_dir
can be created and written (and the mode it gets), the listen addresses can be bound,
each identity's projected token is present, a JWT and unexpired (its iss/sub/aud and
expiry are printed as comments), users and groups exist, template, secret and CA files
are readable and proxy settings parse.

--offline checks the configuration alone, for CI of a configuration repository: no
file, user, group, listener or network look-up, and the settings only the pod supplies
(AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE, an endpoint secret_env
variable) may be absent: they are printed as "supplied at run time".

examples:
  entra-tokend check-config --config /etc/entra-tokend/entra-tokend.toml
  entra-tokend check-config --offline --config deploy/entra-tokend.toml

exit codes:
  0  the configuration is valid (and, without --offline, the host is ready for it);
     the effective configuration is printed as TOML
  2  one line per problem on stderr, naming the key, flag or variable to fix"""

DEV_EPILOG = """\
examples:
  entra-tokend dev                         # tokens in ./tokens, metrics on 127.0.0.1:9464
  entra-tokend dev --output-dir /tmp/tokens --access-token-lifetime 120
  entra-tokend dev --identity-binding      # through the emulator's identity-binding proxy

Needs the emulator extra (from a clone: pip install '.[emulator]'). Stop with Ctrl-C."""


def _known_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of ``parser`` and its subcommands' parsers."""
    found: list[str] = []
    for action in parser._actions:
        found += [o for o in action.option_strings if o.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _known_options(sub)
    return sorted(set(found))


def _did_you_mean(word: str, known: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss of ``word`` in ``known``, else ``""``."""
    import difflib  # noqa: PLC0415 - only for a mistyped flag or command

    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Parser(argparse.ArgumentParser):
    root: _Parser | None = None  # the top-level parser, whose option strings are all known

    def error(self, message: str) -> None:  # type: ignore[override]
        """Usage errors: one line and exit 2, like configuration errors, with a suggestion
        for a mistyped flag or command."""
        hint = ""
        if message.startswith("unrecognized arguments: "):
            known = _known_options(self.root or self)
            for word in message.removeprefix("unrecognized arguments: ").split():
                if word.startswith("--"):
                    hint = _did_you_mean(word.partition("=")[0], known)
                    if hint:
                        break
        elif match := re.search(r"invalid choice: '?([^' ]*)'? \(choose from (.*)\)$", message):
            choices = [c.strip(" '") for c in match[2].split(",")]
            hint = _did_you_mean(match[1], choices)
            if hint:  # the suggestion replaces the list of choices
                message = message[: match.start(2) - len("(choose from ")].rstrip()
        self.exit(EXIT_CONFIG, f"entra-tokend: {message}{hint} (see --help)\n")


def _help_formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _log_flags(p: argparse.ArgumentParser, *, log_format: str = "auto") -> None:
    p.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        help=f"log lines as JSON or for a terminal; auto: console on a TTY, else JSON "
        f"(default {log_format}; env ENTRA_TOKEND_LOG_FORMAT)",
    )


def _config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", metavar="PATH", help="TOML configuration file (env ENTRA_TOKEND_CONFIG)"
    )
    p.add_argument(
        "--token",
        metavar="NAME=SCOPE",
        action="append",
        default=[],
        help="a token to keep fresh, written to OUTPUT_DIR/NAME; repeatable "
        "(env ENTRA_TOKEND_TOKENS=NAME=SCOPE,...)",
    )
    p.add_argument(
        "--output-dir",
        metavar="DIR",
        help=f"where token files are written (default {DEFAULT_OUTPUT_DIR}; "
        "env ENTRA_TOKEND_OUTPUT_DIR)",
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"address of /metrics, /healthz, /readyz (default {DEFAULT_LISTEN}: IPv6 and IPv4, "
        "0.0.0.0:9464 on hosts without IPv6; '' disables; env ENTRA_TOKEND_LISTEN)",
    )
    _log_flags(p)
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="least severe log lines shown (default info; env ENTRA_TOKEND_LOG_LEVEL)",
    )


def _check_config_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    """The ``check-config`` command's parser."""
    check = sub.add_parser(
        "check-config",
        help="validate the configuration (and the host, unless --offline); print it",
        description="Validate the configuration and print the effective one as TOML "
        "(no secrets in it); every problem is one line on stderr.",
        epilog=CHECK_EPILOG,
        formatter_class=_help_formatter,
    )
    _config_flags(check)
    check.add_argument(
        "--offline",
        action="store_true",
        help="check only the configuration itself: no output_dir, listen, projected token, "
        "user, group or file checks; pod-supplied variables may be absent (CI of "
        "configuration repositories)",
    )


def _dev_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    """The ``dev`` command's parser."""
    dev = sub.add_parser(
        "dev",
        help="run the daemon against the built-in local emulator",
        description="Start the local emulator (an Entra tenant and a kubelet rotating a "
        "projected token) and the daemon against it, in one process: a first look without "
        "Azure.",
        epilog=DEV_EPILOG,
        formatter_class=_help_formatter,
    )
    dev.add_argument(
        "--output-dir", metavar="DIR", default="tokens", help="token files (default ./tokens)"
    )
    dev.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:9464",
        help="/metrics, /healthz, /readyz (default 127.0.0.1:9464; a free port if taken)",
    )
    dev.add_argument(
        "--state-dir",
        metavar="DIR",
        default=".entra-tokend-dev",
        help="the emulator's keys, CA and projected token (default ./.entra-tokend-dev)",
    )
    dev.add_argument(
        "--access-token-lifetime",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="lifetime of the emulator's access tokens; short, so refreshes show within "
        "minutes (default 60)",
    )
    _log_flags(dev, log_format="console")
    dev.set_defaults(log_format="console")
    dev.add_argument(
        "--identity-binding",
        action="store_true",
        help="AKS identity bindings: token requests go through the emulator's token proxy "
        "(the env file gains AZURE_KUBERNETES_TOKEN_PROXY, _SNI_NAME and _CA_FILE)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = _Parser(
        prog="entra-tokend",
        description="Keeps Microsoft Entra access tokens fresh on disk using Workload ID.",
        epilog=MAIN_EPILOG,
        formatter_class=_help_formatter,
    )
    _Parser.root = parser
    parser.add_argument("--version", action="version", version=f"entra-tokend {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser, title="commands"
    )
    run = sub.add_parser(
        "run",
        help="keep tokens fresh until SIGTERM (--once: get them once and exit)",
        description="Keep every configured token fresh on disk until SIGTERM/SIGINT.",
        epilog=RUN_EPILOG,
        formatter_class=_help_formatter,
    )
    _config_flags(run)
    run.add_argument(
        "--once",
        action="store_true",
        help="acquire every token once, write it, then exit (init containers, scripts)",
    )
    run.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help=f"with --once: give up after this many seconds (default {DEFAULT_DEADLINE}; "
        "key once_deadline)",
    )
    execcli.add_parser(sub, _config_flags, _help_formatter, DEFAULT_DEADLINE)
    _check_config_parser(sub)
    _dev_parser(sub)
    sub.add_parser("emulator", help="run the local Entra + kubelet emulator", add_help=False)
    # Their flags are parsed by their own modules (injectcli.py, webhook.py).
    sub.add_parser("inject", help="add the sidecar to annotated Kubernetes YAML", add_help=False)
    sub.add_parser("webhook", help="serve the sidecar-injecting admission webhook", add_help=False)
    health = sub.add_parser(
        "healthcheck",
        help="GET a running daemon's /healthz; exit 0 if it answers 200, else 1",
        description="For container HEALTHCHECKs: needs no shell or curl, only this command.",
    )
    health.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"the daemon's listen address (env ENTRA_TOKEND_LISTEN; default {DEFAULT_LISTEN}, "
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


def _check_config(args: argparse.Namespace) -> int:
    """``check-config``: the configuration (pure), then — unless ``--offline`` — the host
    checks ``run`` makes; the effective configuration as TOML on stdout."""
    import time  # noqa: PLC0415

    from entra_tokend.config import (  # noqa: PLC0415
        ConfigError,
        Overrides,
        load_config,
        render_config,
    )

    overrides = _overrides(args)
    assert isinstance(overrides, Overrides)
    if args.offline:
        try:
            config = load_config(overrides, os.environ, offline=True)
        except ConfigError as exc:
            return _print_problems(exc.problems)
        sys.stdout.write(render_config(config, offline=True))
        return EXIT_OK
    from entra_tokend import preflight  # noqa: PLC0415

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


def _run(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from entra_tokend import preflight  # noqa: PLC0415
    from entra_tokend.config import Config, ConfigError, Overrides  # noqa: PLC0415

    overrides = _overrides(args)
    assert isinstance(overrides, Overrides)
    found = preflight.Findings()
    try:
        config = preflight.load(overrides, os.environ, found)
    except ConfigError as exc:
        return _print_problems(exc.problems)
    problems = preflight.startup_checks(config, os.environ)
    if problems:
        return _print_problems(problems)
    from entra_tokend.daemon import Daemon  # noqa: PLC0415
    from entra_tokend.logging import configure_logging, get_logger  # noqa: PLC0415

    configure_logging(config.log_format, config.log_level)
    for line in found.warnings:
        get_logger().warning("configuration accepted with a risk", detail=line)
    if args.command == "exec":
        return execcli.exec_command(config, args, _print_problems)

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
        from entra_tokend.injectcli import main as inject_main  # noqa: PLC0415

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
        if args.command == "check-config":
            return _check_config(args)
        return _run(args)
    except KeyboardInterrupt:
        return EXIT_FAILURE
