"""The backtest's calibration curve: normal syncs whose tail probability falls below m times
their budgeted rate, against the count a calibrated model expects."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from detector.model import FleetModel
from training.backtest import CURVE_MULTIPLES, calibration_curve, format_table, run_backtest
from training.simulator import simulate_fleet

N = 400_000
ALPHA = 5e-4  # about the per-sync rate of the default budget on a simulated fleet


def _normal(tail_probability: np.ndarray, paused: np.ndarray | None = None) -> pl.DataFrame:
    n = len(tail_probability)
    return pl.DataFrame({
        "tail_probability": tail_probability,
        "alpha": np.full(n, ALPHA),
        "paused": np.zeros(n, bool) if paused is None else paused,
    })


def test_a_calibrated_model_reads_one_all_along_the_curve() -> None:
    uniform = np.random.default_rng(0).uniform(size=N)
    curve = calibration_curve(_normal(uniform))
    assert curve["multiple"].to_list() == list(CURVE_MULTIPLES)
    assert curve["expected"].to_list() == pytest.approx([N * ALPHA * m for m in CURVE_MULTIPLES])
    # 200 breaches expected at the cutoff: within four Poisson deviations of them, and
    # ever closer further out.
    for expected, ratio, p in curve.select("expected", "ratio", "p").iter_rows():
        assert abs(ratio - 1.0) < 4.0 / np.sqrt(expected)
        assert p > 1e-4


def test_a_cautious_model_reads_its_caution_at_every_multiple() -> None:
    # Tail probabilities twice what they should be: half the breaches at every multiple.
    cautious = np.minimum(2.0 * np.random.default_rng(1).uniform(size=N), 1.0)
    curve = calibration_curve(_normal(cautious))
    assert curve["ratio"].to_list() == pytest.approx([0.5] * len(CURVE_MULTIPLES), abs=0.15)
    assert curve["p"][-1] < 1e-6  # 100 x the budget: 20,000 expected, no luck explains it
    assert curve["observed"].is_sorted()


def test_the_modes_are_read_apart_and_together() -> None:
    rng = np.random.default_rng(2)
    paused = rng.uniform(size=N) < 0.5
    # Calibrated while paused, cautious (x 2) while not.
    tail = np.where(paused, 1.0, 2.0) * rng.uniform(size=N)
    curve = calibration_curve(_normal(np.minimum(tail, 1.0), paused)).row(-1, named=True)
    assert curve["ratio_paused"] == pytest.approx(1.0, abs=0.05)
    assert curve["ratio_not_paused"] == pytest.approx(0.5, abs=0.05)
    assert curve["ratio"] == pytest.approx(0.75, abs=0.05)


def test_a_sync_expects_at_most_one_breach() -> None:
    # A budget of 2 % per sync at 100 x: every sync is expected below, once each.
    normal = pl.DataFrame({"tail_probability": [0.3, 0.9], "alpha": [0.02, 0.02],
                           "paused": [False, True]})
    last = calibration_curve(normal).row(-1, named=True)
    assert (last["observed"], last["expected"], last["ratio"]) == (2, 2.0, 1.0)
    assert calibration_curve(normal, (1,)).row(0, named=True)["observed"] == 0


def test_the_backtest_reports_the_curve_and_its_cutoff_agrees_with_the_breaches() -> None:
    records, labels = simulate_fleet(6, 16, seed=11)
    cut = records[len(records) * 3 // 4]["started_at"]
    history = [r for r in records if r["started_at"] < cut]
    test = [r for r in records if r["started_at"] >= cut]
    report = run_backtest(history, test, labels=labels, model=FleetModel(n_estimators=20))
    curve, c = report.calibration_curve, report.calibration
    # At m = 1 the curve counts tail probabilities below the budgeted rate; the calibration
    # line counts scores above the cutoff: the same syncs, found two ways.
    assert curve["observed"][0] == round(c["breach_rate"] * c["normal_syncs"])
    assert curve["expected"][0] == pytest.approx(c["budgeted_pauses"])
    assert curve["observed"].is_sorted() and curve["expected"].is_sorted()
    assert "Calibration curve" in format_table(report)
