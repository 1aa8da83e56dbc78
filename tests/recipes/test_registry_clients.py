"""README recipe "skopeo, podman, buildah": the daemon's ``docker-config`` file given to each
real client with ``--authfile``, against a real CNCF registry whose token realm is the
emulator's ACR token service. (podman cannot run containers on these machines, but pulling
needs no runtime.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from recipes.recipe_helpers import (
    Emulator,
    RegistryFactory,
    RunningRegistry,
    Skopeo,
    SkopeoFactory,
    acquire_once,
    make_oci_layout,
    require,
)


@dataclass
class Pushed:
    """A registry holding ``ref`` (pushed with the daemon's ``authfile``) and a skopeo."""

    registry: RunningRegistry
    authfile: Path
    ref: str
    skopeo: Skopeo


@pytest.fixture
def pushed(
    emu: Emulator, registry_factory: RegistryFactory, skopeo: SkopeoFactory, tmp_path: Path
) -> Pushed:
    """The README's docker-config token for a fresh registry, and an image pushed with it."""
    registry = registry_factory.start(emu)
    config = tmp_path / "entra-tokend.toml"
    config.write_text(
        f'[token.acr]\nformat = "docker-config"\nregistry = ["{registry.host}"]\n'
        'path = "docker/config.json"\nfile_mode = "0600"\n'
    )
    out = tmp_path / "tokens"
    acquire_once(emu, config, out)
    authfile = out / "docker" / "config.json"
    tool = skopeo(emu)
    ref = f"{registry.host}/team/hello:v1"
    copied = tool.copy(make_oci_layout(tmp_path / "image"), f"docker://{ref}", authfile)
    assert copied.returncode == 0, copied.stderr
    return Pushed(registry, authfile, ref, tool)


def test_skopeo_inspects_with_the_authfile(pushed: Pushed) -> None:
    result = pushed.skopeo.inspect(f"docker://{pushed.ref}", pushed.authfile)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Name"] == pushed.ref.rpartition(":")[0]


def test_skopeo_is_refused_without_the_authfile(pushed: Pushed, tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text('{"auths": {}}')

    result = pushed.skopeo.inspect(f"docker://{pushed.ref}", empty)

    assert result.returncode != 0
    assert "unauthorized" in result.stderr.lower()


def _pull(tool: str, pushed: Pushed, home: Path) -> subprocess.CompletedProcess[str]:
    """``TOOL pull --authfile`` into a private vfs store under ``home``."""
    return subprocess.run(
        [tool, "--root", str(home / "root"), "--runroot", str(home / "runroot"),
         "--storage-driver", "vfs", "pull", "--authfile", str(pushed.authfile),
         "--cert-dir", str(pushed.skopeo.cert_dir), f"docker://{pushed.ref}"],
        env=pushed.skopeo.env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _images(tool: str, home: Path) -> list[list[str]]:
    """The local store's images as ``[repository, tag, id, ...]`` rows."""
    result = subprocess.run(
        [tool, "--root", str(home / "root"), "--runroot", str(home / "runroot"),
         "--storage-driver", "vfs", "images", "--noheading"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [line.split() for line in result.stdout.splitlines()]


@pytest.fixture
def store() -> Iterator[Path]:
    """A short private directory for a container store: podman refuses a runroot path
    longer than 50 characters, which pytest's temp dirs are."""
    path = Path(tempfile.mkdtemp(prefix="et-store-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("tool", ["buildah", "podman"])
def test_pull_with_the_authfile(tool: str, pushed: Pushed, store: Path) -> None:
    require(tool)
    home = store

    result = _pull(tool, pushed, home)

    assert result.returncode == 0, result.stderr
    repository, _, tag = pushed.ref.rpartition(":")
    assert [repository, tag] in [row[:2] for row in _images(tool, home)]
