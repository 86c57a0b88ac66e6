"""Scoring state between runs: per connector and measure values, and per connector facts.

:meth:`detector.model.FleetModel.score` starts from a ``state`` frame
(:data:`detector.features.STATE_SCHEMA`) and a ``facts`` frame (:data:`FACTS_SCHEMA`) and
returns the next ones. Scoring a batch in time order gives the decisions of scoring one
sync at a time only if what is saved here is read back *exactly*: values are stored as
SQLite REAL (IEEE doubles, bit for bit) and times as integer epoch microseconds (the
frames' own resolution).

Whether a connector is paused is read from the pause ledger (an open row in ``pauses``),
not from the saved facts: a person's ``syncguard resume`` changes it between runs.

Tables: ``scoring_state`` and ``connector_facts`` (store migration 2).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

import polars as pl

from detector.features import FACTS_SCHEMA, STATE_SCHEMA
from detector.frame import ACCEPTED_MEASURE

__all__ = ["FACTS_SCHEMA", "load_state", "save_state", "empty_facts", "accept_current",
           "connectors_with_state"]


_US = pl.Datetime("us", "UTC")


def empty_facts() -> pl.DataFrame:
    """Facts for no connector."""
    return pl.DataFrame(schema=FACTS_SCHEMA)


def _ids(connector_ids: Iterable[str]) -> str:
    return json.dumps(sorted(set(connector_ids)))


def connectors_with_state(conn: sqlite3.Connection, connector_ids: Iterable[str]) -> set[str]:
    """The connectors among ``connector_ids`` that were scored before (have saved facts)."""
    rows = conn.execute(
        "SELECT connector_id FROM connector_facts "
        "WHERE connector_id IN (SELECT value FROM json_each(?))", (_ids(connector_ids),))
    return {r[0] for r in rows}


def load_state(conn: sqlite3.Connection,
               connector_ids: Iterable[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The saved state and facts of ``connector_ids`` (connectors never scored are absent).

    ``state_paused`` is true when the connector has an open pause in the ledger.

    Returns
    -------
    state : pl.DataFrame
        :data:`~detector.features.STATE_SCHEMA`, sorted by connector and measure.
    facts : pl.DataFrame
        :data:`FACTS_SCHEMA`, sorted by connector.
    """
    ids = _ids(connector_ids)
    rows = conn.execute(
        "SELECT connector_id, measure, value, ref_value FROM scoring_state "
        "WHERE connector_id IN (SELECT value FROM json_each(?)) "
        "ORDER BY connector_id, measure", (ids,)).fetchall()
    state = pl.DataFrame(rows, schema=STATE_SCHEMA, orient="row")
    rows = conn.execute(
        "SELECT f.connector_id, f.last_success_us, f.last_start_us, "
        "       EXISTS (SELECT 1 FROM pauses p WHERE p.connector_id = f.connector_id "
        "               AND p.closed_at IS NULL) "
        "FROM connector_facts f WHERE f.connector_id IN (SELECT value FROM json_each(?)) "
        "ORDER BY f.connector_id", (ids,)).fetchall()
    facts = pl.DataFrame(
        rows, schema={"connector_id": pl.String, "state_last_success": pl.Int64,
                      "state_last_start": pl.Int64, "state_paused": pl.Boolean},
        orient="row",
    ).with_columns(pl.col("state_last_success", "state_last_start").cast(_US))
    return state, facts


def save_state(conn: sqlite3.Connection, state: pl.DataFrame, facts: pl.DataFrame, *,
               model_version: str | None, now: str) -> None:
    """Upsert the state and facts a scoring run returned; the caller holds the transaction.

    Rows of connectors not in the frames are left alone; a measure a connector stopped
    reporting keeps its last saved row (the model carries it forward too).
    """
    _upsert(conn, "scoring_state", ("connector_id", "measure"), state.select(
        "connector_id", "measure", "value", "ref_value",
        pl.lit(model_version, dtype=pl.String).alias("model_version"),
        pl.lit(now).alias("updated_at")))
    _upsert(conn, "connector_facts", ("connector_id",), facts.select(
        "connector_id",
        pl.col("state_last_success").dt.epoch("us").alias("last_success_us"),
        pl.col("state_last_start").dt.epoch("us").alias("last_start_us"),
        pl.col("state_paused").fill_null(False).cast(pl.Int64).alias("paused"),
        pl.lit(model_version, dtype=pl.String).alias("model_version"),
        pl.lit(now).alias("updated_at")))


def _upsert(conn: sqlite3.Connection, table: str, key: tuple[str, ...],
            rows: pl.DataFrame) -> None:
    """Insert ``rows`` (columns named as the table's), replacing rows with the same key."""
    columns = rows.columns
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    conn.executemany(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}",
        rows.rows())


def accept_current(conn: sqlite3.Connection, connector_id: str, *, now: str) -> None:
    """After a resume: the connector's latest values become its reference, and it is no
    longer paused. Its later syncs are judged as a paused connector's are (see
    :data:`~detector.frame.ACCEPTED_MEASURE`), against what the person accepted as well as
    the learned level, so a level shift that was resumed does not pause again."""
    conn.execute("UPDATE scoring_state SET ref_value = value, updated_at = ? "
                 "WHERE connector_id = ?", (now, connector_id))
    _upsert(conn, "scoring_state", ("connector_id", "measure"), pl.DataFrame({
        "connector_id": [connector_id], "measure": [ACCEPTED_MEASURE], "value": [1.0],
        "ref_value": [1.0], "updated_at": [now]}))
    conn.execute("UPDATE connector_facts SET paused = 0, updated_at = ? WHERE connector_id = ?",
                 (now, connector_id))
