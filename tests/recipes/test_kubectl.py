"""README recipe "kubectl / client-go": ``tokenFile`` in a kubeconfig user pointing at the
daemon's ``raw`` file; the real kubectl sends it as a bearer token."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from recipes.recipe_helpers import (
    Emulator,
    Upstream,
    acquire_once,
    clean_env,
    require,
    server_tls,
)

AKS_SCOPE = "6dae42f8-4368-4678-94ff-3960e28e3630/.default"


def test_kubectl_sends_the_token_file(emu: Emulator, tmp_path: Path) -> None:
    require("kubectl")
    # client-go sends a bearer token over https only: an API server with the emulator's CA.
    api = Upstream(tls=server_tls(emu, tmp_path / "tls"))
    try:
        _check(emu, api, tmp_path)
    finally:
        api.close()


def _check(emu: Emulator, upstream: Upstream, tmp_path: Path) -> None:
    config = tmp_path / "entra-tokend.toml"
    config.write_text(f'[token.aks]\nscope = "{AKS_SCOPE}"\n')
    out = tmp_path / "tokens"
    acquire_once(emu, config, out)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(  # JSON is YAML
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "aks",
                        "cluster": {
                            "server": upstream.url,
                            "certificate-authority": str(emu.ca_file),
                        },
                    }
                ],
                "users": [{"name": "entra", "user": {"tokenFile": str(out / "aks")}}],
                "contexts": [{"name": "aks", "context": {"cluster": "aks", "user": "entra"}}],
                "current-context": "aks",
            }
        )
    )

    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "get", "--raw", "/healthz"],
        env=clean_env(HOME=str(tmp_path)), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    token = (out / "aks").read_text()
    assert upstream.seen  # kubectl may ask more than once: every request carries the token
    assert all(headers == [f"Bearer {token}"] for headers in upstream.seen)
