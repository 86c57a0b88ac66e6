"""The backtest builds history's features once: its start state is initial_state's."""

from __future__ import annotations

import polars.testing

from detector.model import FleetModel
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


