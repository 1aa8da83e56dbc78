"""Shipped alert rules and dashboard: promtool checks, unit tests, agreement with the metrics."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from support import REPO, sample_names
from support.observability import (
    PROMETHEUS_DIR,
    LiveServer,
    alert_rules,
    dashboard,
    dashboard_exprs,
    dashboard_variable_queries,
    populate,
    queried_metric_names,
    run_promtool,
)

REQUIRED_ALERTS = {
    "EntraTokendTokenExpiringSoon",
    "EntraTokendRefreshFailing",
    "EntraTokendProjectedTokenStale",
    "EntraTokendNotReady",
    "EntraTokendAbsent",
}


def test_promtool_check_rules_is_clean(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(PROMETHEUS_DIR / "alerts.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


def test_promtool_alert_unit_tests_pass(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", str(PROMETHEUS_DIR / "alerts_test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(promtool: str, tmp_path: Path) -> None:
    # The same unit tests against a rules file with a wrong threshold must fail, or the green
    # run above proves nothing.
    rules = (PROMETHEUS_DIR / "alerts.yaml").read_text()
    assert "time() < 600" in rules
    (tmp_path / "alerts.yaml").write_text(rules.replace("time() < 600", "time() < 900"))
    (tmp_path / "alerts_test.yaml").write_text((PROMETHEUS_DIR / "alerts_test.yaml").read_text())
    result = run_promtool(promtool, "test", "rules", str(tmp_path / "alerts_test.yaml"))
    assert result.returncode != 0
    assert "EntraTokendTokenExpiringSoon" in result.stdout + result.stderr


def test_required_alerts_exist_with_annotations() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert names >= REQUIRED_ALERTS
    for rule in rules:
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), rule["alert"]
        assert annotations["description"].strip(), rule["alert"]
        assert annotations["runbook_url"] == f"README.md#{rule['alert'].lower()}"
        assert rule["labels"]["severity"] in ("warning", "critical")


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yaml").read_text())
    assert doc["rule_files"] == ["alerts.yaml"]
    firing: set[str] = set()
    silent: set[str] = set()
    for test in doc["tests"]:
        for case in test["alert_rule_test"]:
            (firing if case["exp_alerts"] else silent).add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert firing == names
    assert silent == names


def _github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_runbook_anchors_exist_in_readme() -> None:
    readme = REPO / "README.md"
    assert readme.is_file(), "README.md with the 'Metrics, alerts and runbook' section is missing"
    anchors: set[str] = set()
    fenced = False
    for line in readme.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced  # '#' lines in code blocks are comments, not headings
        elif line.startswith("#") and not fenced:
            anchors.add(_github_anchor(line.lstrip("#")))
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"README has no section for {rule['alert']}"


def test_prometheusrule_wraps_the_same_groups() -> None:
    plain = yaml.safe_load((PROMETHEUS_DIR / "alerts.yaml").read_text())
    wrapped = yaml.safe_load((PROMETHEUS_DIR / "prometheusrule.yaml").read_text())
    assert wrapped["apiVersion"] == "monitoring.coreos.com/v1"
    assert wrapped["kind"] == "PrometheusRule"
    assert wrapped["metadata"]["name"] == "entra-tokend"
    assert wrapped["spec"]["groups"] == plain["groups"]


def _as_valid_promql(expr: str) -> str:
    # Grafana's variables are not PromQL: substitute what Grafana would.
    expr = expr.replace("$__rate_interval", "5m")
    return re.sub(r"\$[a-z_]+", ".*", expr)


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": _as_valid_promql(expr)}
        for i, expr in enumerate(exprs)
    ]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_has_the_required_views() -> None:
    doc = dashboard()
    assert doc["uid"] == "entra-tokend"
    exprs = dashboard_exprs()

    def has(*parts: str) -> bool:
        return any(all(part in expr for part in parts) for expr in exprs)

    assert has("entra_tokend_token_expiry_timestamp_seconds", "- time()")  # expiry countdown
    assert has("entra_tokend_token_refreshes_total", "result", "rate(")  # success/failure rate
    assert has("entra_tokend_token_refresh_failures_total", "by (reason)", "rate(")
    for q in ("0.5", "0.9", "0.99"):
        assert has(f"histogram_quantile({q}", "entra_tokend_exchange_duration_seconds_bucket")
    assert has("entra_tokend_assertion_expiry_timestamp_seconds", "- time()")
    assert all(v.startswith("label_values(") for v in dashboard_variable_queries())


def test_every_queried_metric_exists_in_a_live_scrape(live: LiveServer) -> None:
    populate(live.metrics)
    served = sample_names(live.scrape())
    queried = queried_metric_names()
    assert len(queried) >= 8
    assert sorted(queried - served) == []


def test_every_served_metric_family_is_on_the_dashboard(live: LiveServer) -> None:
    populate(live.metrics)
    served = sample_names(live.scrape())
    on_dashboard = " ".join(dashboard_exprs())
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in served}
    missing = sorted(name for name in families if name not in on_dashboard)
    assert missing == []
