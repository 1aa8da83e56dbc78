"""AKS identity bindings: token requests through the cluster's token proxy, as the SDKs send them.

The emulator's identity-binding mode is the cluster: a TLS token proxy with its own CA and an
SNI name that is not its address, forwarding to an Entra that accepts identity-binding
assertions only through it. The daemon runs as the real CLI; the exchange's TLS details run in
process against the same real proxy; azure-identity (``enable_azure_proxy=True``) is the
reference the request shapes are compared with.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from entra_tokend import preflight
from entra_tokend.config import ConfigError, Overrides
from entra_tokend.emulator import Emulator
from entra_tokend.emulator.proxy import IdentityBindingProxy
from entra_tokend.emulator.recorder import RecordedRequest
from entra_tokend.exchange import (
    ClientError,
    ClientPool,
    EntraExchange,
    ExchangeError,
    NetworkError,
    ServerError,
    proxied_url,
    request_url,
)
from entra_tokend.model import Identity, Reason
from test_network import ConnectProxy
from testlib import (
    STORAGE,
    VAULT,
    DaemonProcess,
    base_env,
    cli,
    emulator_env,
    run_cli,
    wait_until,
    write_config,
)

SNI = "ib.aks.local"
PROXY_VARS = (
    "AZURE_KUBERNETES_TOKEN_PROXY",
    "AZURE_KUBERNETES_SNI_NAME",
    "AZURE_KUBERNETES_CA_FILE",
    "AZURE_KUBERNETES_CA_DATA",
)


@pytest.fixture(name="ib")
def ib_fixture(tmp_path: Path) -> Iterator[Emulator]:
    """An emulator over TLS in identity-binding mode."""
    with Emulator(tmp_path / "ib", tls=True, identity_binding=True) as emu:
        yield emu


def _proxy(emu: Emulator) -> IdentityBindingProxy:
    assert emu.proxy is not None
    return emu.proxy


def _identity(emu: Emulator, **changes: Any) -> Identity:
    proxy = _proxy(emu)
    fields: dict[str, Any] = {
        "name": "default",
        "tenant_id": emu.tenant_id,
        "client_id": emu.client_id,
        "token_file": emu.token_file,
        "authority_host": emu.authority_host,
        "token_proxy": proxy.url,
        "token_proxy_sni_name": SNI,
        "token_proxy_ca_file": proxy.ca_file,
    }
    fields.update(changes)
    return Identity(**fields)


def _exchange(
    identity: Identity, assertion: str, env: dict[str, str] | None = None
) -> tuple[Any, ExchangeError | None]:
    """One exchange in process (a fresh pool); returns (token or None, error or None)."""

    async def go() -> tuple[Any, ExchangeError | None]:
        pool = ClientPool(timeout=10, env=env or {})
        try:
            return await EntraExchange(pool).exchange(identity, STORAGE, assertion), None
        except ExchangeError as exc:
            return None, exc
        finally:
            await pool.aclose()

    return asyncio.run(go())


def _shape(req: RecordedRequest) -> dict[str, Any]:
    """What must match between two clients: path, query, form (assertion aside), TLS name."""
    form = {k: v for k, v in req.form.items() if k != "client_assertion"}
    return {
        "path": req.path,
        "query": req.query,
        "form": form,
        "form_fields": sorted(req.form),
        "server_name": req.server_name,
        "via_proxy": req.via_proxy,
        "method": req.method,
        "content_type": req.headers.get("content-type"),
    }


# ------------------------------------------------------------------------ the URL rule (pure)


@pytest.mark.parametrize(
    ("proxy", "expected"),
    [
        ("https://10.0.0.1", "https://10.0.0.1/t/oauth2/v2.0/token?x=1"),
        ("https://10.0.0.1/", "https://10.0.0.1/t/oauth2/v2.0/token?x=1"),
        ("https://10.0.0.1:8443/base", "https://10.0.0.1:8443/base/t/oauth2/v2.0/token?x=1"),
        ("https://10.0.0.1/a/b//", "https://10.0.0.1/a/b/t/oauth2/v2.0/token?x=1"),
        ("https://[fd00::1]:443/ib", "https://[fd00::1]:443/ib/t/oauth2/v2.0/token?x=1"),
    ],
)
def test_proxy_url_joins_paths_and_keeps_the_requests_query(proxy: str, expected: str) -> None:
    # azure-identity 1.27 _update_request_url: proxy path rstrip('/') + '/' + request path
    # lstrip('/'); the request's query kept.
    assert proxied_url(proxy, "https://login.example/t/oauth2/v2.0/token?x=1") == expected


def test_request_url_is_the_token_endpoint_without_a_proxy(ib: Emulator) -> None:
    direct = _identity(ib, token_proxy=None, token_proxy_sni_name=None, token_proxy_ca_file=None)
    assert request_url(direct) == f"{ib.authority_host}/{ib.tenant_id}/oauth2/v2.0/token"
    proxied = _identity(ib)
    assert request_url(proxied) == f"{_proxy(ib).url}/{ib.tenant_id}/oauth2/v2.0/token"


# ------------------------------------------------------------------------ end to end (real CLI)


def test_tokens_come_through_the_proxy_and_the_same_assertion_direct_is_refused(
    ib: Emulator, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = emulator_env(ib, out, ENTRA_TOKEND_TOKENS=f"storage={STORAGE}")
    shown = run_cli("check-config", env=env)
    assert shown.returncode == 0, shown.stderr
    assert (
        f"# token requests: through the identity-binding token proxy {_proxy(ib).url} "
        f"(TLS server name {SNI}; trusting only {_proxy(ib).ca_file}" in shown.stdout
    )
    result = run_cli("run", "--once", env=env)
    assert result.returncode == 0, result.stderr
    token = (out / "storage").read_text()
    assert token in ib.issued_tokens
    (sent,) = ib.token_requests()
    assert sent.via_proxy
    assert sent.server_name == SNI
    assert sent.path == f"/identitybinding/{ib.tenant_id}/oauth2/v2.0/token"
    assert sent.status == 200
    assertion = sent.form["client_assertion"]
    assert token not in result.stderr
    assert assertion not in result.stderr
    # Proof the proxy path matters: the very same request sent straight to Entra is refused.
    with httpx.Client(verify=ib.client_ssl_context() or True, trust_env=False) as c:
        direct = c.post(f"{ib.authority_host}/{ib.tenant_id}/oauth2/v2.0/token", data=sent.form)
    assert direct.status_code == 401
    assert direct.json()["error_codes"] == [700212]


def test_same_request_shape_as_azure_identity(ib: Emulator, tmp_path: Path) -> None:
    env_file = ib.write_env_file(tmp_path / "pod.env")
    app = (
        "from azure.identity import WorkloadIdentityCredential\n"
        f"WorkloadIdentityCredential(enable_azure_proxy=True).get_token({VAULT!r})\n"
    )
    sdk = subprocess.run(
        [
            *("bash", "-c", 'set -a; . "$1"; set +a; exec "$2" -c "$3"'),
            *("bash", str(env_file), sys.executable, app),
        ],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sdk.returncode == 0, sdk.stderr[-2000:]
    pod_env = {k: v for k, v in ib.env().items()}
    out = tmp_path / "out"
    ours = run_cli(
        "run",
        "--once",
        env={
            **pod_env,
            "ENTRA_TOKEND_OUTPUT_DIR": str(out),
            "ENTRA_TOKEND_LISTEN": "",
            "ENTRA_TOKEND_TOKENS": f"v={VAULT}",
        },
    )
    assert ours.returncode == 0, ours.stderr
    theirs_req, ours_req = ib.token_requests()
    assert theirs_req.status == ours_req.status == 200
    assert _shape(ours_req) == _shape(theirs_req)
    assert ours_req.server_name == SNI
    assert ours_req.form["client_assertion"] == theirs_req.form["client_assertion"]


def test_ca_rotation_mid_run_without_a_restart(tmp_path: Path) -> None:
    # Tokens live 4 s, so the daemon asks again every ~2 s: each step below is a new request.
    with Emulator(tmp_path / "ib", tls=True, identity_binding=True, access_token_lifetime=4) as ib:
        config = write_config(tmp_path / "c.toml", {"storage": STORAGE}, min_refresh_interval=0.5)
        daemon = DaemonProcess(
            ["run", "--config", str(config)], emulator_env(ib, tmp_path / "out"), tmp_path / "log"
        )
        try:
            daemon.wait_event("token written", timeout=20)
            proxy = _proxy(ib)
            # The empty-file moment: the previous CA is kept (and said once).
            proxy.publish_ca_bundle(b"")
            before = len(ib.token_requests())
            wait_until(lambda: len(ib.token_requests()) >= before + 2, timeout=20)
            assert all(r.status == 200 for r in ib.token_requests())
            daemon.wait_event("token proxy CA file unusable; keeping the previous CA")
            assert daemon.count("token proxy CA file unusable; keeping the previous CA") == 1
            # A real rotation: the proxy serves a certificate from a new CA at once; the
            # daemon trusts it from its next request on.
            assert daemon.count("token refresh failed") == 0
            proxy.rotate_ca()
            daemon.wait_event("token proxy CA reloaded", timeout=20)

            def since_reload() -> list[str]:
                names = [e["event"] for e in daemon.events()]
                return names[names.index("token proxy CA reloaded") :]

            later = wait_until(lambda: "token written" in since_reload() and since_reload())
            # (A request in the instant between the bundle's publication and the proxy's
            # switch to the new certificate may fail; none may fail after the reload.)
            assert "token refresh failed" not in later
            last = ib.token_requests()[-1]
            assert (last.status, last.server_name, last.via_proxy) == (200, SNI, True)
            assert daemon.proc.poll() is None  # the same process all along
        finally:
            assert daemon.stop() == 0


def test_dev_identity_binding(tmp_path: Path) -> None:
    log = tmp_path / "dev.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cli("dev", "--identity-binding", "--listen", "127.0.0.1:0", "--log-format", "json"),
            cwd=tmp_path,
            env=base_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until((tmp_path / "tokens" / "storage").exists, timeout=30)
            env_file = (tmp_path / ".entra-tokend-dev" / "env").read_text()
            assert "AZURE_KUBERNETES_TOKEN_PROXY='https://127.0.0.1:" in env_file
            assert f"AZURE_KUBERNETES_SNI_NAME='{SNI}'" in env_file
            assert "AZURE_KUBERNETES_CA_FILE=" in env_file
            assert "identity binding: token proxy https://127.0.0.1:" in log.read_text()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ------------------------------------------------------------ TLS and failures (in process)


def test_wrong_sni_wrong_ca_or_no_sni_fail_naming_the_proxy(ib: Emulator) -> None:
    assertion = ib.token_file.read_text()
    cases = {
        "wrong SNI": _identity(ib, token_proxy_sni_name="other.aks.local"),
        "no SNI (checked against the address)": _identity(ib, token_proxy_sni_name=None),
        "the emulator's Entra CA": _identity(ib, token_proxy_ca_file=ib.ca_file),
    }
    for what, identity in cases.items():
        token, error = _exchange(identity, assertion)
        assert token is None, what
        assert isinstance(error, NetworkError), what
        assert error.message.startswith(f"cannot reach token proxy {_proxy(ib).url}:"), what
        assert "CERTIFICATE_VERIFY_FAILED" in error.message, what
        assert error.hint is not None
        assert "AZURE_KUBERNETES_SNI_NAME" in error.hint
    assert ib.token_requests() == []
    token, error = _exchange(_identity(ib), assertion)
    assert error is None
    assert token.token in ib.issued_tokens


def test_ca_data_trusts_only_that_ca_and_no_ca_means_the_default_store(
    ib: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    assertion = ib.token_file.read_text()
    pem = _proxy(ib).ca_file.read_text()
    _token, error = _exchange(
        _identity(ib, token_proxy_ca_file=None, token_proxy_ca_data=pem), assertion
    )
    assert error is None, error
    # No CA given: the default store, which here is SSL_CERT_FILE.
    no_ca = _identity(ib, token_proxy_ca_file=None)
    monkeypatch.setenv("SSL_CERT_FILE", str(_proxy(ib).ca_file))
    _token, error = _exchange(no_ca, assertion)
    assert error is None, error
    monkeypatch.setenv("SSL_CERT_FILE", str(ib.ca_file))
    _token, error = _exchange(no_ca, assertion)
    assert isinstance(error, NetworkError)


def test_https_proxy_tunnels_to_the_token_proxy_with_the_sni_name(ib: Emulator) -> None:
    tunnel = ConnectProxy()
    try:
        env = {"HTTPS_PROXY": f"http://127.0.0.1:{tunnel.port}"}
        _token, error = _exchange(_identity(ib), ib.token_file.read_text(), env)
        assert error is None, error
        port = _proxy(ib).port
        assert tunnel.tunnels == [f"127.0.0.1:{port}"]
        assert ib.token_requests()[-1].server_name == SNI  # SNI holds through the tunnel
        env["NO_PROXY"] = "127.0.0.0/8"
        _token, error = _exchange(_identity(ib), ib.token_file.read_text(), env)
        assert error is None, error
        assert len(tunnel.tunnels) == 1
    finally:
        tunnel.close()


def test_the_proxys_own_refusal_and_entras_errors_through_it(ib: Emulator) -> None:
    _proxy(ib).deny(client_id=ib.client_id)
    _token, error = _exchange(_identity(ib), ib.token_file.read_text())
    assert isinstance(error, ServerError)
    assert error.reason is Reason.SERVER_ERROR
    assert error.configuration
    assert error.message == (
        f"token proxy {_proxy(ib).url} answered HTTP 403 itself (not an Entra error)"
    )
    assert error.hint is not None
    assert "use-managed-identity" in error.hint
    assert "use-identity-binding" in error.hint
    assert "forbidden" not in error.message  # the proxy's body is never quoted
    _proxy(ib).allow_all()
    # Entra's own answers pass through the proxy and are classified as Entra's.
    regular = ib.issue_assertion(audience=["api://AzureADTokenExchange"])
    _token, error = _exchange(_identity(ib), regular)
    assert isinstance(error, ClientError)
    assert error.details.aadsts == 700212
    assert error.configuration


# ------------------------------------------------------------------------------- validation


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
        pem = _proxy(emu).ca_file.read_text()
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
