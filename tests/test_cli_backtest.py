"""``syncguard backtest``: the decisions file and the quality table, from a real fit."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from detector.cli.main import cli
from training.simulator import simulate_fleet

METHODS = ("syncguard", "okta_20pct_users", "entra_500_deletes", "conductorone_halves",
           "sailpoint_10pct_removed", "zscore_3sigma_14d")


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_backtest_writes_a_decision_per_test_sync_with_reasons_and_rule_hits(
        home: Path, tmp_path: Path) -> None:
    records, labels = simulate_fleet(6, 16, seed=11)
    cut = records[len(records) * 3 // 4]["started_at"]
    history = [r for r in records if r["started_at"] < cut]
    test = [r for r in records if r["started_at"] >= cut]
    # A failed sync is paused by a rule, which the line must name: the model has no reason.
    failed = dict(test[5], status="failed", error_class="timeout")
    failed.pop("resources")
    test[5] = failed
    out = tmp_path / "decisions" / "out.jsonl"
    result = CliRunner().invoke(cli, [
        "--home", str(home), "backtest", _write(tmp_path / "h.jsonl", history),
        _write(tmp_path / "t.jsonl", test), "--out", str(out), "--trees", "20",
        "--labels", _write(tmp_path / "labels.jsonl", labels)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["sync_id"] for line in lines] == [r["sync_id"] for r in test]
    for line in lines:
        assert line["decision"] in ("pause", "review", "proceed")
        assert 0.0 <= line["tail_probability"] <= 1.0 and line["cutoff"] > 0
        assert (line["decision"] == "proceed") == (not line["reasons"] and not line["rule_hits"])
    by_id = {line["sync_id"]: line for line in lines}
    hit = by_id[failed["sync_id"]]
    assert hit["decision"] == "pause"
    assert hit["rule_hits"] == [
        {"rule": "sync_failed", "detail": "status failed (error_class timeout)"}]
    table = result.stdout
    assert all(method in table for method in METHODS)
    assert "Episode recall per fault class" in table and "Calibration:" in table
