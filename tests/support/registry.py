"""Real container-registry tools against the emulator's ACR token service, for any test.

* ``registry_tools_fixture`` skips the test (fails it in CI: ``support.tools``) when
  ``docker-registry`` or ``skopeo`` is missing (``tests/emulator/registry_tools.sh`` installs
  both);
* ``registry_factory_fixture`` starts real CNCF distribution registries, each with TLS from the
  emulator's CA and token authentication whose realm is the emulator, and stops them at the end;
* ``make_oci_layout`` writes a tiny hand-made OCI image (one gzip layer) skopeo can push;
* ``docker_config`` builds the ``{"auths": {...}}`` file skopeo, crane, oras, helm and docker
  read, with the ACR null user and a refresh token;
* ``acr_refresh_token`` gets an Entra token for ACR from the emulator and exchanges it;
* ``Skopeo`` runs the real skopeo with the emulator's CA and no user configuration.

Fixtures are imported by name (``from support.registry import registry_factory_fixture``),
like ``support.emulator``'s, so they work from any test directory.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from entra_tokend.emulator import Emulator, RegistrySetup
from support.tools import missing_tool

ACR_SCOPE = "https://containerregistry.azure.net/.default"
ACR_NULL_USER = "00000000-0000-0000-0000-000000000000"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TOOLS = ("docker-registry", "skopeo")


def missing_tools() -> list[str]:
    """The registry tools not on PATH."""
    return [t for t in TOOLS if shutil.which(t) is None]


@pytest.fixture(name="registry_tools")
def registry_tools_fixture() -> None:
    """Skip the test when the real registry tools are not installed."""
    missing = missing_tools()
    if missing:
        missing_tool(" and ".join(missing), "tests/emulator/registry_tools.sh")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- OCI image
def _blob(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_oci_layout(directory: Path, tag: str = "v1", content: bytes = b"hello\n") -> str:
    """Write an OCI image layout with one gzip layer holding ``hello.txt``; return the
    skopeo reference ``oci:DIR:TAG``."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(content))
    layer_tar = raw.getvalue()
    layer = _blob(blobs, gzip.compress(layer_tar, mtime=0))
    config = _blob(
        blobs,
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {
                    "type": "layers",
                    "diff_ids": [f"sha256:{hashlib.sha256(layer_tar).hexdigest()}"],
                },
            }
        ).encode(),
    )
    manifest = _blob(
        blobs,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
            }
        ).encode(),
    )
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                **manifest,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return f"oci:{directory}:{tag}"


# --------------------------------------------------------------------------- credentials
def docker_config(refresh_tokens: Mapping[str, str]) -> dict[str, Any]:
    """``{"auths": {registry: {"auth": base64(null user:refresh token)}}}``."""
    return {
        "auths": {
            host: {"auth": base64.b64encode(f"{ACR_NULL_USER}:{token}".encode()).decode()}
            for host, token in refresh_tokens.items()
        }
    }


def write_docker_config(path: Path, refresh_tokens: Mapping[str, str]) -> Path:
    """Write ``docker_config(refresh_tokens)`` to ``path`` (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(docker_config(refresh_tokens)))
    path.chmod(0o600)
    return path


def entra_token(client: httpx.Client, emu: Emulator, scope: str = ACR_SCOPE) -> str:
    """An Entra access token for ``scope`` from ``emu``, with the projected token on disk."""
    resp = client.post(
        emu.token_endpoint,
        data={
            "grant_type": "client_credentials",
            "client_id": emu.client_id,
            "scope": scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": emu.token_file.read_text(),
        },
    )
    resp.raise_for_status()
    token: str = resp.json()["access_token"]
    return token


def acr_refresh_token(client: httpx.Client, emu: Emulator, registry: str) -> str:
    """An ACR refresh token for ``registry``: Entra token, then ``POST /oauth2/exchange``."""
    resp = client.post(
        emu.acr_exchange_url,
        data={
            "grant_type": "access_token",
            "service": registry,
            "tenant": emu.tenant_id,
            "access_token": entra_token(client, emu),
        },
    )
    resp.raise_for_status()
    token: str = resp.json()["refresh_token"]
    return token


# --------------------------------------------------------------------------- processes
@dataclass
class RunningRegistry:
    """A real ``docker-registry`` process and what it was configured with."""

    setup: RegistrySetup
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry's name, service and docker-config key."""
        return self.setup.service

    def stop(self) -> None:
        """Terminate and reap the process."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_for_challenge(reg: RunningRegistry, timeout: float = 15.0) -> None:
    """Poll ``GET /v2/`` until the registry answers its 401 challenge (or fail the test)."""
    deadline = time.monotonic() + timeout
    verify = ssl.create_default_context(cafile=str(reg.setup.ca_file))
    with httpx.Client(verify=verify, trust_env=False, timeout=2) as c:
        while True:
            if reg.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {reg.log.read_text()[-2000:]}")
            try:
                if c.get(f"https://{reg.host}/v2/").status_code == 401:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() >= deadline:
                raise AssertionError(f"docker-registry not ready: {reg.log.read_text()[-2000:]}")
            time.sleep(0.02)


@dataclass
class RegistryFactory:
    """Starts real registries trusting ``emu`` as their token service (under ``workdir``)."""

    workdir: Path
    started: list[RunningRegistry] = field(default_factory=list)

    def start(self, emu: Emulator) -> RunningRegistry:
        """A new registry on a free loopback port, ready (its ``/v2/`` challenges)."""
        for _attempt in range(3):
            reg = self._spawn(emu, free_port())
            try:
                _wait_for_challenge(reg)
            except RuntimeError:
                continue  # the port was taken between free_port() and bind: try another
            return reg
        raise AssertionError("docker-registry failed to start three times")

    def _spawn(self, emu: Emulator, port: int) -> RunningRegistry:
        name = f"127.0.0.1:{port}"
        setup = emu.add_registry(name)
        home = self.workdir / f"registry-{port}"
        (home / "storage").mkdir(parents=True, exist_ok=True)
        config = home / "config.yml"  # JSON is YAML
        config.write_text(json.dumps(setup.distribution_config(home / "storage")))
        log = home / "registry.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["docker-registry", "serve", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        reg = RunningRegistry(setup, proc, log)
        self.started.append(reg)
        return reg

    def stop_all(self) -> None:
        """Stop every registry started."""
        for reg in self.started:
            reg.stop()


@pytest.fixture(name="registry_factory")
def registry_factory_fixture(tmp_path: Path, registry_tools: None) -> Iterator[RegistryFactory]:
    """Start real registries with ``registry_factory.start(emu)``; all stop at the end."""
    factory = RegistryFactory(tmp_path / "registries")
    yield factory
    factory.stop_all()


@dataclass
class Skopeo:
    """The real skopeo, trusting only the emulator's CA, with no user configuration."""

    ca_file: Path
    home: Path

    def __post_init__(self) -> None:
        self.cert_dir = self.home / "certs"
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.ca_file, self.cert_dir / "ca.crt")

    def env(self) -> dict[str, str]:
        """PATH plus a private HOME and XDG_RUNTIME_DIR, so no user auth file interferes."""
        runtime = self.home / "run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(runtime),
        }

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``skopeo ARGS`` to completion (not checked: tests assert on the result)."""
        return subprocess.run(
            ["skopeo", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def copy(self, src: str, dest: str, authfile: Path) -> subprocess.CompletedProcess[str]:
        """``skopeo copy`` with ``authfile`` and the CA for both ends."""
        certs = str(self.cert_dir)
        return self.run(
            "copy",
            "--src-cert-dir",
            certs,
            "--dest-cert-dir",
            certs,
            "--src-authfile",
            str(authfile),
            "--dest-authfile",
            str(authfile),
            src,
            dest,
        )

    def inspect(self, ref: str, authfile: Path) -> subprocess.CompletedProcess[str]:
        """``skopeo inspect`` with ``authfile`` and the CA."""
        return self.run(
            "inspect", "--cert-dir", str(self.cert_dir), "--authfile", str(authfile), ref
        )


SkopeoFactory = Callable[[Emulator], Skopeo]


@pytest.fixture(name="skopeo")
def skopeo_fixture(tmp_path: Path, registry_tools: None) -> SkopeoFactory:
    """``skopeo(emu)``: a Skopeo trusting ``emu``'s CA (the emulator must serve TLS)."""

    def make(emu: Emulator) -> Skopeo:
        assert emu.ca_file is not None, "the emulator must serve TLS"
        return Skopeo(emu.ca_file, tmp_path / "skopeo-home")

    return make


def refresh_tokens(path: Path) -> dict[str, str]:
    """registry → refresh token of the daemon's docker config ({} while absent)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    found = {}
    for host, entry in doc["auths"].items():
        user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        assert user == ACR_NULL_USER
        found[host] = password
    return found
