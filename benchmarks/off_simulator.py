"""Detection on fleets unlike the simulator's: shapes it never makes, faults drawn apart.

Usage::

    .venv/bin/python benchmarks/off_simulator.py [--flavors plain messy metrics]
        [--connectors 24] [--days 120] [--train-days 60] [--seed 1] [--trees 100]

The project's simulator draws every fleet the detector was tuned on. This generator is
written apart from it, so a check here is a check of the general case:

- ``plain``: 15-minute SCIM apps, 30-minute count-only exports (no churn, nulls or API
  figures), 12-hour HR feeds, hourly directories of about a million accounts that grow or
  shrink by up to 15 % over the window, tiny apps of a dozen seats, and a metrics-only
  feed; faults: a partial drop, a blanked field, duplicates, a stale repeat of the sync
  before, an API storm, a metric gone wrong, each one to three syncs long.
- ``messy``: ``plain`` with the mess real feeds have, on normal syncs: 1 % failed (paused
  by rule, as the contract says, and labelled ambiguous: they count neither way), 1 %
  saying ``partial`` (labelled normal), API blocks, metrics and null rates missing now
  and then, a metric reported on 2 % of syncs only.
- ``metrics``: 15-minute apps, 12-hour feeds, directories whose groups come only with the
  daily full sync, and apps reporting a ratio that never moves beside active sessions
  that swing with office hours.

For each flavor: fit on the first ``--train-days`` days (faults left out), score the rest
in time order, and print the quality table beside the fixed-threshold safeguards, the
per-class recall and the calibration line; then one summary row per flavor.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.model import FleetModel  # noqa: E402
from training.backtest import format_table, run_backtest  # noqa: E402

START = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
#: name: minutes between syncs, accounts, reports churn, null rates, API figures, metrics
SHAPES = {
    "csvexport": (30, 5_000, False, False, False, False),
    "scim": (15, 1_200, True, True, True, False),
    "hrfeed": (720, 40_000, True, True, False, False),
    "bigdir": (60, 900_000, True, True, True, True),
    "tinyapp": (240, 12, True, True, True, False),
    "metricsfeed": (60, 300, False, False, False, True),
    "fullsync": (60, 3_000, True, True, True, False),
    "sessions": (60, 800, True, False, True, True),
}
FLAVOR_SHAPES = {
    "plain": ("csvexport", "scim", "hrfeed", "bigdir", "tinyapp", "metricsfeed"),
    "messy": ("csvexport", "scim", "hrfeed", "bigdir", "tinyapp", "metricsfeed"),
    "metrics": ("fullsync", "sessions", "scim", "hrfeed"),
}
FAULTS = ("drop", "blank", "duplicates", "stale", "api_storm", "metric_shift")
EPISODES_PER_CONNECTOR = 3


def _iso(seconds: float) -> str:
    return (START + dt.timedelta(seconds=float(seconds))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fault_for(shape: str, rng: np.random.Generator) -> str:
    """A fault the shape can show (a blanked field needs null rates, and so on)."""
    _, _, _, nulls, api, metrics = SHAPES[shape]
    possible = [f for f in FAULTS if (f != "blank" or nulls) and (f != "api_storm" or api)
                and (f != "metric_shift" or metrics)]
    return str(rng.choice(possible))


def _normal_record(shape: str, cid: str, i: int, t: float, size: int, null_share: float,
                   rng: np.random.Generator) -> dict:
    every, _, churn, nulls, api, metrics = SHAPES[shape]
    stats: dict = {"count": size}
    if churn:
        stats |= {"added": int(rng.poisson(max(0.2, size * 0.002))),
                  "removed": int(rng.poisson(max(0.2, size * 0.002))),
                  "modified": int(rng.poisson(max(0.2, size * 0.004))), "duplicates": 0}
    if nulls:
        stats["null_rates"] = {"email": round(rng.binomial(size, null_share) / size, 6),
                               "department": round(float(rng.beta(2, 20)), 6)}
    duration = float(rng.gamma(4, 30 if every < 60 else 120))
    record = {"sync_id": f"{cid}:{i}", "connector_id": cid, "connector_kind": shape,
              "started_at": _iso(t), "finished_at": _iso(t + duration), "status": "succeeded",
              "resources": {"account": stats}}
    if api:
        record["api"] = {"requests": int(rng.poisson(size / 500 + 5)),
                         "errors": int(rng.poisson(0.05)), "retries": int(rng.poisson(0.1)),
                         "latency_p50_ms": round(float(rng.lognormal(5, 0.2)), 1),
                         "latency_p95_ms": round(float(rng.lognormal(6, 0.3)), 1)}
    if metrics:
        record["metrics"] = {"mfa_ratio": round(float(np.clip(rng.normal(0.85, 0.005), 0, 1)), 4)}
        if shape == "sessions":
            hour, weekday = (t / 3600) % 24, (t // 86400) % 7
            busy = weekday < 5 and 8 <= hour < 18
            record["metrics"]["active_sessions"] = float(rng.poisson(40 + 400 * busy))
    if shape == "fullsync" and i % 24 == 5:  # groups come with the daily full sync only
        groups = max(1, size // 10)
        record["resources"]["group"] = {
            "count": groups, "added": int(rng.poisson(1)), "removed": int(rng.poisson(1)),
            "null_rates": {"owner": round(rng.binomial(groups, 0.1) / groups, 6)}}
    return record


def _apply_fault(record: dict, fault: str, before: dict | None,
                 rng: np.random.Generator) -> None:
    stats = record["resources"]["account"]
    if fault == "drop" or (fault == "stale" and before is None):
        kept = int(stats["count"] * rng.uniform(0.4, 0.8))
        if "removed" in stats:
            stats["removed"] += stats["count"] - kept
        stats["count"] = kept
    elif fault == "blank":  # all of the field, or nine in ten of it
        share = 1.0 if rng.random() < 0.5 else 0.9
        stats["null_rates"]["email"] = round(round(share * stats["count"]) / stats["count"], 6)
    elif fault == "duplicates":
        extra = int(max(2, stats["count"] * rng.uniform(0.05, 0.3)))
        stats["count"] += extra
        stats["duplicates"] = extra
    elif fault == "stale":  # the data of the sync before, again, churn and all at nought
        record["resources"] = copy.deepcopy(before["resources"])
        if "metrics" in before:
            record["metrics"] = dict(before["metrics"])
        for repeated in record["resources"].values():
            repeated.update({k: 0 for k in ("added", "removed", "modified") if k in repeated})
    elif fault == "api_storm":
        record["api"].update(errors=int(rng.integers(20, 60)), retries=int(rng.integers(20, 80)),
                             requests=record["api"]["requests"] * 5)
    elif fault == "metric_shift":
        record["metrics"]["mfa_ratio"] = round(float(rng.uniform(0.3, 0.6)), 4)
        if "active_sessions" in record["metrics"]:
            record["metrics"]["active_sessions"] = 0.0


def _make_messy(record: dict, rng: np.random.Generator) -> str:
    """What real feeds do on normal syncs now and then; returns the sync's label: a failed
    sync is ``ambiguous`` (the contract pauses it by rule, so it counts neither way)."""
    u = rng.random()
    if u < 0.01:
        record.update(status="failed", error_class=str(rng.choice(["timeout", "network"])))
        del record["resources"]
        return "ambiguous"
    if u < 0.02:
        record.update(status="partial", error_class="rate_limit")
    if rng.random() < 0.05:
        record.pop("api", None)
    if rng.random() < 0.05:
        record.pop("metrics", None)
    if rng.random() < 0.03:
        record["resources"]["account"].pop("null_rates", None)
    if rng.random() < 0.02:
        record["metrics"] = {**record.get("metrics", {}), "rare_figure": float(rng.random())}
    return "normal"


def off_simulator_fleet(flavor: str, connectors: int, days: int, train_days: int,
                        seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """History, test records (each in time order) and labels in the simulator's format."""
    rng = np.random.default_rng([seed, sorted(FLAVOR_SHAPES).index(flavor)])
    shapes = FLAVOR_SHAPES[flavor]
    records, labels, episode = [], [], 0
    for c in range(connectors):
        shape = shapes[c % len(shapes)]
        every, base = SHAPES[shape][:2]
        cid = f"{shape}-{c:02d}"
        n = days * 1440 // every
        t = np.arange(n) * every * 60.0 + rng.integers(0, every * 60)
        trend = 1 + rng.normal(0.0, 0.15) * t / t[-1]
        daily = 1 + 0.002 * np.sin(2 * np.pi * (t / 3600 % 24) / 24)
        sizes = np.round(base * trend * daily + rng.normal(0, max(1, base * 0.002), n))
        if shape == "tinyapp":  # seats come and go one at a time, between 6 and 24
            sizes = np.clip(base + np.cumsum(rng.choice([-1, 0, 0, 0, 0, 0, 1], n)),
                            base // 2, base * 2)
        sizes = np.maximum(sizes, 1).astype(int)
        first_test = int(np.searchsorted(t, train_days * 86400.0))
        # Four syncs apart at least: episodes of up to three syncs never run into each other.
        starts = rng.choice(np.arange(first_test + 10, n - 5, 4), EPISODES_PER_CONNECTOR,
                            replace=False)
        faults = {}
        for s in starts:
            episode += 1
            fault = _fault_for(shape, rng)
            for k in range(int(rng.integers(1, 4))):
                faults[int(s) + k] = (fault, f"ep-{episode:04d}")
        null_share = rng.uniform(0.01, 0.2)
        before = None
        for i in range(n):
            record = _normal_record(shape, cid, i, t[i], int(sizes[i]), null_share, rng)
            fault, ep = faults.get(i, (None, None))
            label = "anomaly"
            if fault is not None:
                _apply_fault(record, fault, before, rng)
            else:
                label = _make_messy(record, rng) if flavor == "messy" else "normal"
            records.append(record)
            labels.append({"sync_id": record["sync_id"], "connector_id": cid, "label": label,
                           "class": fault or label, "episode": ep})
            before = record
    order = sorted(range(len(records)), key=lambda j: records[j]["started_at"])
    cut = _iso(train_days * 86400.0)
    history = [records[j] for j in order if records[j]["started_at"] < cut]
    test = [records[j] for j in order if records[j]["started_at"] >= cut]
    return history, test, [labels[j] for j in order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavors", nargs="+", choices=sorted(FLAVOR_SHAPES),
                        default=["plain", "messy", "metrics"])
    parser.add_argument("--connectors", type=int, default=24)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--train-days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trees", type=int, default=100)
    args = parser.parse_args()
    summary = []
    for flavor in args.flavors:
        history, test, labels = off_simulator_fleet(
            flavor, args.connectors, args.days, args.train_days, args.seed)
        print(f"== {flavor}: {len(history)} history and {len(test)} test syncs, seed {args.seed}",
              flush=True)
        report = run_backtest(history, test, labels=labels,
                              model=FleetModel(n_estimators=args.trees, n_jobs=2))
        print(format_table(report), flush=True)
        row = report.quality.row(0, named=True)
        summary.append((flavor, row, report.calibration))
    print("\nflavor   episodes  recall  first-sync  false pauses/1000  min class  breaches/budget")
    for flavor, row, cal in summary:
        print(f"{flavor:<8} {row['episodes']:>8.0f}  {row['episode_recall']:.3f}  "
              f"{row['first_sync_recall']:>10.3f}  {row['false_pauses_per_1000']:>17.3f}  "
              f"{row['min_class_recall']:>9.3f}  {cal.get('breach_ratio', float('nan')):>15.2f}")


if __name__ == "__main__":
    main()
