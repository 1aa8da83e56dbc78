"""The runner's side of "what readiness says is what is on disk", in process on the fake clock:
a lost output makes the token not ready at once, is put back from the held token while it is
valid (no exchange) and counted; an expired one is refreshed instead; a failed put-back is a
failure like any write error. And: an output only in memory is logged without a path."""

from __future__ import annotations

import asyncio

from entra_tokend.exposition import registry
from entra_tokend.model import Reason
from entra_tokend.outputs import WriteError
from entra_tokend.runner import State
from support import wait_until_async
from support.harness import Harness


def _redelivered(h: Harness) -> float | None:
    return registry(h.metrics).get_sample_value(
        "entra_tokend_output_redelivered_total", {"token": "storage"}
    )


def test_a_lost_output_is_not_ready_at_once_and_put_back_without_an_exchange() -> None:
    async def scenario() -> None:
        h = Harness()
        h.runner.start()
        await wait_until_async(lambda: h.readiness.ready)
        h.output.lost = "missing"
        h.runner.output_changed()
        # Before the runner's task runs at all: readiness already says so.
        assert h.readiness.snapshot() == (False, {"storage": "missing"})
        assert h.metrics.ready == 0
        assert h.runner.state is State.MISSING
        await wait_until_async(lambda: h.output.restored == 1)
        await wait_until_async(lambda: h.readiness.ready)
        assert h.runner.state_name == "ok"
        assert len(h.exchange.sent) == 1  # the first token only
        assert _redelivered(h) == 1
        h.runner.stop()

    asyncio.run(scenario())


def test_an_output_lost_after_its_token_expired_is_refreshed_not_put_back() -> None:
    async def scenario() -> None:
        h = Harness()
        h.exchange.script = [120.0]
        await h.runner.refresh()
        h.clock.advance(121)
        h.output.lost = "replaced"
        h.runner.start()
        h.runner.output_changed()
        await wait_until_async(lambda: len(h.exchange.sent) == 2)
        await wait_until_async(lambda: h.readiness.ready)
        assert h.output.restored == 0
        assert h.output.delivered == ["token-1", "token-2"]
        assert _redelivered(h) is None
        h.runner.stop()

    asyncio.run(scenario())


def test_a_failed_put_back_is_a_write_error_and_the_refresh_then_delivers() -> None:
    async def scenario() -> None:
        h = Harness()
        await h.runner.refresh()
        h.output.fail = WriteError("disk full")
        h.output.lost = "missing"
        h.runner.start()
        h.runner.output_changed()
        await wait_until_async(lambda: h.failures(Reason.WRITE_ERROR) == 1)
        assert not h.readiness.ready
        h.output.fail = None
        h.runner.refresh_now()
        await wait_until_async(lambda: h.readiness.ready)
        assert h.output.delivered == ["token-1", "token-2"]  # after a backoff: a new token
        h.runner.stop()

    asyncio.run(scenario())


def test_an_unchanged_output_costs_nothing() -> None:
    async def scenario() -> None:
        h = Harness()
        await h.runner.refresh()
        h.runner.output_changed()  # our own rename, a touch, a poll
        assert h.readiness.snapshot() == (True, {"storage": "ok"})
        assert h.output.restored == 0

    asyncio.run(scenario())
