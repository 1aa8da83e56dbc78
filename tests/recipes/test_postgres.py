"""README recipe "PostgreSQL": libpq (real psql 15 against a real PostgreSQL 15) reading a
pgpass file the daemon renders (``format = "template"``).

Azure Database for PostgreSQL checks the Entra token itself; a stock server cannot, so to
emulate that here each test sets the role's password to the token the daemon just wrote
(``ALTER ROLE app PASSWORD '<token>'``, SCRAM): libpq then logs in only if it sent exactly
that token. What these prove about libpq, and what the README's recipe says:

- same UID as the daemon and ``file_mode = "0600"``: works;
- the default 0640 (group access): libpq ignores the file, with a warning;
- 0600 owned by another UID: libpq cannot read it and sends no password; the daemon setting
  ``file_owner`` to the client's UID (when it may chown: root or CAP_CHOWN) makes it work.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from recipes.recipe_helpers import (
    Emulator,
    acquire_once,
    clean_env,
    emulator_env,
    free_port,
    run_as,
    run_cli,
)

OSSRDBMS = "https://ossrdbms-aad.database.windows.net/.default"
NOBODY = 65534
PGPASS_TEMPLATE = "*:*:*:app:$access_token"


@dataclass
class Postgres:
    """A PostgreSQL server run by the ``postgres`` user on 127.0.0.1:``port``; role ``app``
    logs in over TCP with a SCRAM password, the superuser over the socket in ``sockets``."""

    bindir: Path
    sockets: Path
    port: int

    def superuser(self, sql: str) -> None:
        """Run ``sql`` as the superuser (over the socket, trust)."""
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bindir / "psql"), "-v", "ON_ERROR_STOP=1",
             "-h", str(self.sockets), "-p", str(self.port), "-d", "postgres", "-q"],
            input=sql, text=True, capture_output=True, timeout=60, check=True,
        )  # fmt: skip

    def accept_token(self, token: str) -> None:
        """Make ``token`` role ``app``'s password (what Entra authentication checks)."""
        self.superuser(f"ALTER ROLE app PASSWORD '{token}';")

    def conninfo(self) -> str:
        """What the README's psql line passes: host, port, user, database."""
        return f"host=127.0.0.1 port={self.port} user=app dbname=postgres sslmode=disable"


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found or shutil.which("psql") is None or shutil.which("runuser") is None:
        pytest.skip("postgresql (server and psql) not installed (run tests/tools.sh)")
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """One server for the module (initdb + start take a few seconds)."""
    bindir = _bindir()
    home = Path(tempfile.mkdtemp(prefix="entra-tokend-pg-"))
    user = pwd.getpwnam("postgres")
    os.chown(home, user.pw_uid, user.pw_gid)
    data, port = home / "data", free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_pg, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
         "--no-sync", "--no-instructions"],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    (data / "pg_hba.conf").write_text(
        "local all postgres trust\nhost all app 127.0.0.1/32 scram-sha-256\n"
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {home} -c fsync=off"
    pg_ctl = [*as_pg, str(bindir / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [*pg_ctl, "-w", "-o", options, "-l", str(home / "log"), "start"],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    server = Postgres(bindir, home, port)
    try:
        server.superuser("CREATE ROLE app LOGIN;")
        yield server
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def _write_pgpass(emu: Emulator, out: Path, config: Path, **settings: str) -> str:
    """The daemon renders the pgpass file ``out/pgpass``; returns the token in it."""
    extra = "".join(f'{key} = "{value}"\n' for key, value in settings.items())
    config.write_text(
        f'[token.pg]\nscope = "{OSSRDBMS}"\nformat = "template"\npath = "pgpass"\n'
        f'template = "{PGPASS_TEMPLATE}"\n{extra}'
    )
    acquire_once(emu, config, out)
    return (out / "pgpass").read_text().rpartition(":")[2]


def _psql(pg: Postgres, pgpass: Path, uid: int | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["psql", "-X", "-w", "-At", pg.conninfo(), "-c", "SELECT current_user"]
    env = clean_env(PGPASSFILE=str(pgpass), HOME="/nonexistent")
    if uid is None:
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=60, check=False
        )
    return run_as(uid, uid, argv, env)


def test_psql_logs_in_with_a_0600_pgpass_of_its_own_uid(
    emu: Emulator, postgres: Postgres, tmp_path: Path
) -> None:
    token = _write_pgpass(emu, tmp_path / "out", tmp_path / "c.toml", file_mode="0600")
    postgres.accept_token(token)

    result = _psql(postgres, tmp_path / "out" / "pgpass")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app"


def test_psql_ignores_a_pgpass_with_group_access(
    emu: Emulator, postgres: Postgres, tmp_path: Path
) -> None:
    token = _write_pgpass(emu, tmp_path / "out", tmp_path / "c.toml", file_mode="0640")
    postgres.accept_token(token)

    result = _psql(postgres, tmp_path / "out" / "pgpass")

    assert result.returncode != 0
    assert "has group or world access" in result.stderr
    assert "no password supplied" in result.stderr


def test_psql_of_another_uid_cannot_read_a_0600_pgpass(
    emu: Emulator, postgres: Postgres, shared_dir: Path
) -> None:
    out = shared_dir / "out"
    out.mkdir(mode=0o755)
    token = _write_pgpass(emu, out, shared_dir / "c.toml", file_mode="0600")
    postgres.accept_token(token)
    assert (out / "pgpass").stat().st_uid == os.getuid() != NOBODY

    result = _psql(postgres, out / "pgpass", uid=NOBODY)

    assert result.returncode != 0
    assert "no password supplied" in result.stderr


def test_psql_of_another_uid_logs_in_when_the_daemon_owns_the_file_to_it(
    emu: Emulator, postgres: Postgres, shared_dir: Path
) -> None:
    if os.getuid() != 0:
        pytest.skip("file_owner needs a daemon that may chown (root here)")
    out = shared_dir / "out"
    out.mkdir(mode=0o755)
    token = _write_pgpass(emu, out, shared_dir / "c.toml", file_mode="0600", file_owner=str(NOBODY))
    postgres.accept_token(token)

    result = _psql(postgres, out / "pgpass", uid=NOBODY)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app"


def test_psql_reads_pgpassword_from_the_env_file(
    emu: Emulator, postgres: Postgres, tmp_path: Path
) -> None:
    """The ``env`` recipe: a shell sources the file and starts psql (which reads
    PGPASSWORD once, at start)."""
    out, config = tmp_path / "out", tmp_path / "c.toml"
    config.write_text(
        f'[token.pg]\nscope = "{OSSRDBMS}"\nformat = "env"\nenv_name = "PGPASSWORD"\n'
        'file_mode = "0600"\n'
    )
    acquire_once(emu, config, out)
    token = (out / "pg").read_text().splitlines()[0].partition("=")[2]
    postgres.accept_token(token)
    psql = f'psql -X -w -At "{postgres.conninfo()}" -c "SELECT current_user"'
    script = f"set -a; . {out / 'pg'}; set +a; {psql}"

    result = subprocess.run(
        ["bash", "-c", script], env=clean_env(HOME="/nonexistent"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app"


def test_exec_starts_psql_with_a_fresh_pgpassword(
    emu: Emulator, postgres: Postgres, tmp_path: Path
) -> None:
    """``entra-tokend exec -- psql ...``: the child gets PGPASSWORD from the env-format token;
    works for any UID, as no file is shared. The child first makes the token the role's
    password (what Entra would accept), then runs the README's psql line."""
    out, config = tmp_path / "out", tmp_path / "c.toml"
    config.write_text(
        f'[token.pg]\nscope = "{OSSRDBMS}"\nformat = "env"\nenv_name = "PGPASSWORD"\n'
    )
    accept = (
        f'printf "ALTER ROLE app PASSWORD \'%s\';" "$PGPASSWORD" | runuser -u postgres -- '
        f"{postgres.bindir / 'psql'} -q -h {postgres.sockets} -p {postgres.port} -d postgres"
    )
    child = f'{accept} && exec psql -X -w -At "{postgres.conninfo()}" -c "SELECT current_user"'

    result = run_cli(
        "exec", "--config", str(config), "--", "bash", "-c", child,
        env=emulator_env(emu, out),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app"
