"""One token runner on the fakes (``support.fakes``), built the way the daemon builds one.

``Harness()`` holds a runner for the token "storage" (``STORAGE``, identity "default") with a
fake clock, source, exchange and output, real ``Metrics`` and ``Readiness``, a limiter of one
and ``POLICY``; ``events`` collects what the runner reports to its listeners.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from entra_tokend.exposition import registry
from entra_tokend.metrics import Metrics
from entra_tokend.model import OutputSpec, Reason, TokenSpec
from entra_tokend.ports import RunnerEvent
from entra_tokend.readiness import Readiness
from entra_tokend.runner import Deps, build
from support import STORAGE
from support.fakes import POLICY, FakeClock, FakeExchange, FakeOutput, FakeSource


class Harness:
    """The runner under test and its fakes, started readiness included."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.source = FakeSource()
        self.exchange = FakeExchange(self.clock)
        self.output = FakeOutput()
        self.metrics = Metrics()
        self.readiness = Readiness(self.metrics)
        self.events: list[RunnerEvent] = []
        spec = TokenSpec("storage", STORAGE, "default", OutputSpec(Path("/out/storage")))
        deps = Deps(self.metrics, self.readiness, self.clock, asyncio.Semaphore(1), POLICY)
        self.runner = build(
            spec, deps, self.source, self.exchange, self.output, listeners=[self.events.append]
        )
        self.readiness.track("storage", self.runner)
        self.readiness.start()

    def failures(self, reason: Reason) -> float:
        """The token's refresh failures counted for ``reason`` (0 before the first)."""
        value = registry(self.metrics).get_sample_value(
            "entra_tokend_token_refresh_failures_total",
            {"token": "storage", "reason": str(reason)},
        )
        return value or 0.0  # a reason's series appears with its first failure
