"""``entra-tokend dev``: the emulator and the daemon together, for a first look.

Everything runs in one process: the emulator (an Entra tenant and a kubelet rotating a
projected token, over HTTPS with its own CA) in threads, the daemon on the event loop.
``--identity-binding`` adds the emulator's AKS identity-binding token proxy (its own CA, an SNI
name that is not its address); the daemon then reaches Entra only through it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from entra_tokend import preflight
from entra_tokend.config import ConfigError, Overrides, parse_listen
from entra_tokend.daemon import Daemon
from entra_tokend.logging import configure_logging

DEV_ENDPOINT_SECRET_ENV = "ENTRA_TOKEND_DEV_IDENTITY_HEADER"  # noqa: S105 - a variable name
DEV_ENDPOINT_ALLOW = ("https://storage.azure.com", "https://vault.azure.net")

# The package is not on PyPI: the extra installs from a clone (README, "The emulator").
EMULATOR_INSTALL_HINT = "from a clone of the repository: pip install '.[emulator]'"

DEV_TOKENS = (
    "storage=https://storage.azure.com/.default",
    "graph=https://graph.microsoft.com/.default",
)


def _free_listen(listen: str) -> str:
    """``listen`` if its port is free, else the same host on a free port."""
    host, port = parse_listen(listen)
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return listen
        except OSError:
            s.bind((host, 0))
            return f"{host}:{s.getsockname()[1]}"


def _write_dev_config(emu: Any, state_dir: Path, endpoint_listen: str) -> tuple[Path, str]:
    """The dev TOML (a docker config for a registry the emulator serves, and the endpoint);
    returns its path and the registry's name."""
    dev_config = state_dir / "entra-tokend.toml"
    allow = ", ".join(f'"{r}"' for r in DEV_ENDPOINT_ALLOW)
    # A registry served by the emulator itself: the docker config for skopeo/crane/helm.
    registry = emu.authority_host.removeprefix("https://")
    emu.add_registry(registry)
    dev_config.write_text(
        f'[token.registry]\nregistry = "{registry}"\nformat = "docker-config"\n'
        'path = "docker/config.json"\n'
        f'[endpoint]\nlisten = "{endpoint_listen}"\n'
        f'secret_env = "{DEV_ENDPOINT_SECRET_ENV}"\nallow = [{allow}]\n'
    )
    return dev_config, registry


def _banner(emu: Any, args: argparse.Namespace, paths: dict[str, str]) -> str:
    """What ``dev`` prints on stderr: where everything is and how to use it."""
    output_dir, listen, endpoint_listen = paths["output"], paths["listen"], paths["endpoint"]
    binding = ""
    if emu.proxy is not None:
        binding = (
            f"  identity binding: token proxy {emu.proxy.url} "
            f"(SNI {emu.proxy.sni_name}, CA {emu.proxy.ca_file});\n"
            "            azure-identity needs "
            "WorkloadIdentityCredential(enable_azure_proxy=True)\n"
        )
    return f"""
entra-tokend dev — a local Entra tenant and kubelet at {emu.authority_host}
{binding}  tokens:   {output_dir}/storage, {output_dir}/graph
            (each lives {args.access_token_lifetime:.0f} s and is refreshed well before it expires)
  registry: {output_dir}/docker/config.json — a docker config for {paths["registry"]}
            (skopeo --authfile, DOCKER_CONFIG={output_dir}/docker, crane, oras, helm)
  metrics:  http://{listen}/metrics   readiness: http://{listen}/readyz
  your app: set -a; . {paths["env_file"]}; set +a   (azure-identity and @azure/identity work
            against the emulator too: the file sets SSL_CERT_FILE and NODE_EXTRA_CA_CERTS)
  SDK apps (managed-identity endpoint; allowed: {", ".join(DEV_ENDPOINT_ALLOW)}):
            export IDENTITY_ENDPOINT=http://{endpoint_listen}/msi/token
            export IDENTITY_HEADER={os.environ[DEV_ENDPOINT_SECRET_ENV]}
  Ctrl-C stops.
"""


def run_dev(args: argparse.Namespace) -> int:
    """Start the emulator, point the daemon at it, run until Ctrl-C."""
    try:
        from entra_tokend.emulator import Emulator  # noqa: PLC0415 - the optional extra
    except ImportError as exc:
        missing = (exc.name or "a module").split(".")[0]  # the package to install
        print(
            f"entra-tokend: `dev` needs the emulator extra ({missing} is missing); install it "
            f"{EMULATOR_INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    state_dir = Path(args.state_dir).absolute()
    output_dir = Path(args.output_dir).absolute()
    listen = _free_listen(args.listen)
    emu = Emulator(
        state_dir,
        tls=True,
        token_ttl=600.0,
        rotate_every=120.0,
        access_token_lifetime=args.access_token_lifetime,
        identity_binding=args.identity_binding,
    )
    emu.start()
    try:
        env_file = emu.write_env_file(state_dir / "env")
        # The daemon (and anything started from this shell) trusts the emulator's CA; token
        # proxy settings from the caller's shell would point the daemon elsewhere.
        for var in ("TOKEN_PROXY", "SNI_NAME", "CA_FILE", "CA_DATA"):
            os.environ.pop(f"AZURE_KUBERNETES_{var}", None)
        os.environ.update(emu.env())
        # The managed-identity endpoint, with a secret generated for this run only.
        endpoint_listen = _free_listen("127.0.0.1:8081")
        os.environ[DEV_ENDPOINT_SECRET_ENV] = secrets.token_urlsafe(32)
        dev_config, registry = _write_dev_config(emu, state_dir, endpoint_listen)
        overrides = Overrides(
            config=str(dev_config),
            tokens=list(DEV_TOKENS),
            output_dir=str(output_dir),
            listen=listen,
            log_format=args.log_format,
        )
        try:
            config = preflight.load(overrides, os.environ)
        except ConfigError as exc:
            for line in exc.problems:
                print(f"entra-tokend: config: {line}", file=sys.stderr)
            return 2
        configure_logging(config.log_format, config.log_level)
        paths = {
            "output": str(output_dir),
            "listen": listen,
            "endpoint": endpoint_listen,
            "registry": registry,
            "env_file": str(env_file),
        }
        print(_banner(emu, args, paths), file=sys.stderr, flush=True)

        async def main() -> int:
            daemon = Daemon(config, reload=lambda: preflight.load(overrides, os.environ))
            return await daemon.run()

        return asyncio.run(main())
    finally:
        emu.stop()
