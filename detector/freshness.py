"""Freshness: which connectors have gone quiet for longer than their usual interval allows.

A dead connector sends nothing to score, so no rule on a sync can notice it. This module
looks at the store instead: each connector's usual interval is the median gap between
the starts of its last :data:`RECENT_SYNCS` stored syncs, and it is *overdue* when its
last sync finished more than :data:`detector.rules.OVERDUE_FACTOR` intervals (and more
than an hour past its due time) before the check, the test the ``overdue_sync`` rule
applies to a sync that does arrive (which also asks it to be late against the sync before:
here the recent median follows a schedule that moved).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

import polars as pl

from detector.events.native import connector_stale, format_timestamp
from detector.policy import Policy
from detector.rules import OVERDUE_FACTOR

__all__ = ["RECENT_SYNCS", "freshness", "stale_events"]

RECENT_SYNCS = 50
"""Syncs per connector the usual interval is measured over."""

_MIN_LATE_S = 3600.0

_SCHEMA = {"connector_id": pl.String, "connector_kind": pl.String, "sync_id": pl.String,
           "started_ts": pl.Float64, "finished_ts": pl.Float64, "n": pl.Int64}


def freshness(conn: sqlite3.Connection, now: datetime) -> pl.DataFrame:
    """Per connector: last sync, usual interval, age and whether it is overdue.

    Returns
    -------
    pl.DataFrame
        ``connector_id, connector_kind, last_sync_id, last_sync_at (finish, UTC),
        interval_s, age_s, overdue_by_s, overdue`` sorted by connector. ``interval_s`` is
        null for a connector with a single stored sync (nothing to compare), and then it
        is never overdue.
    """
    rows = conn.execute(
        "WITH r AS (SELECT connector_id, connector_kind, sync_id, started_ts, finished_ts, "
        "row_number() OVER (PARTITION BY connector_id ORDER BY started_ts DESC, "
        "sync_id DESC) AS n FROM syncs) "
        "SELECT connector_id, connector_kind, sync_id, started_ts, finished_ts, n FROM r "
        "WHERE n <= ?", (RECENT_SYNCS,)).fetchall()
    recent = pl.DataFrame(rows, schema=_SCHEMA, orient="row").sort("connector_id",
                                                                    "started_ts")
    per = recent.group_by("connector_id", maintain_order=True).agg(
        pl.col("connector_kind").last(),
        pl.col("sync_id").last().alias("last_sync_id"),
        pl.col("finished_ts").last().alias("_last_finish"),
        pl.col("started_ts").diff().drop_nulls().median().alias("interval_s"),
    )
    age = now.timestamp() - pl.col("_last_finish")
    late = age - pl.col("interval_s")
    overdue = ((pl.col("interval_s") > 0) & (age > OVERDUE_FACTOR * pl.col("interval_s"))
               & (late > _MIN_LATE_S))
    return per.with_columns(
        (pl.col("_last_finish") * 1e6).round().cast(pl.Int64).cast(pl.Datetime("us", "UTC"))
        .alias("last_sync_at"),
        age.alias("age_s"),
        pl.max_horizontal(late, pl.lit(0.0)).alias("overdue_by_s"),
        overdue.fill_null(False).alias("overdue"),
    ).select("connector_id", "connector_kind", "last_sync_id", "last_sync_at", "interval_s",
             "age_s", "overdue_by_s", "overdue")


def stale_events(table: pl.DataFrame, *, now: datetime, policy: Policy,
                 paused: set[str]) -> list[dict]:
    """One ``connector_stale`` event (decision review) per overdue connector.

    Severity follows the connector's criticality: a leaver feed that went quiet means
    leavers keep their access. The event id depends on the connector and its last sync
    only, so every check of the same quiet spell repeats it (one finding in SOAR).
    """
    checked = format_timestamp(now)
    events = []
    for row in table.filter(pl.col("overdue")).iter_rows(named=True):
        crit = policy.criticality_of(row["connector_id"], row["connector_kind"])
        events.append(connector_stale(
            connector_id=row["connector_id"], connector_kind=row["connector_kind"],
            checked_at=checked, last_sync_at=row["last_sync_at"],
            last_sync_id=row["last_sync_id"], expected_interval_s=row["interval_s"],
            overdue_by_s=row["overdue_by_s"], severity=policy.criticalities[crit]["severity"],
            criticality=crit, connector_paused=row["connector_id"] in paused,
        ))
    return events
