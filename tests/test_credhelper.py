"""The docker credential-helper protocol of ``docker-credential-entra-tokend``, run as the
docker CLI runs it: a subprocess, the action as its argument, the server URL on stdin."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from entra_tokend.credhelper import NOT_FOUND

DAEMON_SRC = Path(__file__).resolve().parents[1] / "daemon"


def jwt(claims: dict[str, object]) -> str:
    """An unsigned JWT with ``claims`` (the helper reads ``exp`` only)."""

    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def daemon_file(path: Path, entries: dict[str, str]) -> Path:
    """A docker config as the daemon writes it: ``{"auths": {host: {"auth": b64(u:secret)}}}``."""
    auths = {
        host: {
            "auth": base64.b64encode(f"00000000-0000-0000-0000-000000000000:{s}".encode()).decode()
        }
        for host, s in entries.items()
    }
    path.write_text(json.dumps({"auths": auths}))
    return path


def helper(action: str, stdin: str, config: Path) -> subprocess.CompletedProcess[str]:
    """Run the helper as the docker CLI does."""
    return subprocess.run(
        [sys.executable, "-m", "entra_tokend.credhelper", action],
        input=stdin,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(DAEMON_SRC), "ENTRA_TOKEND_DOCKER_CONFIG": str(config)},
        timeout=60,
        check=False,
    )


@pytest.fixture(name="config")
def config_fixture(tmp_path: Path) -> Path:
    return daemon_file(
        tmp_path / "config.json",
        {
            "myacr.azurecr.io": jwt({"exp": 4_000_000_000}),
            "127.0.0.1:5000": "opaque-secret",
            "old.azurecr.io": jwt({"exp": 1_000}),
            "nan.azurecr.io": jwt({"exp": "soon"}),
        },
    )


@pytest.mark.parametrize(
    "server", ["myacr.azurecr.io", "https://myacr.azurecr.io", "https://MyAcr.azurecr.io/v1/\n"]
)
def test_get_answers_the_daemons_credential_for_every_spelling_of_the_server(
    config: Path, server: str
) -> None:
    done = helper("get", server, config)
    assert done.returncode == 0, done.stdout
    answer = json.loads(done.stdout)
    assert answer == {
        "ServerURL": server.strip(),
        "Username": "00000000-0000-0000-0000-000000000000",
        "Secret": jwt({"exp": 4_000_000_000}),
    }


def test_get_keeps_the_port(config: Path) -> None:
    assert json.loads(helper("get", "127.0.0.1:5000", config).stdout)["Secret"] == "opaque-secret"
    assert helper("get", "127.0.0.1", config).stdout.strip() == NOT_FOUND


@pytest.mark.parametrize("server", ["unknown.azurecr.io", "old.azurecr.io", "nan.azurecr.io"])
def test_unknown_or_expired_is_the_protocols_not_found(config: Path, server: str) -> None:
    done = helper("get", server, config)
    assert (done.returncode, done.stdout, done.stderr) == (1, f"{NOT_FOUND}\n", "")


def test_not_found_while_the_daemon_has_not_written_yet(tmp_path: Path) -> None:
    done = helper("get", "myacr.azurecr.io", tmp_path / "absent.json")
    assert (done.returncode, done.stdout.strip()) == (1, NOT_FOUND)


def test_list_names_every_unexpired_registry(config: Path) -> None:
    done = helper("list", "", config)
    assert done.returncode == 0
    assert json.loads(done.stdout) == {
        "myacr.azurecr.io": "00000000-0000-0000-0000-000000000000",
        "127.0.0.1:5000": "00000000-0000-0000-0000-000000000000",
    }


@pytest.mark.parametrize("action", ["store", "erase"])
def test_store_and_erase_are_refused_cleanly(config: Path, action: str) -> None:
    before = config.read_bytes()
    done = helper(action, '{"ServerURL":"x","Username":"u","Secret":"s"}', config)
    assert done.returncode == 1
    assert "not supported" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert config.read_bytes() == before


@pytest.mark.parametrize(
    "content", [b"not json", b'{"auths": 3}', b"\xff\xfe", b'{"auths": {"a": {"auth": "!!"}}}']
)
def test_a_garbage_file_is_one_line_not_a_traceback(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    done = helper("get", "a", path)
    assert done.returncode == 1
    assert done.stderr == ""
    assert len(done.stdout.splitlines()) == 1


def test_a_directory_or_huge_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    assert "cannot read" in helper("get", "a", tmp_path / "dir.json").stdout
    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.truncate(3 * 1024**3)  # sparse: no disk used
    done = helper("get", "a", huge)
    assert (done.returncode, done.stderr) == (1, "")
    assert "larger than" in done.stdout


@pytest.mark.parametrize(
    "server",
    [
        "",
        "   ",
        "https://",
        "a b",
        "https://h:99999/",
        "[myacr.azurecr.io]",  # was a traceback
        # Spellings another URL parser reads as another host: never myacr's credential.
        "evil.com\\@myacr.azurecr.io",
        "https://evil.com\\@myacr.azurecr.io/v2/",
        "https://evil.com%2F@myacr.azurecr.io",
        "https://user@myacr.azurecr.io",
        "https://myacr.azurecr.io%2F",
    ],
)
def test_a_malformed_server_url_is_an_error_line(config: Path, server: str) -> None:
    done = helper("get", server, config)
    assert done.returncode == 1
    assert done.stderr == ""
    assert "server URL" in done.stdout


def test_unknown_action_prints_usage(config: Path) -> None:
    done = helper("frobnicate", "", config)
    assert (done.returncode, done.stdout.startswith("usage:")) == (1, True)
