"""``run --once``: a small supervisor of runner events.

``OnceSupervisor.attach`` makes every runner's schedule "acquire now, plan no refresh after"
(``TokenSchedule.force_once``: a still-valid file from an earlier run is replaced) and listens
to the runners' events; ``wait`` then returns the exit code as soon as the outcome is known:

- 0 when every token has a ``Written`` event (its file replaced and its hook run);
- 1 at once when a token not yet written has a ``Failed`` event marked ``configuration`` (only a
  configuration change fixes it: retrying until the deadline would only hide it);
- 1 at the deadline (seconds on the injected clock's monotonic time), logging each missing
  token's last failure (repeated failures are logged once, so the cause may be far up);
- 1 when ``stop`` is called first (a signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Callable, Mapping
from typing import Any

from entra_tokend.model import Clock
from entra_tokend.ports import Failed, RunnerEvent, Written
from entra_tokend.runner import TokenRunner

EXIT_OK, EXIT_FAILURE = 0, 1


class OnceSupervisor:
    """Waits for ``runners`` (name → runner) to each write once; see the module docstring."""

    def __init__(
        self, runners: Mapping[str, TokenRunner], clock: Clock, deadline: float, log: Any
    ) -> None:
        self._runners = dict(runners)
        self._clock = clock
        self._deadline_seconds = deadline
        self._log = log
        self._written: set[str] = set()
        self._fatal: dict[str, str] = {}
        self._last_failure: dict[str, str] = {}
        self._progress = asyncio.Event()
        self._stopped = False

    def attach(self) -> None:
        """Force every runner's schedule and listen to its events (before they start)."""
        for runner in self._runners.values():
            runner.schedule.force_once()
            runner.listen(self.observe)

    def observe(self, event: RunnerEvent) -> None:
        """The runners' event listener."""
        if isinstance(event, Written):
            self._written.add(event.name)
            self._fatal.pop(event.name, None)
        elif isinstance(event, Failed):
            self._last_failure[event.name] = f"{event.reason}: {event.detail}"
            if event.configuration and event.name not in self._written:
                self._fatal[event.name] = event.detail
        self._progress.set()

    def signal_handlers(self) -> Mapping[int, Callable[[], None]]:
        """SIGHUP is logged and ignored: there is no reload to apply (the run ends when every
        token is on disk), and SIGHUP's default action would end it."""
        return {
            signal.SIGHUP: functools.partial(
                self._log.info, "SIGHUP ignored: run --once does not reload"
            )
        }

    def stop(self) -> None:
        """Give up now (SIGTERM/SIGINT): ``wait`` returns 1."""
        self._stopped = True
        self._progress.set()

    async def wait(self) -> int:
        """Wait until every token is written, a configuration error, the deadline or ``stop``;
        returns the exit code."""
        deadline = self._clock.monotonic() + self._deadline_seconds
        while not self._stopped:
            result = self._result(deadline)
            if result is not None:
                return result
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._progress.wait(), timeout=max(0.0, deadline - self._clock.monotonic())
                )
        return EXIT_FAILURE

    def _result(self, deadline: float) -> int | None:
        if len(self._written) == len(self._runners):
            self._log.info("every token is on disk", tokens=len(self._runners))
            return EXIT_OK
        if self._fatal:
            for name, why in self._fatal.items():
                self._log.error("configuration error from Entra; giving up", token=name, detail=why)
            return EXIT_FAILURE
        if self._clock.monotonic() >= deadline:
            missing = {
                name: self._last_failure.get(name, "no attempt finished")
                for name in self._runners
                if name not in self._written
            }
            self._log.error(
                "deadline reached before every token was on disk",
                missing=sorted(missing),
                last_failure=missing,
                deadline_seconds=self._deadline_seconds,
            )
            return EXIT_FAILURE
        return None
