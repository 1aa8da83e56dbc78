"""Configuration: every problem named on its own line; the CLI exits 2 with them on stderr.

The rules are checked in process through ``preflight.load`` (the pure ``load_config`` and the
host checks, as ``run`` and ``check-config`` call them; flags as ``Overrides``, the environment
as a mapping); a few tests run the real ``check-config`` for the exit codes and the shape of
what an operator sees.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from entra_tokend import preflight
from entra_tokend.config import Config, ConfigError, Overrides, load_config, render_config
from testlib import STORAGE, VAULT, run_cli, write_projected_token


@pytest.fixture
def azure_env(tmp_path: Path) -> dict[str, str]:
    token_file = write_projected_token(tmp_path / "sa-token")
    return {
        "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
        "AZURE_CLIENT_ID": "66666666-7777-8888-9999-000000000000",
        "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
        "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out"),
    }


def load(
    env: dict[str, str], *, toml: str | None = None, tmp: Path | None = None, **flags: Any
) -> Config:
    """The configuration as ``run`` and ``check-config`` load it (``load_config``, then the
    host checks); ``flags`` are ``Overrides`` fields."""
    if toml is not None:
        assert tmp is not None
        path = tmp / "config.toml"
        path.write_text(toml)
        flags["config"] = str(path)
    return preflight.load(Overrides(**flags), env)


def problems(env: dict[str, str], *needles: str, **kwargs: Any) -> list[str]:
    """The problem lines of a configuration ``load`` rejects; each needle is in one of them."""
    with pytest.raises(ConfigError) as info:
        load(env, **kwargs)
    lines = info.value.problems
    for needle in needles:
        assert any(needle in line for line in lines), (needle, lines)
    return lines


def test_valid_shorthand_renders_the_effective_config(azure_env: dict[str, str]) -> None:
    text = render_config(load(azure_env, tokens=[f"storage={STORAGE}"], listen="127.0.0.1:9999"))
    assert "[token.storage]" in text
    assert f'scope = "{STORAGE}"' in text
    assert 'listen = "127.0.0.1:9999"' in text
    assert azure_env["AZURE_CLIENT_ID"] in text


def test_precedence_flags_over_env_over_file(azure_env: dict[str, str], tmp_path: Path) -> None:
    toml = (
        f'output_dir = "{tmp_path}/from-file"\nlisten = "127.0.0.1:1"\n'
        f'[token.a]\nscope = "{STORAGE}"\n'
    )
    env = {**azure_env, "ENTRA_TOKEND_LISTEN": "127.0.0.1:2"}
    env.pop("ENTRA_TOKEND_OUTPUT_DIR")
    text = render_config(load(env, toml=toml, tmp=tmp_path, listen="127.0.0.1:3"))
    assert 'listen = "127.0.0.1:3"' in text
    assert f'output_dir = "{tmp_path}/from-file"' in text
    text = render_config(load(env, toml=toml, tmp=tmp_path))
    assert 'listen = "127.0.0.1:2"' in text


def test_env_tokens_and_identity_table_override(azure_env: dict[str, str], tmp_path: Path) -> None:
    toml = '[identity.default]\nclient_id = "from-file"\nauthority_host = "https://login.example.com/"\n'
    env = {**azure_env, "ENTRA_TOKEND_TOKENS": f"a={STORAGE}, b={VAULT}"}
    text = render_config(load(env, toml=toml, tmp=tmp_path))
    assert 'client_id = "from-file"' in text
    # a trailing slash on the authority is tolerated
    assert 'authority_host = "https://login.example.com"' in text
    assert "[token.a]" in text
    assert "[token.b]" in text


def test_unknown_key_is_named_with_a_suggestion(azure_env: dict[str, str], tmp_path: Path) -> None:
    problems(
        azure_env,
        "token.a: unknown key 'scop' (did you mean 'scope'?)",
        toml='[token.a]\nscop = "x"\n',
        tmp=tmp_path,
    )


def test_unknown_top_level_key(azure_env: dict[str, str], tmp_path: Path) -> None:
    problems(
        azure_env,
        "unknown key 'ouput_dir' (did you mean 'output_dir'?)",
        toml="ouput_dir = '/x'\n",
        tmp=tmp_path,
        tokens=[f"a={STORAGE}"],
    )


def test_malformed_toml_names_file_and_line(azure_env: dict[str, str], tmp_path: Path) -> None:
    toml = '[token.a]\nscope = "x"\n[token.b\n'
    lines = problems(azure_env, "config.toml", "line 3", toml=toml, tmp=tmp_path)
    assert len(lines) == 1


def test_missing_config_file(azure_env: dict[str, str], tmp_path: Path) -> None:
    problems(azure_env, "nope.toml: does not exist", config=str(tmp_path / "nope.toml"))


@pytest.mark.parametrize(
    ("variable", "key"),
    [
        ("AZURE_TENANT_ID", "tenant_id"),
        ("AZURE_CLIENT_ID", "client_id"),
        ("AZURE_FEDERATED_TOKEN_FILE", "token_file"),
    ],
)
def test_missing_identity_setting_names_variable_and_key(
    azure_env: dict[str, str], variable: str, key: str
) -> None:
    env = dict(azure_env)
    env.pop(variable)
    needle = f"{key} is not set (set {variable} or identity.default.{key})"
    problems(env, needle, tokens=[f"a={STORAGE}"])


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    env = {"ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path)}
    needles = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE", "/.default")
    lines = problems(env, *needles, tokens=["a=https://x/read"])
    assert len(lines) == 4


def test_scope_without_default_is_rejected_with_reason(azure_env: dict[str, str]) -> None:
    problems(
        azure_env,
        "token.a.scope",
        "client-credential flows need '<resource>/.default'",
        tokens=["a=https://graph.microsoft.com/User.Read"],
    )


def test_two_scopes_in_one_token_rejected(azure_env: dict[str, str], tmp_path: Path) -> None:
    toml = f'[token.a]\nscope = "{STORAGE} {VAULT}"\n'
    problems(azure_env, "token.a.scope", "exactly one scope", toml=toml, tmp=tmp_path)


def test_duplicate_output_path_rejected(azure_env: dict[str, str], tmp_path: Path) -> None:
    toml = (
        f'[token.a]\nscope = "{STORAGE}"\npath = "same"\n'
        f'[token.b]\nscope = "{STORAGE}"\npath = "same"\n'
    )
    problems(azure_env, "token.b.path: token.a already writes to", toml=toml, tmp=tmp_path)


def test_path_escaping_output_dir_rejected(azure_env: dict[str, str], tmp_path: Path) -> None:
    toml = f'[token.a]\nscope = "{STORAGE}"\npath = "../etc/passwd"\n'
    needle = "token.a.path: '../etc/passwd' must be a file name inside output_dir"
    problems(azure_env, needle, toml=toml, tmp=tmp_path)


def test_output_dir_that_is_a_file(azure_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    problems(
        azure_env,
        "output_dir:",
        "exists but is not a directory",
        tokens=[f"a={STORAGE}"],
        output_dir=str(tmp_path / "file"),
    )


def test_output_dir_not_writable(azure_env: dict[str, str], tmp_path: Path) -> None:
    if os.getuid() == 0:
        # root ignores permission bits; a read-only bind is what stops root, use /proc.
        target = "/proc/self"
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = str(ro)
    problems(
        azure_env, "output_dir:", "is not writable", tokens=[f"a={STORAGE}"], output_dir=target
    )


def test_world_writable_output_dir_is_no_config_error(
    azure_env: dict[str, str], tmp_path: Path
) -> None:
    """An emptyDir with fsGroup (2777) must work; the daemon warns at start instead."""
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o2777)
    load(azure_env, tokens=[f"a={STORAGE}"], output_dir=str(d))
    d.chmod(0o1777)
    load(azure_env, tokens=[f"a={STORAGE}"], output_dir=str(d))


def test_plain_http_authority_refused_unless_loopback(azure_env: dict[str, str]) -> None:
    env = {**azure_env, "AZURE_AUTHORITY_HOST": "http://login.example.com"}
    problems(env, "AZURE_AUTHORITY_HOST", "plain http", tokens=[f"a={STORAGE}"])
    env["AZURE_AUTHORITY_HOST"] = "http://127.0.0.1:8080/"
    load(env, tokens=[f"a={STORAGE}"])


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('file_mode = "0666"\n', "world-writable"),
        ('file_mode = "rw"\n', "not an octal mode"),
        ('log_format = "xml"\n', "log_format"),
        ("refresh_at = 1.5\n", "refresh_at"),
        ('concurrency = "many"\n', "concurrency: must be an integer"),
        ("backoff_max = 0.5\n", "backoff_max"),
        ('listen = "nope"\n', "listen: 'nope'"),
        ("[token.x]\nscope = 'https://a/.default'\nformat = 'yaml'\n", "token.x.format"),
        ("[token.x]\nscope = 'https://a/.default'\nidentity = 'other'\n", "'other' is not defined"),
        ("[token.x]\nscope = 'https://a/.default'\n[token.x.hook]\nsignal = 'NOPE'\n", "signal"),
        ('file_owner = "no-such-user-here"\n', "no such user"),
    ],
)
def test_value_errors_name_the_key(
    azure_env: dict[str, str], tmp_path: Path, toml: str, needle: str
) -> None:
    toml = toml if "[token." in toml else toml + f'[token.a]\nscope = "{STORAGE}"\n'
    problems(azure_env, needle, toml=toml, tmp=tmp_path)


def test_bad_token_shorthand(azure_env: dict[str, str]) -> None:
    problems(azure_env, "--token: 'justaname' is not NAME=SCOPE", tokens=["justaname"])


def test_no_tokens(azure_env: dict[str, str]) -> None:
    problems(azure_env, "no tokens configured")


def test_load_config_collects_all(tmp_path: Path) -> None:
    lines = problems({"ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path)}, tokens=["a=b", "c"])
    assert len(lines) >= 3


# ---- the real CLI: exit codes and what the operator reads ---------------------------------


def test_check_config_exits_2_with_one_stderr_line_per_problem(tmp_path: Path) -> None:
    env = {"ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path)}
    expected = problems(env, tokens=["a=https://x/read"])
    result = run_cli("check-config", "--token", "a=https://x/read", env=env)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"entra-tokend: config: {line}" for line in expected]


def test_run_exits_2_on_a_config_error_before_doing_anything(
    azure_env: dict[str, str], tmp_path: Path
) -> None:
    expected = problems(azure_env, toml='[token.a]\nscop = "x"\n', tmp=tmp_path)
    result = run_cli("run", "--once", "--config", str(tmp_path / "config.toml"), env=azure_env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"entra-tokend: config: {line}" for line in expected]
    assert not (tmp_path / "out").exists()


def test_check_config_prints_the_effective_config_and_exits_0(azure_env: dict[str, str]) -> None:
    args = ("--offline", "--token", f"storage={STORAGE}", "--listen", "127.0.0.1:9999")
    result = run_cli("check-config", *args, env=azure_env)
    assert result.returncode == 0, result.stderr
    expected = load(azure_env, tokens=[f"storage={STORAGE}"], listen="127.0.0.1:9999")
    assert result.stdout == render_config(expected, offline=True)


def test_usage_error_exits_2() -> None:
    result = run_cli("run", "--no-such-flag")
    assert result.returncode == 2
    assert "--no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


# ---- load_config is pure; the host checks fill in what it leaves -------------------------


def test_load_config_leaves_host_lookups_to_the_host_checks(
    azure_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "t.tmpl").write_text("token=$access_token\n")
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123456789abcdef")
    secret.chmod(0o600)
    toml = (
        'file_owner = "root"\n'
        f'[token.a]\nscope = "{STORAGE}"\nfile_group = "root"\nformat = "template"\n'
        'template_file = "t.tmpl"\n'
        f'[token.b]\nscope = "{STORAGE}"\n'
        f'[token.c]\nscope = "{STORAGE}"\nfile_owner = 5\n'
        f'[endpoint]\nsecret_file = "{secret}"\nallow = ["https://storage.azure.com"]\n'
    )
    path = tmp_path / "config.toml"
    path.write_text(toml)
    pure = load_config(Overrides(config=str(path)), azure_env)
    assert not pure.resolved
    assert pure.host is not None
    assert [(o.key, o.value, o.tokens) for o in pure.host.owners] == [
        ("file_owner", "root", ("a", "b")),  # c sets its own owner
        ("token.a.file_group", "root", ("a",)),
    ]
    assert pure.host.templates == (("a", tmp_path / "t.tmpl"),)
    assert pure.tokens["a"].output.template is None
    assert pure.endpoint is not None
    assert pure.endpoint.secret == ""

    config = preflight.resolve(pure)
    assert config.resolved
    out = {name: spec.output for name, spec in config.tokens.items()}
    assert (config.file_owner, out["a"].file_owner, out["b"].file_owner) == (0, 0, 0)
    assert (out["c"].file_owner, out["a"].file_group, out["b"].file_group) == (5, 0, None)
    assert out["a"].template == "token=$access_token\n"
    assert config.endpoint is not None
    assert config.endpoint.secret == "0123456789abcdef0123456789abcdef"


def test_an_offline_config_is_never_resolved_for_running(tmp_path: Path) -> None:
    env = {"ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out")}
    offline = load_config(Overrides(tokens=[f"a={STORAGE}"]), env, offline=True)
    assert offline.run_time == (
        "identity.default.tenant_id (AZURE_TENANT_ID)",
        "identity.default.client_id (AZURE_CLIENT_ID)",
        "identity.default.token_file (AZURE_FEDERATED_TOKEN_FILE)",
    )
    assert not offline.resolved
    with pytest.raises(ConfigError) as info:
        preflight.resolve(offline)
    assert info.value.problems[0].startswith("identity.default.tenant_id (AZURE_TENANT_ID): ")
