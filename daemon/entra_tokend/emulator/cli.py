"""``entra-tokend emulator``: run the local Entra + cluster emulator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import types
import uuid
from collections.abc import Callable
from pathlib import Path

from entra_tokend.emulator.proxy import DEFAULT_SNI_NAME
from entra_tokend.emulator.server import Emulator, Fault, RegistrySetup

DEFAULT_STATE_DIR = ".entra-tokend-emulator"


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} is out of range")
    return host, number


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be positive")
    return number


def _fail_next(value: str) -> Fault:
    parts = value.split(":", 2)
    try:
        count, status = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"expected N:STATUS[:RETRY_AFTER] (e.g. 2:503 or 1:429:5), got {value!r}"
        ) from None
    if count < 1 or not 400 <= status <= 599:
        raise argparse.ArgumentTypeError("N must be >= 1 and STATUS a 4xx or 5xx code")
    retry_after = parts[2] if len(parts) == 3 else None
    return Fault("status", count=count, status=status, retry_after=retry_after)


def _delay(value: str) -> Fault:
    seconds, _, count = value.partition(":")
    try:
        return Fault("delay", delay=float(seconds), count=int(count) if count else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS[:N], got {value!r}") from None


def _count_fault(kind: str) -> Callable[[str], Fault]:
    def parse(value: str) -> Fault:
        try:
            return Fault(kind, count=int(value))  # type: ignore[arg-type]  # kinds below are valid
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a count >= 1, got {value!r}") from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The emulator's argument parser (also used by ``entra-tokend emulator --help``)."""
    p = argparse.ArgumentParser(
        prog="entra-tokend emulator",
        description=(
            "Run a local Entra ID tenant and Kubernetes service-account issuer for workload "
            "identity. Writes a projected token the way kubelet does and an env file that "
            "entra-tokend and azure-identity's WorkloadIdentityCredential can use."
        ),
    )
    p.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="address to serve on (default 127.0.0.1:0, a free port)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(DEFAULT_STATE_DIR),
        metavar="DIR",
        help=f"keys, CA, projected token and env file (default ./{DEFAULT_STATE_DIR})",
    )
    p.add_argument(
        "--env-file",
        type=Path,
        metavar="PATH",
        help="where to write the env file (default STATE_DIR/env)",
    )
    _add_token_args(p)
    p.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve HTTPS with a CA generated into the state dir (default on; "
        "azure-identity accepts only https authorities)",
    )
    p.add_argument("--tenant-id", help="tenant GUID (default: random, kept in the state dir)")
    p.add_argument("--client-id", help="client GUID (default: random, kept in the state dir)")
    p.add_argument("--namespace", default="default", help="service account namespace")
    p.add_argument("--service-account", default="workload", help="service account name")
    _add_fault_args(p)
    _add_feature_args(p)
    p.add_argument("--verbose", action="store_true", help="log each request (never bodies)")
    return p


def _add_token_args(p: argparse.ArgumentParser) -> None:
    """Flags for the projected token and the issued access tokens."""
    p.add_argument(
        "--token-ttl",
        type=_positive,
        default=3600.0,
        metavar="SECONDS",
        help="lifetime of each projected service-account token (default 3600)",
    )
    p.add_argument(
        "--rotate-every",
        type=float,
        metavar="SECONDS",
        help="rotate the projected token this often (default 80%% of --token-ttl, "
        "as kubelet does; 0 disables)",
    )
    p.add_argument(
        "--access-token-lifetime",
        type=_positive,
        default=3600.0,
        metavar="SECONDS",
        help="expires_in of issued access tokens (default 3600)",
    )


def _add_fault_args(p: argparse.ArgumentParser) -> None:
    """Flags queueing faults at start (the admin endpoint queues more later)."""
    p.add_argument(
        "--fail-next",
        type=_fail_next,
        action="append",
        default=[],
        metavar="N:STATUS[:RETRY_AFTER]",
        help="answer the next N token requests with STATUS (repeatable, FIFO)",
    )
    p.add_argument(
        "--delay",
        type=_delay,
        action="append",
        default=[],
        metavar="SECONDS[:N]",
        help="delay the next N token requests (default N=1)",
    )
    p.add_argument(
        "--reset-next",
        type=_count_fault("reset"),
        action="append",
        default=[],
        metavar="N",
        help="reset the connection of the next N token requests",
    )
    p.add_argument(
        "--malformed-next",
        type=_count_fault("non_json"),
        action="append",
        default=[],
        metavar="N",
        help="answer the next N token requests with bad JSON",
    )


def _add_feature_args(p: argparse.ArgumentParser) -> None:
    """Flags for the identity-binding proxy and the registry token service."""
    p.add_argument(
        "--identity-binding",
        action="store_true",
        help="AKS identity-binding mode: start the token proxy (own CA, SNI name), give the "
        "projected token the api://AKSIdentityBinding audience, and add "
        "AZURE_KUBERNETES_TOKEN_PROXY/_SNI_NAME/_CA_FILE to the env file",
    )
    p.add_argument(
        "--sni-name",
        default=DEFAULT_SNI_NAME,
        metavar="NAME",
        help=f"TLS server name of the identity-binding proxy (default {DEFAULT_SNI_NAME})",
    )
    p.add_argument(
        "--registry",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="serve Azure Container Registry's token service for this registry name "
        "(repeatable); a ready docker-registry config (TLS, token auth at this emulator) "
        "is written to the state dir, its path in the banner",
    )
    p.add_argument(
        "--acr-refresh-token-lifetime",
        type=_positive,
        default=10800.0,
        metavar="SECONDS",
        help="lifetime of ACR refresh tokens from /oauth2/exchange (default 10800, ~3 h)",
    )


def _identity(state_dir: Path, tenant: str | None, client: str | None) -> tuple[str, str]:
    """Tenant and client ids: flags first, then the ones a previous run kept, else new ones."""
    path = state_dir / "identity.json"
    saved: dict[str, str] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict):
                saved = {k: str(v) for k, v in loaded.items()}
        except ValueError:
            saved = {}
    tenant = tenant or saved.get("tenant_id") or str(uuid.uuid4())
    client = client or saved.get("client_id") or str(uuid.uuid4())
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"tenant_id": tenant, "client_id": client}) + "\n")
    return tenant, client


def registry_config_path(setup: RegistrySetup) -> Path:
    """Where ``write_registry_config`` puts ``setup``'s config: beside its TLS files."""
    return setup.tls_cert.parent / "config.yml"


def write_registry_config(setup: RegistrySetup) -> Path:
    """Write a ready ``docker-registry serve`` config for ``setup`` (listening on its
    ``service`` address, TLS from the emulator's CA, token auth at the emulator, storage in
    ``storage/`` beside it) and return its path. JSON is YAML, so it is written as JSON."""
    path = registry_config_path(setup)
    storage = path.parent / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(setup.distribution_config(storage), indent=2) + "\n")
    return path


def _banner(
    emu: Emulator, env_file: Path, rotate_every: float | None, setups: list[RegistrySetup]
) -> list[str]:
    lines = [
        f"entra-tokend emulator listening on {emu.authority_host}",
        f"  tenant id:      {emu.tenant_id}",
        f"  client id:      {emu.client_id}",
        f"  token endpoint: {emu.token_endpoint}",
        f"  projected token: {emu.token_file}"
        + (f" (rotated every {rotate_every:g}s)" if rotate_every else ""),
    ]
    if emu.ca_file is not None:
        lines.append(f"  CA certificate: {emu.ca_file}")
    if emu.proxy is not None:
        lines += [
            f"  identity-binding proxy: {emu.proxy.url} (SNI {emu.proxy.sni_name})",
            f"  proxy CA bundle: {emu.proxy.ca_file}",
        ]
    for setup in setups:
        lines += [
            f"  registry {setup.service}: realm {setup.realm}, issuer {setup.issuer!r}",
            f"    rootcertbundle {setup.rootcertbundle}",
            f"    TLS {setup.tls_cert} / {setup.tls_key}",
            f"    run it:       docker-registry serve {registry_config_path(setup)}",
        ]
    if setups:
        lines.append(f"  ACR exchange:   POST {emu.acr_exchange_url}")
    lines += [
        f"  env file:       {env_file}",
        f"  use it with:    set -a; . {env_file}; set +a",
        f"  admin (loopback only): POST {emu.authority_host}/_admin/"
        "{faults,clear-faults,expire-assertion,rotate,lifetime,acr-lifetime,rotate-proxy-ca}",
    ]
    return lines


def main(argv: list[str]) -> int:
    """Run the emulator until SIGTERM or SIGINT; return the exit status."""
    args = build_parser().parse_args(argv)
    state_dir: Path = args.state_dir.absolute()
    rotate_every: float | None = args.rotate_every
    if rotate_every is None:
        rotate_every = args.token_ttl * 0.8
    elif rotate_every <= 0:
        rotate_every = None
    host, port = args.listen
    try:
        tenant, client = _identity(state_dir, args.tenant_id, args.client_id)
        emu = Emulator(
            state_dir,
            host=host,
            port=port,
            tls=args.tls,
            token_ttl=args.token_ttl,
            rotate_every=rotate_every,
            access_token_lifetime=args.access_token_lifetime,
            tenant_id=tenant,
            client_id=client,
            namespace=args.namespace,
            service_account=args.service_account,
            verbose=args.verbose,
            identity_binding=args.identity_binding,
            sni_name=args.sni_name,
            acr_refresh_token_lifetime=args.acr_refresh_token_lifetime,
        )
        emu.start()
    except OSError as exc:
        print(f"entra-tokend emulator: cannot start: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        faults = [*args.fail_next, *args.delay, *args.reset_next, *args.malformed_next]
        if faults:
            emu.inject(*faults)
        setups = [emu.add_registry(name) for name in args.registry]
        for setup in setups:
            write_registry_config(setup)
        env_file = emu.write_env_file(args.env_file or state_dir / "env")
        lines = _banner(emu, env_file, rotate_every, setups)
        if faults:
            lines.append(f"  queued faults:  {emu.pending_faults()} request(s) affected")
        print("\n".join(lines), flush=True)
        stop.wait()
    finally:
        emu.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("entra-tokend emulator stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
