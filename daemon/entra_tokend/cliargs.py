"""The command line's parsers and help texts (``build_parser``); ``cli`` runs the commands.

Kept apart from the commands so that parsing ``--help`` or ``healthcheck`` loads nothing of the
daemon: the container runtime runs ``healthcheck`` every few seconds.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from entra_tokend import __version__
from entra_tokend.signals import parse_signal

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


def _run_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    """The ``run`` command's parser."""
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


def _health_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    """The ``healthcheck`` command's parser."""
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
    _run_parser(sub)
    _exec_parser(sub, _config_flags, _help_formatter, DEFAULT_DEADLINE)
    _check_config_parser(sub)
    _dev_parser(sub)
    sub.add_parser("emulator", help="run the local Entra + kubelet emulator", add_help=False)
    # Their flags are parsed by their own modules (injectcli.py, webhook.py).
    sub.add_parser("inject", help="add the sidecar to annotated Kubernetes YAML", add_help=False)
    sub.add_parser("webhook", help="serve the sidecar-injecting admission webhook", add_help=False)
    _health_parser(sub)
    return parser


EXEC_DESCRIPTION = """\
Acquire every configured token (as run --once does), write the files, then run
CMD with the tokens in its environment, forward TERM, INT, HUP, QUIT, USR1 and
USR2 to it, and keep the tokens fresh (metrics and health as in run). On a
refreshed token CMD is restarted (default) or signalled. exec ends with CMD."""

EXEC_EPILOG = """\
environment of CMD (besides exec's own):
  a token with format = "env"  its env_name and env_expires_name (default
                               ACCESS_TOKEN, ACCESS_TOKEN_EXPIRES_ON)
  any other token NAME         NAME_ACCESS_TOKEN and NAME_ACCESS_TOKEN_EXPIRES_ON
                               (upper case, other characters as _: my-db gives
                               MY_DB_ACCESS_TOKEN); expiry in unix seconds

examples:
  entra-tokend exec --token storage=https://storage.azure.com/.default -- ./job.sh
  entra-tokend exec --config pg.toml --signal HUP -- ./server
  entra-tokend exec --config pg.toml -- psql -h db.example -U app@tenant

exit status:
  CMD's own; 128+N when signal N ended it (SIGKILL: 137)
  1    a token could not be acquired before the deadline, or Entra answered
       with a configuration error (CMD was not started)
  2    configuration or usage error (one line per problem)
  126  CMD was found but cannot be executed; 127 CMD was not found
  128+N  SIGTERM/SIGINT (N) arrived before CMD started"""


def _signal(text: str) -> int:
    try:
        return parse_signal(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _exec_parser(
    sub: Any,
    config_flags: Callable[[argparse.ArgumentParser], None],
    formatter: Any,
    default_deadline: float,
) -> None:
    """Add ``exec`` to ``sub`` (the CLI's subparsers): ``config_flags`` adds the flags every
    command shares, then exec's own and ``CMD ARGS...``."""
    p = sub.add_parser(
        "exec",
        help="run a program with fresh tokens in its environment; restart or signal it on refresh",
        description=EXEC_DESCRIPTION,
        epilog=EXEC_EPILOG,
        formatter_class=formatter,
    )
    config_flags(p)
    p.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help=f"give up on the first tokens after this many seconds (default "
        f"{default_deadline:g}; key once_deadline); CMD is then not started",
    )
    on_refresh = p.add_mutually_exclusive_group()
    on_refresh.add_argument(
        "--restart",
        dest="on_refresh",
        action="store_const",
        const="restart",
        help="on a refreshed token: SIGTERM, the grace period, SIGKILL, start CMD again with "
        "the new tokens in its environment (the default)",
    )
    on_refresh.add_argument(
        "--signal",
        dest="refresh_signal",
        metavar="SIG",
        type=_signal,
        help="on a refreshed token: send CMD this signal (HUP, USR1...; CMD re-reads the files)",
    )
    on_refresh.add_argument(
        "--no-restart",
        dest="on_refresh",
        action="store_const",
        const="none",
        help="on a refreshed token: nothing (CMD reads the token files itself)",
    )
    p.add_argument(
        "--grace",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds CMD has to exit after SIGTERM (a stop or a restart) before SIGKILL "
        "(default 10)",
    )
    p.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="-- CMD [ARGS...]",
        help="the program and its arguments, looked up on PATH",
    )
