"""``syncguard ingest``: validate sync records and store them, idempotently."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Any

import click

from detector.cli.options import actor_option, json_option, pass_home
from detector.contract import read_inputs
from detector.errors import EXIT_OK, EXIT_REJECTED
from detector.home import Home
from detector.store import IngestReport, Store

__all__ = ["command", "ingest_paths", "exit_code", "summary_line"]

PROGRESS_MIN_BYTES = 8 << 20
"""Inputs smaller than this finish before a progress bar would be worth drawing."""


def _progress_wanted(paths: Sequence[str]) -> int:
    """Total bytes to show progress over, or 0 for no bar (not a terminal, stdin, small)."""
    if "-" in paths or not sys.stderr.isatty():
        return 0
    total = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
    return total if total >= PROGRESS_MIN_BYTES else 0


def ingest_paths(store: Store, paths: Sequence[str], *, actor: str | None = None,
                 show_progress: bool = True) -> IngestReport:
    """Read ``paths`` (``"-"`` is stdin) through the contract into ``store``.

    Parameters
    ----------
    store : Store
        Open store.
    paths : sequence of str
        Inputs; checked to exist before anything is stored.
    actor : str, optional
        Audit actor; defaults to the OS user.
    show_progress : bool
        Draw a progress bar on stderr for long inputs when stderr is a terminal.

    Returns
    -------
    IngestReport
    """
    source = ",".join("stdin" if p == "-" else p for p in paths)
    total = _progress_wanted(paths) if show_progress else 0
    with ExitStack() as stack:
        progress = None
        if total:
            bar = stack.enter_context(click.progressbar(length=total, label="ingesting",
                                                        file=sys.stderr))
            progress = bar.update
        items = read_inputs(list(paths), progress=progress)
        return store.ingest(items, source=source, actor=actor)


def exit_code(report: IngestReport) -> int:
    """0 when every record was stored or replayed; 4 when any was rejected or conflicted
    (a pipeline gating on ingest must see that input was refused)."""
    return EXIT_REJECTED if report.rejected or report.conflicts else EXIT_OK


def summary_line(report: IngestReport) -> str:
    """One line a person reads: how many records, and what became of them."""
    c = report.counts()
    return (f"ingested {report.total} records: {c['accepted']} accepted, "
            f"{c['replayed']} replayed, {c['conflicts']} conflicts, {c['rejected']} rejected")


def _report_json(report: IngestReport) -> dict[str, Any]:
    return {
        **report.counts(),
        "rejects": [{"source": v.source, "line": v.line, "sync_id": v.sync_id,
                     "connector_id": v.connector_id, "field": v.field, "rule": v.rule,
                     "message": str(v)} for v in report.rejected],
        "conflict_details": [{"source": c.source, "line": c.line, "sync_id": c.sync_id,
                              "connector_id": c.connector_id, "stored_hash": c.stored_hash,
                              "other_hash": c.other_hash} for c in report.conflicts],
    }


def _problems(report: IngestReport) -> Iterator[str]:
    for v in report.rejected:
        yield f"rejected: {v.source or report.source}: {v}"
    for c in report.conflicts:
        yield f"conflict: {c.source or report.source}: {c}"


@click.command("ingest")
@click.argument("paths", metavar="FILE...|-", nargs=-1, required=True)
@actor_option
@json_option
@pass_home
def command(home: Home, paths: tuple[str, ...], actor: str, as_json: bool) -> None:
    """Validate sync records and store them in the home's store.

    Each FILE (or - for standard input) holds one JSON object, a JSON array of objects,
    or JSON Lines. Records that break the contract are rejected with the line, field
    and rule; a sync_id already stored with the same content is a no-op (replayed), with
    different content a conflict (the first version stays).

    Exit status: 0 when all records were accepted or replayed, 4 when any was rejected
    or conflicted.
    """
    with Store.open(home.ensure().store_path) as store:
        report = ingest_paths(store, paths, actor=actor)
    for line in _problems(report):
        click.echo(line, err=True)
    if as_json:
        click.echo(json.dumps(_report_json(report), indent=2))
    else:
        click.echo(summary_line(report))
    sys.exit(exit_code(report))
