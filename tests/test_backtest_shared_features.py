"""The backtest: history's features built once (its start state is initial_state's), and
its calibration apart by mode."""

from __future__ import annotations

import polars as pl
import polars.testing
import pytest

from detector.model import FleetModel
from training.analysis import calibration_curve
from training.backtest import run_backtest
from training.simulator import simulate_fleet

CUT = "2026-06-29"


class _Recording(FleetModel):
    """Keeps the state and facts the backtest scores its test window from."""

    def score(self, records, *, state=None, facts=None):
        self.started_from_ = (state, facts)
        return super().score(records, state=state, facts=facts)


def test_backtest_scores_from_the_state_at_the_end_of_history() -> None:
    records, labels = simulate_fleet(6, 40, seed=5)
    history = [r for r in records if r["started_at"] < CUT]
    test = [r for r in records if r["started_at"] >= CUT]
    model = _Recording(n_estimators=20)
    report = run_backtest(history, test, labels=labels, model=model)
    state, facts = model.initial_state(history)
    polars.testing.assert_frame_equal(model.started_from_[0], state)
    polars.testing.assert_frame_equal(model.started_from_[1], facts)
    assert report.quality is not None and set(report.baselines) >= {"zscore_3sigma_14d"}




def test_calibration_by_mode_splits_the_calibration_and_the_false_pauses() -> None:
    records, labels = simulate_fleet(6, 40, seed=5)
    history = [r for r in records if r["started_at"] < CUT]
    test = [r for r in records if r["started_at"] >= CUT]
    report = run_backtest(history, test, labels=labels, model=FleetModel(n_estimators=20))
    modes = report.calibration_by_mode
    assert modes["paused"].to_list() == [False, True]  # a fault pauses, nobody resumes
    total = report.calibration["normal_syncs"]
    assert modes["normal_syncs"].sum() == total
    quality = report.quality.row(0, named=True)
    assert modes["false_pauses"].sum() == quality["false_pauses"]
    weights = modes["normal_syncs"] / total
    for rate in ("budgeted_rate", "realised_rate", "breach_rate"):
        assert (modes[rate] * weights).sum() == pytest.approx(report.calibration[rate])
    # The realised rate is the false pauses'; the breaches (pauses and reviews) are the
    # calibration curve's at factor 1.
    c = report.calibration
    assert c["realised_rate"] * total == pytest.approx(quality["false_pauses"])
    assert c["calibration_ratio"] == pytest.approx(c["realised_rate"] / c["budgeted_rate"])
    labelled = pl.from_dicts(labels, infer_schema_length=None)
    curve = calibration_curve(report, labelled, test, factors=(1.0,))
    assert curve["breach_rate"][0] == pytest.approx(c["breach_rate"])
