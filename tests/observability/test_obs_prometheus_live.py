"""A real Prometheus server scraping ``/metrics`` with the shipped alert rules loaded.

Prometheus asks for OpenMetrics, so this reads the cached OpenMetrics exposition
(``Metrics.render``) through Prometheus' own parser and storage: every stored series must equal
the registry's (token names that need escaping included), updates between scrapes must arrive,
a removed token's series must go stale, and the alert rules must evaluate without error and go
pending/firing for the tokens they are about. The rules' timing is promtool's business
(test_obs_rules); this is the wire between the daemon and a real server.
"""

from __future__ import annotations

import json
import math
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.exposition import generate_latest

from entra_tokend.exposition import registry
from entra_tokend.metrics import Metrics
from entra_tokend.model import Reason
from observability.obs_helpers import PROMETHEUS_DIR, LiveServer, free_port
from testlib import samples, tool, wait_until

ODD = ['quo"te', "back\\slash", "new\nline", "ünïcødé", "# HELP x"]
JOB = "entra-tokend"

Series = dict[tuple[str, frozenset[tuple[str, str]]], float | str]


@pytest.fixture
def prometheus() -> str:
    """prometheus' path, from $PROMETHEUS or PATH (Debian package 'prometheus'; tests/tools.sh).

    Fails, not skips, without it."""
    return tool("prometheus", env_var="PROMETHEUS")


class Prometheus:
    """A Prometheus server on loopback scraping one target every 250 ms."""

    def __init__(self, binary: str, work: Path, target_port: int) -> None:
        self.port = free_port()
        config = {
            "global": {
                "scrape_interval": "250ms",
                "scrape_timeout": "250ms",
                "evaluation_interval": "250ms",
            },
            "rule_files": [str(PROMETHEUS_DIR / "alerts.yaml")],
            "scrape_configs": [
                {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}
            ],
        }
        path = work / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = work / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={work / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; its ``data``. Raises on an error status."""
        query = urllib.parse.urlencode(params)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{query}"
        with urllib.request.urlopen(url, timeout=30) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]

    def series(self) -> Series | None:
        """Every entra_tokend_* series of the job now, as ``samples()`` keys; None until the
        server answers."""
        try:
            vector = self.api("query", query=f'{{__name__=~"entra_tokend_.+",job="{JOB}"}}')
        except OSError:
            return None
        out: Series = {}
        for item in vector["result"]:
            labels = {k: v for k, v in item["metric"].items() if k not in ("job", "instance")}
            name = labels.pop("__name__")
            out[(name, frozenset(labels.items()))] = _comparable(float(item["value"][1]))
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


def _comparable(value: float) -> float | str:
    return "NaN" if math.isnan(value) else value


def expected(metrics: Metrics) -> Series:
    """The registry's series, read by prometheus_client's parser (the reference)."""
    return {
        k: _comparable(v) for k, v in samples(generate_latest(registry(metrics)).decode()).items()
    }


@pytest.fixture
def server(prometheus: str, live: LiveServer, tmp_path: Path) -> Iterator[Prometheus]:
    prom = Prometheus(prometheus, tmp_path, live.port)
    try:
        yield prom
    finally:
        prom.stop()


def _alerts(prom: Prometheus) -> set[tuple[str, str, str]]:
    """(alertname, token label or '', state) of every pending or firing alert."""
    return {
        (a["labels"]["alertname"], a["labels"].get("token", ""), a["state"])
        for a in prom.api("alerts")["alerts"]
    }


def test_prometheus_stores_what_the_daemon_exposes(live: LiveServer, server: Prometheus) -> None:
    m = live.metrics
    m.token_configured("graph", "default", hook=True)
    m.token_configured("storage", "default")
    m.token_written("graph", expires_on=4_000_000_000.0, now=1_899_996_400.0)
    m.token_written("storage", expires_on=4_000_000_000.0, now=1_899_996_400.0)
    for name in ODD:  # never acquired: expiry 0, which EntraTokendTokenExpiringSoon is about
        m.token_configured(name, "odd", hook=True)
        m.refresh_failed(name, Reason.NETWORK)
    m.token_adopted(ODD[0], math.inf)
    m.exchange_observed("default", 0.2)
    m.assertion_loaded("default", 4_000_000_000.0)
    m.set_ready(True)

    def caught_up() -> bool:
        return server.series() == expected(m)

    wait_until(caught_up, 60, what=f"Prometheus to store the exposition ({server.log})")
    # What Prometheus asked for:
    assert any("openmetrics" in key for key in live.exposition.formats_cached)

    # Changes between scrapes arrive (the cache re-renders only these tokens), and a removed
    # token's series go stale.
    m.token_written(ODD[1], expires_on=4_000_000_000.0, now=1_900_000_000.0)
    m.hook_failed(ODD[2])
    m.hook_failed("graph")
    m.refresh_failed("storage", Reason.THROTTLED)
    m.token_removed(ODD[4])
    m.set_ready(False)
    wait_until(caught_up, 60, what="Prometheus to store the changes")
    stored = server.series()
    assert stored is not None
    assert not any(dict(labels).get("token") == ODD[4] for _, labels in stored)

    def rules_evaluated() -> bool:
        rules = [r for g in server.api("rules")["groups"] for r in g["rules"]]
        assert all(r["health"] != "err" for r in rules), rules
        return bool(rules) and all(r["health"] == "ok" for r in rules)

    wait_until(rules_evaluated, 60, what="every alert rule to be evaluated")

    # Exactly these: ODD[0]'s expiry is +Inf; ODD[1] got a token; the failures before the first
    # scrape are no increase; storage failed after it and has not succeeded since.
    want = {
        ("EntraTokendTokenExpiringSoon", ODD[2], "pending"),
        ("EntraTokendTokenExpiringSoon", ODD[3], "pending"),
        ("EntraTokendHookFailing", ODD[2], "firing"),
        ("EntraTokendHookFailing", "graph", "firing"),
        ("EntraTokendRefreshFailing", "storage", "pending"),
        ("EntraTokendNotReady", "", "pending"),
    }

    def alerts_as_expected() -> bool:
        return _alerts(server) == want

    wait_until(alerts_as_expected, 60, what=f"the alerts {want}")
