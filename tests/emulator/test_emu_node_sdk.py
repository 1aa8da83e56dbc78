"""The emulator's env file (what ``dev`` prints to source) works for node's @azure/identity
too: ``NODE_EXTRA_CA_CERTS`` trusts the emulator's CA (node ignores ``SSL_CERT_FILE``), and the
credential needs ``disableInstanceDiscovery`` for an authority host that is no public cloud."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from entra_tokend.emulator import Emulator
from testlib import REPO, base_env

PROBE = REPO / "tests" / "sdk" / "wi_probe.mjs"
MODULES = REPO / "tests" / "sdk" / ".npm" / "node_modules" / "@azure" / "identity"


def test_node_workload_identity_credential_from_the_env_file(tmp_path: Path) -> None:
    if shutil.which("node") is None or not MODULES.exists():
        pytest.skip("node or @azure/identity is not installed (tests/tools.sh installs both)")
    with Emulator(tmp_path / "emu", tls=True) as emu:
        env_file = emu.write_env_file(tmp_path / "env")
        assert "NODE_EXTRA_CA_CERTS=" in env_file.read_text()
        done = subprocess.run(
            ["/bin/sh", "-c", 'set -a; . "$1"; set +a; exec node "$2" "$3"', "sh",
             str(env_file), str(PROBE), "https://storage.azure.com/.default"],
            env=base_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["token"] in emu.issued_tokens
