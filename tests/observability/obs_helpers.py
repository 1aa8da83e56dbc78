"""Helpers for the observability tests: a live metrics server on loopback, HTTP, the rules.

Scrape parsing, JWT claims and waiting are the shared ones (testlib).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml

from entra_tokend.exposition import Exposition
from entra_tokend.metrics import Metrics
from entra_tokend.model import Reason
from entra_tokend.server import bound_port, start_server, stop_server
from testlib import REPO

PROMETHEUS_DIR = REPO / "config" / "prometheus"
GRAFANA_DIR = REPO / "config" / "grafana"


@dataclass
class Reply:
    """One HTTP response as the client saw it."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Readiness:
    """What the fake daemon reports to /readyz; mutated by tests while the server runs."""

    ready: bool = False
    tokens: dict[str, str] = field(default_factory=dict)
    fail: bool = False

    def __call__(self) -> tuple[bool, dict[str, str]]:
        if self.fail:
            raise RuntimeError("readiness broke")
        return self.ready, dict(self.tokens)


class LiveServer:
    """start_server() running in its own event loop on a background thread."""

    def __init__(self, metrics: Metrics, readiness: Readiness) -> None:
        self.metrics = metrics
        self.exposition = Exposition(metrics)
        self.readiness = readiness
        self.port = 0
        self.server: asyncio.AbstractServer | None = None
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="obs-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("metrics server did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(
                start_server("127.0.0.1", 0, self.metrics, self.readiness, self.exposition)
            )
        except BaseException as exc:
            self._error = exc
            self._started.set()
            loop.close()
            return
        self.port = bound_port(server)
        self.server = server
        self._started.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    def scrape(self) -> str:
        """GET /metrics, text format."""
        reply = request(self.port, "/metrics")
        assert reply.status == 200
        return reply.body.decode()

    def stop_server(self) -> None:
        """Run server.stop_server() in the server's loop and wait for it to finish."""
        assert self.server is not None
        future = asyncio.run_coroutine_threadsafe(stop_server(self.server), self._loop)
        future.result(30)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        assert not self._thread.is_alive(), "metrics server thread did not stop"


def request(
    port: int,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Reply:
    """One request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def populate(metrics: Metrics) -> None:
    """Give every metric family at least one sample, as a daemon in steady state would."""
    metrics.token_configured("graph", "default", hook=True)
    metrics.token_configured("storage", "default")
    metrics.token_written("graph", expires_on=1_900_000_000.0, now=1_899_996_400.0)
    metrics.refresh_failed("storage", Reason.THROTTLED)
    metrics.exchange_observed("default", 0.2)
    metrics.assertion_loaded("default", 1_900_000_500.0)
    metrics.assertion_rotated("default")
    metrics.hook_failed("graph")
    metrics.endpoint_configured(["https://vault.azure.net"])
    metrics.endpoint_request("ok", "https://vault.azure.net", 0.0004)
    metrics.set_ready(True)


def run_promtool(
    promtool: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run promtool with a deadline; the caller judges the exit code."""
    return subprocess.run(
        [promtool, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


_METRIC_NAME = re.compile(r"\bentra_tokend_[a-z0-9_]+\b")


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of config/prometheus/alerts.yaml."""
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yaml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard, parsed."""
    doc: dict[str, Any] = json.loads((GRAFANA_DIR / "entra-tokend.json").read_text())
    return doc


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard's panels (variable queries excluded)."""
    return [
        target["expr"]
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def dashboard_variable_queries() -> list[str]:
    """The label_values(...) queries of the dashboard's template variables."""
    return [
        var["definition"] for var in dashboard()["templating"]["list"] if var.get("type") == "query"
    ]


def queried_metric_names() -> set[str]:
    """Every entra_tokend_* sample name that the alert rules or the dashboard query."""
    texts = [rule["expr"] for rule in alert_rules()] + dashboard_exprs()
    texts += dashboard_variable_queries()
    return {name for text in texts for name in _METRIC_NAME.findall(text)}


def free_port() -> int:
    """A loopback port that was free a moment ago (for a daemon subprocess's --listen)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def live_server() -> Iterator[LiveServer]:
    """A running server with fresh Metrics and a not-ready readiness function."""
    server = LiveServer(Metrics(), Readiness())
    server.start()
    try:
        yield server
    finally:
        server.stop()
