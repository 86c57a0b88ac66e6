"""Sync history: idempotent ingest of contract results, and reading history back.

Idempotency is decided inside the write transaction: a batch takes the write lock
(``BEGIN IMMEDIATE``), looks up which of its sync_ids are already stored, and only then
inserts. Two processes ingesting the same records therefore never both count a record as
new, and never both insert it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import polars as pl

from detector.contract import Accepted, Violation, canonical_json, parse_timestamp
from detector.store import audit
from detector.store.db import atomic

__all__ = [
    "BATCH_SIZE",
    "Conflict",
    "IngestReport",
    "ingest",
    "history",
    "connector_status",
    "HISTORY_SCHEMA",
]

BATCH_SIZE = 500
"""Records per transaction: large enough to amortise the commit, small enough that other
writers (scorers) wait at most a few milliseconds for the lock."""

HISTORY_SCHEMA = {
    "sync_id": pl.String,
    "connector_id": pl.String,
    "connector_kind": pl.String,
    "started_at": pl.Datetime("us", "UTC"),
    "finished_at": pl.Datetime("us", "UTC"),
    "status": pl.String,
    "error_class": pl.String,
    "record": pl.String,
}


@dataclass(frozen=True)
class Conflict:
    """A sync_id sent again with different content; the first version stays."""

    sync_id: str
    connector_id: str
    stored_hash: str
    other_hash: str
    line: int | None
    source: str | None

    def __str__(self) -> str:
        where = f"line {self.line} " if self.line is not None else ""
        return (f"{where}(sync_id {self.sync_id!r}): field 'sync_id': conflicts with the "
                f"stored record "
                f"(stored sha256 {self.stored_hash[:12]}, this one {self.other_hash[:12]}); "
                "the first version stays")


@dataclass
class IngestReport:
    """What one ingest did.

    Attributes
    ----------
    source : str
        The input label given to ingest.
    accepted : int
        Records stored for the first time.
    replayed : int
        Records already stored with the same content (no-ops).
    conflicts : list of Conflict
        Records whose sync_id was stored with other content.
    rejected : list of Violation
        Records that broke the contract (each also stored in ``rejects``).
    accepted_ids : list of str
        sync_ids stored by this call, in input order (what a scorer should score).
    turned_away : dict of int to Violation
        Accepted items the store rejected by a rule that needs history (see
        ``in_time_order``), by ``id()`` of the Accepted, so a caller holding the input can
        swap them for their violation.
    """

    source: str
    accepted: int = 0
    replayed: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    rejected: list[Violation] = field(default_factory=list)
    accepted_ids: list[str] = field(default_factory=list)
    turned_away: dict[int, Violation] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Records read."""
        return self.accepted + self.replayed + len(self.conflicts) + len(self.rejected)

    def counts(self) -> dict[str, int]:
        """The four outcomes as plain numbers (audit details, JSON output)."""
        return {"accepted": self.accepted, "replayed": self.replayed,
                "conflicts": len(self.conflicts), "rejected": len(self.rejected)}

    def merge(self, other: IngestReport) -> None:
        """Add another report's outcomes to this one."""
        self.accepted += other.accepted
        self.replayed += other.replayed
        self.conflicts.extend(other.conflicts)
        self.rejected.extend(other.rejected)
        self.accepted_ids.extend(other.accepted_ids)
        self.turned_away.update(other.turned_away)


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _times(item: Accepted) -> tuple[datetime | None, datetime | None]:
    """The record's start and finish: as validation parsed them, else parsed here."""
    if item.times is not None:
        return item.times
    return parse_timestamp(item.record["started_at"]), parse_timestamp(item.record["finished_at"])


def _stored_time(text: object, moment: datetime) -> str:
    """How a record's time is stored: :func:`_utc_text` of it, or the text as sent when it
    is already that (whole seconds, UTC, ``T`` and ``Z``: what most connectors send; the
    contract checked it parses to ``moment``), without a datetime formatted per row."""
    if type(text) is str and len(text) == 20 and text[10] == "T" and text[19] == "Z":
        return text
    return _utc_text(moment)


def _sync_row(item: Accepted, source: str, now: str) -> tuple[Any, ...]:
    rec = item.record  # an Accepted built by hand may lack the canonical text and times
    started, finished = _times(item)
    assert started is not None and finished is not None  # guaranteed by the contract
    return (rec["sync_id"], rec["connector_id"], rec.get("connector_kind"),
            _stored_time(rec.get("started_at"), started), started.timestamp(),
            _stored_time(rec.get("finished_at"), finished), finished.timestamp(),
            rec["status"], rec.get("error_class"), item.content_hash,
            item.canonical or canonical_json(rec), item.source or source, now)


def _last_scored(conn: sqlite3.Connection, connector_ids: Iterable[str]) -> dict[str, float]:
    """Per connector, the start (epoch seconds) of its latest scored sync."""
    return dict(conn.execute(
        "SELECT connector_id, max(started_ts) FROM scores "
        "WHERE connector_id IN (SELECT value FROM json_each(?)) GROUP BY connector_id",
        (json.dumps(sorted(set(connector_ids))),)))


def _too_late(batch: list[Accepted | Violation], stored: dict[str, str],
              last: dict[str, float], part: IngestReport) -> list[Accepted | Violation]:
    """``batch`` with each new record that starts before its connector's last scored sync
    turned into a violation: its connector's state has moved past it, so it cannot be
    judged in time order (a replayed old sync, a reset clock, or history sent to
    ``score`` instead of ``ingest``)."""
    out: list[Accepted | Violation] = []
    for item in batch:
        if isinstance(item, Accepted) and item.record["sync_id"] not in stored:
            limit = last.get(item.record["connector_id"])
            started = _times(item)[0]
            if limit is not None and started is not None and started.timestamp() < limit:
                when = _utc_text(datetime.fromtimestamp(limit, UTC))
                violation = item.reject(
                    "started_at", f"must not be before the connector's last scored sync "
                    f"(started_at {when}): syncs are scored in time order; store history "
                    "with `syncguard ingest`")
                part.turned_away[id(item)] = violation
                item = violation
        out.append(item)
    return out


def _ingest_batch(conn: sqlite3.Connection, batch: list[Accepted | Violation], source: str,
                  report: IngestReport, *, in_time_order: bool = False) -> IngestReport:
    """Classify and write one batch; the caller holds the write transaction."""
    part = IngestReport(source=source)
    now = audit.utc_now()
    accepted = [item for item in batch if isinstance(item, Accepted)]
    ids = list({item.record["sync_id"] for item in accepted})
    stored: dict[str, str] = {}
    if ids:
        stored = dict(conn.execute(
            "SELECT sync_id, content_hash FROM syncs "
            "WHERE sync_id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)))
    if in_time_order and accepted:
        last = _last_scored(conn, (item.record["connector_id"] for item in accepted))
        if last:
            batch = _too_late(batch, stored, last, part)
    new_rows, conflict_rows, reject_rows = [], [], []
    for item in batch:
        if isinstance(item, Violation):
            part.rejected.append(item)
            reject_rows.append((now, item.source or source, item.line, item.sync_id,
                                item.connector_id, item.field, item.rule, item.raw))
            continue
        sync_id = item.record["sync_id"]
        first = stored.get(sync_id)
        if first is None:
            stored[sync_id] = item.content_hash  # a repeat later in this batch is a replay
            new_rows.append(_sync_row(item, source, now))
            part.accepted_ids.append(sync_id)
        elif first == item.content_hash:
            part.replayed += 1
        else:
            conflict = Conflict(sync_id, item.record["connector_id"], first, item.content_hash,
                                item.line, item.source or source)
            part.conflicts.append(conflict)
            conflict_rows.append((sync_id, conflict.connector_id, first, item.content_hash,
                                  item.canonical or canonical_json(item.record), conflict.source,
                                  item.line, now))
    part.accepted = len(new_rows)
    # ON CONFLICT DO NOTHING is a second guard; the lookup above under the write lock is
    # what makes the counts exact.
    conn.executemany(
        "INSERT INTO syncs (sync_id, connector_id, connector_kind, started_at, started_ts, "
        "finished_at, finished_ts, status, error_class, content_hash, record, source, "
        "ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (sync_id) DO NOTHING", new_rows)
    conn.executemany(
        "INSERT INTO conflicts (sync_id, connector_id, stored_hash, other_hash, record, "
        "source, line, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (sync_id, other_hash) DO NOTHING", conflict_rows)
    conn.executemany(
        "INSERT INTO rejects (received_at, source, line, sync_id, connector_id, field, rule, "
        "raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", reject_rows)
    report.merge(part)
    return part


def ingest(conn: sqlite3.Connection, items: Iterable[Accepted | Violation], *, source: str,
           actor: str | None = None, batch_size: int = BATCH_SIZE,
           in_time_order: bool = False) -> IngestReport:
    """Store contract results: accepted records, replays, conflicts and rejects.

    Parameters
    ----------
    conn : sqlite3.Connection
        A migrated store connection.
    items : iterable of Accepted or Violation
        Usually :func:`detector.contract.read_inputs`; consumed lazily, batch by batch.
    source : str
        Input label stored with each row (an item's own ``source`` wins) and audited.
    actor : str, optional
        Who ingests, for the audit log; defaults to the OS user.
    batch_size : int
        Records per transaction.
    in_time_order : bool
        Reject (field ``started_at``) a record new to the store that starts before its
        connector's last scored sync: what ``score`` needs, since each connector's syncs
        are judged in time order. ``ingest`` of history leaves it off (backfill in any
        order is fine before scoring).

    Returns
    -------
    IngestReport
        Exact counts, even with other processes ingesting the same records at once.
    """
    actor = actor or audit.default_actor()
    report = IngestReport(source=source)
    for batch in _batches(items, batch_size):
        with atomic(conn):
            part = _ingest_batch(conn, batch, source, report, in_time_order=in_time_order)
            audit.append(conn, actor=actor, action="ingest", subject=source,
                         reason="records ingested", details=part.counts())
    return report


def _epoch(value: datetime | str | None, name: str) -> float | None:
    if value is None:
        return None
    moment = parse_timestamp(value) if isinstance(value, str) else value
    if moment is None or moment.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime or RFC 3339 text with "
                         f"offset, got {value!r}")
    return moment.timestamp()


def history(conn: sqlite3.Connection, *, connector_ids: Iterable[str] | None = None,
            since: datetime | str | None = None,
            until: datetime | str | None = None) -> pl.DataFrame:
    """Stored syncs as a frame, one row per sync.

    Parameters
    ----------
    conn : sqlite3.Connection
        A migrated store connection.
    connector_ids : iterable of str, optional
        Only these connectors.
    since, until : datetime or str, optional
        ``since <= started_at < until`` (timezone-aware, or RFC 3339 with offset).

    Returns
    -------
    polars.DataFrame
        Columns ``sync_id, connector_id, connector_kind, started_at, finished_at, status,
        error_class, record`` (times as ``Datetime("us", "UTC")``, ``record`` the JSON
        text), ordered by ``connector_id, started_at``.
    """
    sql = ("SELECT sync_id, connector_id, connector_kind, started_ts, finished_ts, status, "
           "error_class, record FROM syncs WHERE 1 = 1")
    params: list[Any] = []
    if connector_ids is not None:
        sql += " AND connector_id IN (SELECT value FROM json_each(?))"
        params.append(json.dumps(list(connector_ids)))
    lo, hi = _epoch(since, "since"), _epoch(until, "until")
    if lo is not None:
        sql += " AND started_ts >= ?"
        params.append(lo)
    if hi is not None:
        sql += " AND started_ts < ?"
        params.append(hi)
    sql += " ORDER BY connector_id, started_ts, sync_id"
    rows = conn.execute(sql, params).fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [()] * 8
    frame = pl.DataFrame(
        {"sync_id": columns[0], "connector_id": columns[1], "connector_kind": columns[2],
         "started_ts": columns[3], "finished_ts": columns[4], "status": columns[5],
         "error_class": columns[6], "record": columns[7]},
        schema={"sync_id": pl.String, "connector_id": pl.String, "connector_kind": pl.String,
                "started_ts": pl.Float64, "finished_ts": pl.Float64, "status": pl.String,
                "error_class": pl.String, "record": pl.String},
    )

    def as_time(col: str) -> pl.Expr:
        # Round, not truncate: epoch floats carry microseconds with binary error.
        return (pl.col(col) * 1e6).round().cast(pl.Int64).cast(pl.Datetime("us", "UTC"))

    return frame.select(
        "sync_id", "connector_id", "connector_kind",
        as_time("started_ts").alias("started_at"), as_time("finished_ts").alias("finished_at"),
        "status", "error_class", "record",
    )


def connector_status(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Per connector: kind, stored syncs, last sync and its status, rejects, conflicts.

    Connectors that only ever sent rejected records are listed too (their pauses need a
    name); rejects that named no connector are summed under ``connector_id`` None.
    """
    # SQLite takes bare columns (connector_kind, started_at, status) from the row that
    # holds max(started_ts): the latest sync's kind and status.
    rows = conn.execute("""
        WITH s AS (
            SELECT connector_id, connector_kind, count(*) AS syncs, max(started_ts),
                   started_at AS last_sync, status AS last_status
            FROM syncs GROUP BY connector_id),
        r AS (SELECT connector_id, count(*) AS rejects FROM rejects GROUP BY connector_id),
        c AS (SELECT connector_id, count(*) AS conflicts FROM conflicts GROUP BY connector_id),
        ids AS (SELECT connector_id FROM s UNION SELECT connector_id FROM r
                UNION SELECT connector_id FROM c)
        SELECT ids.connector_id, s.connector_kind, coalesce(s.syncs, 0), s.last_sync,
               s.last_status, coalesce(r.rejects, 0), coalesce(c.conflicts, 0)
        FROM ids
        LEFT JOIN s ON s.connector_id IS ids.connector_id
        LEFT JOIN r ON r.connector_id IS ids.connector_id
        LEFT JOIN c ON c.connector_id IS ids.connector_id
        ORDER BY ids.connector_id IS NULL, ids.connector_id
    """).fetchall()
    keys = ("connector_id", "connector_kind", "syncs", "last_sync", "last_status", "rejects",
            "conflicts")
    return [dict(zip(keys, row, strict=True)) for row in rows]
