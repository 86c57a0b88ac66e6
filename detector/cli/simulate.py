"""``syncguard simulate``: write a realistic labelled fleet of sync records."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from detector.cli.options import pass_home
from detector.errors import SyncguardError, UsageError
from detector.home import Home

__all__ = ["command", "simulate_fleet_to", "load_simulator"]


def load_simulator() -> ModuleType:
    """Import ``training.simulator`` lazily: scoring never needs it, and importing it
    costs time on every other command."""
    try:
        simulator = importlib.import_module("training.simulator")
    except ImportError as exc:
        raise SyncguardError(f"the fleet simulator is not available: {exc}") from exc
    if not hasattr(simulator, "write_fleet"):
        raise SyncguardError("the fleet simulator is not available: "
                             "training.simulator has no write_fleet")
    return simulator


def simulate_fleet_to(out_dir: Path, *, connectors: int, days: int,
                      seed: int) -> dict[str, Any]:
    """Simulate a fleet into ``out_dir`` (``syncs.jsonl``, ``labels.jsonl``).

    Returns
    -------
    dict
        The simulator's summary.
    """
    if connectors < 1 or days < 1:
        raise UsageError("--connectors and --days must be at least 1")
    summary = load_simulator().write_fleet(Path(out_dir), connectors, days, seed)
    return summary if isinstance(summary, dict) else {}


@click.command("simulate")
@click.option("--connectors", type=int, default=30, show_default=True,
              help="Number of connectors in the fleet.")
@click.option("--days", type=int, default=60, show_default=True, help="Days of history.")
@click.option("--seed", type=int, default=7, show_default=True,
              help="Random seed; the same seed gives the same fleet.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Output directory. Default: <home>/fleet")
@pass_home
def command(home: Home, connectors: int, days: int, seed: int, out_dir: Path | None) -> None:
    """Simulate a labelled fleet of connector syncs, with injected faults.

    Writes syncs.jsonl (sync records, ready for `syncguard ingest`) and labels.jsonl
    (which syncs are faults, and of which class) into the output directory.
    """
    out_dir = out_dir or home.root / "fleet"
    click.echo(f"simulating {connectors} connectors x {days} days (seed {seed}) ...", err=True)
    summary = simulate_fleet_to(out_dir, connectors=connectors, days=days, seed=seed)
    syncs = summary.get("syncs", "?")
    click.echo(f"wrote {syncs} syncs for {connectors} connectors to {out_dir}")
