"""``syncguard train``: backtest, fit and register a fleet model from the store."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from detector.cli.options import actor_option, json_option, pass_home
from detector.home import Home

if TYPE_CHECKING:  # training pulls in mlflow: imported only when a command trains
    from training.pipeline import TrainConfig, TrainResult

__all__ = ["command", "progress_reporter", "run_training", "render_result", "quiet_mlflow"]


@contextmanager
def progress_reporter(total: int, *, label: str = "training") -> Iterator[Callable[[str], None]]:
    """A step callback for :func:`training.pipeline.train`, drawn on stderr.

    On a terminal: a progress bar naming the current step. Otherwise (CI logs, pipes):
    one line per step with the seconds since the start, which a log keeps readable.
    """
    import time

    start = time.perf_counter()
    if sys.stderr.isatty():
        with click.progressbar(
            length=total,
            label=label,
            file=sys.stderr,
            show_eta=False,
            item_show_func=lambda item: item or "",
        ) as bar:
            seen = {"n": 0}

            def step(name: str) -> None:
                # FleetModel may report more phases than planned: never overrun the bar.
                advance = 1 if seen["n"] < total - 1 else 0
                seen["n"] += 1
                bar.update(advance, current_item=name)

            yield step
            bar.update(total - bar.pos, current_item="done")
    else:

        def step(name: str) -> None:
            click.echo(f"[{time.perf_counter() - start:6.1f} s] {label}: {name}", err=True)

        yield step


def quiet_mlflow() -> None:
    """Keep MLflow's and alembic's INFO lines (database set-up) off a person's terminal.

    MLflow sets its loggers' levels when it is imported, so it is imported first.
    """
    import training.register  # noqa: F401  (imports mlflow, which configures its logging)

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_training(
    home: Home, *, config: TrainConfig, labels_path: str | None, force: bool, actor: str,
    label: str = "training",
) -> TrainResult:
    """Run :func:`training.pipeline.train` with a progress display on stderr."""
    from training.pipeline import train  # heavy: only when training

    quiet_mlflow()
    with progress_reporter(config.total_steps(), label=label) as step:
        return train(home, config, labels_path=labels_path, force=force, actor=actor,
                     progress=step)


def render_result(result: TrainResult) -> str:
    """The closing summary a person reads: run, version, champion or not and why, the UI."""
    m = result.metrics
    lines = [
        f"trained on {result.data['clean_syncs']} of {result.data['syncs']} syncs "
        f"({result.data['connectors']} connectors); left out "
        f"{result.data['excluded_labelled_fault']} labelled faults and "
        f"{result.data['excluded_paused']} paused syncs",
        f"backtest on {result.data['holdout_syncs']} syncs from {result.data['holdout_start']} "
        f"(labels: {result.data['labels']}): " + _metrics_line(m),
        f"MLflow run:      {result.run_id} (experiment {result.experiment_id})",
        f"tracking store:  {result.tracking_uri}",
        f"artifacts:       {result.artifact_uri}",
        f"model version:   syncguard-fleet v{result.version}",
    ]
    if result.promoted:
        lines.append(f"champion:        yes ({result.reason})")
    else:
        lines.append(f"champion:        no, {result.reason}; "
                     f"`syncguard models promote {result.version} --by NAME --reason TEXT` "
                     "or `syncguard train --force` overrides")
    lines.append(f"model cache:     {result.cache_note}")
    ui = result.ui_command
    if ui:
        lines.append(f"open the MLflow UI: {ui}   then http://127.0.0.1:5000/#/experiments/"
                     f"{result.experiment_id}/runs/{result.run_id}")
    else:
        lines.append(f"open the run on the MLflow server at {result.tracking_uri}")
    return "\n".join(lines)


def _metrics_line(m: dict[str, float]) -> str:
    parts = []
    if "episode_recall" in m:
        parts.append(f"episode recall {m['episode_recall']:.3f}")
    if "false_pauses_per_1000" in m:
        parts.append(f"false pauses {m['false_pauses_per_1000']:.2f} per 1,000 normal syncs")
    parts.append(f"pauses {m.get('pauses_per_1000', float('nan')):.2f} per 1,000 syncs")
    if "calibration_ratio" in m:
        ratio = f"calibration ratio {m['calibration_ratio']:.2f}"
        if {"calibration_false_pauses", "budgeted_false_pauses", "calibration_p"} <= m.keys():
            from training.backtest import budget_counts

            counts = budget_counts(m["calibration_false_pauses"], m["budgeted_false_pauses"])
            ratio += f" ({counts}, p = {m['calibration_p']:.2f})"
        parts.append(ratio)
    return ", ".join(parts)


def _result_json(result: TrainResult) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "experiment_id": result.experiment_id,
        "tracking_uri": result.tracking_uri,
        "artifact_uri": result.artifact_uri,
        "version": result.version,
        "promoted": result.promoted,
        "reason": result.reason,
        "metrics": result.metrics,
        "data": result.data,
        "cache": result.cache_note,
        "ui_command": result.ui_command,
        "timings": result.timings,
    }


@click.command("train")
@click.option("--force", is_flag=True,
              help="Make the new version champion even when its backtest is worse.")
@click.option("--trees", type=click.IntRange(10, 1000), default=100, show_default=True,
              help="Trees per isolation forest.")
@click.option("--max-samples", type=click.IntRange(16, 4096), default=256, show_default=True,
              help="Sub-sample size per tree.")
@click.option("--min-history", type=click.IntRange(2, None), default=30, show_default=True,
              help="Syncs a connector needs for a model of its own (fewer: cold start).")
@click.option("--pooled-max-connectors", type=click.IntRange(1, None), default=64,
              show_default=True,
              help="Connectors each pooled cold-start model (per kind, fleet) is fitted on at "
                   "most; larger groups are a stable sample.")
@click.option("--screen-history/--no-screen-history", default=True, show_default=True,
              help="Fit again without the history syncs the model's own held-out scores "
                   "would pause (faults nobody labelled).")
@click.option("--holdout-days", type=click.FloatRange(0, None, min_open=True), default=14.0,
              show_default=True, help="Most recent days held out for the backtest.")
@click.option("--baseline-method", type=click.Choice(["profile", "stl"]), default="profile",
              show_default=True, help="Seasonal profile estimator.")
@click.option("--policy", "policy", type=click.Path(dir_okay=False),
              help="Connector policy TOML (criticality, budget).")
@click.option("--labels", "labels", type=click.Path(dir_okay=False),
              help="Simulator-format labels.jsonl: faults left out of the fit, recall per "
                   "fault class in the backtest (labels in the store are used anyway).")
@click.option("--jobs", type=click.IntRange(1, None), default=2, show_default=True,
              help="Threads a fit runs its independent parts in (same model with any).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@actor_option
@json_option
@pass_home
def command(home: Home, force: bool, trees: int, max_samples: int, min_history: int,
            pooled_max_connectors: int, screen_history: bool, holdout_days: float,
            baseline_method: str, policy: str | None, labels: str | None, jobs: int,
            seed: int, actor: str, as_json: bool) -> None:
    """Fit every connector's model from the store, backtest it, and register it in MLflow.

    Syncs labelled fault, and syncs a pause held that was not resumed as a false
    positive, are left out. The model is backtested on the most recent --holdout-days
    (fitted on what came before), then fitted on all history, logged to MLflow (params,
    metrics, the model, a per-connector summary, a calibration plot, the backtest table)
    and registered as a version of syncguard-fleet. It becomes champion only when its
    backtest is at least as good as the champion's, or with --force.

    MLflow lives under <home>/mlflow unless MLFLOW_TRACKING_URI points elsewhere.
    """
    from training.pipeline import TrainConfig

    config = TrainConfig(n_estimators=trees, max_samples=max_samples, min_history=min_history,
                         baseline_method=baseline_method, random_state=seed, n_jobs=jobs,
                         holdout_days=holdout_days, policy_path=policy,
                         pooled_max_connectors=pooled_max_connectors,
                         screen_history=screen_history)
    result = run_training(home, config=config, labels_path=labels, force=force, actor=actor)
    click.echo(json.dumps(_result_json(result), indent=2) if as_json else render_result(result))
