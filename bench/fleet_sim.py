#!/usr/bin/env python3
"""Fleet simulation: how hard 10,000 pods running entra-tokend hit Entra, over 24 hours.

No network and no daemon: the daemon's own scheduling code (``entra_tokend.scheduler``:
``TokenSchedule.succeeded``, which plans the first token of a schedule with
``first_refresh_delay`` and every later one with ``refresh_delay``; the default ``Policy`` as
``entra_tokend.config`` builds it) decides every refresh, driven by a simulated clock.

Model:

1. ``--pods`` pods (default 10,000) start at uniformly random moments within ``--start-window``
   seconds (default 60). Each pod's daemon requests its token(s) at start.
2. Every token Entra issues lives a uniformly random 60-90 minutes (Entra's default lifetime
   for access tokens), drawn anew for each issuance. ``--fixed-lifetime`` instead gives every
   token the same lifetime (a tenant with a token lifetime policy, or a resource that always
   answers with one lifetime): then only the daemon's jitter de-synchronises the fleet.
3. After each token the daemon's schedule decides when to refresh; the request is answered at
   once and succeeds (failures and their backoff are not modelled).

Output: Entra requests per second over time, its mean and peak after the first hour in windows
of 1 s, 10 s and 60 s, and the peak-to-mean ratio, for three policies: the daemon's default; for
comparison, the default without the first-refresh spread (``refresh_delay`` for the first token
too, so the fleet's synchronised start carries into its refreshes); and no jitter at all
(``jitter = 0``).
For reference each row also gives the peak-to-mean a perfectly random (Poisson) arrival process
of the same mean would show in the same windows: the least any scheduler can get.

    .venv/bin/python bench/fleet_sim.py --plot docs/fleet_sim.png
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import benchlib
from entra_tokend.config import Overrides, load_config
from entra_tokend.model import Policy
from entra_tokend.scheduler import Deadline, TokenSchedule, refresh_delay
from suite import offline_env

DAY = 86_400
HOUR = 3_600
WINDOWS = (1, 10, 60)
TARGET_PEAK_TO_MEAN = 1.5


def default_policy() -> Policy:
    """The policy the daemon runs with when nothing is configured.

    ``Config.policy`` of a configuration that sets only what has no default (an identity and
    one token), so the simulation follows the daemon's defaults wherever they live.
    """
    with tempfile.TemporaryDirectory(prefix="fleet-sim-") as tmp:
        overrides = Overrides(tokens=["sim=https://sim.example/.default"])
        return load_config(overrides, offline_env(Path(tmp))).policy


class SimClock:
    """A clock the simulation sets; wall and monotonic agree (no NTP steps, no suspend)."""

    def __init__(self) -> None:
        self.now = 0.0

    def wall(self) -> float:
        """Simulated Unix time."""
        return self.now

    def monotonic(self) -> float:
        """Simulated monotonic time."""
        return self.now


class WithoutFirstSpread(TokenSchedule):
    """COMPARISON ONLY, not the daemon: the first token refreshed like every later one.

    ``TokenSchedule.succeeded`` plans the first token of a schedule (a fresh start) with
    ``first_refresh_delay``. This replans that first token with ``refresh_delay``, to show what
    the spread buys; every other token goes through the daemon's code unchanged.
    """

    def succeeded(self, expires_on: float, lifetime: float, refresh_in: float | None) -> float:
        """Record a good token; returns the delay until its refresh."""
        first = self.expires is None
        delay = super().succeeded(expires_on, lifetime, refresh_in)
        if first and self.expires is not None:
            left = min(lifetime, max(self.expires.remaining(self.clock), 0.0))
            delay = refresh_delay(left, self.policy, self.rng, refresh_in)
            self.due = Deadline.after(self.clock, delay)
        return delay


@dataclass(frozen=True)
class Scenario:
    """One simulated fleet."""

    name: str
    policy: Policy
    schedule: type[TokenSchedule] = TokenSchedule
    pods: int = 10_000
    tokens_per_pod: int = 1
    start_window: float = 60.0
    lifetime_min: float = 3_600.0
    lifetime_max: float = 5_400.0
    duration: int = DAY


def simulate(s: Scenario, seed: int) -> list[int]:
    """Requests to Entra in each second of ``s.duration``."""
    rng = random.Random(seed)
    per_second = [0] * s.duration
    clock = SimClock()
    for _ in range(s.pods):
        start = rng.uniform(0.0, s.start_window)
        for _ in range(s.tokens_per_pod):
            schedule = s.schedule(s.policy, clock, random.Random(rng.getrandbits(64)))
            t = start
            # Bounded: every refresh is at least min_interval (or a fraction of a lifetime
            # that is at least an hour) after the previous one.
            for _ in range(s.duration):
                if t >= s.duration:
                    break
                per_second[int(t)] += 1
                clock.now = t
                lifetime = rng.uniform(s.lifetime_min, s.lifetime_max)
                delay = schedule.succeeded(t + lifetime, lifetime, None)
                t += delay
    return per_second


def windowed(per_second: list[int], width: int) -> list[int]:
    """Sums over consecutive windows of ``width`` seconds."""
    return [sum(per_second[i : i + width]) for i in range(0, len(per_second) - width + 1, width)]


def poisson_peak(mean: float, n: int) -> float:
    """Median of the largest of ``n`` independent Poisson(``mean``) counts."""
    if mean <= 0:
        return 0.0
    # P(max <= k) = F(k)^n; find the smallest k with F(k)^n >= 1/2, working in logs.
    cdf = 0.0
    k = 0
    log_target = math.log(0.5) / n
    while k < 100 * mean + 100:
        cdf += math.exp(-mean + k * math.log(mean) - math.lgamma(k + 1))
        if math.log(min(cdf, 1.0)) >= log_target:
            return float(k)
        k += 1
    return float(k)


def analyse(per_second: list[int], skip: int = HOUR) -> dict[str, Any]:
    """Mean and peaks after the first ``skip`` seconds, per window size."""
    tail = per_second[skip:]
    mean = sum(tail) / len(tail)
    out: dict[str, Any] = {
        "requests_total": sum(per_second),
        "requests_first_hour": sum(per_second[:skip]),
        "peak_rps_first_hour_1s": max(per_second[:skip]),
        "mean_rps_after_first_hour": round(mean, 3),
        "windows": {},
    }
    for w in WINDOWS:
        counts = windowed(tail, w)
        peak = max(counts) / w
        random_peak = poisson_peak(mean * w, len(counts)) / w
        out["windows"][f"{w}s"] = {
            "peak_rps": round(peak, 3),
            "peak_to_mean": round(peak / mean, 3),
            "poisson_peak_to_mean": round(random_peak / mean, 3),
        }
    return out


def scenarios(pods: int, tokens_per_pod: int, start_window: float) -> list[Scenario]:
    """Default policy, without the first-refresh spread, no jitter; random and fixed lifetimes.

    The first scenario is the headline (the daemon as configured by default).
    """
    base = default_policy()
    variants: list[tuple[str, Policy, type[TokenSchedule]]] = [
        ("default policy (first refresh spread)", base, TokenSchedule),
        ("COMPARISON: default without the first-refresh spread", base, WithoutFirstSpread),
        ("no jitter (jitter = 0)", replace(base, jitter=0.0), TokenSchedule),
    ]
    out: list[Scenario] = []
    for lifetimes, lo, hi in (
        ("lifetimes 60-90 min", 3_600.0, 5_400.0),
        ("every lifetime 75 min", 4_500.0, 4_500.0),
    ):
        for name, policy, schedule in variants:
            out.append(
                Scenario(
                    f"{name}, {lifetimes}",
                    policy,
                    schedule,
                    pods=pods,
                    tokens_per_pod=tokens_per_pod,
                    start_window=start_window,
                    lifetime_min=lo,
                    lifetime_max=hi,
                )
            )
    return out


def plot(runs: list[tuple[Scenario, list[int]]], path: Path) -> None:
    """Requests per second (60 s windows) over 24 h, one line per scenario, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    colours = ["tab:blue", "tab:red", "tab:green"]
    per_panel = len(runs) // 2
    for i, (s, per_second) in enumerate(runs):
        per_min = [c / 60 for c in windowed(per_second, 60)]
        hours = [(j * 60 + 30) / HOUR for j in range(len(per_min))]
        ax = axes[0] if s.lifetime_min != s.lifetime_max else axes[1]
        ax.plot(
            hours,
            per_min,
            lw=0.8,
            color=colours[i % per_panel],
            label=s.name.split(",")[0],
            zorder=3 + per_panel - i % per_panel,  # the daemon's default (first) on top
        )
    for ax, title in zip(
        axes,
        (
            "Entra's random 60-90 min lifetimes",
            "one fixed 75 min lifetime (only the daemon's jitter de-synchronises)",
        ),
        strict=True,
    ):
        ax.axvline(1.0, color="grey", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("requests/s (1-min mean)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    axes[1].set_xlabel("hours since the first pod started (dotted: end of the first hour)")
    axes[1].set_xlim(0, 24)
    pods = runs[0][0].pods
    fig.suptitle(f"{pods:,} pods started within one minute: token requests to Entra", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    pods: int = 10_000,
    tokens_per_pod: int = 1,
    start_window: float = 60.0,
    seed: int = 1,
    plot_path: Path | None = None,
) -> dict[str, Any]:
    """Simulate every scenario; returns the figures (and writes the plot if asked)."""
    t0 = time.monotonic()
    results: list[dict[str, Any]] = []
    runs: list[tuple[Scenario, list[int]]] = []
    for i, s in enumerate(scenarios(pods, tokens_per_pod, start_window)):
        per_second = simulate(s, seed + i)
        runs.append((s, per_second))
        figures = analyse(per_second)
        figures.update(
            scenario=s.name,
            jitter=s.policy.jitter,
            refresh_at=s.policy.refresh_at,
            lifetime_min_s=s.lifetime_min,
            lifetime_max_s=s.lifetime_max,
        )
        results.append(figures)
    if plot_path is not None:
        plot(runs, plot_path)
    headline = results[0]["windows"]["60s"]["peak_to_mean"]
    return {
        "benchmark": "fleet_sim",
        "pods": pods,
        "tokens_per_pod": tokens_per_pod,
        "start_window_s": start_window,
        "duration_s": DAY,
        "seed": seed,
        "policy": default_policy().__dict__,
        "headline_window": "60s",
        "target_peak_to_mean": TARGET_PEAK_TO_MEAN,
        "peak_to_mean": headline,
        "target_met": headline <= TARGET_PEAK_TO_MEAN,
        "scenarios": results,
        "plot": str(plot_path) if plot_path else None,
        "elapsed_s": round(time.monotonic() - t0, 2),
    }


def print_table(result: dict[str, Any]) -> None:
    """The figures as a text table."""
    print(
        f"fleet: {result['pods']:,} pods x {result['tokens_per_pod']} token(s), started within "
        f"{result['start_window_s']:g} s, 24 h; peak/mean after the first hour "
        "(Poisson floor in brackets)"
    )
    width = max(len(s["scenario"]) for s in result["scenarios"])
    print(f"{'scenario':{width}} {'mean r/s':>8} {'1s':>12} {'10s':>12} {'60s':>12}")
    for s in result["scenarios"]:
        cells = [
            f"{w['peak_to_mean']:.2f} ({w['poisson_peak_to_mean']:.2f})"
            for w in s["windows"].values()
        ]
        print(
            f"{s['scenario']:{width}} {s['mean_rps_after_first_hour']:8.2f} "
            + " ".join(f"{c:>12}" for c in cells)
        )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--pods", type=int, default=10_000)
    p.add_argument("--tokens-per-pod", type=int, default=1)
    p.add_argument("--start-window", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--plot", type=Path, help="write the PNG here (needs matplotlib)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    if args.pods < 1 or args.tokens_per_pod < 1:
        p.error("--pods and --tokens-per-pod must be at least 1")
    result = run(args.pods, args.tokens_per_pod, args.start_window, args.seed, args.plot)
    print_table(result)
    if args.json:
        benchlib.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
