"""Pytest plugin: one fitted model per test session, and homes that hold it.

The model is fitted once per process (per xdist worker) and installed into each test's
home the way the champion cache holds it (``models/<version>/`` plus ``champion.json``
naming its SHA-256 digest), so scoring goes through the real, verified load path.

Test modules use it with ``pytest_plugins = ["scoring_fixtures"]``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scoring_support import CUT, Fleet, ingest_history, install_champion

from detector.home import Home
from detector.model import FleetModel
from training.simulator import simulate_fleet


@pytest.fixture(scope="session")
def fleet() -> Fleet:
    """Six connectors x 21 days (seed 5); a 20-tree model fitted on the first 14 days."""
    records, _labels = simulate_fleet(6, 21, seed=5)
    history = [r for r in records if r["started_at"] < CUT]
    test = [r for r in records if r["started_at"] >= CUT]
    return Fleet(history, test, FleetModel(n_estimators=20).fit(history))


@pytest.fixture
def scoring_home(tmp_path: Path, fleet: Fleet) -> Home:
    """A home with the fleet's history stored and its model installed as champion."""
    home = Home(tmp_path / "home").ensure()
    ingest_history(home, fleet.history)
    install_champion(home, fleet.model)
    return home
