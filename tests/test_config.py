"""Configuration errors through the real CLI: one line per problem, exit 2, no traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from entra_tokend.config import ConfigError, Overrides, load_config
from testlib import run_cli

SCOPE = "https://storage.azure.com/.default"


@pytest.fixture
def azure_env(tmp_path: Path) -> dict[str, str]:
    token_file = tmp_path / "sa-token"
    token_file.write_text("x.y.z")
    return {
        "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
        "AZURE_CLIENT_ID": "66666666-7777-8888-9999-000000000000",
        "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
        "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out"),
    }


def check(env: dict[str, str], *args: str, toml: str | None = None, tmp: Path | None = None):
    if toml is not None:
        assert tmp is not None
        path = tmp / "config.toml"
        path.write_text(toml)
        args = ("--config", str(path), *args)
    return run_cli("check-config", *args, env=env)


def assert_config_error(result, *needles: str) -> list[str]:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    for needle in needles:
        assert any(needle in line for line in lines), (needle, lines)
    return lines


def test_valid_shorthand_prints_effective_config(azure_env: dict[str, str]) -> None:
    result = check(azure_env, "--token", f"storage={SCOPE}", "--listen", "127.0.0.1:9999")
    assert result.returncode == 0, result.stderr
    assert "[token.storage]" in result.stdout
    assert f'scope = "{SCOPE}"' in result.stdout
    assert 'listen = "127.0.0.1:9999"' in result.stdout
    assert azure_env["AZURE_CLIENT_ID"] in result.stdout


def test_precedence_flags_over_env_over_file(azure_env: dict[str, str], tmp_path: Path) -> None:
    toml = (
        f'output_dir = "{tmp_path}/from-file"\nlisten = "127.0.0.1:1"\n'
        f'[token.a]\nscope = "{SCOPE}"\n'
    )
    env = {**azure_env, "ENTRA_TOKEND_LISTEN": "127.0.0.1:2"}
    env.pop("ENTRA_TOKEND_OUTPUT_DIR")
    result = check(env, "--listen", "127.0.0.1:3", toml=toml, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'listen = "127.0.0.1:3"' in result.stdout
    assert f'output_dir = "{tmp_path}/from-file"' in result.stdout
    result = check(env, toml=toml, tmp=tmp_path)
    assert 'listen = "127.0.0.1:2"' in result.stdout


def test_env_tokens_and_identity_table_override(azure_env: dict[str, str], tmp_path: Path) -> None:
    toml = '[identity.default]\nclient_id = "from-file"\nauthority_host = "https://login.example.com/"\n'
    env = {**azure_env, "ENTRA_TOKEND_TOKENS": f"a={SCOPE}, b=https://vault.azure.net/.default"}
    result = check(env, toml=toml, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'client_id = "from-file"' in result.stdout
    # a trailing slash on the authority is tolerated
    assert 'authority_host = "https://login.example.com"' in result.stdout
    assert "[token.a]" in result.stdout
    assert "[token.b]" in result.stdout


def test_unknown_key_is_named_with_a_suggestion(azure_env: dict[str, str], tmp_path: Path) -> None:
    result = check(azure_env, toml='[token.a]\nscop = "x"\n', tmp=tmp_path)
    assert_config_error(result, "token.a: unknown key 'scop' (did you mean 'scope'?)")


def test_unknown_top_level_key(azure_env: dict[str, str], tmp_path: Path) -> None:
    result = check(azure_env, "--token", f"a={SCOPE}", toml="ouput_dir = '/x'\n", tmp=tmp_path)
    assert_config_error(result, "unknown key 'ouput_dir' (did you mean 'output_dir'?)")


def test_malformed_toml_names_file_and_line(azure_env: dict[str, str], tmp_path: Path) -> None:
    result = check(azure_env, toml='[token.a]\nscope = "x"\n[token.b\n', tmp=tmp_path)
    lines = assert_config_error(result, "config.toml", "line 3")
    assert len(lines) == 1


def test_missing_config_file(azure_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli("check-config", "--config", str(tmp_path / "nope.toml"), env=azure_env)
    assert_config_error(result, "nope.toml: does not exist")


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
    result = check(env, "--token", f"a={SCOPE}")
    assert_config_error(result, f"{key} is not set (set {variable} or identity.default.{key})")


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    result = check({"ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path)}, "--token", "a=https://x/read")
    lines = assert_config_error(
        result, "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE", "/.default"
    )
    assert len(lines) == 4


def test_scope_without_default_is_rejected_with_reason(azure_env: dict[str, str]) -> None:
    result = check(azure_env, "--token", "a=https://graph.microsoft.com/User.Read")
    assert_config_error(
        result, "token.a.scope", "client-credential flows need '<resource>/.default'"
    )


def test_two_scopes_in_one_token_rejected(azure_env: dict[str, str], tmp_path: Path) -> None:
    toml = f'[token.a]\nscope = "{SCOPE} https://vault.azure.net/.default"\n'
    result = check(azure_env, toml=toml, tmp=tmp_path)
    assert_config_error(result, "token.a.scope", "exactly one scope")


def test_duplicate_output_path_rejected(azure_env: dict[str, str], tmp_path: Path) -> None:
    toml = (
        f'[token.a]\nscope = "{SCOPE}"\npath = "same"\n'
        f'[token.b]\nscope = "{SCOPE}"\npath = "same"\n'
    )
    result = check(azure_env, toml=toml, tmp=tmp_path)
    assert_config_error(result, "token.b.path: token.a already writes to")


def test_path_escaping_output_dir_rejected(azure_env: dict[str, str], tmp_path: Path) -> None:
    toml = f'[token.a]\nscope = "{SCOPE}"\npath = "../etc/passwd"\n'
    result = check(azure_env, toml=toml, tmp=tmp_path)
    assert_config_error(
        result, "token.a.path: '../etc/passwd' must be a file name inside output_dir"
    )


def test_output_dir_that_is_a_file(azure_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = check(azure_env, "--token", f"a={SCOPE}", "--output-dir", str(tmp_path / "file"))
    assert_config_error(result, "output_dir:", "exists but is not a directory")


def test_output_dir_not_writable(azure_env: dict[str, str], tmp_path: Path) -> None:
    if os.getuid() == 0:
        # root ignores permission bits; a read-only bind is what stops root, use /proc.
        target = "/proc/self"
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = str(ro)
    result = check(azure_env, "--token", f"a={SCOPE}", "--output-dir", target)
    assert_config_error(result, "output_dir:", "is not writable")


def test_world_writable_output_dir_is_no_config_error(
    azure_env: dict[str, str], tmp_path: Path
) -> None:
    """An emptyDir with fsGroup (2777) must work; the daemon warns at start instead."""
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o2777)
    assert check(azure_env, "--token", f"a={SCOPE}", "--output-dir", str(d)).returncode == 0
    d.chmod(0o1777)
    assert check(azure_env, "--token", f"a={SCOPE}", "--output-dir", str(d)).returncode == 0


def test_plain_http_authority_refused_unless_loopback(azure_env: dict[str, str]) -> None:
    env = {**azure_env, "AZURE_AUTHORITY_HOST": "http://login.example.com"}
    result = check(env, "--token", f"a={SCOPE}")
    assert_config_error(result, "AZURE_AUTHORITY_HOST", "plain http")
    env["AZURE_AUTHORITY_HOST"] = "http://127.0.0.1:8080/"
    assert check(env, "--token", f"a={SCOPE}").returncode == 0


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
    toml = toml if "[token." in toml else toml + f'[token.a]\nscope = "{SCOPE}"\n'
    assert_config_error(check(azure_env, toml=toml, tmp=tmp_path), needle)


def test_bad_token_shorthand(azure_env: dict[str, str]) -> None:
    assert_config_error(
        check(azure_env, "--token", "justaname"), "--token: 'justaname' is not NAME=SCOPE"
    )


def test_no_tokens(azure_env: dict[str, str]) -> None:
    assert_config_error(check(azure_env), "no tokens configured")


def test_usage_error_exits_2() -> None:
    result = run_cli("run", "--no-such-flag")
    assert result.returncode == 2
    assert "--no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


def test_load_config_in_process_collects_all(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Overrides(tokens=["a=b", "c"]), {"ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path)})
    assert len(info.value.problems) >= 3
