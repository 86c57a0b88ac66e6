"""MLflow registry and champion cache against a real sqlite store in a temporary home.

MLflow's sqlite initialisation (alembic migrations) takes seconds, so one store is
built per module (per xdist worker) by the ``reg`` fixture, which also plays the main
scenario: register v1 (promoted, no champion), v2 (worse, not promoted), v3 (worse,
forced). Tests that change the champion assert only on what they changed themselves,
so they pass in any order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from detector.errors import ModelError, UsageError
from detector.home import Home
from detector.model_cache import champion_pointer, load_champion, refresh_champion
from detector.modelfile import ARRAYS_NAME, MANIFEST_NAME, model_digest, save_model_dir

register = pytest.importorskip("training.register")

REPO = Path(__file__).resolve().parents[1]
GOOD = {"episode_recall": 0.90, "false_pauses_per_1000": 0.30, "calibration_ratio": 1.1}
WORSE = {"episode_recall": 0.80, "false_pauses_per_1000": 0.30, "calibration_ratio": 1.0}


def _model(path: Path, seed: int, metrics: dict) -> Path:
    rng = np.random.default_rng(seed)
    return save_model_dir(
        path,
        arrays={"baseline": rng.normal(size=(168, 3)), "ids": np.array(["okta-1", "gh-2"])},
        config={"seed": seed},
        metrics=metrics,
    )


def _train(home: Home, work: Path, seed: int, metrics: dict, *, force: bool = False):
    """One training run: params, backtest metrics and artifacts, then registration."""
    with register.start_training_run(
        home, params={"seed": seed, "window_days": 28}, tags={"mlflow.runName": f"t{seed}"}
    ) as run:
        plots = work / f"plots-{seed}"
        plots.mkdir()
        (plots / "recall.svg").write_text("<svg/>")
        report = work / f"report-{seed}.json"
        report.write_text(json.dumps(metrics))
        register.log_backtest(run, metrics, {"plots": plots, "backtest": report})
        model_dir = _model(work / f"model-{seed}", seed, metrics)
        result = register.register_fleet_model(
            home, run.run_id, model_dir, metrics=metrics, force=force
        )
    return run.run_id, model_dir, result


def _champion(home: Home) -> int | None:
    return next(
        (v["version"] for v in register.list_versions(home) if "champion" in v["aliases"]), None
    )


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("registry")
    fake_user_home = root / "user-home"
    fake_user_home.mkdir()
    had_mlruns = (Path.cwd() / "mlruns").exists()
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(var, raising=False)
        mp.setenv("HOME", str(fake_user_home))  # anything written to ~/ would show here
        home = Home(root / "home").ensure()
        work = root / "work"
        work.mkdir()
        steps = []
        for seed, metrics, force in ((1, GOOD, False), (2, WORSE, False), (3, WORSE, True)):
            run_id, model_dir, result = _train(home, work, seed, metrics, force=force)
            steps.append(
                {"run_id": run_id, "dir": model_dir, "result": result, "champion": _champion(home)}
            )
        yield {
            "home": home,
            "work": work,
            "steps": steps,
            "user_home": fake_user_home,
            "had_mlruns": had_mlruns,
        }


def test_embedded_store_lives_in_the_home(reg) -> None:
    home = reg["home"]
    assert register.tracking_uri_for(home) == f"sqlite:///{home.mlflow_dir / 'mlflow.db'}"
    assert (home.mlflow_dir / "mlflow.db").is_file()
    client = register.client_for(home)
    exp = client.get_experiment_by_name("syncguard")
    assert exp.artifact_location == (home.mlflow_dir / "artifacts").as_uri()
    # Nothing outside the home: no ./mlruns, nothing in ~/.
    assert reg["had_mlruns"] or not (Path.cwd() / "mlruns").exists()
    assert list(reg["user_home"].iterdir()) == []


def test_tracking_uri_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert register.tracking_uri_for(tmp_path) == "http://mlflow.example:5000"
    assert register.registry_uri_for(tmp_path) == "http://mlflow.example:5000"


def test_run_has_params_metrics_and_artifacts(reg) -> None:
    home, step = reg["home"], reg["steps"][0]
    client = register.client_for(home)
    run = client.get_run(step["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "t1"
    assert run.data.params == {"seed": "1", "window_days": "28"}
    assert run.data.metrics["episode_recall"] == pytest.approx(0.90)
    top = {a.path for a in client.list_artifacts(step["run_id"])}
    assert top == {"plots", "backtest", "fleet-model"}
    assert {a.path for a in client.list_artifacts(step["run_id"], "fleet-model")} == {
        "fleet-model/arrays.npz",
        "fleet-model/manifest.json",
    }
    on_disk = home.mlflow_dir / "artifacts" / step["run_id"] / "artifacts" / "plots" / "recall.svg"
    assert on_disk.is_file()


def test_failed_training_run_is_marked_failed(reg) -> None:
    with (
        pytest.raises(RuntimeError),
        register.start_training_run(reg["home"], params={}, tags={}) as run,
    ):
        raise RuntimeError("fit blew up")
    status = register.client_for(reg["home"]).get_run(run.run_id).info.status
    assert status == "FAILED"


def test_alias_moves_only_when_the_gate_passes_or_forced(reg) -> None:
    first, worse, forced = (s["result"] for s in reg["steps"])
    assert (first.version, first.promoted) == (1, True)
    assert first.reason == "no champion yet"
    assert reg["steps"][0]["champion"] == 1

    assert (worse.version, worse.promoted) == (2, False)
    assert "episode_recall 0.8000 is below the champion 0.9000" in worse.reason
    assert reg["steps"][1]["champion"] == 1  # a worse challenger does not move it

    assert (forced.version, forced.promoted) == (3, True)
    assert forced.reason.startswith("forced; gate failed: episode_recall")
    assert reg["steps"][2]["champion"] == 3


def test_version_carries_digest_and_metric_tags(reg) -> None:
    home, step = reg["home"], reg["steps"][0]
    shown = register.show_version(home, 1)
    assert shown["digest"] == model_digest(step["dir"])
    assert shown["metrics"] == GOOD
    assert shown["run_id"] == step["run_id"]
    assert shown["source"].endswith(f"{step['run_id']}/artifacts/fleet-model")
    assert shown["params"] == {"seed": "1", "window_days": "28"}
    assert shown["status"] == "READY"


def test_list_versions_newest_first(reg) -> None:
    rows = register.list_versions(reg["home"])
    versions = [r["version"] for r in rows]
    assert versions == sorted(versions, reverse=True)
    assert {r["version"] for r in rows} >= {1, 2, 3}
    row = next(r for r in rows if r["version"] == 2)
    assert set(row) >= {"version", "aliases", "created", "run_id", "digest", "metrics"}
    assert row["metrics"] == WORSE
    assert row["created"].endswith("Z")


def test_show_unknown_version_is_a_usage_error(reg) -> None:
    with pytest.raises(UsageError, match="model version 999 of syncguard-fleet does not exist"):
        register.show_version(reg["home"], 999)
    with pytest.raises(UsageError, match="must be a number"):
        register.show_version(reg["home"], "latest")


def test_promote_records_who_and_why(reg) -> None:
    home = reg["home"]
    before = _champion(home)
    out = register.promote(home, 2, actor="alice", reason="rollback after bad release")
    assert out["version"] == 2 and out["previous"] == before
    assert out["actor"] == "alice" and out["reason"] == "rollback after bad release"
    assert out["digest"] == model_digest(reg["steps"][1]["dir"])
    assert set(out["gate"]) == {"passed", "reason"}
    assert _champion(home) == 2
    shown = register.show_version(home, 2)
    assert shown["promoted_by"] == "alice"
    assert shown["promoted_reason"] == "rollback after bad release"
    assert shown["tags"]["syncguard.promoted_at"] == out["promoted_at"]


def test_promote_needs_actor_and_reason(reg) -> None:
    with pytest.raises(UsageError, match="--by"):
        register.promote(reg["home"], 1, actor=" ", reason="x")
    with pytest.raises(UsageError, match="--reason"):
        register.promote(reg["home"], 1, actor="bob", reason="")


def test_register_refuses_a_broken_model_dir(reg, tmp_path: Path) -> None:
    model_dir = _model(tmp_path / "m", 9, GOOD)
    (model_dir / ARRAYS_NAME).write_bytes(b"junk")
    with pytest.raises(ModelError, match=r"arrays\.npz is 4 bytes"):
        register.register_fleet_model(
            reg["home"], reg["steps"][0]["run_id"], model_dir, metrics=GOOD
        )


def test_cache_refresh_then_load_in_subprocess_without_mlflow_or_pickle(reg) -> None:
    home = reg["home"]
    register.promote(home, 1, actor="test", reason="known champion for the cache test")
    path = refresh_champion(home)
    assert path == home.model_cache_dir / "1"
    pointer = champion_pointer(home)
    assert pointer["version"] == 1 and pointer["path"] == "1"
    assert pointer["digest"] == model_digest(reg["steps"][0]["dir"])

    script = textwrap.dedent(
        """
        import json, pickle, sys

        def refuse(*a, **k):
            raise AssertionError("pickle used while loading the champion")

        pickle.load = pickle.loads = refuse
        pickle.Unpickler = refuse
        from detector.model_cache import load_champion

        model, version = load_champion(sys.argv[1])
        print(json.dumps({
            "version": version,
            "mlflow_loaded": any(m == "mlflow" or m.startswith("mlflow.") for m in sys.modules),
            "baseline_sum": float(model.arrays["baseline"].sum()),
            "ids": model.arrays["ids"].tolist(),
        }))
        """
    )
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(home.root)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    want = np.random.default_rng(1).normal(size=(168, 3)).sum()
    assert out == {
        "version": 1,
        "mlflow_loaded": False,
        "baseline_sum": pytest.approx(want),
        "ids": ["okta-1", "gh-2"],
    }


def test_tampered_cache_is_refused_then_repaired_by_refresh(reg) -> None:
    home = reg["home"]
    register.promote(home, 3, actor="test", reason="tamper test")
    local = refresh_champion(home)
    npz = local / ARRAYS_NAME
    data = bytearray(npz.read_bytes())
    data[100] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=rf"{local / ARRAYS_NAME} failed its integrity check"):
        load_champion(home)
    # The registry copy is intact: a refresh replaces the bad local copy.
    refresh_champion(home)
    model, version = load_champion(home)
    assert version == 3 and model.config == {"seed": 3}


def test_missing_cache_files_are_refused(reg, tmp_path: Path) -> None:
    empty = Home(tmp_path / "empty")
    with pytest.raises(ModelError, match="no champion model in .*champion.json is missing"):
        load_champion(empty)
    home = reg["home"]
    register.promote(home, 1, actor="test", reason="missing-file test")
    local = refresh_champion(home)
    (local / MANIFEST_NAME).unlink()
    with pytest.raises(ModelError, match="manifest.json is missing"):
        load_champion(home)
    refresh_champion(home)
    load_champion(home)


@pytest.mark.parametrize("store", ["sqlite", "http"])
def test_unreachable_store_keeps_the_cached_champion(reg, monkeypatch, store: str) -> None:
    home = reg["home"]
    register.promote(home, 1, actor="test", reason="outage test")
    refresh_champion(home)
    before = (home.model_cache_dir / "champion.json").read_bytes()
    if store == "sqlite":
        # The database's parent is a regular file: the store cannot be opened or created.
        blocker = home.root / "not-a-dir"
        blocker.write_text("")
        uri = f"sqlite:///{blocker}/mlflow.db"
    else:
        # Nothing listens on port 1; no retries so the test stays fast.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
        uri = "http://127.0.0.1:1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(
        ModelError, match=r"cannot reach the MLflow registry .* \(version 1\) stays in use"
    ):
        refresh_champion(home)
    assert (home.model_cache_dir / "champion.json").read_bytes() == before
    _, version = load_champion(home)
    assert version == 1


@pytest.mark.parametrize(
    ("challenger", "champion", "passed", "why"),
    [
        ({"episode_recall": 0.5}, None, True, "no champion yet"),
        ({"episode_recall": 0.896, "false_pauses_per_1000": 0.34}, GOOD, True, "at least as good"),
        (
            {"episode_recall": 0.89, "false_pauses_per_1000": 0.30},
            GOOD,
            False,
            "episode_recall 0.8900 is below",
        ),
        (
            {"episode_recall": 0.95, "false_pauses_per_1000": 0.36},
            GOOD,
            False,
            "false_pauses_per_1000 0.3600 is above",
        ),
        (
            {"episode_recall": 0.95, "false_pauses_per_1000": 0.1, "calibration_ratio": 2.5},
            GOOD,
            False,
            "calibration_ratio 2.500 is outside",
        ),
        (  # no false pause where the budget expects one: no evidence against calibration
            {"episode_recall": 0.95, "false_pauses_per_1000": 0.1, "calibration_ratio": 0.0,
             "calibration_p": 0.74},
            GOOD,
            True,
            "at least as good",
        ),
        (
            {"episode_recall": 0.95, "false_pauses_per_1000": 0.1, "calibration_ratio": 2.5,
             "calibration_p": 0.001},
            GOOD,
            False,
            "calibration_ratio 2.500 is outside [0.5, 2] (calibration_p 0.001 < 0.05)",
        ),
        ({"false_pauses_per_1000": 0.1}, GOOD, False, "episode_recall is missing"),
        (
            {"episode_recall": float("nan"), "false_pauses_per_1000": 0.1},
            GOOD,
            False,
            "episode_recall is missing",
        ),
        ({"episode_recall": 0.1}, {"unrelated": 1.0}, True, "at least as good"),
    ],
)
def test_promotion_gate(challenger, champion, passed, why) -> None:
    gate = register.is_at_least_as_good(challenger, champion)
    assert gate.passed is passed and bool(gate) is passed
    assert why in gate.reason
