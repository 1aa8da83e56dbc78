"""The README's ``exec`` recipe with the real client: ``entra-tokend exec -- psql …`` against a
real PostgreSQL 15, PGPASSWORD from a ``format = "env"`` token.

A stock server cannot check an Entra token, so the test emulates Azure Database for
PostgreSQL: the program first makes the token it got the role's password (SCRAM), then runs
the README's psql line, which logs in only if libpq sent exactly that token. Skipped when the
Debian postgresql package (server and psql) is not installed (``tests/tools.sh``)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from entra_tokend.emulator import Emulator
from testlib import emulator_env, run_cli

OSSRDBMS = "https://ossrdbms-aad.database.windows.net/.default"


@dataclass
class Server:
    """PostgreSQL run by the ``postgres`` user: role ``app`` over TCP (SCRAM) on ``port``,
    the superuser over the socket in ``sockets`` (trust)."""

    bindir: Path
    sockets: Path
    port: int


@pytest.fixture
def postgres() -> Iterator[Server]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found or shutil.which("psql") is None or shutil.which("runuser") is None:
        pytest.skip("postgresql (server and psql) is not installed (tests/tools.sh)")
    bindir = Path(found[-1]).parent
    home = Path(tempfile.mkdtemp(prefix="entra-tokend-exec-pg-"))
    user = pwd.getpwnam("postgres")
    os.chown(home, user.pw_uid, user.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_pg, data = ["runuser", "-u", "postgres", "--"], home / "data"
    subprocess.run(
        [*as_pg, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
         "--no-sync", "--no-instructions"],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    (data / "pg_hba.conf").write_text(
        "local all postgres trust\nhost all app 127.0.0.1/32 scram-sha-256\n"
    )
    pg_ctl = [*as_pg, str(bindir / "pg_ctl"), "-D", str(data)]
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {home} -c fsync=off"
    subprocess.run(
        [*pg_ctl, "-w", "-o", options, "-l", str(home / "log"), "start"],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    server = Server(bindir, home, port)
    try:
        subprocess.run(
            [*as_pg, str(bindir / "psql"), "-h", str(home), "-p", str(port), "-d", "postgres",
             "-q", "-c", "CREATE ROLE app LOGIN;"],
            capture_output=True, timeout=60, check=True,
        )  # fmt: skip
        yield server
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def test_exec_starts_psql_with_pgpassword(
    emulator: Emulator, postgres: Server, tmp_path: Path
) -> None:
    out, config = tmp_path / "out", tmp_path / "c.toml"
    config.write_text(
        f'[token.pg]\nscope = "{OSSRDBMS}"\nformat = "env"\nenv_name = "PGPASSWORD"\n'
    )
    superuser = (
        f"runuser -u postgres -- {postgres.bindir / 'psql'} -q -v ON_ERROR_STOP=1 "
        f"-h {postgres.sockets} -p {postgres.port} -d postgres"
    )
    accept = f'printf "ALTER ROLE app PASSWORD \'%s\';" "$PGPASSWORD" | {superuser}'
    conninfo = f"host=127.0.0.1 port={postgres.port} user=app dbname=postgres sslmode=disable"
    # -w: never prompt; without the right PGPASSWORD the login fails.
    program = f'{accept} && exec psql -X -w -At "{conninfo}" -c "SELECT current_user"'

    result = run_cli(
        "exec", "--config", str(config), "--", "bash", "-c", program,
        env={**emulator_env(emulator, out), "HOME": "/nonexistent"},
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app"
    assert (out / "pg").read_text().startswith("PGPASSWORD=")


def test_psql_without_the_token_is_refused(
    emulator: Emulator, postgres: Server, tmp_path: Path
) -> None:
    """The check above can fail: psql with another password is refused, exit status passed
    through (psql's 2: connection failed)."""
    out, config = tmp_path / "out", tmp_path / "c.toml"
    config.write_text(f'[token.pg]\nscope = "{OSSRDBMS}"\nformat = "env"\nenv_name = "X"\n')
    conninfo = f"host=127.0.0.1 port={postgres.port} user=app dbname=postgres sslmode=disable"
    result = run_cli(
        "exec", "--config", str(config), "--",
        "psql", "-X", "-w", "-At", conninfo, "-c", "SELECT 1",
        env={**emulator_env(emulator, out), "HOME": "/nonexistent", "PGPASSWORD": "wrong"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "password authentication failed" in result.stderr
