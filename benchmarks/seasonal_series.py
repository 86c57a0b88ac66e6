"""Detection on series shaped like public anomaly benchmarks, not like the fleet simulator.

Usage::

    .venv/bin/python benchmarks/seasonal_series.py [--seed 3] [--trees 100]
        [--scenarios hourly intraday trend]

Each scenario is a small fleet of 5 connectors x 90 days that report one resource type and
one custom metric (``metrics.throughput``), trained on the first 60 days. Each connector
gets four episodes in the test window:

* a spike (the metric x4, or x1.6 in ``intraday``),
* a drop (to 60 % of the records),
* a 3-sync shift (the metric x0.4, or x0.6 in ``intraday``),
* a latency burst (x8; a transport-only blip, so a ``review`` by design, never caught).

The scenarios:

* ``hourly``: syncs every 1-6 hours, a mild daily swing (10 %);
* ``intraday``: syncs every 30 minutes, the level swinging by half over the day (the
  shape of a taxi-demand or web-traffic series);
* ``trend``: as ``hourly``, with the metric growing 60 % and the count 40 % over the
  90 days.

Prints syncguard's quality table beside the fixed-threshold safeguards, per scenario, and
one summary row each.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.model import FleetModel  # noqa: E402
from training.backtest import format_table, run_backtest  # noqa: E402

_START = datetime(2026, 1, 5, tzinfo=UTC)
_DAYS, _TRAIN_DAYS, _CONNECTORS = 90, 60, 5
_EPISODES = ("spike", "drop", "shift", "latency")


def _fleet(scenario: str, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """History records, test records and the test window's labels of one scenario."""
    rng = np.random.default_rng(seed)
    intraday, trend = scenario == "intraday", scenario == "trend"
    spike, shift = (1.6, 0.6) if intraday else (4.0, 0.4)
    history, test, labels = [], [], []
    for c in range(_CONNECTORS):
        step_h = 0.5 if intraday else [1, 1, 4, 2, 6][c]
        n = int(_DAYS * 24 / step_h)
        hours = np.arange(n) * step_h
        hour_of_day, weekday = hours % 24, (hours // 24) % 7
        daily = 1 + (0.5 if intraday else 0.1) * np.sin(2 * np.pi * hour_of_day / 24)
        daily = daily - 0.05 * (weekday >= 5)
        growth = hours / hours[-1] if trend else np.zeros(n)
        size = 500 * (c + 1)
        count = np.rint(size * (1 + 0.4 * growth) * daily + rng.normal(0, size * 0.005, n))
        metric = 100 * daily * (1 + 0.6 * growth) * np.exp(rng.normal(0, 0.05, n))
        latency = 200 * np.exp(rng.normal(0, 0.1, n))
        label = np.full(n, "normal", dtype=object)
        cls = np.full(n, None, dtype=object)
        first = int(_TRAIN_DAYS * 24 / step_h)
        # Each episode scales one series over its syncs.
        scaled = {"spike": (metric, spike), "drop": (count, 0.6), "shift": (metric, shift),
                  "latency": (latency, 8.0)}
        for k, kind in enumerate(_EPISODES):
            at = first + (k + 1) * (n - first) // 6 + int(rng.integers(0, 5))
            span = np.arange(at, at + (3 if kind == "shift" else 1))
            series, factor = scaled[kind]
            series[span] *= factor
            label[span], cls[span] = "anomaly", kind
        count = np.rint(count)  # records are whole
        for j in range(n):
            started = _START + timedelta(hours=float(hours[j]), minutes=int(rng.integers(0, 5)))
            finished = started + timedelta(seconds=float(30 + rng.exponential(10)))
            record = {
                "sync_id": f"series-{c}:{j}",
                "connector_id": f"series-{c}",
                "connector_kind": "custom",
                "started_at": started.isoformat(),
                "finished_at": finished.isoformat(),
                "status": "succeeded",
                "resources": {"user": {"count": int(count[j])}},
                "api": {"requests": 10, "errors": 0, "retries": 0,
                        "latency_p50_ms": float(latency[j]),
                        "latency_p95_ms": float(2 * latency[j])},
                "metrics": {"throughput": float(metric[j])},
            }
            if j < first:
                history.append(record)
                continue
            test.append(record)
            labels.append({
                "sync_id": record["sync_id"], "connector_id": record["connector_id"],
                "label": label[j], "class": cls[j],
                "episode": None if cls[j] is None else f"series-{c}:{cls[j]}",
            })
    return history, test, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--scenarios", nargs="+", default=["hourly", "intraday", "trend"],
                        choices=["hourly", "intraday", "trend"])
    args = parser.parse_args()
    summary = []
    for scenario in args.scenarios:
        history, test, labels = _fleet(scenario, args.seed)
        report = run_backtest(history, test, labels=labels,
                              model=FleetModel(n_estimators=args.trees, n_jobs=2))
        print(f"\n=== {scenario}: {_CONNECTORS} connectors x {_DAYS} days, "
              f"trained on the first {_TRAIN_DAYS} (seed {args.seed}) ===")
        print(format_table(report))
        q = report.quality.row(0, named=True)
        recall = report.per_class.select("class", "syncguard").rows()
        summary.append((scenario, q, recall))
    print("\nscenario | episodes | episode recall | false pauses / 1000 | recall per class")
    for scenario, q, recall in summary:
        per_class = ", ".join(f"{c} {r:.1f}" for c, r in sorted(recall))
        print(f"{scenario} | {q['episodes']:.0f} | {q['episode_recall']:.2f} | "
              f"{q['false_pauses_per_1000']:.2f} | {per_class}")


if __name__ == "__main__":
    main()
