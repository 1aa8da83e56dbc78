"""The MIT license the metadata declares ships as a file: in the repository, sdist and wheel."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

from support import REPO


def test_the_repository_has_the_license_the_metadata_names() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text


@pytest.mark.packaging  # builds with the build backend from PyPI (setuptools >= 77: PEP 639)
def test_sdist_and_wheel_ship_the_license(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    license_text = (REPO / "LICENSE").read_bytes()
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        member = tar.extractfile(f"{top}/LICENSE")
        assert member is not None
        assert member.read() == license_text
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as whl:
        (dist_info,) = {n.split("/")[0] for n in whl.namelist() if ".dist-info/" in n}
        assert whl.read(f"{dist_info}/licenses/LICENSE") == license_text
        metadata = HeaderParser().parsestr(whl.read(f"{dist_info}/METADATA").decode())
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
