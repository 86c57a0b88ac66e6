"""Training: the dataset read from the store, and the pipeline against a real MLflow store.

Dataset tests write scores, pauses and labels with plain SQL into a real store (the
tables of migration 2), so they do not depend on the scoring code. Pipeline tests share
one home per module (per xdist worker): MLflow's sqlite set-up costs seconds. The
scenario is played once by the ``trained`` fixture:

1. train with labels -> v1, promoted (no champion yet);
2. train without labels -> v2, not promoted: the champion has an episode recall and the
   challenger has none to compare, so the gate fails;
3. the same with ``force=True`` -> v3, promoted (forced);
4. train with labels again -> v4, promoted exactly when the gate says so.

The champion after each run is recorded there, so tests only read facts and pass in
any order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import polars.testing
import pytest
from conftest import REPO, make_records
from train_scenario import CONFIG, trained_home

from detector.contract import parse_lines
from detector.errors import ModelError, UsageError
from detector.home import Home
from detector.model_cache import champion_pointer, load_champion
from detector.modelfile import ARRAYS_NAME, MANIFEST_NAME
from detector.store import Store
from detector.store.db import connect
from detector.store.migrations import MIGRATIONS, migrate
from training import dataset

# --- dataset ---------------------------------------------------------------------------


def _ingest(store: Store, records: list[dict]) -> None:
    store.ingest(parse_lines([json.dumps(r) for r in records], source="t"), source="t")


def _score(store: Store, sync_id: str, *, decision: str = "proceed", paused: bool = False) -> None:
    connector_id, started_ts = store.conn.execute(
        "SELECT connector_id, started_ts FROM syncs WHERE sync_id = ?", (sync_id,)
    ).fetchone()
    store.conn.execute(
        "INSERT INTO scores (sync_id, connector_id, started_ts, scored_at, decision, severity, "
        "connector_paused, cold_start, event) VALUES (?, ?, ?, 'now', ?, 'info', ?, 0, '{}')",
        (sync_id, connector_id, started_ts, decision, int(paused)),
    )


def _pause(store: Store, sync_id: str, *, closed: bool, false_positive: bool = False) -> None:
    connector_id = sync_id.split(":")[0]
    store.conn.execute(
        "INSERT INTO pauses (connector_id, opened_sync_id, opened_at, reason, closed_at, "
        "closed_by, false_positive) VALUES (?, ?, 'now', 'count_drop', ?, ?, ?)",
        (
            connector_id,
            sync_id,
            "later" if closed else None,
            "ann" if closed else None,
            int(false_positive),
        ),
    )


def _label(store: Store, sync_id: str, label: str) -> None:
    store.conn.execute(
        "INSERT INTO labels (sync_id, label, actor, reason, at) VALUES (?, ?, 'ann', 'r', 'now')",
        (sync_id, label),
    )


@pytest.fixture
def verdicts(store: Store) -> Store:
    """Two connectors x 10 hourly syncs with every kind of verdict.

    okta-0: sync 2 labelled fault; a pause opened at 4 (decision pause), sync 5 scored
    while paused, the pause closed as a real fault; sync 6 labelled normal though held;
    a second pause opened at 8 and resumed as a false positive (8, 9 held).
    workday-1: a pause opened at 3 and still open (3, 4 held); sync 7 labelled normal.
    """
    _ingest(store, make_records(n_connectors=2, n_syncs=10, kinds=("okta", "workday")))
    _label(store, "okta-0:2", "fault")
    _score(store, "okta-0:1")
    _score(store, "okta-0:4", decision="pause", paused=True)
    _score(store, "okta-0:5", paused=True)
    _score(store, "okta-0:6", paused=True)
    _label(store, "okta-0:6", "normal")
    _pause(store, "okta-0:4", closed=True, false_positive=False)
    _score(store, "okta-0:7")
    _score(store, "okta-0:8", decision="pause", paused=True)
    _score(store, "okta-0:9", paused=True)
    _pause(store, "okta-0:8", closed=True, false_positive=True)
    _score(store, "workday-1:3", decision="pause", paused=True)
    _score(store, "workday-1:4", decision="review", paused=True)
    _pause(store, "workday-1:3", closed=False)
    _label(store, "workday-1:7", "normal")
    return store


def _exclusions(frame: pl.DataFrame) -> dict[str, str]:
    return dict(frame.filter(pl.col("excluded")).select("sync_id", "exclusion").iter_rows())


def test_faults_and_paused_syncs_are_left_out_false_positives_stay(verdicts: Store) -> None:
    data = dataset.load_training_data(verdicts.conn)
    assert data.frame.height == 20
    assert _exclusions(data.frame) == {
        "okta-0:2": "labelled_fault",
        "okta-0:4": "paused",
        "okta-0:5": "paused",
        "workday-1:3": "paused",
        "workday-1:4": "paused",
    }
    kept = set(data.clean["sync_id"])
    # Held by a pause resumed as a false positive, or labelled normal by a person: kept.
    assert {"okta-0:8", "okta-0:9", "okta-0:6", "workday-1:7"} <= kept
    assert data.clean.height + data.excluded.height == 20
    row = data.frame.filter(pl.col("sync_id") == "okta-0:9").row(0, named=True)
    assert row["held"] and row["held_false_positive"]
    assert data.clean.columns[:8] == dataset.HISTORY_COLUMNS
    assert data.frame.schema == pl.Schema(dataset.FRAME_SCHEMA)


def test_training_frame_matches_store_history(verdicts: Store) -> None:
    frame = dataset.read_training_frame(verdicts.conn)
    history = verdicts.history()
    assert frame.select(dataset.HISTORY_COLUMNS).equals(history)


def test_training_frame_read_in_batches_is_the_frame_read_at_once(
    verdicts: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    at_once = dataset.read_training_frame(verdicts.conn)
    monkeypatch.setattr(dataset, "_READ_BATCH_ROWS", 3)
    in_batches = dataset.read_training_frame(verdicts.conn)
    assert at_once.height > 3 * 3
    pl.testing.assert_frame_equal(in_batches, at_once)


def test_values_first_seen_late_are_read(store: Store) -> None:
    """Columns are declared, not inferred from the first rows (null there)."""
    records = make_records(n_connectors=1, n_syncs=300)
    records[-1] = {**records[-1], "status": "partial", "error_class": "timeout"}
    _ingest(store, records)
    _label(store, records[-2]["sync_id"], "fault")
    frame = dataset.read_training_frame(store.conn)
    assert frame["error_class"].drop_nulls().to_list() == ["timeout"]
    assert frame["label"].drop_nulls().to_list() == ["fault"]


def test_dataset_works_on_a_store_without_verdict_tables(tmp_path: Path) -> None:
    conn = connect(tmp_path / "old.sqlite")
    migrate(conn, MIGRATIONS[:1])  # a store from before scores, pauses and labels
    store = Store(conn, tmp_path / "old.sqlite")
    _ingest(store, make_records(n_connectors=1, n_syncs=5))
    frame = dataset.read_training_frame(conn)
    assert frame.height == 5
    assert not frame["excluded"].any()
    assert frame["label"].null_count() == 5
    assert dataset.backtest_labels(frame) is None
    conn.close()


def test_empty_store_is_refused(store: Store) -> None:
    with pytest.raises(UsageError, match="no syncs to train on"):
        dataset.load_training_data(store.conn)


def test_since_until_bound_the_window(verdicts: Store) -> None:
    first = verdicts.history()["started_at"].min()
    frame = dataset.read_training_frame(
        verdicts.conn, since=first + timedelta(hours=2), until=first + timedelta(hours=5)
    )
    assert sorted(frame["sync_id"]) == sorted(
        f"{c}:{i}" for c in ("okta-0", "workday-1") for i in (2, 3, 4)
    )


def test_store_labels_for_the_backtest(verdicts: Store) -> None:
    _label(verdicts, "okta-0:3", "fault")  # 2 and 3: one episode of consecutive faults
    frame = dataset.read_training_frame(verdicts.conn)
    labels = dataset.backtest_labels(frame)
    by_id = {r["sync_id"]: r for r in labels.iter_rows(named=True)}
    assert by_id["okta-0:2"]["label"] == by_id["okta-0:3"]["label"] == "anomaly"
    assert by_id["okta-0:2"]["class"] == "labelled_fault"
    assert by_id["okta-0:2"]["episode"] == by_id["okta-0:3"]["episode"] is not None
    assert by_id["okta-0:5"]["label"] == "ambiguous"  # held, never said to be normal
    assert by_id["okta-0:9"]["label"] == "normal"  # held by a false-positive pause
    assert by_id["okta-0:0"]["label"] == "normal" and by_id["okta-0:0"]["episode"] is None
    assert labels.height == frame.height


def test_file_labels_exclude_anomalies_and_a_person_wins(verdicts: Store) -> None:
    frame = dataset.read_training_frame(verdicts.conn)
    file_labels = pl.DataFrame(
        {
            "sync_id": ["okta-0:1", "okta-0:2", "okta-0:7", "workday-1:7"],
            "connector_id": ["okta-0", "okta-0", "okta-0", "workday-1"],
            "label": ["anomaly", "normal", "ambiguous", "anomaly"],
            "class": ["schema_drift", "normal", "access_review_cleanup", "empty_success"],
            "episode": ["ep-1", None, "ar-1", "ep-2"],
        }
    )
    marked = dataset.exclude_labelled(frame, file_labels)
    excl = _exclusions(marked)
    assert excl["okta-0:1"] == "labelled_fault"
    assert excl["workday-1:7"] == "labelled_fault"
    assert "okta-0:7" not in excl  # ambiguous (a legitimate bulk change) stays in
    assert excl["okta-0:2"] == "labelled_fault"  # the store's fault label still counts
    labels = dataset.backtest_labels(marked, file_labels)
    by_id = {r["sync_id"]: r for r in labels.iter_rows(named=True)}
    assert by_id["okta-0:1"]["class"] == "schema_drift"
    assert by_id["okta-0:2"]["label"] == "anomaly"  # the person's label wins over the file
    assert by_id["workday-1:7"]["label"] == "normal"


def test_split_holdout(verdicts: Store) -> None:
    frame = dataset.read_training_frame(verdicts.conn)
    # 10 hourly syncs: far too short for a 14-day window.
    with pytest.raises(UsageError, match="less than 7 days to fit on"):
        dataset.split_holdout(frame)
    with pytest.raises(UsageError, match="must be positive"):
        dataset.split_holdout(frame, holdout_days=0)
    long = frame.with_columns(
        pl.col("started_at") + pl.duration(days=pl.int_range(pl.len()).over("connector_id"))
    )
    before, window, cutoff = dataset.split_holdout(long, holdout_days=2)
    assert before.height + window.height == long.height
    assert before["started_at"].max() < cutoff <= window["started_at"].min()
    assert window["started_at"].max() - cutoff == timedelta(days=2)


def test_read_labels_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        dataset.read_labels_file(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sync_id": "a", "label": "normal"}\n')
    with pytest.raises(UsageError, match="has no connector_id, class, episode field"):
        dataset.read_labels_file(bad)


# --- the pipeline against a real MLflow store (see train_scenario.py) ------------------

register = pytest.importorskip("training.register")
pipeline = pytest.importorskip("training.pipeline")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return trained_home(tmp_path_factory)


def test_first_version_is_champion_and_cached(trained: dict) -> None:
    assert trained["previous"][0] is None
    assert trained["champions"][0] == 1 and trained["cached"][0] == 1
    assert "champion:        yes (no champion yet)" in trained["outputs"][0]["stdout"]


def test_gate_blocks_a_version_it_cannot_compare_and_force_overrides(trained: dict) -> None:
    second = json.loads(trained["outputs"][1]["stdout"])
    third = trained["results"][0]
    assert "episode_recall" in register.show_version(trained["home"], 1)["metrics"]
    assert "episode_recall" not in second["metrics"]
    assert (second["version"], second["promoted"]) == (2, False)
    assert second["reason"].startswith("not promoted: episode_recall is missing")
    assert trained["champions"][1] == 1 and trained["cached"][1] == 1
    assert (third["version"], third["promoted"]) == (3, True)
    assert third["reason"].startswith("forced; gate failed: episode_recall is missing")
    assert trained["champions"][2] == 3 and trained["cached"][2] == 3


def test_promotion_follows_the_gate_exactly(trained: dict) -> None:
    """v4, with labels: promoted exactly when the gate, fed both backtests, says so."""
    fourth = trained["results"][1]
    assert trained["previous"][3] == 3
    champion = register.show_version(trained["home"], 3)["metrics"]
    gate = register.is_at_least_as_good(fourth["metrics"], champion)
    assert fourth["promoted"] == gate.passed
    assert fourth["reason"].endswith("(vs champion v3)")
    assert trained["champions"][3] == (4 if gate.passed else 3)
    assert trained["cached"][3] == (4 if gate.passed else 3)


def test_run_has_params_metrics_and_artifacts(trained: dict, tmp_path: Path) -> None:
    first = trained["results"][1]
    client = register.client_for(trained["home"])
    run = client.get_run(first["run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["n_estimators"] == "10" and params["holdout_days"] == "14.0"
    assert params["data.labels"] == "file"
    assert int(params["data.excluded_labelled_fault"]) > 0
    metrics = run.data.metrics
    for key in ("episode_recall", "false_pauses_per_1000", "calibration_ratio",
                "calibration_p", "budgeted_false_pauses", "pauses_per_1000",
                "time.final_fit_s"):
        assert key in metrics, key
    assert 0.0 <= metrics["calibration_p"] <= 1.0
    assert any(k.startswith("recall.") for k in metrics)
    assert any(k.startswith("fixed.okta_20pct_users.") for k in metrics)
    artifacts = {a.path for top in client.list_artifacts(first["run_id"])
                 for a in client.list_artifacts(first["run_id"], top.path)}
    assert {
        "fleet-model/manifest.json",
        "fleet-model/arrays.npz",
        "summary/connectors.csv",
        "summary/screened_out.csv",
        "plots/calibration.png",
        "backtest/report.txt",
        "backtest/quality.csv",
        "backtest/recall_per_class.csv",
        "backtest/calibration_curve.csv",
        "backtest/decisions.parquet",
    } <= artifacts
    curve = pl.read_csv(client.download_artifacts(
        first["run_id"], "backtest/calibration_curve.csv", str(tmp_path)))
    assert curve["multiple"].to_list() == [1, 3, 10, 30, 100]
    assert curve["expected"][0] == pytest.approx(metrics["budgeted_false_pauses"], rel=1e-6)
    local = Path(client.download_artifacts(first["run_id"], "summary/connectors.csv",
                                           str(tmp_path)))
    summary = pl.read_csv(local)
    assert summary.height == 8
    assert summary["test_syncs"].sum() == first["data"]["holdout_syncs"]
    assert summary["excluded"].sum() == first["data"]["excluded_labelled_fault"]
    png = Path(client.download_artifacts(first["run_id"], "plots/calibration.png",
                                         str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_names_each_step(trained: dict) -> None:
    steps = trained["steps"]
    assert steps[0] == "reading the store"
    assert "backtest: scoring the test window" in steps
    assert "final model: isolation forests" in steps
    assert steps[-1] == "registering the model"
    assert len(steps) == pipeline.TOTAL_STEPS == pipeline.TrainConfig().total_steps()
    # The final fit takes the backtest's screening (pipeline.screened_by_backtest).
    assert "backtest: screening history" in steps
    assert "final model: screening history" not in steps


def test_train_is_audited(trained: dict) -> None:
    with Store.open(trained["home"].store_path) as store:
        entries = store.audit_entries(action="train")
    assert [e.subject for e in entries] == [f"syncguard-fleet v{v}" for v in (1, 2, 3, 4)]
    assert entries[0].actor == "ann" and entries[2].actor == "syncguard train"
    assert entries[1].reason.startswith("not promoted")
    assert entries[2].details["forced"] is True


_LOAD_WITHOUT_PICKLE = textwrap.dedent(
    """
    import json, sys
    from detector.model import FleetModel
    from detector.model_cache import load_champion, refresh_champion

    loaded, version = load_champion(sys.argv[1])
    model = FleetModel.from_arrays(loaded.arrays, loaded.config)
    with open(sys.argv[2], encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines][-40:]
    result = model.score(records)
    scoring_imported_mlflow = "mlflow" in sys.modules
    refresh_champion(sys.argv[1])  # the registry download, with pickle loading disabled
    print(json.dumps({"version": version, "rows": result.results.height,
                      "mlflow_on_scoring_path": scoring_imported_mlflow}))
    """
)


def test_champion_loads_and_scores_without_pickle(trained: dict) -> None:
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
           "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_PICKLE, str(trained["home"].root),
         trained["syncs_path"]],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["version"] == champion_pointer(trained["home"])["version"]
    assert out["rows"] == 40
    assert out["mlflow_on_scoring_path"] is False


def test_tampered_model_file_is_refused(trained: dict, tmp_path: Path) -> None:
    import shutil

    # A copy of the home's cache, so other tests keep an intact champion.
    cache = trained["home"].model_cache_dir
    home = Home(tmp_path / "copy")
    shutil.copytree(cache, home.model_cache_dir)
    loaded, version = load_champion(home)
    arrays = home.model_cache_dir / str(version) / ARRAYS_NAME
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=rf"{ARRAYS_NAME} failed its integrity check"):
        load_champion(home)
    manifest = home.model_cache_dir / str(version) / MANIFEST_NAME
    manifest.write_text(manifest.read_text().replace('"format"', '"format" ', 1))
    with pytest.raises(ModelError, match="changed or replaced after it was registered"):
        load_champion(home)


def test_registered_model_matches_the_final_fit(trained: dict) -> None:
    """The cached champion is the registered model: same digest, same fitted groups."""
    from detector.model import FleetModel

    loaded, version = load_champion(trained["home"])
    info = register.show_version(trained["home"], version)
    assert loaded.digest == info["digest"]
    model = FleetModel.from_arrays(loaded.arrays, loaded.config)
    assert model.n_estimators == CONFIG["n_estimators"]
    assert model.intervals_.height == 8
    assert np.all(model.forest_.arrays_["roots"].shape[1] == CONFIG["n_estimators"])
    assert loaded.meta["run_id"] == info["run_id"]


def test_registered_arrays_are_fit_final_of_the_training_frame(
    trained: dict, tmp_path: Path
) -> None:
    """train() keeps only what its fits read and hands the final fit its history: the
    model it registers is still, bit for bit, ``fit_final`` of the whole training frame,
    less what the backtest screened out and paused (recomputed here from the frame)."""
    import shutil

    from detector.modelfile import load_model_dir
    from training.backtest import run_backtest

    run = trained["results"][1]  # pipeline.train with the labels file
    client = register.client_for(trained["home"])
    registered = load_model_dir(client.download_artifacts(run["run_id"], "fleet-model",
                                                          str(tmp_path)))
    logged = pl.read_csv(client.download_artifacts(run["run_id"], "summary/screened_out.csv",
                                                   str(tmp_path)), schema={"sync_id": pl.String})
    home = Home(tmp_path / "copy")
    home.root.mkdir()
    store = trained["home"].store_path
    for path in store.parent.glob(store.name + "*"):  # the trained home stays as is
        shutil.copy(path, home.root / path.name)
    file_labels = dataset.read_labels_file(trained["labels_path"])
    frame = pipeline._read(home, file_labels)
    config = pipeline.TrainConfig(**CONFIG)
    before, window, _ = dataset.split_holdout(frame, holdout_days=config.holdout_days)
    backtest_model = config.model()
    report = run_backtest(dataset.fit_history(before), window.select(dataset.HISTORY_COLUMNS),
                          labels=dataset.backtest_labels(window, file_labels),
                          model=backtest_model)
    screened = pipeline.screened_by_backtest(backtest_model, report)
    paused = set(report.decisions.filter(pl.col("decision") == "pause")["sync_id"])
    assert set(screened) == set(backtest_model.screened_out_) | paused and paused
    in_history = set(dataset.fit_history(frame)["sync_id"])
    assert logged["sync_id"].to_list() == [s for s in screened if s in in_history]
    arrays, _ = pipeline.fit_final(config, frame, screened=screened).to_arrays()
    assert sorted(arrays) == sorted(registered.arrays)
    for name, values in arrays.items():
        np.testing.assert_array_equal(registered.arrays[name], values, err_msg=name)


def test_train_without_a_store_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no store at .*syncguard ingest"):
        pipeline.train(Home(tmp_path / "empty"))
