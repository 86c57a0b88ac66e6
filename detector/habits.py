"""A connector's habits learned from history, beside its models: its usual interval
between syncs, the resource types it always reports, and the largest share of a type's
records it lost in one sync (and how often it lost a sharp share).

Decisions read the interval (a budget per day is a rate per sync); rules read the rest
(a type gone missing, a loss beyond any in history).
"""

from __future__ import annotations

import polars as pl

from detector.history import as_strings
from detector.rules import MIN_PAGE_LOSS_SHARE, count_losses

__all__ = [
    "LARGEST_LOSSES_SCHEMA",
    "connector_intervals",
    "expected_resources",
    "largest_losses",
    "score_intervals",
]

_MIN_RESOURCE_SHARE = 0.95


def connector_intervals(syncs: pl.DataFrame) -> pl.DataFrame:
    """``connector_id, connector_kind, interval_s, n_syncs``: each connector's median gap
    between syncs (a day without one) and its number of syncs."""
    return (
        syncs.group_by("connector_id")
        .agg(
            pl.col("connector_kind").first(),
            pl.col("gap_s").drop_nulls().median().fill_null(86400.0).alias("interval_s"),
            pl.len().alias("n_syncs"),
        )
        .sort("connector_id")
    )


def score_intervals(syncs: pl.DataFrame, fitted: pl.DataFrame) -> pl.DataFrame:
    """Fitted intervals, or for connectors never seen, the batch's own median gap (else 1 day)."""
    seen = fitted.select("connector_id", "interval_s")
    batch = syncs.group_by("connector_id").agg(
        pl.col("gap_s").drop_nulls().median().alias("_batch_interval")
    )
    return batch.join(seen, on="connector_id", how="left").select(
        "connector_id",
        pl.coalesce("interval_s", "_batch_interval", pl.lit(86400.0)).alias("interval_s"),
    )


def expected_resources(syncs: pl.DataFrame, features: pl.DataFrame) -> pl.DataFrame:
    """``connector_id, resource``: the resource types whose count a connector reported
    about as often as it synced without failing (``_MIN_RESOURCE_SHARE`` of those syncs,
    with 10 or more of them); rules flag a type of these gone missing."""
    ok = (
        syncs.filter(pl.col("status") != "failed")
        .group_by("connector_id")
        .agg(pl.len().alias("n_ok"))
    )
    seen = as_strings(
        features.select("connector_id", "resource", "kind")
        .filter(pl.col("kind") == "count")
        .group_by("connector_id", "resource")
        .agg(pl.len().alias("n_seen"))
    )
    return (
        seen.join(ok, on="connector_id")
        .filter((pl.col("n_seen") >= _MIN_RESOURCE_SHARE * pl.col("n_ok")) & (pl.col("n_ok") >= 10))
        .select("connector_id", "resource")
        .sort("connector_id", "resource")
    )


# The columns of largest_losses (a model file without them reads an empty frame of these).
LARGEST_LOSSES_SCHEMA = {
    "connector_id": pl.String,
    "resource": pl.String,
    "largest_loss": pl.Float64,
    "sharp_loss_rate": pl.Float64,
}


def largest_losses(features: pl.DataFrame, own: pl.DataFrame) -> pl.DataFrame:
    """Per connector with a model of its own and resource type: the largest share of its
    records lost in one sync in history (0 when it never shrank), and the share of its
    syncs that lost ``MIN_PAGE_LOSS_SHARE`` or more (``truncated_listing`` reads it)."""
    # Only the columns and rows it reads are copied: filtered by connector alone, the
    # whole frame was copied, every column of every history row.
    counts = features.select("connector_id", "resource", "kind", "value", "reference").filter(
        (pl.col("kind") == "count") & pl.col("connector_id").is_in(own["connector_id"].implode())
    )
    return (
        count_losses(counts)
        .group_by("connector_id", "resource")
        .agg(
            pl.col("loss").max().clip(lower_bound=0.0).alias("largest_loss"),
            (pl.col("loss") >= MIN_PAGE_LOSS_SHARE).mean().alias("sharp_loss_rate"),
        )
        .cast(LARGEST_LOSSES_SCHEMA)
        .sort("connector_id", "resource")
    )
