"""A small simulated fleet and homes that hold it, for scoring tests.

The fixtures built on these helpers are in ``scoring_fixtures`` (a pytest plugin: test
modules list it in ``pytest_plugins``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.contract import parse_lines
from detector.home import Home
from detector.model import FleetModel
from detector.modelfile import model_digest, save_model_dir
from detector.store import Store

CUT = "2026-06-15"
"""History before, scoring from: 14 days of history, 7 days to score."""


@dataclass(frozen=True)
class Fleet:
    """The simulated fleet split in time, and the model fitted on its history."""

    history: list[dict[str, Any]]
    test: list[dict[str, Any]]
    model: FleetModel

    def lines(self, records: list[dict[str, Any]] | None = None) -> list[str]:
        """Records as JSON Lines (default: the test window)."""
        return [json.dumps(r) for r in (self.test if records is None else records)]


def install_champion(home: Home, model: FleetModel, version: int = 1) -> Path:
    """Write ``model`` into the home's champion cache as version ``version``."""
    arrays, config = model.to_arrays()
    model_dir = save_model_dir(home.model_cache_dir / str(version), arrays=arrays,
                               config=config, overwrite=True)
    pointer = {"version": version, "digest": model_digest(model_dir), "path": str(version)}
    (home.model_cache_dir / "champion.json").write_text(json.dumps(pointer))
    return model_dir


def ingest_history(home: Home, records: list[dict[str, Any]]) -> None:
    """Store ``records`` without scoring them (what ``syncguard ingest`` does)."""
    with Store.open(home.ensure().store_path) as store:
        store.ingest(parse_lines([json.dumps(r) for r in records]), source="history")
