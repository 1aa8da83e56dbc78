"""Proxy selection: NO_PROXY the way curl and Go read it, and never clear text to a proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from entra_tokend.emulator import Emulator
from entra_tokend.exchange.proxy import ProxySettings
from support import STORAGE, run_cli
from support.proxy import ConnectProxy

PROXY = "http://proxy.internal:3128"


@pytest.mark.parametrize(
    ("no_proxy", "url", "direct"),
    [
        ("localhost,fd00::/8", "https://[fd00::12]/t", True),
        ("localhost,fd00::/8", "https://login.microsoftonline.com/t", False),
        ("127.0.0.0/8", "https://127.0.0.9:8443/t", True),
        ("10.0.0.0/8", "https://10.1.2.3/t", True),
        ("10.0.0.0/8", "https://11.1.2.3/t", False),
        (".svc.cluster.local", "https://a.ns.svc.cluster.local/t", True),
        ("svc.cluster.local", "https://svc.cluster.local/t", True),
        ("example.com", "https://notexample.com/t", False),
        ("*.example.com", "https://a.example.com/t", True),
        ("example.com:8443", "https://example.com/t", False),
        ("example.com:8443", "https://example.com:8443/t", True),
        ("[::1]", "https://[::1]:9/t", True),
        ("*", "https://anything.example/t", True),
        ("bad/entry/x, ,fd00::/8", "https://[fd00::1]/t", True),
    ],
)
def test_no_proxy_matches_like_curl_and_go(no_proxy: str, url: str, direct: bool) -> None:
    settings = ProxySettings.from_env({"HTTPS_PROXY": PROXY, "NO_PROXY": no_proxy})
    assert settings.proxy_for(url) == (None if direct else PROXY)


def test_unusable_entries_are_kept_aside_not_fatal() -> None:
    settings = ProxySettings.from_env({"no_proxy": "ok.example, bad/entry/x ,[oops"})
    assert settings.unusable == ["bad/entry/x", "[oops"]


def test_lower_case_wins_and_all_proxy_is_the_fallback() -> None:
    env = {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1", "ALL_PROXY": "x"}
    assert ProxySettings.from_env(env).proxy_for("https://a.example/") == "http://lower:1"
    assert ProxySettings.from_env({"ALL_PROXY": PROXY}).proxy_for("https://a.example/") == PROXY


def test_plain_http_on_loopback_never_goes_to_a_proxy() -> None:
    settings = ProxySettings.from_env({"HTTP_PROXY": PROXY, "ALL_PROXY": PROXY})
    assert settings.proxy_for("http://127.0.0.1:8080/t/oauth2/v2.0/token") is None
    assert settings.proxy_for("http://localhost:8080/t") is None


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    p = ConnectProxy()
    yield p
    p.close()


def test_an_ipv6_no_proxy_entry_does_not_break_exchanges(
    tmp_path: Path, proxy: ConnectProxy
) -> None:
    """The example from the field: NO_PROXY=localhost,fd00::/8 used to fail every request."""
    with Emulator(tmp_path / "emu", tls=True) as emu:
        env = {
            **emu.env(),
            "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out"),
            "HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}",
            "NO_PROXY": "localhost,fd00::/8",
        }
        result = run_cli("run", "--once", "--token", f"a={STORAGE}", env=env)
        assert result.returncode == 0, result.stderr
        assert len(proxy.tunnels) == 1  # 127.0.0.1 is not in fd00::/8: proxied
        env["NO_PROXY"] = "fd00::/8,127.0.0.0/8,bad/entry"
        result = run_cli("run", "--once", "--token", f"b={STORAGE}", env=env)
        assert result.returncode == 0, result.stderr
        assert len(proxy.tunnels) == 1  # CIDR bypass
        assert "NO_PROXY entry ignored" in result.stderr
        assert "bad/entry" in result.stderr


def test_a_plain_http_loopback_authority_ignores_http_proxy(
    emulator: Emulator, tmp_path: Path, proxy: ConnectProxy
) -> None:
    env = {
        **emulator.env(),
        "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out"),
        "HTTP_PROXY": f"http://127.0.0.1:{proxy.port}",
        "ALL_PROXY": f"http://127.0.0.1:{proxy.port}",
    }
    result = run_cli("run", "--once", "--token", f"a={STORAGE}", env=env)
    assert result.returncode == 0, result.stderr
    assert proxy.tunnels == []  # a proxied plain-http request would have failed (405)
