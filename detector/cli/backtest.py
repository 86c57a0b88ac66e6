"""``syncguard backtest``: fit on history, score a later window in time order, report quality."""

from __future__ import annotations

import json
from pathlib import Path

import click

from detector.contract import Accepted, read_inputs
from detector.errors import InputError, UsageError

__all__ = ["command"]


def _read_valid(path: str) -> list[dict]:
    """Records of a JSON Lines file; a rejected record stops the backtest with its reason."""
    records = []
    for item in read_inputs([path]):
        if not isinstance(item, Accepted):
            raise InputError(f"{path}: {item}")
        records.append(item.record)
    if not records:
        raise InputError(f"{path}: no sync records")
    return records


def _read_labels(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except FileNotFoundError:
        raise UsageError(f"labels file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None


@click.command("backtest")
@click.argument("history", type=click.Path(dir_okay=False))
@click.argument("test", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    required=True,
    help="Write one JSON line per test sync (decision, score, cutoff, reasons, rule hits).",
)
@click.option(
    "--labels",
    "labels",
    type=click.Path(dir_okay=False),
    help="Simulator-format labels: print the quality table against the fixed-threshold safeguards.",
)
@click.option(
    "--policy",
    "policy",
    type=click.Path(dir_okay=False),
    help="Connector policy TOML (criticality, budget).",
)
@click.option(
    "--baseline-method",
    type=click.Choice(["profile", "stl"]),
    default="profile",
    show_default=True,
    help="Seasonal profile estimator.",
)
@click.option(
    "--trees",
    type=click.IntRange(10, 1000),
    default=100,
    show_default=True,
    help="Trees per isolation forest.",
)
def command(
    history: str,
    test: str,
    out: str,
    labels: str | None,
    policy: str | None,
    baseline_method: str,
    trees: int,
) -> None:
    """Fit on HISTORY.jsonl, score TEST.jsonl in time order as production would.

    Each test sync sees only what came before it. Faults labelled in HISTORY (with
    --labels) are left out of the fit.
    """
    from detector.explain import with_reasons
    from detector.model import FleetModel
    from detector.policy import load_policy
    from training.backtest import format_table, run_backtest

    hist_records, test_records = _read_valid(history), _read_valid(test)
    label_rows = _read_labels(labels) if labels else None
    model = FleetModel(
        n_estimators=trees,
        baseline_method=baseline_method,
        policy=load_policy(policy) if policy else None,
    )
    report = run_backtest(
        hist_records,
        test_records,
        labels=label_rows,
        model=model,
        progress=lambda phase: click.echo(f"fit: {phase}", err=True),
    )
    lines = with_reasons(
        report.decisions,
        report.reasons,
        report.rule_hits,
        "metric", "observed", "expected", "range_lo", "range_hi", "distance", "description",
    ).select(
        "sync_id",
        "connector_id",
        "decision",
        "severity",
        "score",
        "cutoff",
        "tail_probability",
        "connector_paused",
        "cold_start",
        "reasons",
        "rule_hits",
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    lines.write_ndjson(out)
    click.echo(format_table(report))
    click.echo(f"decisions: {out}", err=True)
