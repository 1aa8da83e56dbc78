"""The dashboard's job variable and "Targets up" panel, evaluated by Prometheus' own engine.

Grafana is not available here; what it does with a query variable is small and documented:
``label_values(SELECTOR, job)`` lists the ``job`` values of the series SELECTOR matches, and
"All" becomes the variable's ``allValue`` if set, else an alternation of every listed value.
The PromQL that results runs in ``promtool test rules`` against a Prometheus with other scrape
jobs and one entra-tokend job whose every target is down.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.observability import dashboard, run_promtool

# What a shared Prometheus scrapes: two live daemons, a job whose only target is down (so it
# exports no entra_tokend_* series at all), and jobs that are none of the dashboard's business.
WORLD = {
    'up{job="ns/entra-tokend",instance="pod-a:9464"}': "1x10",
    'up{job="ns/entra-tokend",instance="pod-b:9464"}': "1x10",
    'up{job="ns/entra-tokend-canary",instance="pod-c:9464"}': "0x10",
    'up{job="node",instance="host-1:9100"}': "1x10",
    'up{job="node",instance="host-2:9100"}': "1x10",
    'up{job="kube-state-metrics",instance="ksm:8080"}': "1x10",
    'entra_tokend_build_info{job="ns/entra-tokend",instance="pod-a:9464",version="0.1.0"}': "1x10",
    'entra_tokend_build_info{job="ns/entra-tokend",instance="pod-b:9464",version="0.1.0"}': "1x10",
}
ENTRA_JOBS = ["ns/entra-tokend", "ns/entra-tokend-canary"]


def variable(name: str) -> dict[str, Any]:
    (var,) = [v for v in dashboard()["templating"]["list"] if v["name"] == name]
    assert isinstance(var, dict)
    return var


def label_values_as_promql(definition: str) -> tuple[str, str]:
    """``label_values(SELECTOR, LABEL)`` -> (``group by (LABEL) (SELECTOR)``, LABEL)."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition)
    assert match, definition
    return f"group by ({match.group(2)}) ({match.group(1)})", match.group(2)


def targets_up_expr() -> str:
    (panel,) = [p for p in dashboard()["panels"] if p.get("title") == "Targets up"]
    (target,) = panel["targets"]
    expr: str = target["expr"]
    return expr


def all_value(var: dict[str, Any], options: list[str]) -> str:
    """What Grafana substitutes for "All" (the names here hold no regex metacharacters)."""
    return var.get("allValue") or "(" + "|".join(options) + ")"


def promtool_checks(promtool: str, tmp_path: Path, checks: list[tuple[str, list[Any]]]) -> str:
    """Evaluate each (expr, [(labels, value)...]) in WORLD; '' if all hold, else promtool's say."""
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in WORLD.items()],
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "5m",
                        "exp_samples": [{"labels": lbl, "value": val} for lbl, val in samples],
                    }
                    for expr, samples in checks
                ],
            }
        ],
    }
    path = tmp_path / "dashboard_test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = run_promtool(promtool, "test", "rules", str(path))
    return "" if result.returncode == 0 else result.stdout + result.stderr


def job_options_check(definition: str) -> tuple[str, list[Any]]:
    expr, label = label_values_as_promql(definition)
    return expr, [(f'{{{label}="{job}"}}', 1) for job in ENTRA_JOBS]


def test_job_variable_lists_entra_tokend_jobs_even_when_all_their_targets_are_down(
    promtool: str, tmp_path: Path
) -> None:
    assert (
        promtool_checks(promtool, tmp_path, [job_options_check(variable("job")["definition"])])
        == ""
    )


def test_the_harness_catches_a_job_variable_fed_by_live_targets_only(
    promtool: str, tmp_path: Path
) -> None:
    """The previous definition (a metric only live targets export) loses the canary job."""
    old = "label_values(entra_tokend_build_info, job)"
    assert "ns/entra-tokend-canary" in promtool_checks(promtool, tmp_path, [job_options_check(old)])


@pytest.mark.parametrize(
    ("job", "up"),
    [
        ("All", 2),  # the two live daemons; not node's or kube-state-metrics' targets
        ("ns/entra-tokend-canary", 0),  # a job that is all down shows 0, not "no data"
        ("ns/entra-tokend", 2),
    ],
)
def test_targets_up_counts_only_the_selected_entra_tokend_targets(
    promtool: str, tmp_path: Path, job: str, up: int
) -> None:
    job_value = all_value(variable("job"), ENTRA_JOBS) if job == "All" else job
    instance_value = all_value(variable("instance"), ["pod-a:9464", "pod-b:9464", "pod-c:9464"])
    expr = targets_up_expr().replace("$job", job_value).replace("$instance", instance_value)
    assert "$" not in expr
    assert promtool_checks(promtool, tmp_path, [(expr, [("{}", up)])]) == ""
