"""The off-simulator fleet generator (``benchmarks/off_simulator.py``) writes valid records
with the labels the backtest reads."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
from conftest import REPO

from detector.contract import validate_record

sys.path.insert(0, str(REPO / "benchmarks"))

from off_simulator import FLAVOR_SHAPES, off_simulator_fleet  # noqa: E402


@pytest.mark.parametrize("flavor", sorted(FLAVOR_SHAPES))
def test_every_record_is_valid_and_labelled_once_with_history_before_test(flavor: str) -> None:
    history, test, labels = off_simulator_fleet(flavor, 8, 30, 15, seed=3)
    records = history + test
    assert [validate_record(r) for r in records] == [None] * len(records)
    assert [lab["sync_id"] for lab in labels] == [r["sync_id"] for r in records]
    assert max(r["started_at"] for r in history) < min(r["started_at"] for r in test)
    episodes = {lab["episode"] for lab in labels if lab["label"] == "anomaly"}
    assert len(episodes) == 8 * 3  # three per connector, all in the test window
    test_ids = {r["sync_id"] for r in test}
    assert all(lab["sync_id"] in test_ids for lab in labels if lab["label"] == "anomaly")
    statuses = Counter(r["status"] for r in records)
    assert (statuses["failed"] > 0) == (flavor == "messy")
