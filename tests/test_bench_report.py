"""bench/report.py: docs/benchmarks.md is rendered from the saved benchmark results alone.

The committed page must be exactly what the report makes of the committed results
(bench/results/latest.json, and baseline.json for the before/after table), and the rows it
shows must be the figures in those files, judged by the targets in bench/figures.py. Every
expected value here is read from the committed JSON, none is typed in.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.append(str(BENCH))  # the bench modules import each other by their plain names

import figures  # noqa: E402
import report  # noqa: E402
import tables  # noqa: E402

LATEST = BENCH / "results" / "latest.json"
BASELINE = BENCH / "results" / "baseline.json"
DOCS = REPO / "docs" / "benchmarks.md"
PLOT = REPO / "docs" / "fleet_sim.png"


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.fixture
def latest() -> dict[str, Any]:
    """The committed results of the last full run."""
    return _load(LATEST)


@pytest.fixture
def baseline() -> dict[str, Any]:
    """The committed results of the earlier run the before/after table compares with."""
    return _load(BASELINE)


def _page(latest: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    return report.render_page(latest, baseline, out=DOCS, plot=PLOT)


def _md_row(page: str, first_cell: str, width: int | None = None) -> list[str]:
    """The cells of the one Markdown table row of ``page`` whose first cell is ``first_cell``
    (and, given ``width``, that has that many cells: the same figure is in several tables)."""
    rows = [
        [cell.strip() for cell in line.strip("|").split(" | ")]
        for line in page.splitlines()
        if line.startswith(f"| {first_cell} |")
    ]
    rows = [r for r in rows if width is None or len(r) == width]
    assert len(rows) == 1, f"{len(rows)} rows start with {first_cell!r}"
    return rows[0]


def test_committed_page_is_the_report_of_the_committed_results(
    latest: dict[str, Any], baseline: dict[str, Any]
) -> None:
    assert _page(latest, baseline) == DOCS.read_text()


def test_command_line_renders_the_committed_page(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(PLOT, docs / "fleet_sim.png")  # the plot is linked relative to the page
    argv = [sys.executable, str(BENCH / "report.py"), "--results", str(LATEST)]
    argv += ["--baseline", str(BASELINE), "--out", str(docs / "benchmarks.md")]
    argv += ["--plot", str(docs / "fleet_sim.png")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert (docs / "benchmarks.md").read_text() == DOCS.read_text()


def test_command_line_without_results_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    argv = [sys.executable, str(BENCH / "report.py"), "--results", str(tmp_path / "none.json")]
    done = subprocess.run(
        [*argv, "--out", str(out)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "--results" in done.stderr
    assert not out.exists()


def test_verdicts_come_from_the_measurements_not_the_stored_copy(
    latest: dict[str, Any], baseline: dict[str, Any]
) -> None:
    stripped, base = copy.deepcopy(latest), copy.deepcopy(baseline)
    for r in (stripped, base):
        del r["verdicts"], r["floors"]
    assert _page(stripped, base) == _page(latest, baseline)
    # The stored copy is what the report derives today.
    assert figures.verdicts(latest) == latest["verdicts"]
    assert figures.floor_figures(latest) == latest["floors"]


def test_idle_rss_row_and_target_show_the_measured_figure(latest: dict[str, Any]) -> None:
    rss = latest["idle"]["daemon_10"]["rss_mib"]
    page = _page(latest, None)
    assert _md_row(page, "idle, 10 tokens: RSS (tree)")[1].startswith(f"{rss:.1f} MiB (")
    reached, verdict = _md_row(page, "idle RSS, 10 tokens")[1:]
    assert reached == f"{rss:g} MiB (limit {figures.TARGET_IDLE_RSS_MIB:g})"
    met = rss <= figures.TARGET_IDLE_RSS_MIB
    assert verdict.startswith("met (" if met else "MISSED (")
    assert f"{round(rss - figures.TARGET_IDLE_RSS_MIB, 3):+g} MiB" in verdict


def test_a_changed_measurement_changes_its_verdict(latest: dict[str, Any]) -> None:
    under = copy.deepcopy(latest)
    under["idle"]["daemon_10"]["rss_mib"] = figures.TARGET_IDLE_RSS_MIB - 1
    over = copy.deepcopy(latest)
    over["idle"]["daemon_10"]["rss_mib"] = figures.TARGET_IDLE_RSS_MIB + 1
    assert _md_row(_page(under, None), "idle RSS, 10 tokens")[2].startswith("met (")
    assert _md_row(_page(over, None), "idle RSS, 10 tokens")[2].startswith("MISSED (")


def test_cold_start_target_is_azure_identity_of_the_same_run(latest: dict[str, Any]) -> None:
    cs = latest["cold_start"]
    reached = _md_row(
        _page(latest, None), "cold start to 10 tokens vs azure-identity spawn to 1 token"
    )
    own, rival = (
        cs["daemon_10"]["spawn_to_files_s_median"],
        cs["azure_identity"]["spawn_to_token_s_median"],
    )
    assert reached[1] == f"{own:g} s (limit {rival:g})"
    assert reached[2].startswith("met (" if own <= rival else "MISSED (")


def test_many_token_floor_rows_are_tokens_times_latency_over_concurrency(
    latest: dict[str, Any],
) -> None:
    big = latest["big"]
    page = _page(latest, None)
    for run in big["runs"]:
        concurrency = str(run["concurrency"]).removeprefix("default (").removesuffix(")")
        floor = round(big["tokens"] * big["delay_s"] / int(concurrency), 3)
        assert run["floor_s"] == floor
        name = f"{big['tokens']} tokens at +{big['delay_s'] * 1000:.0f} ms"
        cells = _md_row(page, f"{name}, concurrency {run['concurrency']}: all on disk", 8)
        assert cells[1:4] == [
            f"{run['all_on_disk_s']:g} s",
            f"{floor:g} s",
            f"{round(run['all_on_disk_s'] / floor, 2):g}×",
        ]
        assert cells[5] == ("met" if run["all_on_disk_s"] / floor <= 1.1 else "MISSED")


def test_before_after_compares_the_same_figure_of_both_runs(
    latest: dict[str, Any], baseline: dict[str, Any]
) -> None:
    after, before = latest["rotation"], baseline["rotation"]
    page = _page(latest, baseline)
    assert len(_md_row(page, "rotation → new token on disk, p99", 8)) == 8  # the floor table's
    _, was, now, change, target = _md_row(page, "rotation → new token on disk, p99", 5)
    ratio_before = round(before["p99_ms"] / before["floor"]["p50_ms"], 2)
    assert was == f"{before['p99_ms']:g} ms ({ratio_before:g}× floor)"
    assert now.startswith(f"{after['p99_ms']:g} ms (")
    assert change == f"{(after['p99_ms'] - before['p99_ms']) / before['p99_ms'] * 100:+.0f} %"
    assert target.startswith("≤ 3× floor: ")


def test_without_a_baseline_every_before_cell_is_empty(latest: dict[str, Any]) -> None:
    page = report.render_page(
        latest, None, out=DOCS, plot=None, baseline_path=Path("/nowhere/baseline.json")
    )
    assert "no baseline (`/nowhere/baseline.json` is missing)" in page
    rows = report.before_after_rows(latest, None)
    assert len(rows) == len(figures.floor_figures(latest)) > 0
    assert {(was, change) for _, was, _, change, _ in rows} == {("–", "–")}
    assert "![" not in page  # no plot given, none linked


def test_fleet_rows_show_the_headline_scenario(latest: dict[str, Any]) -> None:
    fleet = latest["fleet"]
    headline = fleet["scenarios"][0]
    page = _page(latest, None)
    cells = _md_row(page, "fleet peak/mean after 1 h (60 s windows)")
    assert cells[1] == f"{fleet['peak_to_mean']:g} × (limit {figures.TARGET_FLEET_PEAK_TO_MEAN:g})"
    assert fleet["peak_to_mean"] == headline["windows"]["60s"]["peak_to_mean"]
    row = _md_row(page, headline["scenario"])
    assert row[1] == f"{headline['mean_rps_after_first_hour']:.2f}"
    # Only the random-lifetime scenarios are in the results table.
    random_lifetimes = [s for s in fleet["scenarios"] if s["lifetime_min_s"] != s["lifetime_max_s"]]
    assert len(tables.fleet_rows(latest)) == len(random_lifetimes) < len(fleet["scenarios"])
