"""``syncguard train`` and ``syncguard models list | show | promote`` through the real CLI.

The trained home is the one of train_scenario.py (v1 and v2 trained by this CLI, v3 and
v4 by the pipeline). Tests that promote work on a copy of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_records, run_syncguard, write_jsonl
from train_scenario import CLI_FAST as FAST
from train_scenario import cli as run
from train_scenario import trained_home

from detector.cli.main import cli
from detector.home import Home
from detector.model_cache import champion_pointer
from detector.store import Store

pytest.importorskip("training.register")

@pytest.fixture(scope="module")
def cli_home(tmp_path_factory: pytest.TempPathFactory) -> dict:
    facts = trained_home(tmp_path_factory)
    first, second = facts["outputs"]
    return {**facts, "root": Path(facts["root"]), "first": first, "second": second}


def test_train_prints_the_run_version_champion_and_how_to_open_mlflow(cli_home: dict) -> None:
    result = cli_home["first"]
    assert result["exit_code"] == 0, result["stderr"]
    out = result["stdout"]
    db = cli_home["root"] / "mlflow" / "mlflow.db"
    assert "model version:   syncguard-fleet v1" in out
    assert "champion:        yes (no champion yet)" in out
    assert f"tracking store:  sqlite:///{db}" in out
    assert f"mlflow ui --backend-store-uri 'sqlite:///{db}'" in out
    assert "MLflow run:      " in out
    assert "left out" in out and "labelled faults" in out
    assert re.search(r"calibration ratio [\d.]+ \(\d+ false pauses where the budget expects "
                     r"[\d.]+, p = [\d.]+\)", out), out
    # Progress on stderr, one line per step when stderr is not a terminal.
    assert "training: final model: isolation forests" in result["stderr"]
    assert "training: registering the model" in result["stderr"]


def test_train_json_reports_a_version_that_was_not_promoted(cli_home: dict) -> None:
    result = cli_home["second"]
    assert result["exit_code"] == 0, result["stderr"]
    report = json.loads(result["stdout"])
    assert report["version"] == 2
    assert report["promoted"] is False
    assert report["reason"].startswith("not promoted: episode_recall is missing")
    assert report["ui_command"].startswith("mlflow ui --backend-store-uri 'sqlite:///")
    assert report["data"]["labels"] == "none"
    assert "calibration_ratio" in report["metrics"] or "pauses_per_1000" in report["metrics"]


def test_models_list(cli_home: dict) -> None:
    champion = cli_home["champions"][-1]
    result = run(cli_home["root"], "models", "list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["version", "aliases", "created"]
    assert [line.split()[0] for line in lines[1:]] == ["4", "3", "2", "1"]
    assert lines[5 - champion].split()[:2] == [str(champion), "champion"]
    rows = json.loads(run(cli_home["root"], "models", "list", "--json").stdout)
    assert [r["version"] for r in rows] == [4, 3, 2, 1]
    assert [r["version"] for r in rows if r["aliases"] == ["champion"]] == [champion]
    assert "episode_recall" in rows[3]["metrics"]
    assert rows[1]["promoted_by"] == "syncguard train"  # v3, forced by the pipeline


def test_models_show(cli_home: dict) -> None:
    result = run(cli_home["root"], "models", "show", "1")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == "syncguard-fleet v1"
    assert "episode_recall" in result.stdout and "n_estimators" in result.stdout
    info = json.loads(run(cli_home["root"], "models", "show", "1", "--json").stdout)
    assert info["params"]["n_estimators"] == "10"
    assert info["promoted_by"] == "syncguard train"
    missing = run(cli_home["root"], "models", "show", "99")
    assert missing.exit_code == 2
    assert missing.stderr.strip() == (
        "error: model version 99 of syncguard-fleet does not exist (see `syncguard models list`)"
    )


@pytest.fixture
def copy_home(cli_home: dict, tmp_path: Path) -> Path:
    """A copy of the trained home (its MLflow artifact paths are absolute: rewrite them)."""
    import sqlite3

    dest = tmp_path / "home"
    shutil.copytree(cli_home["root"], dest)
    old, new = str(cli_home["root"]), str(dest)
    with sqlite3.connect(dest / "mlflow" / "mlflow.db") as db:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("model_versions", "source"), ("model_versions", "storage_location")):
            cols = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if column in cols:
                db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
    return dest


def test_models_promote_moves_the_champion_and_audits(cli_home: dict, copy_home: Path) -> None:
    was = cli_home["champions"][-1]
    result = run(copy_home, "models", "promote", "2", "--by", "ann", "--reason", "rollback drill")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        f"syncguard-fleet v2 is now champion (was v{was}), promoted by ann: rollback drill"
    )
    gate_line = result.stdout.splitlines()[1]
    assert gate_line.startswith(("promotion gate: passed (", "promotion gate: failed ("))
    assert champion_pointer(Home(copy_home))["version"] == 2
    rows = json.loads(run(copy_home, "models", "list", "--json").stdout)
    (v2,) = (r for r in rows if r["version"] == 2)
    assert v2["aliases"] == ["champion"] and v2["promoted_by"] == "ann"
    with Store.open(Home(copy_home).store_path) as store:
        (entry,) = store.audit_entries(action="promote")
    assert (entry.actor, entry.subject, entry.reason) == ("ann", "syncguard-fleet v2",
                                                         "rollback drill")
    assert entry.details["previous"] == was
    assert entry.details["gate"]["passed"] == gate_line.startswith("promotion gate: passed")


def test_models_promote_refuses_a_tampered_version(cli_home: dict, copy_home: Path) -> None:
    info = json.loads(run(copy_home, "models", "show", "2", "--json").stdout)
    arrays = Path(info["source"].removeprefix("file://")) / "arrays.npz"
    data = bytearray(arrays.read_bytes())
    data[100] ^= 0xFF
    arrays.write_bytes(bytes(data))
    result = run(copy_home, "models", "promote", "2", "--by", "ann", "--reason", "x")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: model version 2 was not promoted: ")
    assert "arrays.npz failed its integrity check" in result.stderr
    rows = json.loads(run(copy_home, "models", "list", "--json").stdout)
    assert [r["version"] for r in rows if "champion" in r["aliases"]] == [
        cli_home["champions"][-1]
    ]


def test_models_promote_needs_by_and_reason(cli_home: dict) -> None:
    result = run(cli_home["root"], "models", "promote", "2", "--reason", "x")
    assert result.exit_code == 2
    assert "Missing option '--by'" in result.stderr
    blank = run(cli_home["root"], "models", "promote", "2", "--by", " ", "--reason", "x")
    assert blank.exit_code == 2
    assert "non-empty --by" in blank.stderr


def test_train_on_an_empty_home_says_what_to_do(tmp_path: Path) -> None:
    result = run(tmp_path / "empty", "train")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: no store at {tmp_path / 'empty' / 'store.sqlite'}: ingest sync records first "
        "(`syncguard ingest FILE`)"
    )


def test_train_refuses_a_holdout_longer_than_history(cli_home: dict) -> None:
    result = run(cli_home["root"], "train", *FAST, "--holdout-days", "35")
    assert result.exit_code == 2
    assert "leaves less than 7 days to fit on" in result.stderr
    rows = json.loads(run(cli_home["root"], "models", "list", "--json").stdout)
    assert len(rows) == 4  # nothing registered


def test_help_of_each_command() -> None:
    for args in (["train"], ["models"], ["models", "list"], ["models", "show"],
                 ["models", "promote"]):
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.stdout


def test_demo_trains_registers_and_says_how_to_open_mlflow(tmp_path: Path) -> None:
    home = tmp_path / "demo-home"
    result = run(home, "demo", "--connectors", "6", "--days", "24", "--trees", "10")
    assert result.exit_code == 0, result.output
    assert "[3/4] training (10 trees per forest, last 6 days held out)" in result.stderr
    db = home / "mlflow" / "mlflow.db"
    assert "model version:   syncguard-fleet v1" in result.stdout
    assert "champion:        yes (no champion yet)" in result.stdout
    assert f"open the MLflow UI: mlflow ui --backend-store-uri 'sqlite:///{db}'" in result.stdout
    assert "(labels: file)" in result.stdout  # the simulator's labels fed the backtest
    assert champion_pointer(Home(home))["version"] == 1


def test_demo_needs_enough_days_to_train(tmp_path: Path) -> None:
    result = run(tmp_path / "h", "demo", "--days", "5")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: --days must be at least 10: the demo trains on a week and backtests on the "
        "days after it"
    )
    assert not (tmp_path / "h" / "demo").exists()


def test_train_as_a_real_process_prints_no_mlflow_chatter(tmp_path: Path) -> None:
    """A fresh home in a real process: progress lines on stderr, and not MLflow's set-up
    chatter (its INFO lines about creating database tables)."""
    home = tmp_path / "fresh"
    records = write_jsonl(tmp_path / "in.jsonl", make_records(3, 24 * 10))
    assert run_syncguard("ingest", records, home=home).returncode == 0
    env_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        proc = run_syncguard("train", *FAST, "--holdout-days", "2", home=home, timeout=300)
    finally:
        if env_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env_uri
    assert proc.returncode == 0, proc.stderr
    assert "model version:   syncguard-fleet v1" in proc.stdout
    lines = proc.stderr.splitlines()
    assert lines and all("training: " in line for line in lines), proc.stderr
