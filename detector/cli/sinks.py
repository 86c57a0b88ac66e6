"""Event sink options shared by ``score`` and ``check-freshness``, declared once.

``--format`` picks the payload (native, ocsf, hec, hec-ocsf) for every sink; events go to
stdout (unless ``--no-stdout``), to ``--events-file`` (JSON Lines, appended) and to
``--webhook`` (HMAC-signed with ``SYNCGUARD_WEBHOOK_SECRET``; what cannot be delivered
waits in the store's outbox and goes first, in order, on the next run).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from detector.events.formats import FORMATS
from detector.events.outbox_schema import OUTBOX_MAX_ROWS
from detector.events.sinks import JsonlFileSink, Sink, SinkReport, StdoutSink
from detector.home import Home

__all__ = ["sink_options", "SinkChoice", "open_sinks", "describe_reports"]


@dataclass(frozen=True)
class SinkChoice:
    """The sink options as given on the command line."""

    format: str = "native"
    stdout: bool = True
    events_file: Path | None = None
    webhook: str | None = None
    webhook_attempts: int = 5
    webhook_timeout: float = 10.0
    outbox_limit: int = OUTBOX_MAX_ROWS


def sink_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the sink options; the command receives them as one ``sinks`` argument."""
    options = [
        click.option("--format", "fmt", type=click.Choice(FORMATS), default="native",
                     show_default=True,
                     help="Event payload for every sink: native JSON, OCSF 1.8.0 Detection "
                          "Finding (pauses and reviews only), or a Splunk HEC envelope."),
        click.option("--no-stdout", is_flag=True,
                     help="Do not write events to standard output."),
        click.option("--events-file", type=click.Path(dir_okay=False, path_type=Path),
                     default=None, help="Also append events to this JSON Lines file."),
        click.option("--webhook", metavar="URL", default=None,
                     help="Also POST each event to URL, signed with HMAC-SHA256 using "
                          "SYNCGUARD_WEBHOOK_SECRET; undelivered events wait in the outbox."),
        click.option("--webhook-attempts", type=click.IntRange(1, 20), default=5,
                     show_default=True, help="Attempts per event per run (with backoff)."),
        click.option("--webhook-timeout", type=click.FloatRange(0.1, 300), default=10.0,
                     show_default=True, help="Seconds to wait for the receiver per attempt."),
        click.option("--outbox-limit", type=click.IntRange(1, None), default=OUTBOX_MAX_ROWS,
                     show_default=True,
                     help="Most undelivered webhook events kept in the outbox. When it is "
                          "full the run stops with exit 1 and a message; no event is "
                          "dropped (decisions stay in the store; rerun to re-send)."),
    ]

    def wrapped(*args: Any, fmt: str, no_stdout: bool, events_file: Path | None,
                webhook: str | None, webhook_attempts: int, webhook_timeout: float,
                outbox_limit: int, **kwargs: Any) -> Any:
        choice = SinkChoice(fmt, not no_stdout, events_file, webhook, webhook_attempts,
                            webhook_timeout, outbox_limit)
        return command(*args, sinks=choice, **kwargs)

    functools.update_wrapper(wrapped, command)  # keeps options declared below this one
    for option in reversed(options):
        wrapped = option(wrapped)
    return wrapped


@contextmanager
def open_sinks(home: Home, choice: SinkChoice) -> Iterator[list[tuple[str, Sink]]]:
    """Open the chosen sinks, stdout first and the webhook last; close them all on exit.

    Yields
    ------
    list of (str, Sink)
        A readable name and the sink.
    """
    opened: list[tuple[str, Sink]] = []
    outbox = None
    try:
        if choice.stdout:
            opened.append(("stdout", StdoutSink(choice.format)))
        if choice.events_file is not None:
            opened.append((str(choice.events_file),
                           JsonlFileSink(choice.events_file, choice.format)))
        if choice.webhook:
            # Imported here: only runs with a webhook pay for urllib and the outbox.
            from detector.events.outbox import Outbox
            from detector.events.webhook import RetryPolicy, WebhookSink

            outbox = Outbox.open(home.store_path, max_rows=choice.outbox_limit)
            sink = WebhookSink(choice.webhook, outbox, formatter=choice.format,
                               retry=RetryPolicy(max_attempts=choice.webhook_attempts,
                                                 timeout_s=choice.webhook_timeout))
            opened.append((f"webhook {sink.url}", sink))
        yield opened
    finally:
        try:
            for _name, sink in opened:
                sink.close()
        finally:
            if outbox is not None:
                outbox.conn.close()


def describe_reports(opened: list[tuple[str, Sink]]) -> list[str]:
    """One line per sink other than stdout: what it wrote or delivered, what waits."""
    lines = []
    for name, sink in opened:
        if name == "stdout":
            continue
        report: SinkReport = sink.report
        line = f"events: {report.written} to {name}"
        if report.skipped:
            line += f" ({report.skipped} proceed events not findings)"
        if report.queued:
            line += f"; {report.queued} wait in the outbox for the next run"
        lines.append(line)
        lines.extend(f"  {error}" for error in report.errors[:3])
    return lines
