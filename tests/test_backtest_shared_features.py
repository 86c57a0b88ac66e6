"""The backtest: history's features built once (its start state is initial_state's), and
its calibration apart by mode."""

from __future__ import annotations

import json

import polars as pl
import polars.testing
import pytest
from scipy import stats

import training.backtest as backtest_module
from detector.model import FleetModel, prepare
from training.analysis import calibration_curve
from training.backtest import format_table, run_backtest
from training.simulator import simulate_fleet

CUT = "2026-06-29"


class _Recording(FleetModel):
    """Keeps the state and facts the backtest scores its test window from."""

    def score(self, records, *, state=None, facts=None, **kwargs):
        self.started_from_ = (state, facts)
        return super().score(records, state=state, facts=facts, **kwargs)


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
    # The count the budget expects, and how likely exact calibration lands this far out.
    assert c["false_pauses"] == quality["false_pauses"]
    assert c["budgeted_pauses"] == pytest.approx(c["budgeted_rate"] * total)
    k, mean = c["false_pauses"], c["budgeted_pauses"]
    tail = min(stats.poisson.cdf(k, mean), stats.poisson.sf(k - 1, mean))
    assert c["calibration_p"] == pytest.approx(min(1.0, 2 * tail))
    assert f"{k} false pauses where the budget expects {mean:.1f}" in format_table(report)
    labelled = pl.from_dicts(labels, infer_schema_length=None)
    curve = calibration_curve(report, labelled, test, factors=(1.0,))
    assert curve["breach_rate"][0] == pytest.approx(c["breach_rate"])


def _stored(records: list[dict]) -> pl.DataFrame:
    """Records as a store history frame: the texts beside their columns."""
    return pl.DataFrame(
        {
            "connector_id": [r["connector_id"] for r in records],
            "connector_kind": [r.get("connector_kind") for r in records],
            "record": [json.dumps(r) for r in records],
        }
    )


def test_safeguards_and_start_state_in_parts_of_connectors_are_those_of_one_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large history is featured a part of whole connectors at a time (with each part's
    test syncs, and connectors new in the window with the first part): the safeguards'
    decisions, in test order, and the start state are those of one pass."""
    records, _ = simulate_fleet(6, 40, seed=5)
    history = _stored([r for r in records if r["started_at"] < CUT])
    test = _stored([r for r in records if r["started_at"] >= CUT])
    newcomer = test.filter(pl.col("connector_id") == test["connector_id"][0]).with_columns(
        pl.lit("brand-new-01").alias("connector_id"),
        pl.col("record").str.replace_all(test["connector_id"][0], "brand-new-01"),
    )
    test = pl.concat([test, newcomer])
    order = prepare(test)[0]
    one_pass = backtest_module._safeguards_and_state(history, test, order)
    passes = []
    real = backtest_module._joined_features
    monkeypatch.setattr(
        backtest_module, "_joined_features", lambda h, t: passes.append(h.height) or real(h, t)
    )
    monkeypatch.setattr(backtest_module, "_CHUNK_SYNCS", history.height // 4)
    in_parts = backtest_module._safeguards_and_state(history, test, order)
    assert len(passes) > 1 and sum(passes) == history.height
    in_threads = backtest_module._safeguards_and_state(history, test, order, n_jobs=2)
    for got in (in_parts, in_threads):
        assert set(got[0]) == set(one_pass[0]) and len(one_pass[0]) >= 5
        for name, want in one_pass[0].items():
            pl.testing.assert_frame_equal(got[0][name], want)
        for got_frame, want in zip(got[1:], one_pass[1:], strict=True):
            pl.testing.assert_frame_equal(got_frame, want)
