"""Scores: the one decision each sync ever gets.

Exactly once, with several scorers at once: a scorer takes the write lock
(``BEGIN IMMEDIATE``), asks :func:`pending` which syncs are still unscored, scores them and
writes them with :func:`record` before it commits. Another scorer waiting for the lock
finds them scored and returns the stored rows instead (:func:`stored_events`, a replay).
``scores.sync_id`` is the primary key, so a second insert would fail loudly rather than
give a sync a second decision.

Table: ``scores`` (store migration 2).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

__all__ = ["SCORE_COLUMNS", "pending", "start_times", "record", "stored_events",
           "recent_history", "audit_rows"]

SCORE_COLUMNS = ("sync_id", "connector_id", "started_ts", "scored_at", "model_version",
                 "decision", "severity", "criticality", "score", "cutoff", "tail_probability",
                 "connector_paused", "cold_start", "unscorable", "reasons", "rule_hits", "event")
"""Column order :func:`record` expects in its frame."""

_PENDING_SCHEMA = {"sync_id": pl.String, "connector_id": pl.String,
                   "connector_kind": pl.String, "started_ts": pl.Float64, "record": pl.String}


def start_times(conn: sqlite3.Connection, sync_ids: Iterable[str]) -> pl.DataFrame:
    """``sync_id, connector_id, started_ts`` of the stored, still unscored ``sync_ids``.

    Read without the write lock: a cheap pre-filter; :func:`pending` decides.
    """
    rows = conn.execute(
        "SELECT s.sync_id, s.connector_id, s.started_ts FROM syncs s "
        "WHERE s.sync_id IN (SELECT value FROM json_each(?)) "
        "AND NOT EXISTS (SELECT 1 FROM scores c WHERE c.sync_id = s.sync_id)",
        (json.dumps(list(dict.fromkeys(sync_ids))),)).fetchall()
    return pl.DataFrame(rows, schema={"sync_id": pl.String, "connector_id": pl.String,
                                      "started_ts": pl.Float64}, orient="row")


def pending(conn: sqlite3.Connection, sync_ids: Iterable[str],
            since: Mapping[str, float], *, until: float) -> pl.DataFrame:
    """Unscored syncs to score now, in time order; call inside the write transaction.

    These are the unscored ``sync_ids``, plus every other unscored stored sync of their
    connectors that started after the connector's last scored sync (``since``) and no
    later than ``until``: syncs a crashed run or another scorer's input left behind, which
    must be judged first for each connector's syncs to be scored in time order.

    Parameters
    ----------
    sync_ids : iterable of str
        The syncs this run asked for.
    since : mapping of str to float
        Per connector, the start (epoch seconds) of its last scored sync; connectors
        absent here were never scored and contribute only ``sync_ids``.
    until : float
        Latest start (epoch seconds) of the chunk being scored.

    Returns
    -------
    pl.DataFrame
        ``sync_id, connector_id, connector_kind, started_ts, record`` (canonical JSON),
        ordered by ``started_ts, sync_id``.
    """
    # The union is taken over sync ids only (not over whole rows with their records), then
    # each sync's row is read once.
    rows = conn.execute(
        "WITH asked AS (SELECT value AS sync_id FROM json_each(?)), "
        "     since AS (SELECT key AS connector_id, value AS ts FROM json_each(?)), "
        "     todo AS (SELECT s.sync_id FROM syncs s "
        "              WHERE s.sync_id IN (SELECT sync_id FROM asked) "
        "              UNION "
        "              SELECT s.sync_id FROM since JOIN syncs s "
        "              ON s.connector_id = since.connector_id "
        "              AND s.started_ts > since.ts AND s.started_ts <= ?) "
        "SELECT s.sync_id, s.connector_id, s.connector_kind, s.started_ts, s.record "
        "FROM todo JOIN syncs s ON s.sync_id = todo.sync_id "
        "WHERE NOT EXISTS (SELECT 1 FROM scores c WHERE c.sync_id = s.sync_id) "
        "ORDER BY 4, 1",
        (json.dumps(list(dict.fromkeys(sync_ids))), json.dumps(dict(since)), until)).fetchall()
    return pl.DataFrame(rows, schema=_PENDING_SCHEMA, orient="row")


def recent_history(conn: sqlite3.Connection, before: Mapping[str, float], *,
                   per_connector: int = 50) -> pl.DataFrame:
    """The last ``per_connector`` stored syncs of each connector that started before the
    given time: what a never-scored connector's starting state is built from.

    Returns
    -------
    pl.DataFrame
        ``record`` (canonical JSON), oldest first per connector.
    """
    rows = conn.execute(
        "WITH b AS (SELECT key AS connector_id, value AS ts FROM json_each(?)), "
        "r AS (SELECT s.record, s.connector_id, s.started_ts, row_number() OVER ("
        "      PARTITION BY s.connector_id ORDER BY s.started_ts DESC, s.sync_id DESC) AS n "
        "      FROM b JOIN syncs s ON s.connector_id = b.connector_id AND s.started_ts < b.ts) "
        "SELECT record FROM r WHERE n <= ? ORDER BY connector_id, started_ts",
        (json.dumps(dict(before)), per_connector)).fetchall()
    return pl.DataFrame(rows, schema={"record": pl.String}, orient="row")


def record(conn: sqlite3.Connection, rows: pl.DataFrame) -> None:
    """Insert scored rows (columns :data:`SCORE_COLUMNS`); the caller holds the transaction.

    Raises
    ------
    sqlite3.IntegrityError
        If a sync was scored already: a bug in the claim, never silently a second decision.
    """
    # In sync_id order: each key goes into the primary key's index next to the one before,
    # on pages just read, not at a random leaf (and the other indexes mostly too, as sync
    # ids usually begin with their connector's name): a 12,000-sync chunk's scores went
    # in ~25-40 % faster. Rows of one connector that start at the same moment keep their
    # order (by sync_id, as pending gives them): the rowid order status reads ties in.
    conn.executemany(
        f"INSERT INTO scores ({', '.join(SCORE_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(SCORE_COLUMNS))})",
        rows.select(SCORE_COLUMNS).sort("sync_id").rows())


def audit_rows(conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    """Append many audit rows at once: ``(at, actor, action, subject, reason, details)``.

    The per-decision audit trail of a large batch, in one statement; same table and
    append-only triggers as :func:`detector.store.audit.append`.
    """
    conn.executemany("INSERT INTO audit_log (at, actor, action, subject, reason, details) "
                     "VALUES (?, ?, ?, ?, ?, ?)", rows)


def stored_events(conn: sqlite3.Connection, sync_ids: Iterable[str]) -> dict[str, str]:
    """The native event JSON recorded for each scored sync among ``sync_ids``."""
    rows = conn.execute(
        "SELECT sync_id, event FROM scores WHERE sync_id IN (SELECT value FROM json_each(?))",
        (json.dumps(list(dict.fromkeys(sync_ids))),))
    return dict(rows.fetchall())
