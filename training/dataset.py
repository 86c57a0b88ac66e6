"""Training data from the store: clean history, the held-out window, and labels.

One SQL query reads every stored sync with what people and scoring said about it (its
label, and whether a pause held it), straight into a polars frame. What training must
not learn from is then marked, never dropped silently:

* a sync labelled ``fault`` (``syncguard label SYNC_ID fault``) is left out;
* a sync that was *held* (its decision was ``pause``, or it was scored while its
  connector was paused) is left out unless the pause holding it was resumed as a false
  positive (``syncguard resume ... --false-positive``). The pause holding a sync is the
  connector's latest pause opened at or before it, in sync time. A person's ``normal``
  label overrides the hold.

The held-out window for the backtest is the most recent ``holdout_days`` of history
across the fleet: the model under test is fitted on the clean syncs before it and
scores *every* sync in it (faults included: that is what a backtest measures).

The ``scores``, ``pauses`` and ``labels`` tables come with store migration 2; on a store
without them every sync is clean and unlabelled.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from detector.errors import UsageError

__all__ = [
    "DEFAULT_HOLDOUT_DAYS",
    "MIN_FIT_DAYS",
    "FRAME_SCHEMA",
    "HISTORY_COLUMNS",
    "fit_history",
    "LABEL_COLUMNS",
    "TrainingData",
    "read_training_frame",
    "load_training_data",
    "split_holdout",
    "backtest_labels",
    "has_verdicts",
    "read_labels_file",
    "exclude_labelled",
    "describe",
]

DEFAULT_HOLDOUT_DAYS = 14.0
"""Default held-out window: two weeks holds two of every weekly pattern."""

LABEL_COLUMNS = ("sync_id", "connector_id", "label", "class", "episode")
"""Columns of backtest labels (the simulator's ``labels.jsonl``)."""

MIN_FIT_DAYS = 7.0
"""The part before the held-out window must span at least a week (one weekly cycle)."""

#: Columns of :func:`read_training_frame`: the store's history columns, then the verdicts.
FRAME_SCHEMA: dict[str, pl.DataType] = {
    "sync_id": pl.String(),
    "connector_id": pl.String(),
    "connector_kind": pl.String(),
    "started_at": pl.Datetime("us", "UTC"),
    "finished_at": pl.Datetime("us", "UTC"),
    "status": pl.String(),
    "error_class": pl.String(),
    "record": pl.String(),
    "label": pl.String(),  # "fault", "normal" or null (unlabelled)
    "held": pl.Boolean(),  # a pause held this sync
    "held_false_positive": pl.Boolean(),  # ... and that pause was resumed as a false positive
    "excluded": pl.Boolean(),
    "exclusion": pl.String(),  # why: "labelled_fault", "paused" or null
}

_RAW_SCHEMA = {
    **{c: pl.String() for c in ("sync_id", "connector_id", "connector_kind", "status")},
    **{c: pl.String() for c in ("error_class", "record", "label")},
    "started_ts": pl.Float64(),
    "finished_ts": pl.Float64(),
    "held": pl.Int64(),
    "held_fp": pl.Int64(),
}

_READ_BATCH_ROWS = 20_000  # store rows read at a time (see read_training_frame)

HISTORY_COLUMNS = list(FRAME_SCHEMA)[:8]
"""The store history columns (``Store.history()``), what :class:`FleetModel` fits on."""


def fit_history(frame: pl.DataFrame) -> pl.DataFrame:
    """The syncs of a training frame that a fit learns from (not ``excluded``), as the
    store history frame :meth:`FleetModel.fit` reads (:data:`HISTORY_COLUMNS`)."""
    return frame.filter(~pl.col("excluded")).select(HISTORY_COLUMNS)


@dataclass(frozen=True)
class TrainingData:
    """Everything training reads from the store.

    Attributes
    ----------
    frame : pl.DataFrame
        Every stored sync in the window, ordered by ``connector_id, started_at``, with
        the columns of :data:`FRAME_SCHEMA`.
    """

    frame: pl.DataFrame

    @property
    def clean(self) -> pl.DataFrame:
        """The syncs training may learn from (a store history frame: ``record`` JSON)."""
        return self.frame.filter(~pl.col("excluded"))

    @property
    def excluded(self) -> pl.DataFrame:
        """The syncs left out, with ``exclusion`` saying why."""
        return self.frame.filter(pl.col("excluded"))


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _query(tables: set[str]) -> str:
    """The one query; verdict columns are constants when their tables do not exist."""
    ctes, joins = [], []
    label = "NULL"
    if "labels" in tables:
        label = "l.label"
        joins.append("LEFT JOIN labels l ON l.sync_id = s.sync_id")
    held, held_fp = "0", "NULL"
    if "scores" in tables:
        held = "h.sync_id IS NOT NULL"
        pause_fp = "NULL"
        if "pauses" in tables:
            # A pause starts at its opening sync's start; pauses of one connector follow
            # one another, so the latest one started at or before a sync is the one
            # holding it. A pause opened without a sync (a rejected record) has no start
            # in sync time and holds nothing here: its syncs count as not false positive.
            ctes.append(
                "p AS (SELECT p.id, p.connector_id, p.false_positive, o.started_ts AS start_ts "
                "FROM pauses p JOIN syncs o ON o.sync_id = p.opened_sync_id)"
            )
            pause_fp = (
                "(SELECT p.false_positive FROM p WHERE p.connector_id = sc.connector_id "
                "AND p.start_ts <= sc.started_ts ORDER BY p.start_ts DESC, p.id DESC LIMIT 1)"
            )
        ctes.append(
            f"h AS (SELECT sc.sync_id, {pause_fp} AS fp FROM scores sc "
            "WHERE sc.decision = 'pause' OR sc.connector_paused = 1)"
        )
        held_fp = "h.fp"
        joins.append("LEFT JOIN h ON h.sync_id = s.sync_id")
    with_clause = ("WITH " + ", ".join(ctes) + " ") if ctes else ""
    return (
        f"{with_clause}SELECT s.sync_id, s.connector_id, s.connector_kind, s.started_ts, "
        f"s.finished_ts, s.status, s.error_class, s.record, {label} AS label, "
        f"{held} AS held, {held_fp} AS held_fp "
        f"FROM syncs s {' '.join(joins)} "
        "WHERE s.started_ts >= ? AND s.started_ts < ? "
        "ORDER BY s.connector_id, s.started_ts, s.sync_id"
    )


def _epoch(value: datetime | None, name: str, default: float) -> float:
    if value is None:
        return default
    if value.tzinfo is None:
        raise UsageError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.timestamp()


def read_training_frame(
    conn: sqlite3.Connection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """Read every stored sync with its label and pause verdicts, marking the exclusions.

    Parameters
    ----------
    conn : sqlite3.Connection
        A store connection (``Store.conn``), migrated to any version.
    since, until : datetime, optional
        Only syncs with ``since <= started_at < until`` (timezone-aware).

    Returns
    -------
    pl.DataFrame
        Columns of :data:`FRAME_SCHEMA`, ordered by ``connector_id, started_at``.
    """
    lo = _epoch(since, "since", float("-inf"))
    hi = _epoch(until, "until", float("inf"))
    # In batches: the driver hands over Python rows, whose record texts (most of the
    # store) sit in the C heap, which polars' allocator never reuses. Read at once, a
    # 1,000-connector store left ~0.5 GiB of freed rows there for the rest of training;
    # batch after batch reuses one batch's memory.
    batches = pl.read_database(
        _query(_tables(conn)),
        connection=conn,
        iter_batches=True,
        batch_size=_READ_BATCH_ROWS,
        execute_options={"parameters": [lo, hi]},
        # Declared, not inferred from the first rows: a column that is null there
        # (error_class, label) would otherwise refuse the first value further down.
        schema_overrides=_RAW_SCHEMA,
    )
    raw = pl.concat([*batches, pl.DataFrame(schema=_RAW_SCHEMA)], how="diagonal")

    def as_time(col: str) -> pl.Expr:
        # Round, not truncate: epoch floats carry microseconds with binary error.
        return (pl.col(col).cast(pl.Float64) * 1e6).round().cast(pl.Int64)

    held = pl.col("held").cast(pl.Int64).fill_null(0) == 1
    fp = pl.col("held_fp").cast(pl.Int64) == 1
    label = pl.col("label").cast(pl.String)
    fault = label == "fault"
    paused = held & ~fp.fill_null(False) & (label != "normal").fill_null(True)
    frame = raw.select(
        pl.col("sync_id").cast(pl.String),
        pl.col("connector_id").cast(pl.String),
        pl.col("connector_kind").cast(pl.String),
        as_time("started_ts").cast(pl.Datetime("us", "UTC")).alias("started_at"),
        as_time("finished_ts").cast(pl.Datetime("us", "UTC")).alias("finished_at"),
        pl.col("status").cast(pl.String),
        pl.col("error_class").cast(pl.String),
        pl.col("record").cast(pl.String),
        label.alias("label"),
        held.alias("held"),
        pl.when(held).then(fp.fill_null(False)).alias("held_false_positive"),
        (fault.fill_null(False) | paused).alias("excluded"),
        pl.when(fault)
        .then(pl.lit("labelled_fault"))
        .when(paused)
        .then(pl.lit("paused"))
        .alias("exclusion"),
    )
    return frame.cast(FRAME_SCHEMA)


def load_training_data(
    conn: sqlite3.Connection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> TrainingData:
    """Read the training frame (:func:`read_training_frame`), refusing an empty store.

    Raises
    ------
    detector.errors.UsageError
        The store holds no syncs in the window.
    """
    frame = read_training_frame(conn, since=since, until=until)
    if frame.height == 0:
        raise UsageError(
            "the store holds no syncs to train on: ingest sync records first "
            "(`syncguard ingest FILE`)"
        )
    return TrainingData(frame=frame)


def split_holdout(
    frame: pl.DataFrame, *, holdout_days: float = DEFAULT_HOLDOUT_DAYS
) -> tuple[pl.DataFrame, pl.DataFrame, datetime]:
    """Split at ``latest start - holdout_days``: (before, held-out window, cutoff).

    Parameters
    ----------
    frame : pl.DataFrame
        A training frame (:func:`read_training_frame`) or any frame with ``started_at``.
    holdout_days : float, default 14
        Length of the held-out window, in days, ending at the latest sync.

    Raises
    ------
    detector.errors.UsageError
        ``holdout_days`` is not positive, or leaves less than :data:`MIN_FIT_DAYS` of
        history before the window, or the window holds no sync.
    """
    if not holdout_days > 0:
        raise UsageError(f"--holdout-days must be positive, got {holdout_days:g}")
    first, last = frame["started_at"].min(), frame["started_at"].max()
    cutoff = last - timedelta(days=holdout_days)
    span = (last - first).total_seconds() / 86400.0
    if (cutoff - first).total_seconds() / 86400.0 < MIN_FIT_DAYS:
        raise UsageError(
            f"history spans {span:.1f} days; a {holdout_days:g}-day held-out window leaves "
            f"less than {MIN_FIT_DAYS:g} days to fit on (use a smaller --holdout-days, "
            "or ingest more history)"
        )
    before = frame.filter(pl.col("started_at") < cutoff)
    window = frame.filter(pl.col("started_at") >= cutoff)
    return before, window, cutoff


def has_verdicts(frame: pl.DataFrame) -> bool:
    """Whether any sync of ``frame`` carries a person's label or was held by a pause."""
    return bool(frame["label"].is_not_null().any() or frame["held"].any())


def backtest_labels(
    window: pl.DataFrame, file_labels: pl.DataFrame | None = None
) -> pl.DataFrame | None:
    """Labels for the held-out window in the backtest's format, or None when there are none.

    The backtest needs ``sync_id, connector_id, label (normal|anomaly|ambiguous), class,
    episode``. Labels given in a file (the simulator's ``labels.jsonl``) are taken as
    they are; a person's label in the store wins over them. From the store alone, every
    window sync gets a label: ``fault`` -> ``anomaly`` (class ``labelled_fault``, one
    episode per run of consecutive faults of a connector); a sync held by a pause that
    was not resumed as a false positive -> ``ambiguous`` (nobody said whether it was a
    fault, so it counts neither way); anything else -> ``normal``.

    Parameters
    ----------
    window : pl.DataFrame
        The held-out window of a training frame.
    file_labels : pl.DataFrame, optional
        ``sync_id, connector_id, label, class, episode``.
    """
    if file_labels is None and not has_verdicts(window):
        return None
    ordered = window.sort("connector_id", "started_at")
    is_fault = pl.col("label") == "fault"
    run = (is_fault != is_fault.shift(1).over("connector_id")).fill_null(True).cum_sum()
    from_store = ordered.select(
        "sync_id",
        "connector_id",
        pl.when(is_fault)
        .then(pl.lit("anomaly"))
        .when(pl.col("exclusion") == "paused")
        .then(pl.lit("ambiguous"))
        .otherwise(pl.lit("normal"))
        .alias("s_label"),
        pl.when(is_fault)
        .then(pl.lit("labelled_fault"))
        .otherwise(pl.lit("normal"))
        .alias("s_class"),
        pl.when(is_fault)
        .then(pl.format("lf-{}-{}", pl.col("connector_id"), run))
        .alias("s_episode"),
        pl.col("label").is_not_null().alias("by_person"),
    )
    if file_labels is None:
        return from_store.select(
            "sync_id",
            "connector_id",
            pl.col("s_label").alias("label"),
            pl.col("s_class").alias("class"),
            pl.col("s_episode").alias("episode"),
        )
    given = file_labels.select(
        "sync_id",
        pl.col("label").cast(pl.String),
        pl.col("class").cast(pl.String),
        pl.col("episode").cast(pl.String),
    )
    joined = from_store.join(given, on="sync_id", how="left")
    person = pl.col("by_person")
    return joined.select(
        "sync_id",
        "connector_id",
        pl.when(person).then("s_label").otherwise(pl.coalesce("label", "s_label")).alias("label"),
        pl.when(person).then("s_class").otherwise(pl.coalesce("class", "s_class")).alias("class"),
        pl.when(person).then("s_episode").otherwise("episode").alias("episode"),
    )


def read_labels_file(path: str | Path) -> pl.DataFrame:
    """Read simulator-format labels (JSON Lines: sync_id, connector_id, label, class, episode).

    Raises
    ------
    detector.errors.UsageError
        The file is missing, is not JSON Lines, or lacks a column.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"labels file {path} does not exist")
    try:
        frame = pl.read_ndjson(path, infer_schema_length=None)
    except (pl.exceptions.ComputeError, OSError) as exc:
        raise UsageError(f"labels file {path} is not JSON Lines: {exc}") from None
    missing = [c for c in LABEL_COLUMNS if c not in frame.columns]
    if missing:
        raise UsageError(f"labels file {path} has no {', '.join(missing)} field")
    return frame.select(pl.col(c).cast(pl.String) for c in LABEL_COLUMNS)


def exclude_labelled(frame: pl.DataFrame, file_labels: pl.DataFrame) -> pl.DataFrame:
    """Also leave out the syncs a labels file calls ``anomaly`` (exclusion ``labelled_fault``).

    ``ambiguous`` syncs (legitimate bulk changes such as access-review clean-ups) stay
    in: they are normal life the model should know.
    """
    faults = file_labels.filter(pl.col("label") == "anomaly").select(
        "sync_id", pl.lit(True).alias("_fault")
    )
    fault = pl.col("_fault").fill_null(False) & ~pl.col("excluded")
    return (
        frame.join(faults, on="sync_id", how="left", maintain_order="left")
        .with_columns(
            pl.when(fault).then(pl.lit("labelled_fault")).otherwise("exclusion").alias("exclusion"),
            (pl.col("excluded") | fault).alias("excluded"),
        )
        .drop("_fault")
    )


def describe(frame: pl.DataFrame) -> dict[str, int]:
    """Counts for logs and MLflow params: syncs, connectors, exclusions by reason."""
    by_reason = dict(frame.filter(pl.col("excluded")).group_by("exclusion").len().iter_rows())
    return {
        "syncs": frame.height,
        "connectors": frame["connector_id"].n_unique(),
        "clean_syncs": frame.height - int(frame["excluded"].sum()),
        "excluded_labelled_fault": int(by_reason.get("labelled_fault", 0)),
        "excluded_paused": int(by_reason.get("paused", 0)),
    }
