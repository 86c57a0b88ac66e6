"""Detection quality on simulated fleets: the issue's quality table for several seeds.

Usage::

    .venv/bin/python benchmarks/detection_quality.py [--connectors 60] [--days 120]
        [--train-days 60] [--seeds 101 202 303] [--trees 100] [--baseline-method profile]
        [--policy FILE] [--unlabelled-history] [--no-screen-history]

For each seed: simulate the fleet, fit on the first ``--train-days`` days (labelled
faults left out; with ``--unlabelled-history`` they stay in, unlabelled, as in history
nobody has labelled yet), score the rest in time order, and print the quality table for
syncguard beside the fixed-threshold safeguards, the per-class recall and the
calibration line (false pauses, and breaches of the cutoff: pauses and reviews; also
apart for syncs judged while their connector was paused and while it was not); then one
summary row per seed, and the calibration of all seeds together: a budget of one false
pause per connector per year expects only about ten in one fleet's window, so one
fleet's ratio is mostly noise (``p``: how likely exact calibration lands that far out),
and the calibration curves of all seeds together (see
:func:`training.backtest.calibration_curve`).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.model import FleetModel  # noqa: E402
from detector.policy import load_policy  # noqa: E402
from training.backtest import (  # noqa: E402
    budget_counts,
    format_table,
    poisson_two_sided_p,
    run_backtest,
)
from training.simulator import simulate_fleet  # noqa: E402


def split(records: list[dict], train_days: int) -> tuple[list[dict], list[dict]]:
    """History: the first ``train_days`` days; test: the rest."""
    start = min(datetime.fromisoformat(r["started_at"].replace("Z", "+00:00")) for r in records)
    cut = (start + timedelta(days=train_days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        [r for r in records if r["started_at"] < cut],
        [r for r in records if r["started_at"] >= cut],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connectors", type=int, default=60)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--train-days", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 202, 303])
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--baseline-method", choices=["profile", "stl"], default="profile")
    parser.add_argument("--policy", default=None)
    parser.add_argument("--unlabelled-history", action="store_true",
                        help="Fit on history with its faults in and unlabelled.")
    parser.add_argument("--no-screen-history", dest="screen_history", action="store_false",
                        help="FleetModel(screen_history=False): fit once, on all history.")
    args = parser.parse_args()
    summary, curves = [], []
    for seed in args.seeds:
        records, labels = simulate_fleet(args.connectors, args.days, seed=seed)
        history, test = split(records, args.train_days)
        if args.unlabelled_history:
            tested = {r["sync_id"] for r in test}
            labels = [lab for lab in labels if lab["sync_id"] in tested]
        model = FleetModel(
            n_estimators=args.trees,
            baseline_method=args.baseline_method,
            policy=load_policy(args.policy),
            n_jobs=2,
            screen_history=args.screen_history,
        )
        report = run_backtest(history, test, labels=labels, model=model)
        print(f"\n=== seed {seed}: {args.connectors} connectors x {args.days} days, "
              f"trained on the first {args.train_days} ===")
        print(format_table(report))
        for mode in report.calibration_by_mode.iter_rows(named=True):
            print(f"  {'paused' if mode['paused'] else 'not paused'}: "
                  f"{mode['normal_syncs']:.0f} normal syncs, {mode['false_pauses']} false "
                  f"pauses, calibration ratio {mode['calibration_ratio']:.2f} "
                  f"(breaches {mode['breach_ratio']:.2f})")
        row = report.quality.row(0, named=True)  # syncguard first
        summary.append((seed, row, report.calibration, report.timings))
        curves.append(report.calibration_curve)
    print("\nseed | episodes | episode recall | first-sync recall | false pauses / 1000 | "
          "min class recall | calibration ratio | false pauses / expected (p) | "
          "breach ratio | fit s | score s")
    for seed, q, c, t in summary:
        print(f"{seed} | {q['episodes']:.0f} | {q['episode_recall']:.3f} | "
              f"{q['first_sync_recall']:.3f} | {q['false_pauses_per_1000']:.2f} | "
              f"{q['min_class_recall']:.2f} | {c['calibration_ratio']:.2f} | "
              f"{c['false_pauses']} / {c['budgeted_pauses']:.1f} ({c['calibration_p']:.2f}) | "
              f"{c['breach_ratio']:.2f} | "
              f"{t['fit_s']:.1f} | {t['score_s']:.1f}")
    if len(summary) > 1:
        pauses = sum(c["false_pauses"] for _, _, c, _ in summary)
        expected = sum(c["budgeted_pauses"] for _, _, c, _ in summary)
        print(f"all seeds: {budget_counts(pauses, expected)}: "
              f"calibration ratio {pauses / expected:.2f} "
              f"(p = {float(poisson_two_sided_p(pauses, expected)):.2f})")
        pooled = (
            pl.concat([c.select("multiple", "observed", "expected") for c in curves])
            .group_by("multiple").sum().sort("multiple")
        )
        print("all seeds, calibration curve (tail probability below m x budget: observed / "
              "expected, ratio): " + ", ".join(
                  f"m={m}: {o} / {e:.1f} ({o / e:.2f})" for m, o, e in pooled.iter_rows()))


if __name__ == "__main__":
    main()
