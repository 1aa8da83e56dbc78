"""``check-config`` prints where a template was read from, never the file's text: a
``template_file`` may name anything the daemon can read (a review pointed one at
``/proc/self/environ`` and at the projected token), and the effective configuration is meant to
hold no secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from entra_tokend.emulator import Emulator
from support import STORAGE, run_cli, write_config

MARK = "SECRET-LOOKING-CONTENT-1234"


@pytest.mark.parametrize("table", ["token", "file"])
def test_check_config_prints_the_template_file_path_not_its_text(
    emulator: Emulator, tmp_path: Path, table: str
) -> None:
    template = tmp_path / "tmpl.txt"
    if table == "token":
        template.write_text(f"{MARK} $access_token\n")
        body = (
            f'[token.a]\nscope = "{STORAGE}"\nformat = "template"\ntemplate_file = "{template}"\n'
        )
    else:
        template.write_text(f"{MARK} ${{a.access_token}}\n")
        body = f'[token.a]\nscope = "{STORAGE}"\n[file.f]\ntemplate_file = "{template}"\n'
    config = write_config(tmp_path / "c.toml", body=body, listen="")
    env = {**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out")}
    done = run_cli("check-config", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert MARK not in done.stdout + done.stderr
    assert f'template_file = "{template}"' in done.stdout
