"""config/entra-tokend.toml: every key, with its default, accepted by the real check-config."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from entra_tokend.config import schema as config_module
from entra_tokend.outputs import FORMATS
from support import run_cli
from support.config_keys import HOOK_KEYS, IDENTITY_KEYS, TOKEN_KEYS, TOP_LEVEL_KEYS, unknown_keys
from support.deploy import ENV_EXAMPLE, TOML_EXAMPLE, env_file, uncomment_settings


def active() -> dict[str, Any]:
    return tomllib.loads(TOML_EXAMPLE.read_text())


def everything() -> dict[str, Any]:
    return tomllib.loads(uncomment_settings(TOML_EXAMPLE.read_text()))


def test_example_uses_only_keys_from_the_reference() -> None:
    assert unknown_keys(active()) == []
    assert unknown_keys(everything()) == []


def test_example_shows_every_key() -> None:
    doc = everything()
    assert set(doc) >= TOP_LEVEL_KEYS
    shown_identity_keys = {k for table in doc["identity"].values() for k in table}
    assert shown_identity_keys == IDENTITY_KEYS
    shown_token_keys = {k for table in doc["token"].values() for k in table}
    assert shown_token_keys == TOKEN_KEYS
    assert set(doc["hook"]) == HOOK_KEYS
    token_hooks = [t["hook"] for t in doc["token"].values() if "hook" in t]
    assert token_hooks
    assert all(set(h) == HOOK_KEYS for h in token_hooks)


def test_example_sets_each_top_level_key_to_the_daemons_default() -> None:
    doc = active()
    for key, (_type, default) in config_module.TOP_LEVEL.items():
        if default is None:
            # No default (file_owner, file_group): shown, but only commented out.
            assert key not in doc, key
            assert key in everything(), key
        else:
            assert key in doc, f"{key} missing from the example"
            assert doc[key] == default, f"{key} = {doc[key]!r}, the daemon's default is {default!r}"
            assert type(doc[key]) is type(default), key


def test_example_token_defaults_match_the_daemon() -> None:
    (token,) = active()["token"].values()
    name = next(iter(active()["token"]))
    # identity, path and format are shown at their defaults.
    assert token["identity"] == config_module.DEFAULT_IDENTITY
    assert token["path"] == name
    assert token["format"] == next(iter(FORMATS))


def test_example_with_the_systemd_env_file_passes_check_config(tmp_path: Path) -> None:
    env = env_file(ENV_EXAMPLE)
    # --offline: the env file names /var/lib paths of the target machine, not of this one.
    result = run_cli(
        "check-config",
        "--offline",
        "--config",
        str(TOML_EXAMPLE),
        "--output-dir",
        str(tmp_path / "out"),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    effective = tomllib.loads(result.stdout)
    assert effective["identity"]["default"]["client_id"] == env["AZURE_CLIENT_ID"]
    assert effective["token"]["arm"]["scope"] == active()["token"]["arm"]["scope"]


def test_example_without_identity_variables_names_what_is_missing(tmp_path: Path) -> None:
    """The env file is what supplies the default identity: without it, exit 2 says so."""
    result = run_cli(
        "check-config",
        "--config",
        str(TOML_EXAMPLE),
        "--output-dir",
        str(tmp_path / "out"),
        env={},
    )
    assert result.returncode == 2
    for var in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE"):
        assert var in result.stderr
    assert "Traceback" not in result.stderr
