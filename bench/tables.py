"""The report's "Results" table: one (figure, result, load) row per measured figure.

Text only, derived from one run's results JSON (see ``run_all.run``); a scenario missing from
the results gives no rows. ``report.py`` renders these as Markdown and as plain text.
"""

from __future__ import annotations

from typing import Any

from figures import Results, load_span

Row = tuple[str, str, str]
"""(figure, result, load average (1 min) before→after)."""

COLD_START_LABELS = {
    "daemon_1": "cold start, spawn → 1 token file on disk",
    "daemon_10": "cold start, spawn → 10 token files on disk",
    "daemon_10_hashed": "cold start, 10 tokens, trust store as hashed dir",
}
AZURE_IDENTITY_LABELS = {
    "azure_identity": "azure-identity: spawn → 1 token (fresh interpreter)",
    "azure_identity_hashed": "azure-identity, trust store as hashed dir",
}


def _daemon_cold_start(d: dict[str, Any], repeats: int) -> str:
    ph = d.get("phases_ms_median", {})
    detail = ""
    if "starting" in ph and "last_token" in ph:
        detail = (
            f"; started {ph['starting']:.0f}, first token {ph.get('first_token', 0):.0f},"
            f" last {ph['last_token']:.0f} ms;"
            f" emulator CPU {d['emulator_cpu_ms_median']} ms"
        )
    return (
        f"{d['spawn_to_files_s_median'] * 1000:.0f} ms (min {d['min_s'] * 1000:.0f},"
        f" max {d['max_s'] * 1000:.0f}, n={repeats}{detail})"
    )


def _azure_identity(az: dict[str, Any]) -> str:
    return (
        f"{az['spawn_to_token_s_median'] * 1000:.0f} ms (import "
        f"{az['import_s_median'] * 1000:.0f} + get_token "
        f"{az['get_token_s_median'] * 1000:.0f}); RSS {az['rss_mib_median']:.1f} MiB;"
        f" emulator CPU {az['emulator_cpu_ms_median']} ms"
    )


def cold_start_rows(r: Results) -> list[Row]:
    """The daemon's cold starts, then azure-identity's."""
    cs = r.get("cold_start")
    if not cs:
        return []
    load = load_span(cs)
    rows = [
        (label, _daemon_cold_start(cs[key], cs["repeats"]), load)
        for key, label in COLD_START_LABELS.items()
        if key in cs
    ]
    rows += [
        (label, _azure_identity(cs[key]), load)
        for key, label in AZURE_IDENTITY_LABELS.items()
        if key in cs
    ]
    return rows


def idle_rows(r: Results) -> list[Row]:
    """RSS of every idle process (daemons and the floor probe); CPU of the 1/10/100-token ones."""
    idle_r = r.get("idle", {})
    load = load_span(idle_r)
    rows: list[Row] = []
    for key, v in idle_r.items():
        if not isinstance(v, dict) or "rss_mib" not in v:
            continue
        rows.append(
            (
                f"idle, {v['label']}: RSS (tree)",
                f"{v['rss_mib']:.1f} MiB (anon {v['rss_anon_mib']:.1f}, "
                f"file {v['rss_file_mib']:.1f}; {v['threads']} threads)",
                load,
            )
        )
        if key in ("daemon_1", "daemon_10", "daemon_100"):
            rows.append(
                (
                    f"idle, {v['label']}: CPU over {idle_r['window_measured_s']:.0f} s",
                    f"{v['cpu_pct_of_core']:.3f} % of a core ({v['cpu_s']:.2f} s;"
                    f" {v['wakeups_per_min']:.0f} wake-ups/min)",
                    load,
                )
            )
    return rows


def rotation_rows(r: Results) -> list[Row]:
    """The rotation latency's percentiles (or why it has none)."""
    rot = r.get("rotation", {})
    if "p99_ms" in rot:
        return [
            (
                f"rotation → new token on disk ({rot['rotations']} rotations)",
                f"p50 {rot['p50_ms']:.1f} ms, p99 {rot['p99_ms']:.1f} ms, "
                f"max {rot['max_ms']:.1f} ms",
                f"{rot['load_when_waited'][0]:.2f}",
            )
        ]
    if rot:
        return [("rotation → new token on disk", rot.get("error", "failed"), "")]
    return []


def big_rows(r: Results) -> list[Row]:
    """One row per concurrency setting of the many-tokens run."""
    bg = r.get("big")
    if not bg:
        return []
    return [
        (
            f"{bg['tokens']} tokens, {bg['delay_s'] * 1000:.0f} ms latency, concurrency "
            f"{run['concurrency']}",
            f"all on disk {run['all_on_disk_s']:.2f} s (floor {run['floor_s']:.2f}); peak "
            f"{run['peak_rss_mib']:.1f} MiB; CPU daemon {run['daemon_cpu_s']:.1f} s, "
            f"emulator {run['emulator_cpu_s']:.1f} s",
            load_span(run),
        )
        for run in bg["runs"]
    ]


def fleet_rows(r: Results) -> list[Row]:
    """The fleet scenarios with random lifetimes, read on 60 s windows."""
    fl = r.get("fleet")
    if not fl:
        return []
    rows: list[Row] = []
    for s in fl["scenarios"]:
        if s["lifetime_min_s"] == s["lifetime_max_s"]:
            continue
        w = s["windows"]["60s"]
        rows.append(
            (
                f"fleet 10k pods: {s['scenario']}",
                f"peak/mean {w['peak_to_mean']:.2f} "
                f"(Poisson floor {w['poisson_peak_to_mean']:.2f}), "
                f"mean {s['mean_rps_after_first_hour']:.2f} req/s",
                "n/a",
            )
        )
    return rows


def result_rows(r: Results) -> list[Row]:
    """Every row of the "Results" table, in the page's order."""
    return [*cold_start_rows(r), *idle_rows(r), *rotation_rows(r), *big_rows(r), *fleet_rows(r)]
