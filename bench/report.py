#!/usr/bin/env python3
"""The benchmark report: a results JSON (what ``run_all.py`` measured) → ``docs/benchmarks.md``.

Measures nothing: the page is rendered from the saved results alone (and from the baseline's
for the before/after table), through ``bench/benchmarks.md.tmpl``, which holds the prose. Every
verdict and ratio is derived from the measurements by ``figures.py``, so re-rendering an old
results file with today's targets judges it by today's targets.

    .venv/bin/python bench/report.py            # bench/results/latest.json → docs/benchmarks.md
    .venv/bin/python bench/report.py --results R.json --baseline B.json --out page.md

The fleet plot is linked (relative to the page) only if the PNG exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from string import Template
from typing import Any

from figures import Results, floor_figures, verdicts
from tables import result_rows

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
TEMPLATE = BENCH_DIR / "benchmarks.md.tmpl"
RESULTS = BENCH_DIR / "results" / "latest.json"
BASELINE = BENCH_DIR / "results" / "baseline.json"
"""The "before" of the before/after table: the results of an earlier full run, kept as they were."""
DOCS = REPO / "docs" / "benchmarks.md"
PLOT = REPO / "docs" / "fleet_sim.png"


def fmt_verdict(v: dict[str, Any]) -> str:
    """One verdict as text: "met (-0.51 s, -10.2 %)", "MISSED (...)" or "not measured"."""
    if v["value"] is None:
        return "not measured"
    word = "met" if v["met"] else "MISSED"
    sign = "+" if v["margin"] >= 0 else ""
    return f"{word} ({sign}{v['margin']:g} {v['unit']}, {sign}{v['margin_pct']:g} %)"


def fmt_floor_row(f: dict[str, Any]) -> tuple[str, ...]:
    """One floor figure as the cells of the floor table (figure … how)."""
    unit = f" {f['unit']}" if f["unit"] else ""
    return (
        f["figure"],
        f"{f['result']:g}{unit}",
        "–" if f["floor"] is None else f"{f['floor']:g}{unit}",
        "–" if f["ratio"] is None else f"{f['ratio']:g}×",
        f["target"],
        "met" if f["met"] else "MISSED",
        f["load"],
        f["note"],
    )


def target_rows(r: Results) -> list[tuple[str, str, str]]:
    """(target, reached, verdict) for each target."""
    return [
        (
            v["target"],
            "—" if v["value"] is None else f"{v['value']:g} {v['unit']} (limit {v['limit']:g})",
            fmt_verdict(v),
        )
        for v in verdicts(r)
    ]


def _figure_key(figure: str) -> str:
    """A floor row's figure without "default (N)", so a changed default still lines up."""
    return re.sub(r"default \((\d+)\)", r"\1", figure)


def _before_after_cell(f: dict[str, Any] | None) -> str:
    if f is None:
        return "–"
    unit = f" {f['unit']}" if f["unit"] else ""
    ratio = "" if f["ratio"] is None else f" ({f['ratio']:g}× floor)"
    return f"{f['result']:g}{unit}{ratio}"


def before_after_rows(r: Results, baseline: Results | None) -> list[tuple[str, ...]]:
    """Each floor figure of ``r`` beside the same figure of ``baseline`` (both derived from
    their measurements): figure, before (result and ratio to its floor), after, the change in
    % of before, the target and today's verdict. Without a baseline every "before" is "–"."""
    before = {_figure_key(f["figure"]): f for f in floor_figures(baseline or {})}
    rows: list[tuple[str, ...]] = []
    for f in floor_figures(r):
        b = before.get(_figure_key(f["figure"]))
        change = "–"
        if b is not None and b["result"]:
            change = f"{(f['result'] - b['result']) / b['result'] * 100:+.0f} %"
        verdict = "met" if f["met"] else "MISSED"
        rows.append(
            (
                f["figure"],
                _before_after_cell(b),
                _before_after_cell(f),
                change,
                f"{f['target']}: {verdict}",
            )
        )
    return rows


def fleet_table_rows(r: Results) -> list[tuple[str, ...]]:
    """(scenario, mean req/s, peak/mean (Poisson) per window) for every fleet scenario."""
    return [
        (
            s["scenario"],
            f"{s['mean_rps_after_first_hour']:.2f}",
            *(
                f"{w['peak_to_mean']:.2f} ({w['poisson_peak_to_mean']:.2f})"
                for w in s["windows"].values()
            ),
        )
        for s in r["fleet"]["scenarios"]
    ]


def md_rows(rows: Iterable[Sequence[str]]) -> str:
    """Markdown table rows, one a line."""
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _repo_path(path: Path) -> str:
    """``path`` relative to the repository if it is inside it (as the page names files)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def baseline_note(baseline: Results | None, baseline_path: Path) -> str:
    """The sentence that says which run the "before" column is."""
    if baseline is None:
        return f"no baseline (`{_repo_path(baseline_path)}` is missing)"
    return (
        f"before: the run of {baseline.get('finished_at', '?')} (daemon at "
        f"{baseline.get('daemon_revision', '?')}, load "
        f"{baseline.get('load_at_start', ['?'])[0]} at its start), kept in "
        f"`{_repo_path(baseline_path)}`; after: this run"
    )


def _setup_fields(r: Results) -> dict[str, str]:
    """The template's fields about the machine and how the run was set up."""
    m = r["machine"]
    trust = r["options"]["trust"]
    revision = str(r.get("daemon_revision", "unknown"))
    return {
        "cpu": f"{m['cpu_model']}, {m['nproc']} CPUs"
        + (f" ({m['hypervisor']} guest)" if m.get("hypervisor") else ""),
        "mem_total_mib": str(m["mem_total_mib"]),
        "kernel": m["kernel"],
        "python": m["python"],
        "packages": ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
        "transport": "TLS" if r["options"]["tls"] else "plain http",
        "trust": trust,
        "trust_note": (
            " (certifi's bundle + the emulator's CA; the daemon's image uses a hashed directory "
            "via SSL_CERT_DIR instead: the rows marked hashed dir)"
            if trust == "full"
            else ""
        ),
        "revision": revision,
        "revision_note": (
            " (+dirty: uncommitted changes were measured too)."
            if "+dirty" in revision
            else " (no uncommitted changes)."
        ),
    }


def render_page(
    r: Results,
    baseline: Results | None,
    *,
    out: Path,
    plot: Path | None,
    baseline_path: Path = BASELINE,
) -> str:
    """The page (Markdown) for results ``r``: ``bench/benchmarks.md.tmpl`` with its fields
    filled. ``out`` is where the page will live (the plot is linked relative to it);
    ``baseline_path`` is only named in the text. Raises KeyError if ``r`` lacks a section the
    page shows (a run with ``--no-fleet`` has no page)."""
    fl = r["fleet"]
    plot_line = ""
    if plot is not None and plot.exists():
        link = os.path.relpath(plot.resolve(), out.resolve().parent)
        plot_line = f"\n![Entra requests per second over 24 h]({link})\n"
    return Template(TEMPLATE.read_text()).substitute(
        finished_at=r["finished_at"],
        elapsed_s=f"{r['elapsed_s']:.0f}",
        load_at_start=r["load_at_start"],
        load_at_end=r["load_at_end"],
        **_setup_fields(r),
        result_rows=md_rows(result_rows(r)),
        target_rows=md_rows(target_rows(r)),
        floor_rows=md_rows(fmt_floor_row(f) for f in floor_figures(r)),
        baseline_note=baseline_note(baseline, baseline_path),
        before_after_rows=md_rows(before_after_rows(r, baseline)),
        fleet_pods=f"{fl['pods']:,}",
        fleet_start_window=f"{fl['start_window_s']:g}",
        fleet_refresh_at=fl["policy"]["refresh_at"],
        fleet_jitter=fl["policy"]["jitter"],
        fleet_rows=md_rows(fleet_table_rows(r)),
        fleet_plot=plot_line,
    )


def read_results(path: Path) -> Results | None:
    """A results JSON, or None if the file does not exist."""
    if not path.exists():
        return None
    data: Results = json.loads(path.read_text())
    return data


def write_page(
    r: Results, *, baseline_path: Path = BASELINE, out: Path = DOCS, plot: Path | None = PLOT
) -> None:
    """Render the page for ``r`` (the baseline read from ``baseline_path``) into ``out``."""
    text = render_page(
        r, read_results(baseline_path), out=out, plot=plot, baseline_path=baseline_path
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def print_summary(r: Results) -> None:
    """The results table, the targets and the floor figures as text on stdout."""
    rows = result_rows(r)
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    print()
    print(f"{'figure':{w0}}  {'result':{w1}}  load")
    print(f"{'-' * w0}  {'-' * w1}  ----")
    for a, b, c in rows:
        print(f"{a:{w0}}  {b:{w1}}  {c}")
    print()
    for v in verdicts(r):
        print(f"target: {v['target']}: {fmt_verdict(v)}")
    print()
    for f in floor_figures(r):
        cells = fmt_floor_row(f)
        print(
            f"{cells[0]}: {cells[1]} (floor {cells[2]}, {cells[3]}; target {cells[4]}: "
            f"{cells[5]}; load {cells[6]})"
        )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: render the page; 2 if the results file is missing."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--results", type=Path, default=RESULTS, help="the run to show")
    p.add_argument(
        "--baseline", type=Path, default=BASELINE, help="the before of the before/after table"
    )
    p.add_argument("--out", type=Path, default=DOCS, help="where to write the page")
    p.add_argument("--plot", type=Path, default=PLOT, help="the fleet plot (PNG) to link")
    p.add_argument("--print", action="store_true", help="also print the tables on stdout")
    a = p.parse_args(argv)
    r = read_results(a.results)
    if r is None:
        print(f"--results: {a.results} does not exist; run bench/run_all.py first", file=sys.stderr)
        return 2
    write_page(r, baseline_path=a.baseline, out=a.out, plot=a.plot)
    if a.print:
        print_summary(r)
    print(f"wrote {a.out} from {a.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
