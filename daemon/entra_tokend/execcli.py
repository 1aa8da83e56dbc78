"""``entra-tokend exec``: its flags and the command (the supervisor is ``supervise``).

``cli`` calls ``add_parser`` with the configuration flags every command shares, and
``exec_command`` once the configuration is loaded and checked. Only argparse-level imports
at module level: ``--help`` stays light.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from entra_tokend.config import Config

EXIT_CONFIG = 2

DESCRIPTION = """\
Acquire every configured token (as run --once does), write the files, then run
CMD with the tokens in its environment, forward TERM, INT, HUP, QUIT, USR1 and
USR2 to it, and keep the tokens fresh (metrics and health as in run). On a
refreshed token CMD is restarted (default) or signalled. exec ends with CMD."""

EPILOG = """\
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
    from entra_tokend.supervise import parse_signal  # noqa: PLC0415

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


def add_parser(
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
        description=DESCRIPTION,
        epilog=EPILOG,
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


def exec_command(
    config: Config, args: argparse.Namespace, problems: Callable[[list[str]], int]
) -> int:
    """Run ``exec`` with a loaded and host-checked ``config``; returns the
    exit status. ``problems`` prints configuration problems and returns their exit code."""
    import asyncio  # noqa: PLC0415

    from entra_tokend import supervise  # noqa: PLC0415

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
        return problems(clashing)
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
    from entra_tokend.daemon import Daemon  # noqa: PLC0415

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
