"""Execute every analyst notebook top to bottom on a small simulated fleet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ORDER = ("explore_connector", "tune_and_backtest", "compare_and_promote")


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("nbhome") / "home"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "detector.cli.main",
            "--home",
            str(home),
            "demo",
            "--connectors",
            "6",
            "--days",
            "30",
            "--trees",
            "10",
            "--actor",
            "test",
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    return home


def _run(name: str, params: str, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    first.source = params
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


def _images(nb: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


def test_committed_without_outputs():
    for name in ORDER:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, name


def test_notebooks_run_on_a_simulated_fleet(demo_home: Path, tmp_path: Path):
    from training import register

    home = f"HOME = {str(demo_home)!r}\n"
    explore = _run(
        "explore_connector",
        home + "CONNECTOR = None\nMAX_METRICS = 3\nN_PAUSES = 5\nUSE_CHAMPION = True\n",
        tmp_path,
    )
    assert _images(explore) >= 2
    text = "".join(str(o) for c in explore.cells if c.cell_type == "code" for o in c.outputs)
    assert "reasons" in text

    before = {v["version"] for v in register.list_versions(demo_home)}
    tune = _run(
        "tune_and_backtest",
        home + "BUDGET_FALSE_PAUSES = 1\nBUDGET_DAYS = 30\n"
        "N_ESTIMATORS = 10\nBASELINE_METHOD = 'profile'\nHOLDOUT_DAYS = 14\n"
        "LABELS_PATH = None\nBUDGET_FACTORS = (0.5, 1, 4)\nLOG_TO_MLFLOW = True\n",
        tmp_path,
    )
    assert _images(tune) >= 3  # quality, recall per class, calibration
    versions = register.list_versions(demo_home)
    new = [v for v in versions if v["version"] not in before]
    assert len(new) == 1 and "champion" not in new[0]["aliases"]  # a challenger only
    champion = next(v["version"] for v in versions if "champion" in v["aliases"])

    compare = _run(
        "compare_and_promote",
        home + "CHALLENGER = None\nHOLDOUT_DAYS = 14\n"
        "LABELS_PATH = None\nPROMOTE = True\nACTOR = 'test'\n"
        "REASON = 'notebook test'\n",
        tmp_path,
    )
    assert _images(compare) >= 1
    after = next(v for v in register.list_versions(demo_home) if "champion" in v["aliases"])
    assert after["version"] == new[0]["version"] != champion
    assert after["promoted_by"] == "test"


def test_budget_policy_and_config_round_trip(tmp_path: Path):
    from detector.policy import load_policy
    from training import analysis
    from training.pipeline import TrainConfig

    path = analysis.write_budget_policy(tmp_path / "p.toml", 2, 30)
    policy = load_policy(path)
    assert all(
        c["budget_false_pauses"] == 2 and c["budget_days"] == 30
        for c in policy.criticalities.values()
    )
    config = TrainConfig(n_estimators=12, baseline_method="stl", policy_path=str(path))
    params = {k: str(v) for k, v in config.params().items()}
    assert analysis.config_from_params(params) == config
    assert analysis.config_from_params({"policy_path": "built-in"}).policy_path is None
