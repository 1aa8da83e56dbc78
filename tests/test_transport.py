"""ClientPool's shards: how a destination's connections are split over transports and which
channel a request gets, and what a channel sends (httpx.MockTransport; no network, no timing)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from entra_tokend.exchange.transport import SHARD_CONNECTIONS, ClientPool, shard_sizes
from entra_tokend.model import Identity

IDENT = Identity(
    name="default",
    tenant_id="tenant-1",
    client_id="client-1",
    token_file=Path("/nonexistent"),
    authority_host="https://login.example",
)
URL = "https://login.example/tenant-1/oauth2/v2.0/token"


@pytest.mark.parametrize("total", [1, SHARD_CONNECTIONS, SHARD_CONNECTIONS + 1, 16, 40, 64])
def test_shards_add_up_and_stay_within_the_per_client_bound(total: int) -> None:
    sizes = shard_sizes(total)
    assert sum(sizes) == total
    assert max(sizes) <= SHARD_CONNECTIONS
    assert max(sizes) - min(sizes) <= 1
    assert len(sizes) == -(-total // SHARD_CONNECTIONS)


def test_zero_or_negative_still_gives_one_connection() -> None:
    assert shard_sizes(0) == [1]


def _pool(max_connections: int) -> ClientPool:
    return ClientPool(
        max_connections=max_connections,
        transport=httpx.MockTransport(lambda request: httpx.Response(200)),
        env={},
    )


def test_sequential_requests_reuse_the_first_channel() -> None:
    async def main() -> set[int]:
        pool = _pool(64)
        seen = set()
        for _ in range(5):
            async with pool.lease(IDENT, URL) as channel:
                seen.add(id(channel))
        await pool.aclose()
        return seen

    assert len(asyncio.run(main())) == 1


def _channels_held_at_once(max_connections: int, requests: int, held_by: str) -> list[int]:
    """The channel (its id) each of ``requests`` concurrent requests held, through
    ``pool.lease`` (Entra) or ``pool.hold`` (registries)."""

    async def main() -> list[int]:
        pool = _pool(max_connections)
        release = asyncio.Event()
        held: list[int] = []

        async def one() -> None:
            scope = pool.lease(IDENT, URL) if held_by == "lease" else pool.hold(None, URL)
            async with scope as channel:
                held.append(id(channel))
                await release.wait()

        tasks = [asyncio.create_task(one()) for _ in range(requests)]
        while len(held) < len(tasks):
            await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*tasks)
        await pool.aclose()
        return held

    return asyncio.run(main())


def test_concurrent_requests_spread_over_every_channel() -> None:
    channels = len(shard_sizes(64))
    held = _channels_held_at_once(64, channels * 2, "lease")
    counts = sorted(held.count(c) for c in set(held))
    assert counts == [2] * channels


def test_unleased_channel_is_the_least_busy_one() -> None:
    async def main() -> bool:
        pool = _pool(2 * SHARD_CONNECTIONS)
        async with pool.lease(IDENT, URL) as busy:
            other = pool.channel(None, URL)
        await pool.aclose()
        return other is not busy

    assert asyncio.run(main())


def test_a_channel_sends_no_cookie_it_was_given_and_follows_no_redirect() -> None:
    """Without httpx's client: a Set-Cookie is never sent back, a redirect is returned as it
    is, no compression is asked for, and the User-Agent and timeouts are the pool's."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            302, headers={"Set-Cookie": "fpc=abc; Path=/", "Location": "https://elsewhere/"}
        )

    async def main() -> list[int]:
        pool = ClientPool(timeout=7.0, transport=httpx.MockTransport(answer), env={})
        statuses = []
        for _ in range(2):
            async with (
                pool.lease(IDENT, URL) as channel,
                channel.stream("POST", URL, data={"a": "b"}) as response,
            ):
                await response.aread()
                statuses.append(response.status_code)
        await pool.aclose()
        return statuses

    assert asyncio.run(main()) == [302, 302]
    assert [str(r.url) for r in seen] == [URL, URL]
    for request in seen:
        assert "cookie" not in request.headers
        assert "accept-encoding" not in request.headers
        assert request.headers["user-agent"].startswith("entra-tokend/")
        assert request.extensions["timeout"] == {
            "connect": 7.0,
            "read": 7.0,
            "write": 7.0,
            "pool": 7.0,
        }


def test_held_channels_spread_like_leased_ones() -> None:
    """The registries of one docker config are requested at once through ``hold``: each gets
    a channel of its own while there are free ones (``channel`` alone would give them all
    the first, one connection, and they would queue behind each other)."""
    assert len(set(_channels_held_at_once(4, 4, "hold"))) == 4
