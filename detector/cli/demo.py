"""``syncguard demo``: the main job on the embedded default, one small step per function.

Today: simulate a fleet, ingest it, train and register a model (MLflow), show the
status. Scoring and the summary of pauses against fixed-threshold rules are added as
further steps.
"""

from __future__ import annotations

from pathlib import Path

import click

from detector.cli.ingest import ingest_paths, summary_line
from detector.cli.options import actor_option, pass_home
from detector.cli.simulate import simulate_fleet_to
from detector.cli.status import connector_rows, render_status
from detector.errors import UsageError
from detector.home import Home
from detector.store import IngestReport, Store

__all__ = ["command", "simulate_step", "ingest_step", "train_step", "status_step"]

DEMO_TREES = 30
"""Trees per forest in the demo: enough for a 30-connector fleet, and quick."""

DEMO_MIN_DAYS = 10
"""Shortest demo history: a week to fit on, the rest (a quarter, at most 14 days) held
out for the backtest."""


def simulate_step(home: Home, *, connectors: int, days: int, seed: int) -> Path:
    """Simulate the fleet into ``<home>/demo``; return the sync records' path."""
    out_dir = home.inside("demo")
    click.echo(f"[1/4] simulating {connectors} connectors x {days} days (seed {seed}) "
               f"into {out_dir}", err=True)
    simulate_fleet_to(out_dir, connectors=connectors, days=days, seed=seed)
    return out_dir / "syncs.jsonl"


def ingest_step(home: Home, syncs_path: Path, *, actor: str) -> IngestReport:
    """Ingest the simulated records (a re-run replays them: no duplicates)."""
    click.echo(f"[2/4] ingesting {syncs_path}", err=True)
    with Store.open(home.store_path) as store:
        report = ingest_paths(store, [str(syncs_path)], actor=actor)
    click.echo(summary_line(report))
    return report


def train_step(home: Home, labels_path: Path, *, days: int, actor: str,
               trees: int = DEMO_TREES) -> None:
    """Backtest, fit and register a model; print where the MLflow run is and how to open it.

    The simulator's labels give the backtest its recall per fault class; the held-out
    window is the last quarter of the ``days`` simulated (at most 14 days).
    """
    from detector.cli.train import render_result, run_training
    from training.pipeline import TrainConfig

    holdout = min(14.0, days / 4)
    click.echo(f"[3/4] training ({trees} trees per forest, last {holdout:g} days held out) "
               "and registering in MLflow", err=True)
    result = run_training(home, config=TrainConfig(n_estimators=trees, holdout_days=holdout),
                          labels_path=str(labels_path), force=False, actor=actor,
                          label="demo train")
    click.echo(render_result(result))


def status_step(home: Home) -> None:
    """Print the per-connector status table."""
    click.echo("[4/4] status", err=True)
    click.echo(render_status(connector_rows(home)))


@click.command("demo")
@click.option("--connectors", type=int, default=30, show_default=True,
              help="Connectors in the simulated fleet.")
@click.option("--days", type=int, default=60, show_default=True, help="Days of history.")
@click.option("--seed", type=int, default=7, show_default=True, help="Simulation seed.")
@click.option("--trees", type=click.IntRange(10, 1000), default=DEMO_TREES, show_default=True,
              help="Trees per isolation forest when training.")
@actor_option
@pass_home
def command(home: Home, connectors: int, days: int, seed: int, trees: int, actor: str) -> None:
    """Run syncguard end to end on a simulated fleet in the home directory.

    Simulates a fleet into <home>/demo, ingests it into the store, trains and registers
    a model in MLflow (<home>/mlflow; the output says how to open the MLflow UI) and
    prints the per-connector status.
    """
    if days < DEMO_MIN_DAYS:
        raise UsageError(f"--days must be at least {DEMO_MIN_DAYS}: the demo trains on a week "
                         "and backtests on the days after it")
    home.ensure()
    syncs_path = simulate_step(home, connectors=connectors, days=days, seed=seed)
    ingest_step(home, syncs_path, actor=actor)
    train_step(home, syncs_path.parent / "labels.jsonl", days=days, actor=actor, trees=trees)
    status_step(home)
