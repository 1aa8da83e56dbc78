"""config/entra-tokend.toml shows every key the daemon's schema defines, ``[endpoint]`` and the
per-format token keys included; the key sets are the schema's (``support.config_keys``)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from entra_tokend.config import schema
from support import run_cli, write_projected_token
from support.config_keys import (
    ENDPOINT_KEYS,
    FORMAT_KEYS,
    TOKEN_KEYS,
    missing_keys,
    unknown_keys,
)
from support.deploy import TOML_EXAMPLE, uncomment_settings


def everything() -> dict[str, Any]:
    """The example with every commented-out setting enabled."""
    return tomllib.loads(uncomment_settings(TOML_EXAMPLE.read_text()))


def test_example_shows_every_key_of_the_schema() -> None:
    doc = everything()
    assert missing_keys(doc) == []
    assert unknown_keys(doc) == []


def test_format_keys_are_shown_with_a_format_they_belong_to() -> None:
    tokens = everything()["token"].values()
    for key, formats in FORMAT_KEYS.items():
        assert any(key in t and t.get("format") in formats for t in tokens), key


def test_a_key_the_example_lacks_is_reported() -> None:
    """The check can fail: drop the endpoint table and one format key, and both are named."""
    doc = everything()
    del doc["endpoint"]
    for table in doc["token"].values():
        table.pop("registry", None)
    missing = missing_keys(doc)
    assert "endpoint" in missing
    assert "token.*.registry" in missing
    assert {f"endpoint.{k}" for k in ENDPOINT_KEYS} <= set(missing)


def test_format_keys_in_a_token_of_another_format_do_not_count() -> None:
    doc = everything()
    for table in doc["token"].values():
        if "env_name" in table:
            table["format"] = "raw"
    assert "token.*.env_name" in missing_keys(doc)


def test_key_sets_are_the_schemas() -> None:
    assert set(schema.TOKEN_KEYS) == TOKEN_KEYS
    assert set(schema.ENDPOINT_KEYS) == ENDPOINT_KEYS
    assert unknown_keys({"endpoint": {"secret": "x"}, "bogus": 1}) == ["bogus", "endpoint.secret"]


# Settings the example shows as alternatives to another ("one of the two") or that name things
# only the target machine has (a user, a group); the rest, enabled together, must be valid.
ALTERNATIVES = ("template_file", "secret_file", "token_proxy_ca_data", "file_owner", "file_group")


def test_every_optional_setting_enabled_passes_check_config(tmp_path: Path) -> None:
    lines = uncomment_settings(TOML_EXAMPLE.read_text()).splitlines()
    text = "\n".join(line for line in lines if not line.startswith(ALTERNATIVES))
    config = tmp_path / "all.toml"
    config.write_text(text.replace("/var/run/secrets/azure/tokens/", f"{tmp_path}/"))
    write_projected_token(tmp_path / "azure-identity-token")
    result = run_cli(
        "check-config",
        "--offline",
        "--config",
        str(config),
        "--output-dir",
        str(tmp_path / "out"),
        env={"IDENTITY_HEADER": "0123456789abcdef0123456789abcdef"},
    )
    assert result.returncode == 0, result.stderr
    effective = tomllib.loads(result.stdout)
    assert set(effective["token"]) == set(tomllib.loads(text)["token"])
    assert "endpoint" in effective
