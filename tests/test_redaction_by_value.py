"""Redaction by value, whatever the shape (issue 26 §8): a secret that starts with ``eyJ`` but is
no base64url (an opaque token, an endpoint secret) used to be left to the JWT shape rules,
which did not match it — so a hook that printed it put it in the log in clear."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from entra_tokend.emulator import Emulator
from entra_tokend.logging import REDACTED, redact_text, remember_secret
from support import STORAGE, write_config


@pytest.mark.parametrize(
    "secret",
    [
        "eyJ+not/base64url=but+a+secret",  # the example: eyJ, then characters no JWT has
        "eyJshort12",  # base64url, but too short for the part rule
        "eyJ0eXAi.but.with-dots-and-%-signs",  # three dot-separated parts, not a JWT
        "opaque-token-0123456789",  # no eyJ at all (was already redacted; stays so)
    ],
)
def test_every_remembered_value_is_redacted_whatever_its_shape(secret: str) -> None:
    remember_secret(secret)
    line = f"hook output: {secret}; again:{secret}."
    assert secret not in redact_text(line)
    assert redact_text(line).count(REDACTED) == 2


def test_a_hook_printing_an_eyj_endpoint_secret_does_not_leak_it(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    secret = "eyJ!this-endpoint-secret/is+not=base64url"
    secret_file = tmp_path / "identity-header"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    hook = ["/bin/cat", str(secret_file)]
    config = write_config(
        tmp_path / "c.toml",
        body=f'[token.a]\nscope = "{STORAGE}"\n[token.a.hook]\nexec = {json.dumps(hook)}\n'
        f'[endpoint]\nlisten = "127.0.0.1:0"\nsecret_file = "{secret_file}"\n'
        f'allow = ["{STORAGE.removesuffix("/.default")}"]\n',
        listen="",
    )
    env = {**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out")}
    d = daemon_factory("run", "--config", str(config), env=env)
    ran = d.wait_event("hook command ran", token="a", timeout=30)
    assert ran["output"] == REDACTED
    assert d.stop() == 0
    assert secret not in d.log_text()


def test_the_endpoint_secret_stays_redacted_after_thousands_of_tokens() -> None:
    """Found by review: the secret (registered once) was pushed out by the newest 8,192 token
    signatures, which an endpoint caller could drive within minutes."""
    secret = "SuperSecretValue123xyz-endpoint"
    remember_secret(secret, pin=True)
    for i in range(9000):
        remember_secret(f"signature-{i:08d}-of-an-issued-token")
    assert secret not in redact_text(f"x {secret} y")
    assert "signature-00000000-of-an-issued-token" in redact_text(
        "signature-00000000-of-an-issued-token"
    )  # the oldest unpinned one did go: the bound holds
