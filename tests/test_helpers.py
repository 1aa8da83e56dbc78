"""The helpers layer (``entra_tokend.util``) and what stands on it: the bounded read checks
before it reads, config loads without the network stack, one version, one list of formats."""

from __future__ import annotations

import ast
import errno
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import entra_tokend
from entra_tokend.assertion import AssertionMalformed, read_assertion
from entra_tokend.assertion import decode_claims as assertion_claims
from entra_tokend.outputs import FORMATS
from entra_tokend.util.files import FileTooLarge, NotRegularFile, read_bounded, read_regular
from entra_tokend.util.formats import FORMAT_NAMES
from entra_tokend.util.jwt import MalformedJWT, decode_claims
from testlib import REPO, base_env


def test_importing_config_loads_no_network_stack_and_no_writer() -> None:
    code = (
        "import entra_tokend.config, sys\n"
        "loaded = [m for m in ('httpx', 'h11', 'prometheus_client', 'structlog', "
        "'entra_tokend.exchange', 'entra_tokend.outputs', 'entra_tokend.logging') "
        "if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=base_env(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_a_huge_sparse_file_is_refused_by_fstat_before_any_read(tmp_path: Path) -> None:
    path = tmp_path / "huge"
    path.write_text("")
    os.truncate(path, 3 << 30)  # 3 GiB of nothing: read whole, it would cost 3 GiB
    with pytest.raises(FileTooLarge) as info:
        read_bounded(path, 4096)
    assert info.value.errno == errno.EFBIG
    assert info.value.strerror == "larger than 4096 bytes"
    # The projected-token reader uses the same read (it had a copy of its own).
    token = tmp_path / "token"
    token.write_text("")
    os.truncate(token, 1 << 30)
    with pytest.raises(AssertionMalformed, match="larger than 65536 bytes"):
        read_assertion(token)


def test_a_file_whose_size_fstat_cannot_tell_is_still_read_only_to_the_bound() -> None:
    """procfs reports size 0; the read stops one byte past the limit and refuses the file."""
    assert os.stat("/proc/self/status").st_size == 0
    with pytest.raises(FileTooLarge):
        read_regular(Path("/proc/self/status"), 16)
    assert b"Name:" in read_regular(Path("/proc/self/status"), 64 * 1024)


def test_what_is_not_a_regular_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opened without O_NONBLOCK, this would wait for a writer forever
    with pytest.raises(NotRegularFile) as info:
        read_regular(fifo, 10)
    assert not info.value.is_directory
    with pytest.raises(NotRegularFile) as info:
        read_regular(tmp_path, 10)
    assert info.value.is_directory


def test_symlinks_are_followed_as_kubelet_lays_volumes_out_unless_refused(
    tmp_path: Path,
) -> None:
    stamp = tmp_path / "..2026_12_07_02_00_00.1"
    stamp.mkdir()
    (stamp / "token").write_bytes(b"abc")
    (stamp / "token").chmod(0o440)
    (tmp_path / "..data").symlink_to(stamp.name)
    (tmp_path / "token").symlink_to("..data/token")
    data, st = read_bounded(tmp_path / "token", 3)
    assert data == b"abc"
    assert oct(st.st_mode & 0o777) == oct(0o440)  # the target's fstat, for mode checks
    with pytest.raises(OSError, match="symbolic links") as info:
        read_regular(tmp_path / "token", 3, follow_symlinks=False)
    assert info.value.errno == errno.ELOOP


def test_jwt_claims_are_decoded_once_for_every_reader() -> None:
    assert decode_claims("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.") == {"sub": "x"}
    with pytest.raises(MalformedJWT, match="does not hold a JWT"):
        decode_claims("not-a-jwt")
    with pytest.raises(AssertionMalformed, match=r"^token file does not hold a JWT"):
        assertion_claims("not-a-jwt")


def test_format_names_and_renderers_are_in_step() -> None:
    assert tuple(FORMATS) == FORMAT_NAMES


def test_the_version_is_written_once() -> None:
    """pyproject.toml takes it from __init__.py, read by setuptools without importing."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "entra_tokend.__version__"
    init = ast.parse((REPO / "daemon" / "entra_tokend" / "__init__.py").read_text())
    (assign,) = [n for n in init.body if isinstance(n, ast.Assign)]
    assert isinstance(assign.value, ast.Constant)  # a literal setuptools reads statically
    assert assign.value.value == entra_tokend.__version__


def test_a_caller_refuses_a_file_by_its_fstat_before_anything_is_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    path.chmod(0o606)
    seen: list[int] = []

    def private(st: os.stat_result) -> None:
        seen.append(st.st_mode & 0o777)
        if st.st_mode & 0o002:
            raise PermissionError(errno.EPERM, "writable by others")

    with pytest.raises(PermissionError, match="writable by others"):
        read_bounded(path, 10, check=private)
    path.chmod(0o600)
    assert read_bounded(path, 10, check=private)[0] == b"x" * 10
    assert seen == [0o606, 0o600]
