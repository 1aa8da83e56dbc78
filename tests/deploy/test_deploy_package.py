"""Packaging: the emulator-extra hint, `healthcheck`, sdist/wheel, the hash lock, the image's steps.

The PyPI-bound tests (marked ``packaging``: a CI stage of their own) install into fresh venvs;
they skip, saying so, when PyPI cannot be reached. The image's install steps are taken from the
Dockerfile's own RUN lines and replayed here with /opt/entra-tokend and /src moved to a
temporary directory; the daemon they install then runs the way the image runs it (UID/GID
65532, every mount read-only but the token directory) against the emulator. What a Docker
engine would add (the distroless filesystem, seccomp, dropped capabilities) cannot be
reproduced without one and is not claimed here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_deploy_image import stages

import entra_tokend
from testlib import REPO, base_env, run_cli, tool, wait_until

VERSION = entra_tokend.__version__  # the one source (pyproject: dynamic = ["version"])
IMAGE_UID = 65532
BLOCK_CRYPTOGRAPHY = (
    "import runpy, sys\n"
    "sys.modules['cryptography'] = None\n"
    "sys.argv = ['entra-tokend', *sys.argv[1:]]\n"
    "runpy.run_module('entra_tokend', run_name='__main__')\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------- the emulator extra's hint
@pytest.mark.parametrize("command", [["dev"], ["emulator", "--help"]])
def test_without_the_extra_the_hint_is_an_install_that_works(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_CRYPTOGRAPHY, *command],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    # The package is not on PyPI: `entra-tokend[emulator]` cannot be installed; `.[emulator]` can.
    assert "pip install '.[emulator]'" in result.stderr
    assert "entra-tokend[emulator]" not in result.stderr
    assert "cryptography is missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_readme_installs_the_emulator_from_the_clone() -> None:
    readme = (REPO / "README.md").read_text()
    assert "pip install 'entra-tokend[emulator]'" not in readme
    assert "pip install '.[emulator]'" in readme


# ---------------------------------------------------------------- healthcheck
def test_healthcheck_is_healthy_while_the_daemon_serves(
    emulator: Any, tmp_path: Path, daemon_factory: Any
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    daemon = daemon_factory(
        "run",
        "--output-dir",
        str(tmp_path / "out"),
        "--token",
        "arm=https://management.azure.com/.default",
        env={**emulator.env(), "ENTRA_TOKEND_LISTEN": listen},
    )
    wait_until((tmp_path / "out" / "arm").exists, timeout=30)
    # Exactly as the image's HEALTHCHECK runs it: the listen address from the environment.
    healthy = run_cli("healthcheck", env={"ENTRA_TOKEND_LISTEN": listen})
    assert healthy.returncode == 0, healthy.stderr
    assert f"http://{listen}/healthz: 200" in healthy.stderr
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(timeout=30)
    gone = run_cli("healthcheck", "--listen", listen, env={})
    assert gone.returncode == 1
    assert f"http://{listen}/healthz" in gone.stderr


@pytest.mark.parametrize(
    ("listen", "says"),
    [("", "listener is disabled"), ("127.0.0.1:0", "port 0"), ("nonsense", "HOST:PORT")],
)
def test_healthcheck_explains_an_address_it_cannot_ask(listen: str, says: str) -> None:
    result = run_cli("healthcheck", env={"ENTRA_TOKEND_LISTEN": listen})
    assert result.returncode == 1
    assert says in result.stderr


def test_healthcheck_asks_loopback_for_a_wildcard_listen() -> None:
    from entra_tokend.healthcheck import probe_address

    assert probe_address("0.0.0.0:9464") == ("127.0.0.1", 9464)
    # `::` is dual-stack, or 0.0.0.0 without IPv6: IPv4 loopback reaches both.
    assert probe_address("[::]:9464") == ("127.0.0.1", 9464)
    assert probe_address("[::1]:1") == ("::1", 1)
    assert probe_address("localhost:2") == ("localhost", 2)


# ---------------------------------------------------------------- what reaches PyPI
def _pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


# `packaging`: deselected from the main suite, run by .ci/run's packaging stage.
pypi = pytest.mark.packaging


@pytest.fixture
def pypi_reachable() -> None:
    if not _pypi_reachable():
        pytest.skip("PyPI (pypi.org:443) is unreachable")


def make_venv(path: Path) -> Path:
    """A fresh venv (the interpreter's own, never the suite's packages); returns its bin/."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    return path / "bin"


def pip(bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pypi
def test_sdist_and_wheel_pass_twine_and_run_from_clean_venvs(
    pypi_reachable: None, tmp_path: Path
) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    assert sdist.name == f"entra_tokend-{VERSION}.tar.gz"
    checked = subprocess.run(
        [tool("twine"), "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2
    # One clean venv: the locked dependencies (hash-checked) and the build backend, then each
    # artifact alone on top, so that what is measured is the artifact, not a second resolve.
    bin_dir = make_venv(tmp_path / "venv")
    locked = pip(
        bin_dir,
        "--require-hashes",
        "-r",
        str(REPO / "requirements.lock"),
        "-r",
        str(REPO / "requirements-build.lock"),
    )
    assert locked.returncode == 0, locked.stderr[-3000:]
    for artifact in (wheel, sdist):
        installed = pip(
            bin_dir, "--no-deps", "--no-build-isolation", "--force-reinstall", str(artifact)
        )
        assert installed.returncode == 0, installed.stderr[-3000:]
        version = subprocess.run(
            [str(bin_dir / "entra-tokend"), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert version.stdout.strip() == f"entra-tokend {VERSION}", version.stderr
        check = subprocess.run(
            [str(bin_dir / "python"), "-m", "pip", "check"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stdout  # the lock satisfies the artifact's metadata


def lock_pins(path: Path) -> dict[str, str]:
    pins = re.findall(r"^([a-z0-9_.-]+)==(\S+) \\$", path.read_text(), re.MULTILINE)
    return dict(pins)


def test_lock_pins_every_dependency_with_hashes() -> None:
    lock = REPO / "requirements.lock"
    pins = lock_pins(lock)
    for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = re.split(r"[<>=!~\[ ]", dep)[0].lower()
        assert name in pins, f"{name} is not in {lock.name}"
    requirements = re.split(r"\n(?=[a-z])", lock.read_text().split("\n", 7)[-1].strip())
    assert all("--hash=sha256:" in r for r in requirements if not r.startswith("#"))
    assert "cryptography" not in pins  # the emulator extra stays out of the image
    assert set(lock_pins(REPO / "requirements-build.lock")) == {"setuptools"}


# ---------------------------------------------------------------- the image's install steps
def dockerfile_build_runs() -> list[str]:
    """The build stage's RUN lines that make the venv (not apt-get, not the trust store)."""
    runs = [rest for word, rest in stages()[1] if word == "RUN"]
    return [r for r in runs if "/opt/entra-tokend" in r and "apt-get" not in r and "certs" not in r]


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """/opt/entra-tokend as the Dockerfile builds it, under a directory UID 65532 may enter."""
    if not _pypi_reachable():
        pytest.skip("PyPI (pypi.org:443) is unreachable")
    top = Path(tempfile.mkdtemp(prefix="entra-tokend-image-"))
    top.chmod(0o755)
    try:
        opt, src = top / "opt" / "entra-tokend", top / "src"
        src.mkdir()
        # The build context as the COPY lines bring it in.
        for name in (
            "requirements.lock",
            "requirements-build.lock",
            "pyproject.toml",
            "README.md",
            "LICENSE",
        ):
            shutil.copy(REPO / name, src / name)
        shutil.copytree(
            REPO / "daemon", src / "daemon", ignore=shutil.ignore_patterns("__pycache__")
        )
        for run in dockerfile_build_runs():
            script = run.replace("/opt/entra-tokend", str(opt)).replace("/src", str(src))
            script = script.replace("python3 -m venv", f"{sys.executable} -m venv")
            done = subprocess.run(
                ["sh", "-euc", script],
                env={**os.environ, "VERSION": VERSION},
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert done.returncode == 0, f"{run}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        yield opt
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pypi
def test_image_steps_install_from_the_lock_with_require_hashes(image_venv: Path) -> None:
    runs = dockerfile_build_runs()
    assert any("--require-hashes" in r and "requirements.lock" in r for r in runs)
    assert any("--no-deps" in r and "/src" in r for r in runs)
    frozen = subprocess.run(
        [str(image_venv / "bin" / "python"), "-c", FREEZE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    installed = dict(line.split("==") for line in frozen.stdout.split())
    expected = {name: v for name, v in lock_pins(REPO / "requirements.lock").items()}
    # Exactly the locked distributions, plus the project; pip and setuptools were removed.
    assert installed == {**expected, "entra-tokend": VERSION}


FREEZE = (
    "import importlib.metadata as m\n"
    "for d in m.distributions():\n"
    "    print(f\"{d.metadata['Name'].lower().replace('_', '-')}=={d.version}\")\n"
)


def read_only_as_image_user(out: Path, argv: list[str]) -> list[str]:
    """argv in a private mount namespace where every mount is read-only except ``out``,
    run as UID/GID 65532 with no supplementary groups and no new privileges."""
    script = (
        'for m in $(findmnt -rn -o TARGET | sort -u); do mount -o remount,bind,ro "$m" '
        "2>/dev/null || true; done\n"
        'mount --bind "$OUT" "$OUT"\n'
        'mount -o remount,bind,rw "$OUT"\n'
        'exec setpriv --reuid=65532 --regid=65532 --clear-groups --no-new-privs -- "$@"\n'
    )
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-euc",
        script,
        "sh",
        *argv,
    ]


@pypi
@pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces and setpriv need root")
def test_image_install_runs_read_only_as_uid_65532(
    image_venv: Path, emulator: Any, tmp_path: Path
) -> None:
    top = image_venv.parents[1]
    out = top / "run" / "entra-tokend"
    out.mkdir(parents=True)
    os.chown(out, IMAGE_UID, IMAGE_UID)
    out.chmod(0o750)
    fed = top / "fed"
    fed.mkdir()
    shutil.copy(emulator.token_file, fed / "token")
    (fed / "token").chmod(0o644)
    listen = f"127.0.0.1:{free_port()}"
    env = {
        # The image's ENV, and what a pod's workload-identity webhook adds.
        "PATH": f"{image_venv / 'bin'}:/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "OUT": str(out),
        "ENTRA_TOKEND_LISTEN": listen,
        "ENTRA_TOKEND_LOG_FORMAT": "json",
        **{**emulator.env(), "AZURE_FEDERATED_TOKEN_FILE": str(fed / "token")},
    }
    log = (tmp_path / "daemon.log").open("w")
    proc = subprocess.Popen(
        read_only_as_image_user(
            out,
            [
                str(image_venv / "bin" / "entra-tokend"),
                "run",
                "--output-dir",
                str(out),
                "--token",
                "arm=https://management.azure.com/.default",
            ],
        ),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: (out / "arm").exists() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
        assert (out / "arm").read_text().strip() in emulator.issued_tokens
        assert (out / "arm").stat().st_uid == IMAGE_UID
        # The HEALTHCHECK's exec form, in the same read-only, unprivileged setting.
        health = subprocess.run(
            read_only_as_image_user(out, ["entra-tokend", "healthcheck"]),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert health.returncode == 0, health.stderr
        # Nothing but the token directory takes writes; the venv cannot take .pyc files.
        probe = (
            "import sys\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n"
            "        open(path, 'w').close()\n"
            "        print('writable', path)\n"
            "    except OSError as exc:\n"
            "        print('denied', path, exc.strerror)\n"
        )
        targets = [str(out / "probe"), str(image_venv / "probe"), "/tmp/probe", str(fed / "x")]
        probed = subprocess.run(
            read_only_as_image_user(
                out, [str(image_venv / "bin" / "python"), "-c", probe, *targets]
            ),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert probed.returncode == 0, probed.stderr
        lines = probed.stdout.splitlines()
        assert lines[0] == f"writable {out / 'probe'}"
        assert all(line.startswith("denied") for line in lines[1:]), lines
        assert len(lines) == len(targets)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == 0, (tmp_path / "daemon.log").read_text()[-3000:]
