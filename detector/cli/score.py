"""``syncguard score``: validate, store, score with the champion, record, pause, emit."""

from __future__ import annotations

import gc
import os
import sys

import click

from detector.cli.options import actor_option, pass_home
from detector.cli.sinks import SinkChoice, describe_reports, open_sinks, sink_options
from detector.contract import read_inputs
from detector.home import Home

__all__ = ["command", "BLAS_THREADS_ENV"]

BLAS_THREADS_ENV = "OPENBLAS_NUM_THREADS"
"""Read by the OpenBLAS that numpy loads, once, when numpy is first imported."""


def _one_blas_thread() -> None:
    """Have numpy's OpenBLAS start one thread, unless the caller chose a number.

    Scoring makes no BLAS call (the forest walk, calibrators and baselines are
    element-wise numpy and polars), but OpenBLAS starts its thread pool when numpy is
    imported and tears it down at exit: about 0.1 s of CPU of every cold
    ``syncguard score``. It only matters before numpy is first imported, which the
    score path does after this (an in-process caller that has numpy loaded keeps its
    pool).
    """
    if "numpy" not in sys.modules:
        os.environ.setdefault(BLAS_THREADS_ENV, "1")


def _problems(run) -> list[str]:  # noqa: ANN001 - a ScoreRun
    source = run.ingest.source
    lines = [f"rejected: {v.source or source}: {v}" for v in run.ingest.rejected]
    lines += [f"conflict: {c.source or source}: {c}" for c in run.ingest.conflicts]
    return lines


@click.command("score")
@click.argument("paths", metavar="[FILE...|-]", nargs=-1)
@sink_options
@actor_option
@pass_home
def command(home: Home, paths: tuple[str, ...], sinks: SinkChoice, actor: str) -> None:
    """Score sync records against the champion model and emit one event per sync.

    Reads FILE (JSON Lines, a JSON array or one object; - or nothing for standard input),
    stores the records, scores each connector's syncs in time order, records every
    decision, opens a pause for a connector at its first paused sync, and writes one
    native event per input sync to stdout in input order (a sync scored before comes back
    as its stored decision, marked "replay"). A short summary goes to stderr.

    A rejected record that names its connector gives an invalid_record pause event. With
    no usable model every sync is decided pause (reason: unscorable).

    \b
    Exit status:
      0  every sync scored, none paused
      3  at least one pause (a sync paused, or its connector's pause still open):
         hold propagation until `syncguard resume`
      4  some records rejected or conflicting (their connectors paused)
      2  usage error
      1  internal error (store unavailable, ...)
    """
    # A short process that ends when the run does: the cyclic garbage collector is off
    # from here (see detector.scoring.cyclic_gc_paused), imports included.
    gc.disable()
    _one_blas_thread()
    from detector.scoring import score_items  # keeps `syncguard --help` light
    from detector.store import Store

    items = read_inputs(list(paths) or ["-"])
    source = ",".join("stdin" if p == "-" else p for p in paths) or "stdin"
    with Store.open(home.ensure().store_path) as store, open_sinks(home, sinks) as opened:
        run = score_items(home, store, items, source=source, actor=actor,
                          sinks=[sink for _name, sink in opened])
    for line in _problems(run):
        click.echo(line, err=True)
    click.echo(run.summary(), err=True)
    for line in describe_reports(opened):
        click.echo(line, err=True)
    sys.exit(run.exit_code)
