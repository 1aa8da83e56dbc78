"""Inputs the daemon does not control: numbers and bytes from the network, hostile config.

Each test feeds one kind of bad input and checks that it ends as a clear, classified error —
never a hot loop, a crash, a stall or a leaked secret.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from entra_tokend.config import ConfigError, Overrides, load_config, read_toml
from entra_tokend.exchange import (
    ClientPool,
    EntraExchange,
    InvalidResponse,
    NetworkError,
    RequestTimeout,
    error_details,
    parse_retry_after,
    parse_token_response,
)
from entra_tokend.exchange.entra import MAX_RETRY_AFTER
from entra_tokend.logging import configure_logging, get_logger, redact_text, remember_secret
from entra_tokend.model import Identity
from support import STORAGE

NOW = 1_800_000_000.0
OPAQUE = "opaque0token0value0that0is0no0JWT"


@pytest.mark.parametrize(
    "expires_in",
    [0.001, 1e12, -1, 0, "１２", "12.5", "1e3", True, None, 8 * 86400, "9" * 400],
)
def test_an_unschedulable_expires_in_is_an_invalid_response(expires_in: object) -> None:
    body = json.dumps({"access_token": "a.b.c", "expires_in": expires_in}).encode()
    with pytest.raises(InvalidResponse, match="expires_in"):
        parse_token_response(body, STORAGE, "rid", NOW)


@pytest.mark.parametrize("refresh_in", [3600, 7200, 0, 0.5, "x", -5])
def test_a_refresh_in_outside_the_lifetime_is_an_invalid_response(refresh_in: object) -> None:
    body = json.dumps({"access_token": "a.b.c", "expires_in": 3600, "refresh_in": refresh_in})
    with pytest.raises(InvalidResponse, match="refresh_in"):
        parse_token_response(body.encode(), STORAGE, "rid", NOW)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("9" * 5000, MAX_RETRY_AFTER),
        ("86400", MAX_RETRY_AFTER),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER),
        ("٣٠", None),  # Arabic-Indic digits are digits to str.isdigit, not to HTTP
        ("30", 30.0),
    ],
)
def test_retry_after_is_bounded(header: str, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected


def _identity(tmp_path: Path, port: int) -> Identity:
    return Identity("default", "t", "c", tmp_path / "sa", f"http://127.0.0.1:{port}")


async def _with_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    body: Callable[[int], Awaitable[None]],
) -> None:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        await body(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def test_request_timeout_bounds_the_whole_exchange_not_each_read(tmp_path: Path) -> None:
    """A body trickling in one byte at a time never ends a per-read timeout."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        try:
            while True:
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.2)
        except (ConnectionError, asyncio.CancelledError):
            writer.close()

    async def body(port: int) -> None:
        pool = ClientPool(timeout=1.0)
        try:
            with pytest.raises(RequestTimeout, match="within 1 s"):
                await EntraExchange(pool).exchange(_identity(tmp_path, port), STORAGE, "x")
        finally:
            await pool.aclose()

    asyncio.run(_with_server(trickle, body))


def test_a_broken_chunked_body_leaks_no_token_into_the_error(tmp_path: Path) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        # The body without its chunk-size line: the HTTP stack reads the token as an illegal
        # chunk header and quotes it in its exception text.
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(f'{{"access_token":"{OPAQUE}","expires_in":3600}}\r\n'.encode())
        await writer.drain()
        writer.close()

    async def body(port: int) -> None:
        pool = ClientPool(timeout=5.0)
        try:
            with pytest.raises(NetworkError) as info:
                await EntraExchange(pool).exchange(_identity(tmp_path, port), STORAGE, "x")
        finally:
            await pool.aclose()
        assert OPAQUE not in str(info.value)
        assert OPAQUE not in repr(info.value.details)
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__

    asyncio.run(_with_server(broken, body))


def test_remembered_secrets_are_redacted_by_value_whatever_their_shape() -> None:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    remember_secret(OPAQUE)
    get_logger().warning("oops", detail=f"the server said {OPAQUE}!", nested={"x": [OPAQUE]})
    line = out.getvalue()
    assert OPAQUE not in line
    assert line.count("[REDACTED]") == 2


def test_every_secret_is_redacted_when_there_are_thousands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the bound where the oldest are forgotten, every secret still remembered is redacted
    wherever it sits in the line, whole or as one JWT part, with many sharing a prefix (as
    Entra's tokens share their header); and no secret is kept in the registry itself."""
    from entra_tokend import logging as log_module

    monkeypatch.setattr(log_module, "_remembered", {})
    monkeypatch.setattr(log_module, "_index", {})
    header = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9"  # shared by every token, as in Entra's
    tokens = [
        f"{header}.eyJhdWQiOiJhcGk6Ly9zLXtpfSIsIm4iOj{i:06d}.sig{i:06d}xxxxxxxxxxxxxxx"
        for i in range(log_module._MAX_SECRETS // 2)
    ]
    opaque = [f"opaque-{i:06d}-0123456789" for i in range(log_module._MAX_SECRETS // 2)]
    for token, other in zip(tokens, opaque, strict=True):
        remember_secret(token)
        remember_secret(other)
    assert len(log_module._remembered) == log_module._MAX_SECRETS  # the bound holds
    indexed = sum(len(h) for lengths in log_module._index.values() for h in lengths.values())
    assert indexed == len(log_module._remembered)
    assert all(h for lengths in log_module._index.values() for h in lengths.values())
    assert all(log_module._index.values())  # nothing left of the forgotten ones
    held = repr((log_module._remembered, log_module._index))
    assert tokens[-1] not in held
    assert opaque[-1] not in held
    newest, newest_opaque = tokens[-1], opaque[-1]
    header, payload, signature = newest.split(".")
    line = log_module.redact_text(
        f"a {newest} b {signature}, x{newest_opaque}y and {newest[:40]} c{newest}d"
    )
    for secret in (newest, header, payload, signature, newest_opaque):
        assert secret not in line
    assert line.startswith("a [REDACTED] b [REDACTED], x[REDACTED]y and ")
    # An unrelated value with a remembered prefix and length is left alone.
    lookalike = newest_opaque[:-1] + ("8" if newest_opaque[-1] != "8" else "7")
    assert log_module.redact_text(f"{lookalike}!") == f"{lookalike}!"


def test_secrets_sharing_a_prefix_cannot_make_a_line_costly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Secrets with one prefix and hundreds of lengths (a hostile issuer), then a line echoing
    that prefix thousands of times: the line is withheld, not scanned at length."""
    from entra_tokend import logging as log_module

    monkeypatch.setattr(log_module, "_remembered", {})
    monkeypatch.setattr(log_module, "_index", {})
    for length in range(20, 620):
        remember_secret("AAAAAAAA" + "b" * (length - 8))
    assert log_module.redact_text("AAAAAAAA " * 5000) == log_module.WITHHELD
    assert log_module.redact_text("AAAAAAAA fine") == "AAAAAAAA fine"


def test_an_error_text_of_a_megabyte_is_cut_before_it_is_scanned() -> None:
    """A hostile token service's error_description of "eyJ" * 350,000 (the JWT shape rule was
    quadratic on it: minutes of event loop) ends as one bounded, redacted line."""
    from entra_tokend.exchange.entra import error_details

    details = error_details(400, {"error_description": "eyJ" * 350_000, "error": "x" * 10**6})
    assert details.description is not None
    assert len(details.description) <= 500
    assert "eyJeyJeyJeyJeyJeyJ" not in details.description
    assert details.error is not None
    assert len(details.error) <= 100


def test_a_secret_with_quotes_is_redacted_as_json_writes_it() -> None:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    secret = 'pa"ss\\w\u00f6rd-0123456789'
    remember_secret(secret)
    get_logger().warning("oops", detail=f"got {secret}")
    assert json.loads(out.getvalue())["detail"] == "got [REDACTED]"


def _problems(tmp_path: Path, env: dict[str, str], toml: str | None = None) -> list[str]:
    config = None
    if toml is not None:
        config = tmp_path / "c.toml"
        config.write_text(toml)
    base = {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "sa"),
        "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out"),
    }
    overrides = Overrides(config=str(config) if config else None, tokens=[f"a={STORAGE}"])
    with pytest.raises(ConfigError) as info:
        load_config(overrides, {**base, **env})
    return info.value.problems


def test_authority_with_a_password_is_rejected_without_echoing_it(tmp_path: Path) -> None:
    problems = _problems(tmp_path, {"AZURE_AUTHORITY_HOST": "https://u:hunter2@login.example"})
    assert len(problems) == 1
    assert "user information" in problems[0]
    assert "hunter2" not in problems[0]


def test_authority_with_a_tenant_path_is_rejected_with_a_hint(tmp_path: Path) -> None:
    url = "https://login.microsoftonline.com/my-tenant"
    (problem,) = _problems(tmp_path, {"AZURE_AUTHORITY_HOST": url})
    assert "AZURE_AUTHORITY_HOST" in problem
    assert "tenant_id" in problem


def test_a_path_component_longer_than_name_max_is_a_config_error(tmp_path: Path) -> None:
    toml = f'[token.a]\npath = "sub/{"x" * 256}"\n'
    (problem,) = _problems(tmp_path, {}, toml)
    assert problem.startswith("token.a.path:")
    assert "255" in problem


def test_a_toml_nested_thousands_deep_is_one_config_error(tmp_path: Path) -> None:
    toml = "x = " + "[" * 5000 + "]" * 5000 + "\n"
    (problem,) = _problems(tmp_path, {}, toml)
    assert "nested too deeply" in problem


def test_a_compressed_answer_is_refused_unread(tmp_path: Path) -> None:
    """~1 kB of gzip-in-gzip inflating to 128 MiB: the daemon asked for no compression and
    refuses a compressed body before httpx inflates any of it."""
    import gzip
    import resource

    bomb = gzip.compress(gzip.compress(b"\0" * (128 << 20)))

    async def send_bomb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = (
            "HTTP/1.1 400 Bad Request\r\nContent-Encoding: gzip, gzip\r\n"
            f"Content-Length: {len(bomb)}\r\n\r\n"
        )
        writer.write(head.encode() + bomb)
        await writer.drain()
        writer.close()

    async def body(port: int) -> None:
        pool = ClientPool(timeout=5.0)
        try:
            with pytest.raises(InvalidResponse, match="Content-Encoding"):
                await EntraExchange(pool).exchange(_identity(tmp_path, port), STORAGE, "x")
        finally:
            await pool.aclose()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    asyncio.run(_with_server(send_bomb, body))
    # Peak RSS (KiB) did not grow by the inflated size: nothing was inflated.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024


@pytest.mark.parametrize(
    "answer",
    [
        {"access_token": 'x";evil="1', "expires_in": 3600},
        {"access_token": "x$(id)`id`", "expires_in": 3600},
        {"access_token": "abc", "token_type": "Bearer\r\nX-Evil: 1", "expires_in": 3600},
        {"access_token": "abc", "token_type": 'Bearer"', "expires_in": 3600},
    ],
)
def test_token_answers_that_could_break_out_of_a_template_are_invalid(
    answer: dict[str, object],
) -> None:
    """Quotes, ';', '$' or a CRLF token_type could break out of an nginx/JAAS template: such
    answers are invalid responses."""
    with pytest.raises(InvalidResponse):
        parse_token_response(json.dumps(answer).encode(), STORAGE, "rid", 1_800_000_000.0)


def test_an_access_token_that_is_the_client_assertion_is_refused() -> None:
    """A service echoing the client assertion as the access token is refused: the projected
    token is never written as a token file."""
    assertion = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLXNlZ21lbnQtMTIz"

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": assertion, "expires_in": 3600})

    async def scenario() -> None:
        pool = ClientPool(transport=httpx.MockTransport(echo))
        ident = Identity("default", "t", "c", Path("/sa"), "https://login.example")
        try:
            with pytest.raises(InvalidResponse, match="client assertion"):
                await EntraExchange(pool).exchange(ident, STORAGE, assertion)
        finally:
            await pool.aclose()

    asyncio.run(scenario())


def test_an_echoed_assertion_is_redacted_before_it_is_cut() -> None:
    """An assertion echoed in an error description is redacted before the text is cut, so a cut
    cannot leave a fragment that no rule recognises."""
    assertion = "eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ." + "eyJhdWQiOlsiYXBpOi8v" * 40 + ".sig"
    body = {
        "error": "invalid_client",
        "error_description": f"AADSTS70011: bad assertion {assertion} end",
        "trace_id": assertion,
    }
    details = error_details(400, body)
    assert details.description is not None
    assert "eyJhdWQiOlsi" not in details.description
    assert "eyJhbGciOiJSUzI1NiIs" not in details.description
    assert details.trace_id is None


def test_a_jwt_signature_echoed_alone_is_redacted() -> None:
    """A JWT's signature segment echoed alone is redacted: it is most of the credential."""
    signature = "P4IyVLocKtLEBHXWStmoZ9mCCEncqMnEDLw_X5vmlfQ"
    remember_secret(f"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ5In0.{signature}")
    assert signature not in redact_text(f"HTTP 400: {signature}")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_config_file_that_is_a_fifo_or_a_device_is_a_config_error(
    tmp_path: Path, kind: str
) -> None:
    """A FIFO (would block) or a device such as /dev/zero (endless) as the config file is a
    config error, never read."""
    path = tmp_path / "c.toml"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="not a regular file"):
        read_toml(path)
