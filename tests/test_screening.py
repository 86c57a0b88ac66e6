"""Screening: a fit leaves out the history syncs its own held-out scores would pause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

import detector.history as history_module
import detector.model as model_module
import detector.policy
from detector.model import FleetModel
from detector.policy import load_policy
from training.simulator import simulate_fleet

CUT = "2026-06-29"


@pytest.fixture(scope="module")
def unlabelled():
    """History with its faults in and nobody's labels, and which of its syncs are faults."""
    records, labels = simulate_fleet(8, 42, seed=21, fault_rate=3.0)
    history = [r for r in records if r["started_at"] < CUT]
    kept = {r["sync_id"] for r in history}
    faults = {lab["sync_id"] for lab in labels if lab["label"] == "anomaly"} & kept
    model = FleetModel(n_estimators=30).fit(history)
    return history, faults, model


def test_screening_leaves_out_faults_and_few_normal_syncs(unlabelled):
    history, faults, model = unlabelled
    out = set(model.screened_out_)
    assert len(faults) > 20  # the fleet has faults to find
    # Faults are about 2 % of this history and at least a third of what is left out.
    assert len(out & faults) >= max(5, len(out) / 3)
    assert len(out - faults) <= 0.02 * (len(history) - len(faults))


def test_a_screened_fit_is_the_fit_without_the_syncs_it_left_out(unlabelled):
    history, _, model = unlabelled
    out = set(model.screened_out_)
    assert out
    again = FleetModel(n_estimators=30, screen_history=False).fit(
        [r for r in history if r["sync_id"] not in out]
    )
    assert again.screened_out_ == []
    arrays, config = model.to_arrays()
    arrays_again, config_again = again.to_arrays()
    assert arrays.keys() == arrays_again.keys()
    for key, values in arrays.items():
        np.testing.assert_array_equal(values, arrays_again[key], err_msg=key)
    assert config["screen_history"] and not config_again["screen_history"]


def test_a_fit_handed_its_screening_is_the_screened_fit(unlabelled):
    """``fit(screened=...)`` leaves those syncs out and fits once: handed what a screened
    fit left out, it is that fit bit for bit (its last pass), without screening again."""
    history, _, model = unlabelled
    assert model.screened_out_
    calls = []
    handed = FleetModel(n_estimators=30)
    handed._fit_calibration = lambda *a, **k: calls.append(k) or FleetModel._fit_calibration(
        handed, *a, **k
    )
    handed.fit(history, screened=pl.Series(model.screened_out_ + ["not-in-history"]))
    assert calls == [{"screen": False}]  # one cross-fit and calibration, no screening
    assert handed.screened_out_ == model.screened_out_  # ids outside history not counted
    arrays, config = model.to_arrays()
    arrays_handed, config_handed = handed.to_arrays()
    assert arrays.keys() == arrays_handed.keys() and config == config_handed
    for key, values in arrays.items():
        np.testing.assert_array_equal(values, arrays_handed[key], err_msg=key)


def test_screening_is_kept_in_the_model_config_and_older_files_read_as_off(unlabelled):
    _, _, model = unlabelled
    arrays, config = model.to_arrays()
    assert FleetModel.from_arrays(arrays, config).screen_history is True
    del config["screen_history"]
    assert FleetModel.from_arrays(arrays, config).screen_history is False


def test_a_review_is_not_screened_out(unlabelled, tmp_path):
    """Under a policy where every breach is a review, nothing would pause."""
    history, _, model = unlabelled
    text = (Path(detector.policy.__file__).parent / "default.toml").read_text()
    path = tmp_path / "review.toml"
    path.write_text(text.replace('on_breach = "pause"', 'on_breach = "review"'))
    reviewing = FleetModel(n_estimators=30, policy=load_policy(path)).fit(history)
    assert model.screened_out_ and reviewing.screened_out_ == []


def test_no_connector_loses_more_than_its_share_of_history_in_a_round(unlabelled, monkeypatch):
    history, _, model = unlabelled
    n_syncs = dict(model.intervals_.select("connector_id", "n_syncs").iter_rows())
    left_out: dict[str, int] = {}
    for sync_id in model.screened_out_:
        connector = sync_id.split(":")[0]
        left_out[connector] = left_out.get(connector, 0) + 1
    rounds, share = model_module._SCREEN_ROUNDS, model_module._SCREEN_MAX_SHARE
    assert left_out and all(
        n <= rounds * share * (n_syncs[c] + n) for c, n in left_out.items()
    )
    # Below the share of any connector, nothing goes.
    monkeypatch.setattr(model_module, "_SCREEN_MAX_SHARE", 0.0)
    assert FleetModel(n_estimators=30).fit(history).screened_out_ == []


def test_history_left_out_part_by_part_is_the_history_without_those_syncs(
    unlabelled, monkeypatch
):
    """The refit decodes the history in parts, leaving the screened syncs out of each
    part: the frames of one pass over the history without them."""
    import polars.testing

    from detector.frame import in_sync_order, to_struct_frame

    history, _, model = unlabelled
    out = set(model.screened_out_)
    frame = in_sync_order(to_struct_frame(history))
    monkeypatch.setattr(history_module, "HISTORY_CHUNK_SYNCS", 200)
    parts = history_module.history_frames(
        frame, leave_out=pl.Series("sync_id", sorted(out), dtype=pl.String)
    )
    one_pass = history_module.history_frames([r for r in history if r["sync_id"] not in out])
    assert parts[0].height == len(history) - len(out)
    for got, expected in zip(parts, one_pass, strict=True):
        polars.testing.assert_frame_equal(got, expected)


def test_decoded_history_kept_in_part_gives_the_frames_of_those_syncs_texts(
    unlabelled, monkeypatch
):
    """A store history decoded once in parts (:class:`DecodedHistory`: the screening
    rounds, the backtest's safeguards and the final fit read it), kept to the syncs
    before a day and with the screened syncs left out, gives the frames of one pass over
    those syncs' own texts."""
    import json

    import polars.testing

    history, _, model = unlabelled
    out = pl.Series("sync_id", sorted(model.screened_out_), dtype=pl.String)
    texts = pl.DataFrame(
        {
            "sync_id": [r["sync_id"] for r in history],
            "connector_id": [r["connector_id"] for r in history],
            "started_at": [r["started_at"] for r in history],
            "record": [json.dumps(r) for r in history],
        }
    ).sort("connector_id", "started_at")
    monkeypatch.setattr(history_module, "HISTORY_CHUNK_SYNCS", 200)
    decoded = history_module.DecodedHistory.decode(texts, n_jobs=2)
    assert len(decoded.parts) > 2
    before = decoded.keep(texts.filter(pl.col("started_at") < "2026-06-15")["sync_id"])
    got = history_module.history_frames(before, n_jobs=2, leave_out=out)
    expected = history_module.history_frames(
        [r for r in history if r["started_at"] < "2026-06-15" and r["sync_id"] not in set(out)]
    )
    assert 0 < got[0].height < len(history) - len(out)
    for g, e in zip(got, expected, strict=True):
        polars.testing.assert_frame_equal(g, e)
