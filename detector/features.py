"""Features: every measure of every sync, placed against its reference sync.

The detector judges a sync against what came before it. For each (sync, measure) row this
module attaches the *reference* value (from the last sync that was not paused; while the
connector is paused, from the sync just before), the *exposure* an event count is relative
to (the resource's size at the reference sync), the time-of-week bucket, the gap since the
previous sync and the freshness of the data (start minus the previous successful finish).

Everything is computed with polars window expressions over (connector, measure), so a
batch of any number of connectors is one set of vectorised operations. The state a batch
starts from (the last sync of each connector already seen) enters as extra rows marked
``is_state`` that are dropped at the end, so batch and one-at-a-time scoring share code.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from detector.frame import (
    ACCEPTED_MEASURE,
    FRESHNESS_MEASURE,
    MAX_UNCHANGED_RUN,
    REPEAT_MEASURES,
    RESOURCE_TYPES_MEASURE,
    UNCHANGED_MEASURE,
    UNCHANGED_WITH_METRICS_MEASURE,
    UNEXPLAINED_STAT,
    is_stat,
    measure_kind_expr,
    resource_type_bit,
    stat_suffix,
)

__all__ = [
    "N_BUCKETS",
    "block_expr",
    "bucket_expr",
    "STATE_SCHEMA",
    "FACTS_SCHEMA",
    "build_features",
    "empty_state",
]

#: Time-of-week buckets: the 168 hours of a week (UTC; per-connector baselines absorb the
#: connector's own time zone). Baselines learn a profile per block of ``HOURS_PER_BLOCK``
#: hours and, where the data show one, an hour's own offset within its block.
N_BUCKETS = 168
HOURS_PER_BLOCK = 4

#: The state a batch starts from: per connector and measure, the value at the previous
#: sync and at the last sync that was not paused (the reference), plus connector facts.
STATE_SCHEMA = {
    "connector_id": pl.String,
    "measure": pl.String,
    "value": pl.Float64,
    "ref_value": pl.Float64,
}

# What the measures derived from whole syncs carry of their sync.
_SYNC_INFO = ("connector_id", "connector_kind", "started_at", "seq", "bucket", "gap_s", "paused")


def bucket_expr(ts: pl.Expr) -> pl.Expr:
    """Time-of-week bucket (0..167: the hour of the week) of a UTC datetime expression."""
    # Int16 before the arithmetic: polars gives weekday and hour as Int8.
    return (ts.dt.weekday().cast(pl.Int16) - 1) * 24 + ts.dt.hour().cast(pl.Int16)


def block_expr(bucket: pl.Expr) -> pl.Expr:
    """The block of the week (0..41: day x 6 + hour // 4) of an hour-of-week bucket."""
    return (bucket // HOURS_PER_BLOCK).cast(pl.Int16)


def empty_state() -> pl.DataFrame:
    """A state with no connectors (every connector starts cold)."""
    return pl.DataFrame(schema=STATE_SCHEMA)


#: The connector facts beside the state: the finish of its last successful sync and the
#: start of its last sync (freshness and gaps carry on from them), and whether it is paused.
FACTS_SCHEMA = {
    "connector_id": pl.String,
    "state_last_success": pl.Datetime("us", "UTC"),
    "state_last_start": pl.Datetime("us", "UTC"),
    "state_paused": pl.Boolean,
}


def _sync_measures(syncs: pl.DataFrame) -> pl.DataFrame:
    """Duration and freshness as measures of their own (not for failed syncs).

    Nor freshness for a sync after a failed one (a failed attempt since the last success
    started after that success finished, so ``fresh_gap_s >= gap_s``): its data is as old
    as the failure made it. The failure is ``sync_failed``'s to pause and lateness beyond
    it ``overdue_sync``'s; judged again, the first good sync after a transient failure
    paused for data twice as old as usual.
    """
    usable = syncs.filter(pl.col("status") != "failed")
    duration = usable.select(
        "row", pl.lit("sync.duration_s").alias("measure"), pl.col("duration_s").alias("value")
    )
    after_failure = (pl.col("fresh_gap_s") >= pl.col("gap_s")).fill_null(False)
    fresh = usable.filter(pl.col("fresh_gap_s").is_not_null() & ~after_failure).select(
        "row", pl.lit(FRESHNESS_MEASURE).alias("measure"), pl.col("fresh_gap_s").alias("value")
    )
    # The connector's own word that the data is incomplete: an event, rare for most.
    partial = usable.select(
        "row",
        pl.lit("sync.partial").alias("measure"),
        (pl.col("status") == "partial").cast(pl.Float64).alias("value"),
    )
    out = pl.concat([duration, fresh, partial]).with_columns(
        pl.lit(None, dtype=pl.String).alias("resource"),
        measure_kind_expr(pl.col("measure")).alias("kind"),
    )
    return out.select("row", "measure", "value", "resource", "kind")


def _resource_types(measures: pl.DataFrame) -> pl.DataFrame:
    """One :data:`~detector.frame.RESOURCE_TYPES_MEASURE` row per sync that reported a
    resource count: the bit mask of its types (a failed sync reports none, and the sync
    after it is then compared with the last one that did)."""
    counts = measures.filter(
        (pl.col("kind") == "count") & pl.col("resource").is_not_null()
    ).select("row", "resource")
    return (
        counts.with_columns(resource_type_bit(counts["resource"]).alias("_bit"))
        .unique(["row", "_bit"])
        .group_by("row")
        .agg(pl.lit(2, dtype=pl.Int64).pow(pl.col("_bit")).sum().cast(pl.Float64).alias("value"))
        .select(
            "row",
            pl.lit(RESOURCE_TYPES_MEASURE).alias("measure"),
            "value",
            pl.lit(None, dtype=pl.String).alias("resource"),
            measure_kind_expr(pl.lit(RESOURCE_TYPES_MEASURE)).alias("kind"),
        )
    )


def _timing(syncs: pl.DataFrame, last_success: pl.DataFrame | None) -> pl.DataFrame:
    """Order within connector, gap to the previous sync, freshness gap."""
    syncs = syncs.sort("connector_id", "started_at", "sync_id")
    succeeded_finish = (
        pl.when(pl.col("status") != "failed").then(pl.col("finished_at")).otherwise(None)
    )
    syncs = syncs.with_columns(
        pl.int_range(pl.len()).over("connector_id").alias("seq"),
        bucket_expr(pl.col("started_at")).alias("bucket"),
        succeeded_finish.alias("_ok_finish"),
    )
    prior_ok = pl.col("_ok_finish").shift(1).forward_fill().over("connector_id")
    prev_start = pl.col("started_at").shift(1).over("connector_id")
    syncs = syncs.with_columns(prior_ok.alias("_prior_ok"), prev_start.alias("_prev_start"))
    if last_success is not None and last_success.height:
        syncs = syncs.join(last_success, on="connector_id", how="left").with_columns(
            pl.coalesce("_prior_ok", "state_last_success").alias("_prior_ok"),
            pl.coalesce("_prev_start", "state_last_start").alias("_prev_start"),
        )
    return syncs.with_columns(
        ((pl.col("started_at") - pl.col("_prior_ok")).dt.total_microseconds() / 1e6)
        .clip(lower_bound=1.0)
        .alias("fresh_gap_s"),
        ((pl.col("started_at") - pl.col("_prev_start")).dt.total_microseconds() / 1e6).alias(
            "gap_s"
        ),
    ).drop(
        "_ok_finish",
        "_prior_ok",
        "_prev_start",
        "state_last_success",
        "state_last_start",
        strict=False,
    )


def _unexplained_changes(reported: pl.DataFrame) -> pl.DataFrame:
    """One ``<type>.unexplained`` row per (sync, resource type) reporting its count, added
    and removed, where the sync before reported the count: by how many records the count
    moved beyond what the connector's own churn says, ``|count - previous - added +
    removed|``. A retry loop's duplicates raise a count with nothing added; records lost
    without being reported removed lower it. ``reported``: the resource rows of
    :func:`_unchanged_runs`' frame.
    """
    stat = {s: is_stat(s) for s in ("count", "added", "removed")}
    parts = (
        reported.filter(pl.any_horizontal(*stat.values()))
        .group_by("row", "resource")
        .agg(
            pl.col("value").filter(stat["count"]).first().alias("_count"),
            pl.col("_prev_value").filter(stat["count"]).first().alias("_previous"),
            pl.col("value").filter(stat["added"]).first().alias("_added"),
            pl.col("value").filter(stat["removed"]).first().alias("_removed"),
            *(pl.col(c).first() for c in _SYNC_INFO),
        )
        .drop_nulls(["_count", "_previous", "_added", "_removed"])
    )
    moved = pl.col("_count") - pl.col("_previous") - pl.col("_added") + pl.col("_removed")
    return parts.with_columns(
        pl.concat_str(pl.col("resource"), pl.lit(stat_suffix(UNEXPLAINED_STAT))).alias("measure"),
        moved.abs().alias("value"),
        pl.lit("events").alias("kind"),
        pl.lit(None, dtype=pl.Float64).alias("ref_value"),
        pl.lit(None, dtype=pl.Float64).alias("reference"),
    )


def _unchanged_runs(reported: pl.DataFrame, state: pl.DataFrame | None) -> pl.DataFrame:
    """The runs of repeated data: one :data:`~detector.frame.UNCHANGED_MEASURE` row per
    sync that reports resources, and one :data:`~detector.frame.UNCHANGED_WITH_METRICS_MEASURE`
    row per such sync that reports metrics too.

    ``reported`` holds the batch's (sync, measure) rows of resource types and custom
    metrics with ``_prev_value``, the series' value at the sync before (the state's row for
    the first sync of a batch). A sync repeats the one before when all its counts,
    duplicate counts and null rates (and, for the second run, its metrics) equal their
    previous values and its churn is zero; each run's length then carries on from the
    state's, up to :data:`~detector.frame.MAX_UNCHANGED_RUN`.
    """
    churn = (pl.col("kind") == "events") & ~is_stat("duplicates")
    same = (
        pl.when(churn)
        .then(pl.col("value") == 0)
        .otherwise(pl.col("value") == pl.col("_prev_value"))
        .fill_null(False)  # a type, stat or field the sync before did not report: news
    )
    is_resource = pl.col("resource").is_not_null()
    syncs = (
        reported.group_by("row")
        .agg(
            same.filter(is_resource).all().alias(UNCHANGED_MEASURE),
            same.all().alias(UNCHANGED_WITH_METRICS_MEASURE),
            is_resource.any().alias("_resources"),
            (~is_resource).any().alias("_metrics"),
            *(pl.col(c).first() for c in _SYNC_INFO),
        )
        .filter(pl.col("_resources"))  # a sync of metrics alone has no data to repeat
        .unpivot(
            on=list(REPEAT_MEASURES),
            index=["row", "_metrics", *_SYNC_INFO],
            variable_name="measure",
            value_name="_same",
        )
        .filter((pl.col("measure") == UNCHANGED_MEASURE) | pl.col("_metrics"))
    )
    start = pl.lit(0.0)
    if state is not None and state.height:
        carried = state.filter(pl.col("measure").is_in(list(REPEAT_MEASURES))).select(
            "connector_id", "measure", pl.col("value").alias("_start")
        )
        syncs = syncs.join(carried, on=["connector_id", "measure"], how="left")
        start = pl.col("_start").fill_null(0.0)
    # Runs begin at each sync that changed something; before the batch's first such sync
    # the run is the state's, carried on.
    series = ("connector_id", "measure")
    run = (~pl.col("_same")).cast(pl.Int64).cum_sum().over(*series, order_by="seq")
    syncs = syncs.with_columns(run.alias("_run"))
    position = pl.col("seq").rank("ordinal").over(*series, "_run") - 1
    length = pl.when(pl.col("_run") == 0).then(start + position + 1).otherwise(position)
    return syncs.with_columns(
        length.clip(upper_bound=MAX_UNCHANGED_RUN).cast(pl.Float64).alias("value"),
        pl.lit(None, dtype=pl.String).alias("resource"),
        pl.lit("events").alias("kind"),
        pl.lit(None, dtype=pl.Float64).alias("ref_value"),
        pl.lit(None, dtype=pl.Float64).alias("reference"),
    )


def _beside_syncs(rows: pl.DataFrame, info: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with the columns of ``info``'s row of the same ``row`` beside them, rows
    without one dropped: an inner join on ``row``, made as a gather by position (the join
    hashed every one of the ~35 measure rows of each sync: 25 ms for a 12,000-sync chunk,
    the gather 7 ms). ``rows`` keep their order."""
    n = max(int(rows["row"].max() or 0), int(info["row"].max() or 0)) + 1
    position = np.full(n, -1, dtype=np.int64)
    position[info["row"].to_numpy()] = np.arange(info.height)
    at = position[rows["row"].to_numpy()]
    found = at >= 0
    if not found.all():
        rows, at = rows.filter(pl.Series(found)), at[found]
    return rows.hstack(info.drop("row")[at])


def build_features(
    syncs: pl.DataFrame,
    measures: pl.DataFrame,
    *,
    state: pl.DataFrame | None = None,
    connector_facts: pl.DataFrame | None = None,
    paused_from_seq: pl.DataFrame | None = None,
    rule_measures: bool = True,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Attach references, exposures, buckets and modes to every (sync, measure) row.

    Parameters
    ----------
    syncs : pl.DataFrame
        From :func:`detector.frame.syncs_frame`, one row per sync (``row`` column added here
        if absent, matching ``measures.row``).
    measures : pl.DataFrame
        From :func:`detector.frame.measures_frame`.
    state : pl.DataFrame, optional
        :data:`STATE_SCHEMA` rows: each connector's values at its previous sync (``value``)
        and at its last sync that was not paused (``ref_value``).
    connector_facts : pl.DataFrame, optional
        ``connector_id, state_last_success, state_last_start, state_paused`` for connectors
        already seen.
    paused_from_seq : pl.DataFrame, optional
        ``connector_id, paused_seq``: from this position within the batch on (0-based), the
        connector is paused; a paused connector is judged against the sync just before.
    rule_measures : bool, default=True
        Also the measures kept for rules and the state only
        (:data:`~detector.frame.UNMODELLED_MEASURES`); fitting, where only models read
        the features, leaves them out.

    Returns
    -------
    syncs : pl.DataFrame
        The syncs with ``seq``, ``bucket``, ``gap_s``, ``fresh_gap_s``, ``paused`` (holds
        propagation) and ``judged_paused`` (paused, or resumed with its values accepted:
        judged as a paused connector's syncs are).
    features : pl.DataFrame
        One row per (sync, measure): ``row, connector_id, connector_kind, measure, kind,
        resource, value, reference, exposure, bucket, gap_s, paused`` (``paused``: as
        judged, the syncs' ``judged_paused``).
    """
    if "row" not in syncs.columns:
        syncs = syncs.with_row_index("row")
    facts = connector_facts
    syncs = _timing(
        syncs,
        None
        if facts is None
        else facts.select("connector_id", "state_last_success", "state_last_start"),
    )
    paused = pl.lit(False)
    if facts is not None and facts.height and "state_paused" in facts.columns:
        syncs = syncs.join(
            facts.select("connector_id", "state_paused"), on="connector_id", how="left"
        )
        paused = paused | pl.col("state_paused").fill_null(False)
    if paused_from_seq is not None and paused_from_seq.height:
        syncs = syncs.join(paused_from_seq, on="connector_id", how="left")
        paused = paused | (pl.col("seq") >= pl.col("paused_seq")).fill_null(False)
    syncs = syncs.with_columns(paused.alias("paused")).drop(
        [c for c in ("state_paused", "paused_seq") if c in syncs.columns]
    )
    # Judged as paused: paused, or resumed by a person who accepted its values (a state
    # row, see ACCEPTED_MEASURE); only ``paused`` holds propagation.
    judged = pl.col("paused")
    if state is not None and state.height:
        accepted = state.filter(
            (pl.col("measure") == ACCEPTED_MEASURE) & (pl.col("value") > 0)
        )["connector_id"]
        judged = judged | pl.col("connector_id").is_in(accepted.implode())
    syncs = syncs.with_columns(judged.alias("judged_paused"))

    rows = pl.concat(
        [
            measures.select("row", "measure", "value", "resource", "kind"),
            _sync_measures(syncs),
            *([_resource_types(measures)] if rule_measures else []),
        ]
    )
    info = syncs.select(
        "row",
        "connector_id",
        "connector_kind",
        "started_at",
        "seq",
        "bucket",
        "gap_s",
        pl.col("judged_paused").alias("paused"),  # the features judge; syncs hold
    )
    rows = _beside_syncs(rows, info).with_columns(
        pl.lit(False).alias("is_state"), pl.lit(None, dtype=pl.Float64).alias("ref_value")
    )
    if state is not None and state.height:
        # The connector's previous sync enters as a row at seq -1 with its reference value.
        state_rows = state.join(
            syncs.group_by("connector_id").agg(pl.col("connector_kind").first()),
            on="connector_id",
            how="inner",
        )
        state_rows = state_rows.with_columns(
            pl.lit(None, dtype=pl.UInt32).alias("row"),
            pl.lit(None, dtype=pl.String).alias("resource"),
            measure_kind_expr(pl.col("measure")).alias("kind"),
            pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("started_at"),
            pl.lit(-1, dtype=pl.Int64).alias("seq"),
            pl.lit(None, dtype=pl.Int16).alias("bucket"),
            pl.lit(None, dtype=pl.Float64).alias("gap_s"),
            pl.lit(False).alias("paused"),
            pl.lit(True).alias("is_state"),
        ).select(rows.columns)
        rows = pl.concat([state_rows, rows.cast(state_rows.schema)])
    # Each (connector, measure) series in time order (the state row at seq -1 first): the
    # window orders within its groups, so the frame itself is never sorted on strings. It
    # finds where each row's previous row is, and the previous values are gathered from
    # there: a window per column cost twice as much (each groups and orders again).
    previous = pl.col("_i").shift(1).over("connector_id", "measure", order_by="seq")
    rows = (
        rows.with_row_index("_i")
        .with_columns(previous.alias("_prev"))
        .with_columns(
            pl.col("value", "ref_value", "is_state").gather("_prev").name.prefix("_prev_")
        )
        .drop("_i", "_prev")
    )
    # Measures derived from each sync's resource rows as a whole (filtered once for both).
    reported = rows.filter(
        ~pl.col("is_state")
        & (pl.col("resource").is_not_null() | pl.col("measure").str.starts_with("metric."))
    )
    derived = [
        _unchanged_runs(reported, state),
        _unexplained_changes(reported.filter(pl.col("resource").is_not_null())),
    ]
    del reported
    prev_value = pl.col("_prev_value")
    prev_ref = pl.col("_prev_ref_value")
    prev_is_state = pl.col("_prev_is_state").fill_null(False)
    # Unpaused: against the last sync that was not paused (the state's reference for the
    # first row of a batch, the previous row after that). Paused: the sync just before.
    reference = (
        pl.when(prev_is_state & ~pl.col("paused") & prev_ref.is_not_null())
        .then(prev_ref)
        .otherwise(prev_value)
    )
    rows = (
        rows.with_columns(reference.alias("reference"))
        .filter(~pl.col("is_state"))
        .drop("_prev_value", "_prev_ref_value", "_prev_is_state", "is_state")
    )
    rows = pl.concat([rows, *(d.select(rows.columns).cast(rows.schema) for d in derived)])

    # Exposure: the resource's size at the reference sync, for churn and null rates.
    sizes = rows.filter(pl.col("kind") == "count").select(
        "row",
        pl.col("resource"),
        pl.col("reference").alias("exposure"),
        pl.col("value").alias("current_size"),
    )
    rows = rows.join(sizes, on=["row", "resource"], how="left").with_columns(
        pl.when(pl.col("kind") == "count")
        .then(pl.col("reference"))
        .otherwise(pl.col("exposure"))
        .alias("exposure")
    )
    # In (row, measure) order, sorted on one integer: the row and the measure's place among
    # the batch's few distinct measures (the order of the strings), not on the strings.
    measure_order = rows["measure"].unique().sort()
    places = pl.int_range(len(measure_order), eager=True, dtype=pl.UInt64)
    in_order = pl.col("row").cast(pl.UInt64) * len(measure_order) + pl.col(
        "measure"
    ).replace_strict(measure_order, places, return_dtype=pl.UInt64)
    features = rows.select(
        "row",
        "connector_id",
        "connector_kind",
        "started_at",
        "measure",
        "kind",
        "resource",
        "value",
        "reference",
        "exposure",
        "current_size",
        "bucket",
        "gap_s",
        "paused",
    )
    if features.height:  # (no rows: no measures to place)
        features = features.sort(in_order)
    return syncs.sort("row"), features
