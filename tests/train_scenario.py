"""One trained home shared by the training tests (built once per session, see once.py).

MLflow's sqlite set-up and each training cost seconds, so ``test_train.py`` and
``test_cli_train.py`` read the facts of one scenario, played on a simulated fleet of 8
connectors x 40 days with tiny forests:

1. ``syncguard train --labels labels.jsonl --actor ann`` (CLI) -> v1, promoted: no
   champion yet;
2. ``syncguard train --json`` (CLI) -> v2, not promoted: the champion has an episode
   recall and v2, trained without labels, has none to compare;
3. ``pipeline.train(force=True)`` -> v3, promoted although the gate failed;
4. ``pipeline.train(labels_path=...)`` -> v4, promoted exactly when the gate says so.

After each step the champion (registry alias) and the cached champion are recorded, so
tests only read facts and pass in any order. Tests must not change the home: copy it.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner
from once import build_once

__all__ = ["CONFIG", "CLI_FAST", "trained_home", "cli"]

CONFIG = dict(n_estimators=10, max_samples=64, n_jobs=1, holdout_days=14.0)
CLI_FAST = ["--trees", "10", "--max-samples", "64", "--jobs", "1"]


def cli(home: Path, *args: str):
    """Run ``syncguard --home HOME ARGS...`` in process (click's runner)."""
    from detector.cli.main import cli as group

    return CliRunner().invoke(group, ["--home", str(home), *args], catch_exceptions=False)


def _outcome(result) -> dict:
    return {"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr}


def _play(root: Path) -> dict:
    from detector.home import Home
    from detector.model_cache import champion_pointer
    from training import pipeline, register

    home = Home(root)
    fleet = root / "fleet"
    assert cli(root, "simulate", "--connectors", "8", "--days", "40", "--seed", "11",
               "--out", str(fleet)).exit_code == 0
    assert cli(root, "ingest", str(fleet / "syncs.jsonl")).exit_code == 0
    labels = str(fleet / "labels.jsonl")
    config = pipeline.TrainConfig(**CONFIG)
    steps: list[str] = []
    facts: dict = {"root": str(root), "syncs_path": str(fleet / "syncs.jsonl"),
                   "labels_path": labels, "outputs": [], "results": [], "champions": [],
                   "cached": [], "previous": [], "steps": steps}

    def champion() -> int | None:
        found = [r["version"] for r in register.list_versions(home) if "champion" in r["aliases"]]
        return found[0] if found else None

    def after(previous: int | None) -> None:
        facts["previous"].append(previous)
        facts["champions"].append(champion())
        facts["cached"].append(champion_pointer(home)["version"])

    for args in (["--labels", labels, "--actor", "ann"], ["--json"]):
        previous = champion()
        facts["outputs"].append(_outcome(cli(root, "train", *CLI_FAST, *args)))
        after(previous)
    for kwargs in (dict(force=True), dict(labels_path=labels, progress=steps.append)):
        previous = champion()
        facts["results"].append(asdict(pipeline.train(home, config, **kwargs)))
        after(previous)
    return facts


def trained_home(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The scenario's facts; ``home`` is a :class:`Home` on the shared, read-only home."""
    from detector.home import Home

    if os.environ.get("MLFLOW_TRACKING_URI"):  # hermetic: the scenario's own store only
        pytest.skip("MLFLOW_TRACKING_URI is set")
    facts = build_once(tmp_path_factory, "train-scenario", _play)
    return {**facts, "home": Home(Path(facts["root"]))}
