"""README recipe "curl": ``format = "header"`` read by the real curl with ``-H @file``."""

from __future__ import annotations

import subprocess
from pathlib import Path

from recipes.recipe_helpers import (
    STORAGE,
    Emulator,
    Upstream,
    acquire_once,
    clean_env,
    require,
)


def test_curl_sends_the_header_file_as_one_authorization_header(
    emu: Emulator, upstream: Upstream, tmp_path: Path
) -> None:
    require("curl")
    config = tmp_path / "entra-tokend.toml"
    config.write_text(f'[token.api]\nscope = "{STORAGE}"\nformat = "header"\npath = "api.h"\n')
    out = tmp_path / "tokens"
    acquire_once(emu, config, out)

    result = subprocess.run(
        ["curl", "-sS", "--fail", "-H", f"@{out / 'api.h'}", f"{upstream.url}/data"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert len(upstream.seen) == 1
    [header] = upstream.seen[0]  # exactly one Authorization header, no stray line
    scheme, _, token = header.partition(" ")
    assert scheme == "Bearer"
    assert token in emu.issued_tokens
