"""AKS identity bindings in the configuration: the token proxy's URL, SNI name and CA, from the
webhook's AZURE_KUBERNETES_* variables or an ``[identity.NAME]`` table; each mistake is one
problem line naming the key (and variable) to fix. Requests through the proxy:
tests/test_identity_binding.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from entra_tokend import preflight
from entra_tokend.config import ConfigError, Overrides
from entra_tokend.config.validate import Problems
from entra_tokend.emulator import Emulator
from entra_tokend.preflight.files import token_proxy_ca_file
from support import STORAGE, run_cli, write_config

SNI = "ib.aks.local"


def _problems(tmp_path: Path, env: dict[str, str], body: str = "") -> list[str]:
    config = write_config(tmp_path / "v.toml", {"s": STORAGE}, body=body)
    base = {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "sa"),
    }
    try:
        preflight.load(
            Overrides(config=str(config), output_dir=str(tmp_path / "out")), {**base, **env}
        )
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.fixture(name="ca_pem")
def ca_pem_fixture(tmp_path: Path) -> Path:
    with Emulator(tmp_path / "pki", tls=True, identity_binding=True) as emu:
        assert emu.proxy is not None
        pem = emu.proxy.ca_file.read_text()
    path = tmp_path / "ca.crt"
    path.write_text(pem)
    return path


def test_valid_settings_load(tmp_path: Path, ca_pem: Path) -> None:
    env = {
        "AZURE_KUBERNETES_TOKEN_PROXY": "https://10.0.0.1/base",
        "AZURE_KUBERNETES_SNI_NAME": SNI,
        "AZURE_KUBERNETES_CA_FILE": str(ca_pem),
    }
    assert _problems(tmp_path, env) == []
    assert _problems(tmp_path, {"AZURE_KUBERNETES_TOKEN_PROXY": "https://10.0.0.1"}) == []
    data = {
        "AZURE_KUBERNETES_TOKEN_PROXY": "https://10.0.0.1",
        "AZURE_KUBERNETES_CA_DATA": ca_pem.read_text(),
    }
    assert _problems(tmp_path, data) == []


PROXY = "identity.default.token_proxy (AZURE_KUBERNETES_TOKEN_PROXY)"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://10.0.0.1/base", "must be an https URL"),
        ("ftp://10.0.0.1", "must be an https URL"),
        ("10.0.0.1", "must be an https URL"),
        ("https://u:p@10.0.0.1", "must not contain user information (user:password@)"),
        ("https://10.0.0.1/base?x=1", "must not have a query or fragment"),
        ("https://10.0.0.1/base#f", "must not have a query or fragment"),
        ("https://10.0.0.1:99999", "is not an https URL"),
    ],
)
def test_proxy_url_problems(tmp_path: Path, url: str, problem: str) -> None:
    (line,) = _problems(tmp_path, {"AZURE_KUBERNETES_TOKEN_PROXY": url})
    assert line.startswith(f"{PROXY}: ")
    assert problem in line
    assert "u:p" not in line


def test_ca_and_sni_problems(tmp_path: Path, ca_pem: Path) -> None:
    proxy = {"AZURE_KUBERNETES_TOKEN_PROXY": "https://10.0.0.1"}
    both = _problems(
        tmp_path,
        {
            **proxy,
            "AZURE_KUBERNETES_CA_FILE": str(ca_pem),
            "AZURE_KUBERNETES_CA_DATA": ca_pem.read_text(),
        },
    )
    assert both == [
        "identity.default.token_proxy_ca_file (AZURE_KUBERNETES_CA_FILE), "
        "identity.default.token_proxy_ca_data (AZURE_KUBERNETES_CA_DATA): both are set; give "
        "the token proxy's CA as a file or as PEM text, not both"
    ]
    for var, key in [
        ("AZURE_KUBERNETES_SNI_NAME", "token_proxy_sni_name"),
        ("AZURE_KUBERNETES_CA_FILE", "token_proxy_ca_file"),
        ("AZURE_KUBERNETES_CA_DATA", "token_proxy_ca_data"),
    ]:
        value = SNI if "SNI" in var else str(ca_pem) if "FILE" in var else ca_pem.read_text()
        (line,) = _problems(tmp_path, {var: value})
        assert line == (
            f"identity.default.{key} ({var}): set without {PROXY}; give the identity-binding "
            "token proxy URL or remove this setting"
        )
    empty = tmp_path / "empty.crt"
    empty.write_text("")
    (line,) = _problems(tmp_path, {**proxy, "AZURE_KUBERNETES_CA_FILE": str(empty)})
    assert line == (
        "identity.default.token_proxy_ca_file (AZURE_KUBERNETES_CA_FILE): "
        f"{empty} is empty; it must hold PEM certificates"
    )
    (line,) = _problems(tmp_path, {**proxy, "AZURE_KUBERNETES_CA_FILE": str(tmp_path / "none")})
    assert "cannot be read: No such file or directory" in line
    (line,) = _problems(tmp_path, {**proxy, "AZURE_KUBERNETES_CA_DATA": "not a pem"})
    assert line.startswith(
        "identity.default.token_proxy_ca_data (AZURE_KUBERNETES_CA_DATA): holds no PEM"
    )
    garbled = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    (line,) = _problems(tmp_path, {**proxy, "AZURE_KUBERNETES_CA_DATA": garbled})
    assert line.endswith("is not a PEM certificate bundle OpenSSL can load")
    (line,) = _problems(tmp_path, {**proxy, "AZURE_KUBERNETES_SNI_NAME": "bad name/x"})
    assert line == (
        "identity.default.token_proxy_sni_name (AZURE_KUBERNETES_SNI_NAME): "
        "'bad name/x' is not a DNS name or IP address"
    )


def test_named_identity_problems_name_the_key(tmp_path: Path) -> None:
    body = (
        '[identity.other]\ntenant_id = "t"\nclient_id = "c"\ntoken_file = "/sa"\n'
        'token_proxy = "http://10.0.0.1"\n'
        "[token.o]\nscope = " + json.dumps(STORAGE) + '\nidentity = "other"\n'
    )
    assert _problems(tmp_path, {}, body) == [
        "identity.other.token_proxy: 'http://10.0.0.1' must be an https URL such as "
        "https://10.0.0.10/base (the token proxy is reached over TLS only)"
    ]


def test_bad_proxy_settings_exit_2_one_line_each(tmp_path: Path) -> None:
    env = {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "sa"),
        "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out"),
        "ENTRA_TOKEND_TOKENS": f"s={STORAGE}",
        "AZURE_KUBERNETES_TOKEN_PROXY": "http://10.0.0.1/base",
        "AZURE_KUBERNETES_CA_FILE": str(tmp_path / "a"),
        "AZURE_KUBERNETES_CA_DATA": "x",
    }
    result = run_cli("check-config", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4, lines  # URL, both CAs, unreadable CA file, unusable CA data
    assert all(
        line.startswith("entra-tokend: config: identity.default.token_proxy") for line in lines
    )
    assert "Traceback" not in result.stderr


def test_a_token_proxy_ca_file_that_is_a_fifo_is_a_config_error(tmp_path: Path) -> None:
    """A FIFO as the token proxy's CA file (AZURE_KUBERNETES_CA_FILE) is a problem, never
    opened (it would block check-config and run)."""
    fifo = tmp_path / "ca"
    os.mkfifo(fifo)
    p = Problems()
    token_proxy_ca_file(fifo, "identity.default.token_proxy_ca_file", p)
    assert p.lines
    assert "not a regular file" in p.lines[0]
