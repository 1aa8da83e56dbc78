"""Output formats in process (rendering, template checks) and end to end: the real CLI against
the emulator writes each format, and real consumers read them (bash ``set -a; . file``, curl
``-H @file``); config errors for every new key exit 2 naming the key."""

from __future__ import annotations

import base64
import http.server
import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from entra_tokend.emulator import Emulator, Fault
from entra_tokend.model import AccessToken, OutputSpec
from entra_tokend.outputs import renderer_for
from entra_tokend.outputs import template as template_format
from support import emulator_env, offline_env, run_cli

STORAGE = "https://storage.azure.com/.default"
TOKEN = AccessToken(
    token="aaa.bbb.ccc",
    token_type="Bearer",
    expires_in=3600,
    expires_on=1_800_000_000.4,
    refresh_in=None,
    scope=STORAGE,
    request_id="r",
    tenant_id="t-1",
    client_id="c-1",
)


def test_header_env_and_template_render() -> None:
    def render(**kw: Any) -> str:
        return renderer_for(OutputSpec(path=Path("/x"), **kw))(TOKEN).decode()

    assert render(format="header") == "Authorization: Bearer aaa.bbb.ccc\n"
    assert render(format="env", env_name="PGPASSWORD", env_expires_name="PGEXP") == (
        "PGPASSWORD=aaa.bbb.ccc\nPGEXP=1800000000\n"
    )
    text = render(
        format="template",
        name="st",
        template="$token_name ${resource} $expires_on_rfc3339 $tenant_id/$client_id $$x",
    )
    assert text == "st https://storage.azure.com 2027-01-15T08:00:00Z t-1/c-1 $x"


def test_template_check_names_the_field_and_syntax_errors() -> None:
    assert template_format.check("${access_token} $expires_on") == []
    assert template_format.check("$acess_token") == [
        f"unknown field 'acess_token' (fields: {', '.join(template_format.FIELDS)})"
    ]
    (problem,) = template_format.check("cost: $5")
    assert problem.startswith("template syntax error")
    assert "$$" in problem


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[token.a]\nscope="S"\nfile_mode="0666"\n', "token.a.file_mode: 0666 would make"),
        ('[token.a]\nscope="S"\nfile_mode=[1]\n', "token.a.file_mode: must be a string or"),
        ('[token.a]\nscope="S"\nfile_owner="no-such-user-x"\n', "token.a.file_owner: no such"),
        ('[token.a]\nscope="S"\nfile_group="no-such-grp-x"\n', "token.a.file_group: no such"),
        ('[token.a]\nscope="S"\nformat="env"\nenv_name="1X"\n', "token.a.env_name: '1X' is"),
        ('[token.a]\nscope="S"\nenv_name="X"\n', "token.a.env_name: only used with format"),
        (
            '[token.a]\nscope="S"\nformat="env"\nenv_expires_name="A-B"\n',
            "token.a.env_expires_name: 'A-B' is not a variable name",
        ),
        (
            '[token.a]\nscope="S"\nformat="template"\ntemplate="$nope"\n',
            "token.a.template: unknown field 'nope'",
        ),
        (
            '[token.a]\nscope="S"\nformat="template"\ntemplate="$"\n',
            "token.a.template: template syntax error",
        ),
        ('[token.a]\nscope="S"\nformat="template"\n', "token.a.template: give exactly one"),
        (
            '[token.a]\nscope="S"\nformat="template"\ntemplate_file="missing.tmpl"\n',
            "token.a.template_file: cannot read",
        ),
        ('[token.a]\nscope="S"\ntemplate="$scope"\n', "token.a.template: only used with format"),
        (
            '[token.a]\nscope="S"\nformat="docker-config"\n',
            'token.a.registry: format = "docker-config"',
        ),
        (
            '[token.a]\nformat="docker-config"\nregistry="http://r.azurecr.io"\n',
            "token.a.registry: 'http://r.azurecr.io' uses plain http",
        ),
        (
            '[token.a]\nformat="docker-config"\nregistry="r.azurecr.io/path"\n',
            "token.a.registry: 'r.azurecr.io/path' is not a registry host[:port]",
        ),
        (
            '[token.a]\nformat="docker-config"\nregistry=["r.azurecr.io","R.azurecr.io"]\n',
            "token.a.registry: 'R.azurecr.io' is listed twice",
        ),
        ('[token.a]\nregistry="r.azurecr.io"\n', "token.a.registry: only used with format"),
    ],
)
def test_config_errors_for_new_keys(tmp_path: Path, body: str, expected: str) -> None:
    body = body.replace('scope="S"', f'scope="{STORAGE}"')
    config = write_config(tmp_path / "c.toml", body)
    result = run_cli("check-config", "--config", str(config), env=offline_env(tmp_path))
    assert result.returncode == 2, result.stdout
    prefix = "entra-tokend: config: "
    lines = [
        line.removeprefix(prefix)
        for line in result.stderr.splitlines()
        if line.startswith(prefix + "token.")
    ]
    assert any(line.startswith(expected) for line in lines), result.stderr
    assert len(lines) == 1, result.stderr  # one line per mistake


def test_check_config_prints_the_new_keys(tmp_path: Path) -> None:
    (tmp_path / "n.tmpl").write_text('proxy_set_header Authorization "Bearer $access_token";\n')
    config = write_config(
        tmp_path / "c.toml",
        f'[token.pg]\nscope="{STORAGE}"\nformat="env"\nenv_name="PGPASSWORD"\nfile_mode="0600"\n'
        f'[token.ng]\nscope="{STORAGE}"\nformat="template"\ntemplate_file="n.tmpl"\n'
        '[token.acr]\nformat="docker-config"\nregistry=["a.azurecr.io","b.azurecr.us"]\n',
    )
    result = run_cli("check-config", "--config", str(config), env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert 'env_name = "PGPASSWORD"' in out
    assert 'env_expires_name = "PGPASSWORD_EXPIRES_ON"' in out
    assert 'file_mode = "0600"' in out
    # Where the template was read from — never the file's text (a template_file may be any
    # file the daemon can read; the effective configuration holds no secret).
    assert f'template_file = "{tmp_path / "n.tmpl"}"' in out
    assert "proxy_set_header" not in out
    assert 'registry = ["a.azurecr.io", "b.azurecr.us"]' in out
    assert 'scope = "https://containerregistry.azure.net/.default"' in out
    # The printed configuration is accepted again.
    again = write_config(tmp_path / "again.toml", out)
    result = run_cli("check-config", "--config", str(again), env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr


class _HeaderSink(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization", ""))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def header_sink() -> Iterator[tuple[str, list[str]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HeaderSink)
    _HeaderSink.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", _HeaderSink.seen
    finally:
        server.shutdown()
        server.server_close()


def test_every_format_end_to_end_with_real_consumers(
    emulator: Emulator, tmp_path: Path, header_sink: tuple[str, list[str]]
) -> None:
    out = tmp_path / "out"
    (tmp_path / "nginx.tmpl").write_text(
        "# token $token_name, expires $expires_on_rfc3339\n"
        'proxy_set_header Authorization "$token_type $access_token";\n'
    )
    config = write_config(
        tmp_path / "c.toml",
        f'file_mode = "0640"\n'
        f'[token.h]\nscope="{STORAGE}"\nformat="header"\n'
        f'[token.pg]\nscope="{STORAGE}"\nformat="env"\nenv_name="PGPASSWORD"\nfile_mode="0600"\n'
        f'[token.ng]\nscope="{STORAGE}"\nformat="template"\ntemplate_file="nginx.tmpl"\n'
        f'file_mode="0400"\n'
        f'[token.kafka]\nscope="{STORAGE}"\nformat="template"\n'
        'template="""KafkaClient {\\n  org.apache.kafka.common.security.oauthbearer.'
        'OAuthBearerLoginModule required\\n  token=\\"$access_token\\";\\n};\\n"""\n',
    )
    result = run_cli("run", "--once", "--config", str(config), env=emulator_env(emulator, out))
    assert result.returncode == 0, result.stderr
    issued = set(emulator.issued_tokens)

    # header: real curl sends the file's header line.
    url, seen = header_sink
    curl = subprocess.run(
        ["curl", "-sf", "--noproxy", "*", "-H", f"@{out / 'h'}", url],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert curl.returncode == 0, curl.stderr
    assert seen[0].startswith("Bearer ")
    assert seen[0].removeprefix("Bearer ") in issued

    # env: bash `set -a; . file` exports both variables; mode 0600 per token.
    shell = subprocess.run(
        ["bash", "-c", 'set -a; . "$1"; env', "-", str(out / "pg")],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"]},
        check=True,
    )
    exported = dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)
    assert exported["PGPASSWORD"] in issued
    assert exported["PGPASSWORD_EXPIRES_ON"].isdigit()
    assert stat.S_IMODE((out / "pg").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "h").stat().st_mode) == 0o640
    assert stat.S_IMODE((out / "ng").stat().st_mode) == 0o400

    # template: the nginx directive parses (quoted value, one directive per line).
    lines = (out / "ng").read_text().splitlines()
    assert lines[0].startswith("# token ng, expires 20")
    assert lines[0].endswith("Z")
    directive, name, value = lines[1].split(" ", 2)
    assert (directive, name) == ("proxy_set_header", "Authorization")
    assert value.startswith('"Bearer ')
    assert value.endswith('";')
    assert value.removeprefix('"Bearer ').removesuffix('";') in issued
    jaas = (out / "kafka").read_text()
    assert "OAuthBearerLoginModule required" in jaas
    assert jaas.split('token="', 1)[1].split('"', 1)[0] in issued


def test_docker_config_through_the_emulator_and_no_secret_in_logs(
    emulator: Emulator, tmp_path: Path
) -> None:
    # The emulator plays the registry too: its /v2/ challenges with itself as the realm.
    name = emulator.authority_host.removeprefix("http://")
    emulator.add_registry(name)
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "c.toml",
        f'[token.acr]\nformat="docker-config"\nregistry=["http://{name}"]\n'
        'path="docker/config.json"\nfile_mode="0600"\n',
    )
    env = emulator_env(emulator, out, ENTRA_TOKEND_LOG_LEVEL="debug")
    result = run_cli("run", "--once", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    exchanges = [r for r in emulator.acr_requests() if r.endpoint == "acr_exchange"]
    assert len(exchanges) == 1
    assert exchanges[0].form["service"] == name
    assert exchanges[0].form["tenant"] == emulator.tenant_id
    (refresh,) = emulator.issued_acr_refresh_tokens
    doc = json.loads((out / "docker" / "config.json").read_text())
    auth = base64.b64decode(doc["auths"][name]["auth"]).decode()
    assert auth == f"00000000-0000-0000-0000-000000000000:{refresh}"
    assert stat.S_IMODE((out / "docker" / "config.json").stat().st_mode) == 0o600

    # Throttled once (transient: retried), then the role assignment removed: a configuration
    # error naming the registry, ACR's correlation id and the role to grant.
    emulator.inject(Fault("status", status=429, retry_after="0", target="acr_exchange"))
    emulator.grant_registry_access(name, "*", None)  # no app holds a role any more
    failed = run_cli("run", "--once", "--deadline", "20", "--config", str(config), env=env)
    assert failed.returncode != 0
    events = [json.loads(line) for line in failed.stderr.splitlines() if line.startswith("{")]
    reasons = [e.get("reason") for e in events if e.get("event") == "token refresh failed"]
    assert reasons == ["throttled", "client_error"]
    denied = next(e for e in events if e.get("reason") == "client_error")
    assert name in denied["detail"]
    assert denied["status"] == 403
    assert denied["correlation_id"]
    assert "AcrPull" in denied["hint"]
    text = failed.stderr + failed.stdout + result.stderr + result.stdout
    for secret in [*emulator.issued_tokens, *emulator.issued_acr_refresh_tokens]:
        assert secret not in text
        assert secret.rsplit(".", 1)[-1] not in text
    # The failed refreshes left the file from the first run as it was.
    assert json.loads((out / "docker" / "config.json").read_text()) == doc


def test_a_registry_answer_out_of_bounds_keeps_the_docker_config(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A refresh token whose exp is already past fails the refresh as invalid_response, and
    the docker config of the last good refresh stays as it was (other exp values: test_acr)."""
    name = emulator.authority_host.removeprefix("http://")
    emulator.add_registry(name)
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "c.toml", f'[token.acr]\nformat="docker-config"\nregistry=["http://{name}"]\n'
    )
    env = emulator_env(emulator, out)
    assert run_cli("run", "--once", "--config", str(config), env=env).returncode == 0
    good = (out / "acr").read_bytes()
    text = str(int(emulator.clock() - 60))
    emulator.inject(Fault("refresh_exp", target="acr_exchange", exp=text, count=1000))
    failed = run_cli("run", "--once", "--deadline", "3", "--config", str(config), env=env)
    assert failed.returncode != 0
    events = [json.loads(line) for line in failed.stderr.splitlines() if line.startswith("{")]
    reasons = {e.get("reason") for e in events if e.get("event") == "token refresh failed"}
    assert "invalid_response" in reasons
    assert (out / "acr").read_bytes() == good
