"""README recipe "Redis" (Azure Cache for Redis with Entra authentication): real redis-cli 7
against a real redis-server 7, the user name the identity's object id (the token's ``oid``),
the password the token.

Azure Cache checks the Entra token itself; a stock server cannot, so to emulate that each
test creates an ACL user named after the token's ``oid`` whose password is that token.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from recipes.recipe_helpers import (
    Emulator,
    acquire_once,
    clean_env,
    free_port,
    jwt_claims,
    require,
    wait_until,
)

REDIS_SCOPE = "https://redis.azure.com/.default"


@dataclass
class Redis:
    """A redis-server on 127.0.0.1:``port`` (no persistence)."""

    port: int

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``redis-cli -h 127.0.0.1 -p PORT ARGS`` with ``env`` (e.g. REDISCLI_AUTH)."""
        return subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            env=clean_env(**env), capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    def accept_token(self, user: str, token: str) -> None:
        """ACL user ``user`` with ``token`` as its password (what Entra authentication does)."""
        result = self.cli("ACL", "SETUSER", user, "reset", "on", f">{token}", "+@all", "~*")
        assert result.stdout.strip() == "OK", result.stdout + result.stderr


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    """One server for the module."""
    require("redis-server", "redis-cli")
    work = tmp_path_factory.mktemp("redis")
    server = Redis(free_port())
    proc = subprocess.Popen(
        ["redis-server", "--port", str(server.port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: server.cli("PING").stdout.strip() == "PONG", timeout=30)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_redis_cli_logs_in_as_the_oid_with_the_token(
    emu: Emulator, redis: Redis, tmp_path: Path
) -> None:
    """Today's recipe: the ``raw`` file as REDISCLI_AUTH, the object id written by hand."""
    config = tmp_path / "entra-tokend.toml"
    config.write_text(f'[token.redis]\nscope = "{REDIS_SCOPE}"\n')
    out = tmp_path / "tokens"
    acquire_once(emu, config, out)
    token = (out / "redis").read_text()
    oid = jwt_claims(token)["oid"]  # the identity's object id, as the user looks it up
    redis.accept_token(oid, token)

    result = redis.cli("--user", oid, "--no-auth-warning", "ACL", "WHOAMI", REDISCLI_AUTH=token)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == oid


def test_redis_cli_user_name_from_the_oid_claim(
    emu: Emulator, redis: Redis, tmp_path: Path
) -> None:
    """The recipe with claims: one ``env`` file carrying both the user (``$oid``) and the
    password, sourced before redis-cli."""
    config = tmp_path / "entra-tokend.toml"
    config.write_text(
        f'[token.redis]\nscope = "{REDIS_SCOPE}"\nformat = "template"\npath = "redis.env"\n'
        'template = "REDIS_USER=$oid\\nREDISCLI_AUTH=$access_token\\n"\n'
    )
    out = tmp_path / "tokens"
    acquire_once(emu, config, out)
    values = dict(line.split("=", 1) for line in (out / "redis.env").read_text().splitlines())
    redis.accept_token(jwt_claims(values["REDISCLI_AUTH"])["oid"], values["REDISCLI_AUTH"])
    script = (
        f"set -a; . {out / 'redis.env'}; set +a; "
        f'redis-cli -h 127.0.0.1 -p {redis.port} --user "$REDIS_USER" --no-auth-warning ACL WHOAMI'
    )

    result = subprocess.run(
        ["bash", "-c", script], env=clean_env(), capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == jwt_claims(values["REDISCLI_AUTH"])["oid"]


def test_redis_cli_with_a_file_from_two_tokens(emu: Emulator, redis: Redis, tmp_path: Path) -> None:
    """``[file.NAME]``: the Redis user and password beside another resource's token, in one
    env file written only when both tokens are there."""
    config = tmp_path / "entra-tokend.toml"
    config.write_text(
        f'[token.redis]\nscope = "{REDIS_SCOPE}"\n'
        '[token.storage]\nscope = "https://storage.azure.com/.default"\n'
        '[file.app]\npath = "app.env"\nfile_mode = "0600"\ntemplate = """'
        "REDIS_USER=${redis.oid}\nREDISCLI_AUTH=${redis.access_token}\n"
        'STORAGE_TOKEN=${storage.access_token}\n"""\n'
    )
    out = tmp_path / "tokens"
    acquire_once(emu, config, out)
    values = dict(line.split("=", 1) for line in (out / "app.env").read_text().splitlines())
    assert values["STORAGE_TOKEN"] == (out / "storage").read_text()
    redis.accept_token(values["REDIS_USER"], values["REDISCLI_AUTH"])
    script = (
        f"set -a; . {out / 'app.env'}; set +a; "
        f'redis-cli -h 127.0.0.1 -p {redis.port} --user "$REDIS_USER" --no-auth-warning ACL WHOAMI'
    )

    result = subprocess.run(
        ["bash", "-c", script], env=clean_env(), capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == jwt_claims(values["REDISCLI_AUTH"])["oid"]
