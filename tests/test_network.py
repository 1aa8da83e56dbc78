"""The HTTP side of the exchange: proxies, connection reuse, bounded concurrency, body cap."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from entra_tokend.emulator import Emulator, Fault
from entra_tokend.exchange import MAX_BODY_BYTES, ClientPool, EntraExchange, InvalidResponse
from entra_tokend.model import Identity
from entra_tokend.preflight import Findings, check_proxies
from support import STORAGE, output_files, run_cli, write_config
from support.proxy import ConnectProxy


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    p = ConnectProxy()
    yield p
    p.close()


def test_https_proxy_and_no_proxy_are_honoured(tmp_path: Path, proxy: ConnectProxy) -> None:
    with Emulator(tmp_path / "emu", tls=True) as emu:
        env = {
            **emu.env(),
            "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out"),
            "HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}",
        }
        result = run_cli("run", "--once", "--token", f"a={STORAGE}", env=env)
        assert result.returncode == 0, result.stderr
        port = emu.authority_host.rsplit(":", 1)[1]
        assert proxy.tunnels == [f"127.0.0.1:{port}"]
        env["NO_PROXY"] = "127.0.0.1"
        result = run_cli("run", "--once", "--token", f"b={STORAGE}", env=env)
        assert result.returncode == 0, result.stderr
        assert len(proxy.tunnels) == 1  # bypassed


def _scopes(tokens: int) -> dict[str, str]:
    return {f"t{i}": f"https://r{i}.example/.default" for i in range(tokens)}


def test_one_client_reuses_its_connection(emulator: Emulator, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", _scopes(5), concurrency=1)
    env = {**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out")}
    result = run_cli("run", "--once", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    peers = {r.peer for r in emulator.token_requests()}
    assert len(emulator.token_requests()) == 5
    assert len(peers) == 1  # five requests, one TCP connection


def test_concurrency_is_bounded(emulator: Emulator, tmp_path: Path) -> None:
    emulator.inject(Fault("delay", delay=0.2, count=12))
    config = write_config(tmp_path / "c.toml", _scopes(12), concurrency=3)
    env = {**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out")}
    result = run_cli("run", "--once", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    peers = {r.peer for r in emulator.token_requests()}
    assert 1 < len(peers) <= 3  # concurrent, but never more than 3 connections
    assert len(output_files(tmp_path / "out")) == 12


async def _serve_once(body: bytes) -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_response_body_is_capped(tmp_path: Path) -> None:
    async def main() -> Any:
        body = b'{"access_token": "' + b"x" * (MAX_BODY_BYTES + 10) + b'", "expires_in": 60}'
        server, port = await _serve_once(body)
        ident = Identity("default", "t", "c", tmp_path / "f", f"http://127.0.0.1:{port}")
        pool = ClientPool(timeout=5)
        ex = EntraExchange(pool)
        try:
            with pytest.raises(InvalidResponse, match="larger than"):
                await ex.exchange(ident, STORAGE, "assertion")
        finally:
            await pool.aclose()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize(
    "url", ["http://user:pw@127.0.0.1:99999", "http://[user:pw@127.0.0.1:3128"]
)
def test_an_unusable_proxy_url_is_a_config_problem(url: str) -> None:
    """A proxy URL that cannot be used (bad port, broken host) is a config problem, and the
    problem text never shows its password."""
    found = Findings()
    check_proxies({"HTTPS_PROXY": url}, found)
    assert found.problems
    assert "pw" not in found.problems[0]
