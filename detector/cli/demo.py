"""``syncguard demo``: the main job on the embedded default, one small step per function.

Simulate a fleet; ingest all but its last days as history; train and register a model
(MLflow); score the last days the way production does (``syncguard score``: pauses,
events); print the pauses by connector and reason beside the fixed-threshold rules on the
same syncs, where the events are, and the status.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from detector.cli.demo_summary import comparison, render_comparison, split_by_time
from detector.cli.ingest import ingest_paths, summary_line
from detector.cli.options import actor_option, pass_home
from detector.cli.simulate import simulate_fleet_to
from detector.cli.status import connector_rows, render_status
from detector.errors import UsageError
from detector.home import Home
from detector.store import IngestReport, Store

__all__ = ["command", "simulate_step", "split_step", "ingest_step", "train_step",
           "score_step", "summary_step", "status_step"]

DEMO_TREES = 30
"""Trees per forest in the demo: enough for a 30-connector fleet, and quick."""

DEMO_SCORE_DAYS = 7
"""The most recent days of the simulated fleet, scored after training on the rest."""

DEMO_MIN_DAYS = 10
"""Shortest demo history: a week to fit on, the rest (a quarter, at most 14 days) held
out for the backtest."""

STEPS = 4
"""Phases shown as [n/4]: simulate, ingest the history, train, then score and summarise."""


def simulate_step(home: Home, *, connectors: int, days: int, seed: int) -> Path:
    """Simulate the fleet into ``<home>/demo``; return the sync records' path."""
    out_dir = home.inside("demo")
    click.echo(f"[1/{STEPS}] simulating {connectors} connectors x {days} days (seed {seed}) "
               f"into {out_dir}", err=True)
    simulate_fleet_to(out_dir, connectors=connectors, days=days, seed=seed)
    return out_dir / "syncs.jsonl"


def split_step(syncs_path: Path, *, score_days: int) -> tuple[Path, Path, datetime]:
    """Split the simulated records in time: history, and the last ``score_days`` (at most
    the second half of the window) to score.

    Returns the two paths and the end of the simulated window."""
    history, recent = syncs_path.with_name("history.jsonl"), syncs_path.with_name("recent.jsonl")
    n_hist, n_recent, cutoff, end = split_by_time(syncs_path, recent_days=score_days,
                                             history_path=history, recent_path=recent)
    click.echo(f"      {n_hist} syncs of history before {cutoff:%Y-%m-%d %H:%M} UTC, "
               f"{n_recent} after it to score", err=True)
    return history, recent, end


def ingest_step(home: Home, syncs_path: Path, *, actor: str) -> IngestReport:
    """Ingest the history (a re-run replays it: no duplicates)."""
    click.echo(f"[2/{STEPS}] ingesting the history {syncs_path}", err=True)
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
    click.echo(f"[3/{STEPS}] training ({trees} trees per forest, last {holdout:g} days held out) "
               "and registering in MLflow", err=True)
    result = run_training(home, config=TrainConfig(n_estimators=trees, holdout_days=holdout),
                          labels_path=str(labels_path), force=False, actor=actor,
                          label="demo train")
    click.echo(render_result(result))


def score_step(home: Home, recent_path: Path, *, actor: str):  # noqa: ANN201 - a ScoreRun
    """Score the last days as ``syncguard score`` would, events to two files in the home."""
    from detector.contract import read_inputs
    from detector.events.sinks import JsonlFileSink
    from detector.scoring import score_items

    events_dir = home.inside("events")
    native, ocsf = events_dir / "demo-events.jsonl", events_dir / "demo-findings.ocsf.jsonl"
    click.echo(f"[4/{STEPS}] scoring {recent_path} in time order with the champion, as "
               "`syncguard score` does", err=True)
    with Store.open(home.store_path) as store, JsonlFileSink(native) as native_sink, \
            JsonlFileSink(ocsf, "ocsf") as ocsf_sink:
        run = score_items(home, store, read_inputs([str(recent_path)]),
                          source=str(recent_path), actor=actor, sinks=[native_sink, ocsf_sink])
    click.echo(run.summary())
    click.echo(f"events: {native_sink.report.written} native events in {native}\n"
               f"        {ocsf_sink.report.written} OCSF Detection Findings (pauses and "
               f"reviews) in {ocsf}")
    return run


def summary_step(home: Home, history_path: Path, recent_path: Path, run) -> None:  # noqa: ANN001
    """Pauses by connector and reason, beside the fixed-threshold rules on the same syncs."""
    import polars as pl

    from detector.store import ledger

    decisions = pl.DataFrame(
        [(e["sync_id"], e["connector_id"], e["decision"]) for e in run.events
         if e["event_type"] == "sync_scored"],
        schema={"sync_id": pl.String, "connector_id": pl.String, "decision": pl.String},
        orient="row")
    with Store.open(home.store_path) as store:
        reasons = {cid: p.reason for cid, p in ledger.open_pauses(store.conn).items()}
    tables = comparison(history_path, recent_path, history_path.with_name("labels.jsonl"),
                        decisions, reasons)
    click.echo("\nsyncs paused in the scored days, per connector (fault syncs and episodes: "
               "what the simulator injected; reason: of the pause syncguard opened):")
    click.echo(render_comparison(*tables))
    click.echo("open pauses stay until `syncguard resume CONNECTOR --by WHO --reason TEXT`\n")


def status_step(home: Home, *, as_of: datetime | None = None) -> None:
    """Print the per-connector status table (freshness as of ``as_of``, default now)."""
    when = "" if as_of is None else f" (freshness as of {as_of:%Y-%m-%d %H:%M} UTC, the end " \
        "of the simulated window)"
    click.echo(f"status{when}", err=True)
    click.echo(render_status(connector_rows(home, now=as_of)))


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

    Simulates a fleet into <home>/demo, ingests all but its last 7 days (at most half of
    the window) into the store,
    trains and registers a model in MLflow (<home>/mlflow; the output says how to open
    the MLflow UI), scores the last 7 days (pauses, events in <home>/events), prints the
    pauses by connector and reason beside the fixed-threshold rules on the same syncs,
    and the per-connector status.
    """
    if days < DEMO_MIN_DAYS:
        raise UsageError(f"--days must be at least {DEMO_MIN_DAYS}: the demo trains on a week "
                         "and backtests on the days after it")
    home.ensure()
    syncs_path = simulate_step(home, connectors=connectors, days=days, seed=seed)
    history_path, recent_path, end = split_step(syncs_path, score_days=DEMO_SCORE_DAYS)
    ingest_step(home, history_path, actor=actor)
    train_step(home, syncs_path.parent / "labels.jsonl", days=days, actor=actor, trees=trees)
    run = score_step(home, recent_path, actor=actor)
    summary_step(home, history_path, recent_path, run)
    status_step(home, as_of=end)
