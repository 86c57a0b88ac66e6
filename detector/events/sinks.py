"""Where events go: the sink contract, stdout and JSON Lines files.

Every sink takes native events through ``emit`` and renders them with a formatter
(`detector.events.formats`): native JSON, OCSF, or a Splunk HEC envelope. ``close``
returns a `SinkReport`. The HTTP webhook sink lives in `detector.events.webhook`.

Examples
--------
>>> import io
>>> from detector.events.native import sync_scored
>>> out = io.StringIO()
>>> with StdoutSink(stream=out) as sink:
...     sink.emit(sync_scored(sync_id="s1", connector_id="c", decision="proceed",
...                           severity="info", scored_at="2026-01-05T10:00:00Z"))
>>> out.getvalue().count("\\n"), sink.report.written
(1, 1)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, Self

from detector.errors import UsageError
from detector.events.formats import Formatter, make_formatter
from detector.events.native import dumps

try:  # POSIX only; on other systems appends rely on O_APPEND alone.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["Sink", "SinkBase", "SinkReport", "StdoutSink", "JsonlFileSink", "encode"]


def encode(payload: Mapping[str, Any]) -> str:
    """One payload as compact JSON on one line (UTF-8 text, no NaN, key order kept)."""
    return dumps(payload)


@dataclass
class SinkReport:
    """What a sink did in one run.

    Attributes
    ----------
    written : int
        Events written (file, stdout) or delivered (webhook, including outbox re-sends).
    skipped : int
        Events the format leaves out (``proceed`` in OCSF formats).
    queued : int
        Events waiting in the outbox when the sink closed (webhook only).
    errors : list of str
        Readable delivery errors (webhook only); the secret never appears in them.
    """

    written: int = 0
    skipped: int = 0
    queued: int = 0
    errors: list[str] = field(default_factory=list)


class Sink(Protocol):
    """What the scoring pipeline writes events to."""

    report: SinkReport

    def emit(self, event: Mapping[str, Any]) -> None:
        """Render and write (or deliver, or queue) one native event."""
        ...

    def emit_many(self, events: Iterable[Mapping[str, Any]]) -> None:
        """``emit`` each event in order (file and stdout sinks write them in one go)."""
        ...

    def close(self) -> SinkReport:
        """Flush, make durable, release resources; return the run's report."""
        ...


class SinkBase:
    """Shared plumbing: formatter, report, context manager. Subclasses implement emit, close."""

    def __init__(self, formatter: Formatter | str) -> None:
        self._format = make_formatter(formatter) if isinstance(formatter, str) else formatter
        self.report = SinkReport()

    def _render(self, event: Mapping[str, Any]) -> str | None:
        payload = self._format(event)
        if payload is None:
            self.report.skipped += 1
            return None
        return encode(payload)

    def emit_many(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Emit each event in order."""
        for event in events:
            self.emit(event)

    def _render_many(self, events: Iterable[Mapping[str, Any]]) -> tuple[str, int]:
        """The events the format keeps, as JSON Lines text, and how many they are."""
        lines = [line for line in map(self._render, events) if line is not None]
        return "".join(line + "\n" for line in lines), len(lines)

    def close(self) -> SinkReport:  # pragma: no cover - overridden
        return self.report

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class StdoutSink(SinkBase):
    """JSON Lines on standard output (or any text stream).

    Parameters
    ----------
    formatter : str or callable, default "native"
        Payload format name (see `detector.events.formats.FORMATS`) or a formatter.
    stream : text stream, optional
        Defaults to ``sys.stdout`` at emit time (so pytest's capture and redirections work).
    """

    def __init__(self, formatter: Formatter | str = "native", *, stream: IO[str] | None = None):
        super().__init__(formatter)
        self._stream = stream

    def emit(self, event: Mapping[str, Any]) -> None:
        """Write one event as one line."""
        self.emit_many((event,))

    def emit_many(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Write events as lines, in order, in one write."""
        text, n = self._render_many(events)
        if not n:
            return
        stream = self._stream or sys.stdout
        stream.write(text)
        # Flushed per call: a pipeline reading our stdout acts on each decision at once.
        stream.flush()
        self.report.written += n

    def close(self) -> SinkReport:
        """Flush the stream (it is not closed: it belongs to the caller)."""
        (self._stream or sys.stdout).flush()
        return self.report


class JsonlFileSink(SinkBase):
    """Append events to a JSON Lines file; fsync on close.

    The lines of each ``emit`` / ``emit_many`` call are written with one ``write`` (looped
    only if the kernel takes part of it) on an ``O_APPEND`` descriptor under an exclusive
    ``flock``, so several ``syncguard score`` processes appending to the same file never
    interleave partial lines.

    Parameters
    ----------
    path : str or Path
        The file; created (mode 0640) with its parent directory if missing.
    formatter : str or callable, default "native"
    """

    def __init__(self, path: str | os.PathLike[str], formatter: Formatter | str = "native"):
        super().__init__(formatter)
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640
            )
        except OSError as exc:
            raise UsageError(f"cannot open event file {str(self.path)!r}: {exc.strerror}") from exc

    def emit(self, event: Mapping[str, Any]) -> None:
        """Append one event as one line."""
        self.emit_many((event,))

    def emit_many(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Append events as lines, in order, under one lock (whole lines, never split)."""
        if self._fd is None:
            raise UsageError(f"event file {str(self.path)!r} is already closed")
        text, n = self._render_many(events)
        if not n:
            return
        data = text.encode("utf-8")
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            view = memoryview(data)
            while view:  # write() may be partial on signals or full disks
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            raise UsageError(
                f"cannot write to event file {str(self.path)!r}: {exc.strerror}"
            ) from exc
        finally:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        self.report.written += n

    def close(self) -> SinkReport:
        """fsync and close; safe to call twice."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return self.report
