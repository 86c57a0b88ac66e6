"""``syncguard demo``: the main job on the embedded default, one small step per function.

Today: simulate a fleet, ingest it, show the status. Training, scoring and the summary
of pauses against fixed-threshold rules are added as further steps.
"""

from __future__ import annotations

from pathlib import Path

import click

from detector.cli.ingest import ingest_paths, summary_line
from detector.cli.options import actor_option, pass_home
from detector.cli.simulate import simulate_fleet_to
from detector.cli.status import connector_rows, render_status
from detector.home import Home
from detector.store import IngestReport, Store

__all__ = ["command", "simulate_step", "ingest_step", "status_step"]


def simulate_step(home: Home, *, connectors: int, days: int, seed: int) -> Path:
    """Simulate the fleet into ``<home>/demo``; return the sync records' path."""
    out_dir = home.inside("demo")
    click.echo(f"[1/3] simulating {connectors} connectors x {days} days (seed {seed}) "
               f"into {out_dir}", err=True)
    simulate_fleet_to(out_dir, connectors=connectors, days=days, seed=seed)
    return out_dir / "syncs.jsonl"


def ingest_step(home: Home, syncs_path: Path, *, actor: str) -> IngestReport:
    """Ingest the simulated records (a re-run replays them: no duplicates)."""
    click.echo(f"[2/3] ingesting {syncs_path}", err=True)
    with Store.open(home.store_path) as store:
        report = ingest_paths(store, [str(syncs_path)], actor=actor)
    click.echo(summary_line(report))
    return report


def status_step(home: Home) -> None:
    """Print the per-connector status table."""
    click.echo("[3/3] status", err=True)
    click.echo(render_status(connector_rows(home)))


@click.command("demo")
@click.option("--connectors", type=int, default=30, show_default=True,
              help="Connectors in the simulated fleet.")
@click.option("--days", type=int, default=60, show_default=True, help="Days of history.")
@click.option("--seed", type=int, default=7, show_default=True, help="Simulation seed.")
@actor_option
@pass_home
def command(home: Home, connectors: int, days: int, seed: int, actor: str) -> None:
    """Run syncguard end to end on a simulated fleet in the home directory.

    Simulates a fleet into <home>/demo, ingests it into the store and prints the
    per-connector status.
    """
    home.ensure()
    syncs_path = simulate_step(home, connectors=connectors, days=days, seed=seed)
    ingest_step(home, syncs_path, actor=actor)
    status_step(home)
