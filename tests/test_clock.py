"""Wall-clock jumps (suspend/resume, NTP steps) seen by the real daemon, in process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from entra_tokend.config import Overrides, load_config
from entra_tokend.daemon import Daemon
from entra_tokend.emulator import Emulator
from support import STORAGE, wait_until_async


class JumpingClock:
    """Real time, plus a wall-clock offset the test can move (monotonic time is untouched)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def wall(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


def test_a_wall_clock_jump_past_the_refresh_time_refreshes_at_once(
    emulator: Emulator, tmp_path: Path
) -> None:
    """After a suspend the monotonic clock lags; the token must not sleep on towards expiry."""
    config = load_config(
        Overrides(tokens=[f"a={STORAGE}"], output_dir=str(tmp_path / "out"), listen=""),
        emulator.env(),
    )
    clock = JumpingClock()
    out = tmp_path / "out" / "a"

    async def scenario() -> int:
        daemon = Daemon(config, clock=clock)
        daemon.clock_check_interval = 0.05
        run = asyncio.create_task(daemon.run())
        await wait_until_async(lambda: daemon.readiness.ready, what="the first token on disk")
        assert len(emulator.issued_tokens) == 1
        # The token lives an hour and is next due in at most 33 min of monotonic time. After a
        # 34-minute suspend (wall time moved, monotonic did not) it is due now, not in 33 min.
        clock.offset += 34 * 60
        await wait_until_async(
            lambda: (
                len(emulator.issued_tokens) >= 2 and out.read_text() == emulator.issued_tokens[-1]
            ),
            what="the jump to trigger a refresh",
        )
        daemon.stop()
        return await run

    assert asyncio.run(scenario()) == 0
