"""Model groups: which model judges a connector, which connectors each pooled model is
fitted on, and the layout of each group's residual vector.

A connector with history enough has a model of its own; the others are judged by their
kind's pooled model, or the fleet's (``"*"``) for a kind never seen in training. A large
kind or fleet is represented by a stable sample of its connectors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import polars as pl

from detector.history import as_strings

__all__ = [
    "IN_FLEET_SAMPLE",
    "IN_KIND_SAMPLE",
    "POOLED_ALL",
    "group_layouts",
    "pooled_group",
    "pooled_sample",
]


POOLED_ALL = "*"  # the pooled model for connector kinds never seen in training


_MIN_SERIES_SHARE = 0.5


def pooled_group(kinds: Iterable[str]) -> pl.Expr:
    """The pooled model that judges a connector without a model of its own: its kind's
    when ``kinds`` has one, else the fleet's (``"*"``)."""
    return (
        pl.when(pl.col("connector_kind").is_in(list(kinds)))
        .then(pl.col("connector_kind"))
        .otherwise(pl.lit(POOLED_ALL))
    )


# Rows of the connectors a kind's pooled model is fitted on (``_pool``: see pooled_sample).
IN_KIND_SAMPLE = pl.col("_pool") >= 1


# Rows of the connectors the fleet's pooled model (``"*"``) is fitted on.
IN_FLEET_SAMPLE = pl.col("_pool") == 2


def pooled_sample(intervals: pl.DataFrame, n_max: int | None) -> pl.DataFrame:
    """``connector_id, pool``: 2 for the connectors the fleet's pooled model is fitted on
    (and their kind's), 1 for those only their kind's is, 0 for neither.

    A group of at most ``n_max`` connectors (or any, with ``None``) keeps them all; a
    larger one the ``n_max`` with the smallest BLAKE2b hash of their id: the same
    connectors whatever the order, the machine or the polars version. The fleet's sample
    is then within its connectors' kinds' samples (its smallest hashes are their kinds'
    smallest too), so the kinds' rows hold every pooled row.
    """
    ids = intervals["connector_id"].to_list()
    # One hash per connector (not per row): a fleet has thousands at most.
    digest = [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest()) for i in ids]
    ranked = intervals.select("connector_id", "connector_kind").with_columns(
        pl.Series("_hash", digest, dtype=pl.UInt64)
    )
    limit = n_max if n_max is not None else ranked.height
    in_kind = pl.col("_hash").rank("ordinal").over("connector_kind") <= limit
    in_fleet = pl.col("_hash").rank("ordinal") <= limit
    return ranked.select(
        "connector_id", (in_kind.cast(pl.UInt8) + in_fleet.cast(pl.UInt8)).alias("pool")
    )


def group_layouts(
    features: pl.DataFrame, syncs: pl.DataFrame, own: pl.DataFrame, sample: pl.DataFrame
) -> pl.DataFrame:
    """Every model group's :func:`_layout`: the connectors with a model of their own
    (``own``), then the pooled groups sorted (each kind's sample of connectors, and the
    fleet's ``"*"``; ``sample``: ``connector_id, connector_kind, _pool``, see
    :func:`pooled_sample`).

    The long frame is counted once, per connector and measure: a sync is one connector's,
    so a pooled group's syncs that report a measure are the sum over its connectors.
    Counted from the pooled rows themselves, each group set copied its sampled rows (most
    of a large fleet's frame, the fit's largest temporary) and grouped them again.
    """
    keys = ["connector_id", "measure"]
    # A sync reports a measure once: in (row, measure) order (as build_features gives
    # them) without a repeated pair, counting rows counts syncs, and a plain count takes
    # next to no memory where counting distinct rows per group held 2 GiB at 1,000
    # connectors.
    row, measure = pl.col("row"), pl.col("measure")
    ascending = (row > row.shift()) | ((row == row.shift()) & (measure > measure.shift()))
    if features.select(ascending.fill_null(True).all()).item():
        present = features.group_by(keys).len("k")
    else:
        present = features.group_by(keys).agg(pl.col("row").n_unique().alias("k"))
    present = as_strings(present)
    usable = (
        syncs.filter(pl.col("status") != "failed")
        .select("connector_id")
        .join(sample, on="connector_id", how="left")
    )
    own_ids = own["connector_id"].implode()
    per_connector = _layout(
        present.filter(pl.col("connector_id").is_in(own_ids)), usable, "connector_id"
    )
    pooled = present.join(sample, on="connector_id")
    fleet = pl.lit(POOLED_ALL).alias("connector_kind")
    pooled_layout = pl.concat(
        [
            _layout(
                pooled.filter(IN_KIND_SAMPLE), usable.filter(IN_KIND_SAMPLE), "connector_kind"
            ),
            _layout(
                pooled.filter(IN_FLEET_SAMPLE).with_columns(fleet),
                usable.filter(IN_FLEET_SAMPLE).with_columns(fleet),
                "connector_kind",
            ),
        ]
    ).sort("group", "measure")
    return pl.concat([per_connector, pooled_layout])


def _layout(present: pl.DataFrame, usable: pl.DataFrame, key: str) -> pl.DataFrame:
    """Measures present in at least half of a group's usable syncs, numbered as vector
    columns. ``present``: ``key, measure, k`` (syncs reporting the measure, in parts of a
    group); ``usable``: ``key``, one row per sync that did not fail."""
    n = usable.group_by(key).agg(pl.len().alias("n"))
    present = present.group_by(key, "measure").agg(pl.col("k").sum())
    kept = present.join(n, on=key).filter(pl.col("k") >= _MIN_SERIES_SHARE * pl.col("n"))
    return (
        kept.sort(key, "measure")
        .with_columns(pl.int_range(pl.len()).over(key).alias("col"))
        .select(pl.col(key).alias("group"), "measure", "col")
    )
