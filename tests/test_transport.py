"""ClientPool's shards: how a destination's connections are split over httpx clients and which
client a request gets (httpx.MockTransport; no network, no timing)."""

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


def test_sequential_requests_reuse_the_first_client() -> None:
    async def main() -> set[int]:
        pool = _pool(64)
        seen = set()
        for _ in range(5):
            async with pool.lease(IDENT, URL) as client:
                seen.add(id(client))
        await pool.aclose()
        return seen

    assert len(asyncio.run(main())) == 1


def test_concurrent_requests_spread_over_every_client() -> None:
    clients = len(shard_sizes(64))

    async def main() -> list[int]:
        pool = _pool(64)
        release = asyncio.Event()
        held: list[int] = []

        async def hold() -> None:
            async with pool.lease(IDENT, URL) as client:
                held.append(id(client))
                await release.wait()

        tasks = [asyncio.create_task(hold()) for _ in range(clients * 2)]
        while len(held) < len(tasks):
            await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*tasks)
        await pool.aclose()
        return held

    held = asyncio.run(main())
    counts = sorted(held.count(c) for c in set(held))
    assert counts == [2] * clients


def test_unleased_client_is_the_least_busy_one() -> None:
    async def main() -> bool:
        pool = _pool(2 * SHARD_CONNECTIONS)
        async with pool.lease(IDENT, URL) as busy:
            other = pool.client(None, URL)
        await pool.aclose()
        return other is not busy

    assert asyncio.run(main())
