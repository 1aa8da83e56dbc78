"""``check-config``: ``--offline`` checks the configuration alone (no host check, pod-supplied
settings "supplied at run time") and passes on every shipped example; without it, the host
checks ``run`` makes — secret files included — report what is wrong, one line each.

Everything here runs the real CLI, in an environment without any ``AZURE_*`` or secret
variable unless a test sets one.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from testlib import REPO, STORAGE, base_env, cli, offline_env, run_cli

SECRET_VARIABLES = ("IDENTITY_HEADER",)
"""The secret variables the shipped examples name (``secret_env``)."""


def shipped_configs() -> list[tuple[str, str]]:
    """(name, TOML text) of every shipped example: config/*.toml and every ``*.toml`` entry
    of every ConfigMap in config/kubernetes/."""
    found = [(path.name, path.read_text()) for path in sorted((REPO / "config").glob("*.toml"))]
    for path in sorted((REPO / "config" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ConfigMap":
                name = doc["metadata"]["name"]
                found += [
                    (f"{path.name}:{name}:{key}", text)
                    for key, text in doc["data"].items()
                    if key.endswith(".toml")
                ]
    return found


def check_config_without_pod(*args: str) -> subprocess.CompletedProcess[str]:
    """``check-config ARGS`` with no AZURE_* variable and no secret variable at all."""
    env = base_env()  # already without AZURE_* and ENTRA_TOKEND_*
    for name in SECRET_VARIABLES:
        env.pop(name, None)
    assert not [name for name in env if name.startswith("AZURE_")]
    return subprocess.run(
        cli("check-config", *args), env=env, capture_output=True, text=True, check=False
    )


def test_the_shipped_examples_are_found() -> None:
    names = [name for name, _ in shipped_configs()]
    assert "entra-tokend.toml" in names
    assert any(name.startswith("configmap.yaml:") for name in names)
    assert any(name.startswith("deployment-endpoint.yaml:") for name in names)


@pytest.mark.parametrize(("name", "text"), shipped_configs(), ids=lambda v: v.split(":")[0])
def test_offline_passes_every_shipped_example_without_the_pod(
    tmp_path: Path, name: str, text: str
) -> None:
    config = tmp_path / "entra-tokend.toml"
    config.write_text(text)
    result = check_config_without_pod("--offline", "--config", str(config))
    assert result.returncode == 0, (name, result.stderr)
    assert result.stderr == ""
    assert "supplied at run time: identity.default.tenant_id (AZURE_TENANT_ID)" in result.stdout
    effective = tomllib.loads(result.stdout)  # still TOML; the placeholders are comments
    assert "tenant_id" not in effective["identity"]["default"]
    if "secret_env" in text:
        assert "supplied at run time: endpoint.secret_env (IDENTITY_HEADER)" in result.stdout
    # The same configuration without --offline needs the pod's variables: exit 2, naming them.
    online = check_config_without_pod("--config", str(config))
    assert online.returncode == 2
    assert "AZURE_TENANT_ID" in online.stderr


def test_offline_makes_no_host_check(tmp_path: Path) -> None:
    """Users, groups, template, secret and CA files, output_dir: none is looked at offline;
    the same configuration without --offline reports each."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = tmp_path / "c.toml"
    config.write_text(
        f'output_dir = "{blocker / "out"}"\nfile_owner = "no-such-user-offline"\n'
        f'file_group = "no-such-group-offline"\n'
        f'[identity.default]\nca_file = "{tmp_path / "no-ca.pem"}"\n'
        f'[token.a]\nscope = "{STORAGE}"\nformat = "template"\ntemplate_file = "missing.tmpl"\n'
        '[endpoint]\nsecret_file = "missing-secret"\nallow = ["https://storage.azure.com"]\n'
    )
    result = check_config_without_pod("--offline", "--config", str(config))
    assert result.returncode == 0, result.stderr
    effective = tomllib.loads(result.stdout)
    assert effective["file_owner"] == "no-such-user-offline"
    assert effective["token"]["a"]["template_file"] == str(tmp_path / "missing.tmpl")
    assert effective["endpoint"]["secret_file"] == str(tmp_path / "missing-secret")

    pod = {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_FEDERATED_TOKEN_FILE": "/sa"}
    online = run_cli("check-config", "--config", str(config), env=pod)
    assert online.returncode == 2
    lines = [line.removeprefix("entra-tokend: config: ") for line in online.stderr.splitlines()]
    assert len(lines) == 6, lines
    for start in (
        "file_owner: no such user 'no-such-user-offline'",
        "file_group: no such group 'no-such-group-offline'",
        "token.a.template_file: cannot read",
        "endpoint.secret_file: cannot read",
        "identity.default.ca_file:",
        "output_dir:",
    ):
        assert any(line.startswith(start) for line in lines), (start, lines)


def test_check_config_help_shows_its_own_exit_codes_not_runs() -> None:
    text = run_cli("check-config", "--help", env={"COLUMNS": "200"}).stdout
    assert "exit codes:" in text
    assert "run --once" not in text
    assert "SIGTERM" not in text
    assert "supplied at run time" in text


# ---- configuration mistakes that used to pass and fail at every request --------------------


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        (
            'authority_host = "http://127.0.0.1:99999"',
            "identity.default.authority_host (AZURE_AUTHORITY_HOST)",
        ),
        (
            'authority_host = "http://127.0.0.1:0"',
            "identity.default.authority_host (AZURE_AUTHORITY_HOST)",
        ),
        (
            'authority_host = "https://login.\\tmicrosoftonline.com"',
            "identity.default.authority_host (AZURE_AUTHORITY_HOST)",
        ),
        (
            'authority_host = "https://login micro.com"',
            "identity.default.authority_host (AZURE_AUTHORITY_HOST)",
        ),
        (
            'authority_host = "https://login.example\\u0007"',
            "identity.default.authority_host (AZURE_AUTHORITY_HOST)",
        ),
    ],
)
def test_an_unusable_authority_host_fails_at_load(tmp_path: Path, setting: str, key: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[identity.default]\n{setting}\n[token.a]\nscope = "{STORAGE}"\n')
    result = run_cli("check-config", "--config", str(config), env=offline_env(tmp_path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"entra-tokend: config: {key}: ")


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('format = "template"\ntemplate = ""', "token.a.template"),
        ('format = "template"\ntemplate = "  \\n"', "token.a.template"),
        ('format = "template"\ntemplate_file = "empty.tmpl"', "token.a.template_file"),
        ('format = "docker-config"\nregistry = "r.azure\\tcr.io"', "token.a.registry"),
    ],
)
def test_an_output_that_could_never_be_written_fails_at_load(
    tmp_path: Path, table: str, key: str
) -> None:
    (tmp_path / "empty.tmpl").write_text("")
    config = tmp_path / "c.toml"
    config.write_text(f'[token.a]\nscope = "{STORAGE}"\n{table}\n')
    result = run_cli("check-config", "--config", str(config), env=offline_env(tmp_path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"entra-tokend: config: {key}: ")


# ---- secret_file: where Kubernetes puts it, and who else can read it -----------------------

SECRET = "0123456789abcdef0123456789abcdef"


def endpoint_config(tmp_path: Path, secret_file: Path) -> Path:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[token.a]\nscope = "{STORAGE}"\n[endpoint]\nlisten = "127.0.0.1:0"\n'
        f'secret_file = "{secret_file}"\nallow = ["https://storage.azure.com"]\n'
    )
    return config


def kubernetes_secret_volume(root: Path, name: str, content: str, mode: int) -> Path:
    """kubelet's layout of a Secret volume: NAME -> ..data/NAME, ..data -> ..<timestamp>/."""
    stamp = root / "..2026_12_07_02_00_00.123456789"
    stamp.mkdir(parents=True)
    (stamp / name).write_text(content)
    (stamp / name).chmod(mode)
    (root / "..data").symlink_to(stamp.name)
    (root / name).symlink_to(f"..data/{name}")
    return root / name


def test_a_secret_file_in_a_kubernetes_secret_volume_is_accepted(tmp_path: Path) -> None:
    path = kubernetes_secret_volume(tmp_path / "secret", "identity-header", SECRET + "\n", 0o400)
    config = endpoint_config(tmp_path, path)
    result = run_cli("check-config", "--config", str(config), env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "readable by every user" not in result.stdout


def test_a_secret_file_others_can_read_is_accepted_with_a_warning(tmp_path: Path) -> None:
    """Kubernetes' default Secret defaultMode is 0644: warned about (check-config prints the
    warning, run logs it), not refused."""
    path = kubernetes_secret_volume(tmp_path / "secret", "identity-header", SECRET, 0o644)
    config = endpoint_config(tmp_path, path)
    result = run_cli("check-config", "--config", str(config), env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stdout.splitlines() if "readable by every" in line]
    assert f"endpoint.secret_file: {path} is readable by every user (mode 0644)" in warning
    assert "defaultMode: 0400" in warning
    assert SECRET not in result.stdout + result.stderr


def plant(path: Path, kind: str) -> None:
    """Something that must not be taken as the secret file at ``path``."""
    if kind == "others-may-write":
        path.write_text(SECRET)
        path.chmod(0o646)
    elif kind == "sparse-3GiB":  # read whole, it would cost gigabytes; fstat refuses it first
        path.write_text("")
        os.truncate(path, 3 << 30)
    elif kind == "fifo":  # opened for reading, a FIFO would block until a writer comes
        os.mkfifo(path)
    else:
        path.mkdir()


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("others-may-write", "is writable by every user"),
        ("sparse-3GiB", "is larger than 4096 bytes"),
        ("fifo", "is not a regular file"),
        ("directory", "is a directory"),
    ],
)
def test_a_secret_file_that_is_not_a_private_small_file_is_refused(
    tmp_path: Path, kind: str, needle: str
) -> None:
    path = tmp_path / "secret"
    plant(path, kind)
    config = endpoint_config(tmp_path, path)
    result = run_cli("check-config", "--config", str(config), env=offline_env(tmp_path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"entra-tokend: config: endpoint.secret_file: {path} "), line
    assert needle in line


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_secret_file_owned_by_another_user_is_accepted_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET)
    path.chmod(0o600)
    os.chown(path, 12345, 12345)
    config = endpoint_config(tmp_path, path)
    result = run_cli("check-config", "--config", str(config), env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"endpoint.secret_file: {path} is owned by uid 12345" in result.stdout


def test_check_config_names_the_trust_the_daemon_will_use(tmp_path: Path) -> None:
    """Issue 26 §8: "(default trust store)" was printed while SSL_CERT_FILE was set."""
    env = {**offline_env(tmp_path), "SSL_CERT_FILE": str(tmp_path / "corp-ca.pem")}
    result = run_cli("check-config", "--token", f"a={STORAGE}", env=env)
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("# token requests:")]
    assert line.endswith(f"(trusting SSL_CERT_FILE {tmp_path / 'corp-ca.pem'})")
    result = run_cli("check-config", "--token", f"a={STORAGE}", env=offline_env(tmp_path))
    assert "(default trust store (certifi))" in result.stdout
