"""Judgements derived from one run's results (the JSON ``run_all.py`` writes): each target met
or missed, and each figure beside the floor measured in the same run.

Pure functions of the measurements: no I/O, no clock, nothing measured here. The report
(``report.py``) renders them; ``run_all.py`` also stores them in the results JSON so a reader of
the JSON alone sees the verdicts. A results dict that lacks a scenario (a partial run) simply
yields no row for it.
"""

from __future__ import annotations

from typing import Any

TARGET_IDLE_RSS_MIB = 32.0
TARGET_IDLE_CPU_PCT = 0.1
TARGET_ROTATION_P99_MS = 100.0
TARGET_BIG_SECONDS = 5.0
TARGET_BIG_RSS_MIB = 64.0
TARGET_FLEET_PEAK_TO_MEAN = 1.5

Results = dict[str, Any]
"""A results JSON as loaded: scenario name → its figures (see ``run_all.run``)."""


def verdict(name: str, value: float | None, limit: float, unit: str) -> dict[str, Any]:
    """One target (``value`` must not exceed ``limit``): the value, met or not, the margin
    (absolute, and in % of the limit). A value of None means "not measured"."""
    if value is None:
        return {"target": name, "value": None, "met": None}
    margin = value - limit
    return {
        "target": name,
        "value": value,
        "limit": limit,
        "unit": unit,
        "met": value <= limit,
        "margin": round(margin, 3),
        "margin_pct": round(100 * margin / limit, 1) if limit else None,
    }


def verdicts(r: Results) -> list[dict[str, Any]]:
    """Every target of the run, in the order the report lists them."""
    rows: list[dict[str, Any]] = []
    idle_r = r.get("idle", {})
    if "daemon_10" in idle_r:
        rows.append(
            verdict(
                "idle RSS, 10 tokens", idle_r["daemon_10"]["rss_mib"], TARGET_IDLE_RSS_MIB, "MiB"
            )
        )
        worst = max(idle_r[k]["cpu_pct_of_core"] for k in ("daemon_1", "daemon_10", "daemon_100"))
        rows.append(
            verdict("idle CPU, worst of 1/10/100 tokens", worst, TARGET_IDLE_CPU_PCT, "% of a core")
        )
    cs = r.get("cold_start")
    if cs:
        rows.append(
            verdict(
                "cold start to 10 tokens vs azure-identity spawn to 1 token",
                cs["daemon_10"]["spawn_to_files_s_median"],
                cs["azure_identity"]["spawn_to_token_s_median"],
                "s",
            )
        )
    rot = r.get("rotation", {})
    rows.append(verdict("rotation → token p99", rot.get("p99_ms"), TARGET_ROTATION_P99_MS, "ms"))
    bg = r.get("big", {}).get("runs", [])
    if bg:
        tokens = r["big"]["tokens"]
        first = bg[0]
        rows.append(
            verdict(f"{tokens} tokens all on disk", first["all_on_disk_s"], TARGET_BIG_SECONDS, "s")
        )
        rows.append(
            verdict(f"{tokens} tokens peak RSS", first["peak_rss_mib"], TARGET_BIG_RSS_MIB, "MiB")
        )
    fl = r.get("fleet")
    if fl:
        rows.append(
            verdict(
                "fleet peak/mean after 1 h (60 s windows)",
                fl["peak_to_mean"],
                TARGET_FLEET_PEAK_TO_MEAN,
                "×",
            )
        )
    return rows


def floor_row(
    figure: str,
    result: float,
    floor: float | None,
    unit: str,
    *,
    max_ratio: float | None = None,
    max_value: float | None = None,
    load: str = "",
    note: str = "",
) -> dict[str, Any]:
    """One figure beside its floor: the ratio result/floor (2 decimals; None without a floor)
    and whether it meets ``max_ratio`` (× floor) and/or ``max_value`` (in ``unit``)."""
    ratio = round(result / floor, 2) if floor else None
    met = True
    if max_ratio is not None:
        met = ratio is not None and ratio <= max_ratio
    if max_value is not None:
        met = met and result <= max_value
    target = " and ".join(
        t
        for t in (
            f"≤ {max_ratio:g}× floor" if max_ratio is not None else "",
            f"≤ {max_value:g} {unit}" if max_value is not None else "",
        )
        if t
    )
    return {
        "figure": figure,
        "result": result,
        "floor": floor,
        "unit": unit,
        "ratio": ratio,
        "target": target,
        "met": met,
        "load": load,
        "note": note,
    }


def load_span(
    section: dict[str, Any], before: str = "load_before", after: str = "load_after"
) -> str:
    """ "1.23→0.45": the 1-minute load average before and after a scenario ("" if unrecorded)."""
    if before not in section:
        return ""
    return f"{section[before][0]:.2f}→{section[after][0]:.2f}"


def _rotation_floors(r: Results) -> list[dict[str, Any]]:
    rot = r.get("rotation", {})
    fl = rot.get("floor")
    if "p99_ms" not in rot or not fl:
        return []
    return [
        floor_row(
            "rotation → new token on disk, p99",
            rot["p99_ms"],
            fl["p50_ms"],
            "ms",
            max_ratio=3.0,
            load=f"{rot['load_when_waited'][0]:.2f}",
            note=f"p50 {rot['p50_ms']:.1f} ms; floor = inotify wake-up {fl['inotify_p50_ms']:.2f}"
            f" + HTTPS token request {fl['https_round_trip_p50_ms']:.2f} ms (p50s)",
        )
    ]


def _big_floors(r: Results) -> list[dict[str, Any]]:
    bg = r.get("big")
    if not bg:
        return []
    rows = []
    for run in bg["runs"]:
        load = load_span(run)
        rows.append(
            floor_row(
                f"{bg['tokens']} tokens at +{bg['delay_s'] * 1000:.0f} ms, concurrency "
                f"{run['concurrency']}: all on disk",
                run["all_on_disk_s"],
                run["floor_s"],
                "s",
                max_ratio=1.1,
                load=load,
                note=f"floor = tokens × latency / concurrency; daemon CPU {run['daemon_cpu_s']} s,"
                f" emulator {run['emulator_cpu_s']} s",
            )
        )
        if run.get("requests_to_disk_s") is not None:
            rows.append(
                floor_row(
                    f"same, from the daemon's start-up log line (imports and configuration done,"
                    f" {run['started_s'] * 1000:.0f} ms after spawn) to all on disk",
                    run["requests_to_disk_s"],
                    run["floor_s"],
                    "s",
                    max_ratio=1.1,
                    load=load,
                    note="the phase the floor models: every token request and write",
                )
            )
    sc = bg.get("scrape")
    if sc:
        rows.append(
            floor_row(
                f"/metrics with {bg['tokens']} tokens: longest /healthz wait during scrapes",
                sc["healthz_during_max_ms"],
                sc["healthz_quiet_max_ms"],
                "ms",
                max_value=20.0,
                load=f"{bg['runs'][0]['load_after'][0]:.2f}",
                note=f"bounds the event-loop time of one scrape; {sc['bytes'] / 1000:.0f} kB,"
                f" {sc['daemon_cpu_ms_per_scrape']} ms daemon CPU per scrape (unchanged tokens;"
                f" first scrape {sc.get('first_scrape_ms', '?')} ms); /healthz p99"
                f" {sc['healthz_during_p99_ms']} ms during, "
                f"{sc['healthz_quiet_p99_ms']} ms quiet (floor column: longest quiet wait)",
            )
        )
    return rows


def _idle_floors(r: Results) -> list[dict[str, Any]]:
    idle_r = r.get("idle", {})
    load = load_span(idle_r)
    rows = []
    probe = idle_r.get("floor_probe")
    if probe and "daemon_1" in idle_r:
        rows.append(
            floor_row(
                "idle RSS, 1 token",
                idle_r["daemon_1"]["rss_mib"],
                probe["rss_mib"],
                "MiB",
                max_ratio=1.1,
                load=load,
                note="floor: bench/floor_probe.py (the same libraries imported, one HTTPS request)",
            )
        )
    if "daemon_1000" in idle_r and "daemon_1" in idle_r:
        per_token = (idle_r["daemon_1000"]["rss_mib"] - idle_r["daemon_1"]["rss_mib"]) * 1024 / 999
        rows.append(
            floor_row(
                "memory per token (idle RSS, 1,000 tokens − 1 token) / 999",
                round(per_token, 2),
                None,
                "KiB",
                max_value=8.0,
                load=load,
                note=f"1,000 tokens {idle_r['daemon_1000']['rss_mib']:.1f} MiB",
            )
        )
    return rows


def _endpoint_floors(r: Results) -> list[dict[str, Any]]:
    ep = r.get("endpoint", {})
    if "cached" not in ep:
        return []
    load = load_span(ep)
    cached, burst = ep["cached"], ep["burst"]
    return [
        floor_row(
            f"endpoint, cached token at {cached['rate_per_s']:g}/s: p99",
            cached["p99_ms"],
            ep["floor"]["p99_ms"],
            "ms",
            max_value=2.0,
            load=load,
            note=f"p50 {cached['p50_ms']} ms (floor {ep['floor']['p50_ms']}); floor: the "
            f"same client against a process answering at once; "
            f"{cached['daemon_cpu_ms_per_request']} ms daemon CPU per request",
        ),
        floor_row(
            f"endpoint, {burst['concurrent_first_requests']} concurrent first requests:"
            " Entra requests",
            burst["entra_requests"],
            1,
            "",
            max_ratio=1.0,
            load=load,
            note=f"slowest caller {burst['max_ms']} ms",
        ),
    ]


def floor_figures(r: Results) -> list[dict[str, Any]]:
    """Each figure beside its floor measured in the same run: figure, result, floor, unit,
    ratio (result / floor), target (a ratio and/or an absolute bound), met, load, note."""
    return [
        *_rotation_floors(r),
        *_big_floors(r),
        *_idle_floors(r),
        *_endpoint_floors(r),
    ]
