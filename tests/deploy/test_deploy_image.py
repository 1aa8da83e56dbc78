"""Dockerfile and .dockerignore: lint-clean, shell-less non-root runtime, daemon-only install.

These tests pin down what the build depends on and run the daemon the way the image installs it
(no emulator extra). The build itself, and the built image run read-only as 65532 without
capabilities, is CI's "image" stage (tests/image/run_image.sh: buildah and systemd-nspawn, root).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from deploy_helpers import DOCKERFILE, DOCKERIGNORE

import entra_tokend
from entra_tokend.config import schema as config_module
from testlib import REPO, base_env, tool

OCI_LABELS = {
    "org.opencontainers.image.title": "text",
    "org.opencontainers.image.description": "text",
    "org.opencontainers.image.version": "text",
    "org.opencontainers.image.revision": "text",
    "org.opencontainers.image.licenses": "spdx",
}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = pending + stripped
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "dangling continuation line"
    return out


def stages() -> list[list[tuple[str, str]]]:
    """Instructions grouped per build stage; stage 0 is what precedes the first FROM."""
    groups: list[list[tuple[str, str]]] = [[]]
    for instr in instructions():
        if instr[0] == "FROM":
            groups.append([])
        groups[-1].append(instr)
    return groups


def global_args() -> dict[str, str]:
    args = {}
    for word, rest in stages()[0]:
        assert word == "ARG"
        name, _, default = rest.partition("=")
        args[name] = default
    return args


def from_image(stage: list[tuple[str, str]]) -> str:
    word, rest = stage[0]
    assert word == "FROM"
    image = rest.split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: global_args()[m.group(1)], image)


def exec_form(stage: list[tuple[str, str]], word: str) -> Any:
    (value,) = [rest for w, rest in stage if w == word]
    return json.loads(value)


def test_hadolint_is_clean_at_the_strictest_threshold() -> None:
    labels = [f"--require-label={k}:{v}" for k, v in OCI_LABELS.items()]
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold=style", *labels, str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_build_and_runtime_stages_share_one_python() -> None:
    build, runtime = stages()[1:]
    builder, base = from_image(build), from_image(runtime)
    # Same Debian release on both sides: the venv's interpreter path (/usr/bin/python3) and
    # CPython minor version exist identically in the distroless runtime.
    assert builder.startswith("debian:12")
    assert base.startswith("gcr.io/distroless/python3-debian12")
    assert any(w == "RUN" and "python3 -m venv /opt/entra-tokend" in r for w, r in build)


def test_runtime_stage_has_no_shell_and_runs_as_a_numeric_non_root_user() -> None:
    runtime = stages()[-1]
    assert [w for w, _ in runtime if w in {"RUN", "SHELL"}] == []
    (user,) = [rest for w, rest in runtime if w == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    assert exec_form(runtime, "ENTRYPOINT") == ["entra-tokend"]
    assert exec_form(runtime, "CMD") == ["run"]
    env = " ".join(rest for w, rest in runtime if w == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # read-only root filesystem
    assert "PATH=/opt/entra-tokend/bin:" in env  # so the exec-form ENTRYPOINT finds the script


def test_image_exposes_the_default_listen_port() -> None:
    default_listen = config_module.TOP_LEVEL["listen"][1]
    port = default_listen.rpartition(":")[2]
    exposed = [rest for w, rest in stages()[-1] if w == "EXPOSE"]
    assert exposed == [port]


def test_image_installs_the_daemon_without_the_emulator_extra() -> None:
    build = stages()[1]
    installs = [r for w, r in build if w == "RUN" and "pip install" in r]
    assert len(installs) == 2
    deps, project = installs
    # Dependencies: only from the hash lock, binary wheels, before any source is copied.
    assert "--require-hashes" in deps
    assert "-r /src/requirements.lock" in deps
    assert "--only-binary=:all:" in deps
    # The project: no dependency resolution at all, and no extra.
    assert re.search(
        r"pip install --no-cache-dir --no-deps --no-build-isolation /src(\s|$)", project
    )
    assert "[" not in project.split("pip install", 1)[1].split("&&")[0]
    # The package's own runtime dependencies must not drag the extra in either.
    project_meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project_meta["dependencies"] if d.lower().startswith("cryptography")]
    assert "cryptography" not in (REPO / "requirements.lock").read_text()


def test_dependencies_are_a_layer_of_their_own_before_the_source() -> None:
    build = stages()[1]
    index = {i: (w, r) for i, (w, r) in enumerate(build)}
    (lock_copy,) = [i for i, (w, r) in index.items() if w == "COPY" and "requirements.lock" in r]
    (deps_run,) = [i for i, (w, r) in index.items() if w == "RUN" and "--require-hashes" in r]
    (source_copy,) = [i for i, (w, r) in index.items() if w == "COPY" and r.startswith("daemon/")]
    assert lock_copy < deps_run < source_copy
    assert "pyproject.toml" not in index[lock_copy][1]  # a version bump keeps the layer


def test_base_images_are_build_arguments_that_take_a_digest() -> None:
    args = global_args()
    for stage in stages()[1:]:
        _word, rest = stage[0]
        assert re.fullmatch(r"\$\{(DEBIAN_IMAGE|RUNTIME_IMAGE)\}( AS \w+)?", rest), rest
    # A digest-pinned reference is still an image reference FROM can take.
    for name in ("DEBIAN_IMAGE", "RUNTIME_IMAGE"):
        pinned = f"{args[name]}@sha256:{'0' * 64}"
        assert re.fullmatch(r"[a-z0-9./-]+(:[\w.-]+)?@sha256:[0-9a-f]{64}", pinned)
    readme = (REPO / "README.md").read_text()
    assert "Updating the image's pins" in readme
    section = readme.split("Updating the image's pins", 1)[1]
    for needed in ("pip-compile", "--generate-hashes", "DEBIAN_IMAGE", "RUNTIME_IMAGE", "skopeo"):
        assert needed in section, needed


def test_the_version_is_not_repeated_in_the_dockerfile() -> None:
    """The version is written once (``entra_tokend.__version__``, read by setuptools)."""
    version = entra_tokend.__version__
    assert version not in DOCKERFILE.read_text()
    runtime = stages()[-1]
    assert ("ARG", 'VERSION=""') in runtime
    # The build fails when a VERSION build argument disagrees with the installed package.
    assert any(w == "RUN" and '"entra-tokend ${VERSION}"' in r for w, r in stages()[1])


def test_healthcheck_is_the_shell_less_subcommand() -> None:
    runtime = stages()[-1]
    (health,) = [r for w, r in runtime if w == "HEALTHCHECK"]
    options, _, command = health.partition("CMD ")
    assert json.loads(command)[:2] == ["entra-tokend", "healthcheck"]
    assert "--timeout=" in options
    assert "--listen" not in command  # it reads ENTRA_TOKEND_LISTEN, as the daemon does


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob: `*` and `?` stay within one path segment, `**` spans any."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            assert pattern[i] not in "[\\", "character classes and escapes are not handled here"
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a directory covers its contents."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_build_context_holds_exactly_what_the_build_copies() -> None:
    patterns = dockerignore_patterns()
    assert patterns[0] == "*", "an allow-list keeps tokens, venvs and .git out of the context"
    copied = [
        src
        for w, rest in stages()[1]
        if w == "COPY" and not rest.startswith("--from")
        for src in rest.split()[:-1]
    ]
    assert copied
    for src in copied:
        assert (REPO / src).exists(), src
        assert not ignored(src.rstrip("/"), patterns), f"{src} is excluded by .dockerignore"
    # Everything pip needs from the context: pyproject, the README it names, the package.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    readme = project["project"]["readme"]
    package_root = project["tool"]["setuptools"]["packages"]["find"]["where"][0]
    for needed in ("pyproject.toml", readme, f"{package_root}/entra_tokend/cli.py"):
        assert not ignored(needed, patterns), needed
        assert any(needed == c.rstrip("/") or needed.startswith(c) for c in copied), needed
    for kept_out in ("tests/conftest.py", ".git/HEAD", "tokens/arm", "venv/bin/python"):
        assert ignored(kept_out, patterns), kept_out
    assert ignored("daemon/entra_tokend/__pycache__/cli.cpython-311.pyc", patterns)


def test_the_daemon_works_without_the_emulator_extra(emulator: Any, tmp_path: Path) -> None:
    """As installed in the image: `run --once` with cryptography unimportable."""
    out = tmp_path / "tokens"
    blocker = (
        "import runpy, sys\n"
        "sys.modules['cryptography'] = None\n"
        "sys.argv = ['entra-tokend', *sys.argv[1:]]\n"
        "runpy.run_module('entra_tokend', run_name='__main__')\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            blocker,
            "run",
            "--once",
            "--deadline",
            "30",
            "--listen",
            "",
            "--output-dir",
            str(out),
            "--token",
            "arm=https://management.azure.com/.default",
        ],
        env=base_env(emulator.env()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "arm").read_text().strip() in emulator.issued_tokens
