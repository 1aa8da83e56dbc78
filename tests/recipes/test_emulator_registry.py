"""README "The emulator": a real image served end to end — ``entra-tokend emulator
--registry`` writes a ready docker-registry config, the real ``docker-registry`` serves it,
the daemon writes the docker config, and real skopeo pushes and inspects with it. The shell
lines are the README's, with this test's paths and ports.
"""

from __future__ import annotations

import json
import re
import shlex
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from recipes.recipe_helpers import (
    DaemonProcess,
    base_env,
    free_port,
    make_oci_layout,
    wait_until,
)

SERVE = re.compile(r"run it: +docker-registry serve (\S+)")

README_LINES = """\
set -a; . {env_file}; set +a
cat > {work}/acr.toml <<'EOF'
[token.acr]
format = "docker-config"
registry = "{registry}"
path = "docker/config.json"
EOF
entra-tokend run --once --config {work}/acr.toml --output-dir {work}/tokens
skopeo copy --dest-authfile {work}/tokens/docker/config.json oci:{work}/image:v1 \\
  docker://{registry}/hello:v1
skopeo inspect --authfile {work}/tokens/docker/config.json docker://{registry}/hello:v1
"""


def _challenged(url: str, ca_file: str) -> bool:
    """True once ``url`` answers 401 (the registry's token challenge) over TLS."""
    try:
        urllib.request.urlopen(url, timeout=5, context=ssl.create_default_context(cafile=ca_file))
    except urllib.error.HTTPError as exc:
        return exc.code == 401
    except OSError:
        return False
    return False


def _env_file(path: Path) -> dict[str, str]:
    """The emulator's env file (``KEY='value'`` lines) as a dict."""
    pairs = (shlex.split(line)[0].partition("=") for line in path.read_text().splitlines())
    return {key: value for key, _, value in pairs}


def test_emulator_registry_config_serves_a_real_image(registry_tools: None, tmp_path: Path) -> None:
    registry = f"127.0.0.1:{free_port()}"
    env_file = tmp_path / "emulator.env"
    emulator = DaemonProcess(
        ["emulator", "--state-dir", str(tmp_path / "state"), "--env-file", str(env_file),
         "--registry", registry],
        {}, tmp_path / "emulator.log",
    )  # fmt: skip
    served: subprocess.Popen[bytes] | None = None
    try:
        banner = wait_until(
            lambda: "env file:" in (text := emulator.log_text()) and text, timeout=60
        )
        match = SERVE.search(banner)
        assert match, banner
        config = json.loads(Path(match.group(1)).read_text())  # JSON is YAML
        assert config["http"]["addr"] == config["auth"]["token"]["service"] == registry
        with open(tmp_path / "registry.log", "wb") as log:
            served = subprocess.Popen(
                ["docker-registry", "serve", match.group(1)], stdout=log, stderr=log
            )
        ca_file = _env_file(env_file)["SSL_CERT_FILE"]
        wait_until(
            lambda: _challenged(f"https://{registry}/v2/", ca_file),
            timeout=30,
            what="docker-registry to challenge",
        )
        make_oci_layout(tmp_path / "image")
        script = README_LINES.format(env_file=env_file, work=tmp_path, registry=registry)
        entra = f'entra-tokend() {{ {shlex.quote(sys.executable)} -m entra_tokend "$@"; }}\n'
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", entra + script],
            env=base_env({"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        inspected = result.stdout[result.stdout.index("{") :]  # after skopeo copy's progress
        assert json.loads(inspected)["Name"] == f"{registry}/hello"
    finally:
        if served is not None:
            served.terminate()
            served.wait(timeout=30)
        assert emulator.stop() == 0
