"""Environments of child processes and the files a child needs to start.

``base_env`` strips what a developer's shell could carry into a child (AZURE_*, ENTRA_TOKEND_*,
proxies, CA bundles, systemd variables); ``emulator_env`` and ``offline_env`` add the settings of
the two usual set-ups; ``write_projected_token`` writes an unsigned projected token.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parents[2]
DAEMON_SRC = REPO / "daemon"

# Variables a developer's shell or CI may carry that would change what a child does.
_STRIPPED_PREFIXES = (
    "AZURE_",
    "ENTRA_TOKEND_",
    "SSL_CERT",
    "REQUESTS_CA_BUNDLE",
    "NOTIFY_SOCKET",
    "WATCHDOG_",
)
_STRIPPED_PROXIES = {"https_proxy", "http_proxy", "all_proxy", "no_proxy"}


def base_env(
    extra: Mapping[str, str] | None = None,
    *,
    daemon_src: Path = DAEMON_SRC,
    pycache: Path | None = None,
) -> dict[str, str]:
    """A clean environment for a child process, then ``extra`` on top.

    Drops the variables in ``_STRIPPED_PREFIXES`` and every proxy variable (either case); puts
    ``daemon_src`` on PYTHONPATH. ``pycache`` makes the child compile bytecode once into that
    directory (PYTHONPYCACHEPREFIX, even where the shell sets PYTHONDONTWRITEBYTECODE) instead
    of the source tree: what the benchmarks want, as an installed package runs from compiled
    bytecode too.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_STRIPPED_PREFIXES) and k.lower() not in _STRIPPED_PROXIES
    }
    env["PYTHONPATH"] = str(daemon_src)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env.update(extra or {})
    return env


class _HasEnv(Protocol):
    def env(self) -> dict[str, str]: ...


def emulator_env(emu: _HasEnv, out: Path, **extra: str) -> dict[str, str]:
    """The daemon's environment against ``emu``: its AZURE_* settings, ``out``, no HTTP port."""
    return {**emu.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(out), "ENTRA_TOKEND_LISTEN": "", **extra}


def write_projected_token(
    path: Path,
    *,
    exp: float | None = None,
    iss: str = "https://issuer.example/cluster",
    sub: str = "system:serviceaccount:default:app",
    aud: str = "api://AzureADTokenExchange",
) -> Path:
    """Write an (unsigned) projected service-account token with these claims to ``path``;
    ``exp`` defaults to an hour from now. Enough for the daemon's checks, which read claims
    and never verify the signature (Entra does)."""

    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"iss": iss, "sub": sub, "aud": [aud], "exp": exp or time.time() + 3600}
    path.write_text(f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln")
    return path


def offline_env(tmp_path: Path) -> dict[str, str]:
    """Identity settings that validate but reach nothing: enough for ``check-config``."""
    return {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_FEDERATED_TOKEN_FILE": str(write_projected_token(tmp_path / "sa")),
        "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out"),
        # check-config binds the listen address; the default port may be taken on this host.
        "ENTRA_TOKEND_LISTEN": "127.0.0.1:0",
    }
