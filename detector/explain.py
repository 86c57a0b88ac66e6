"""Explanations: the reasons behind a pause or review, most important first.

A reason names the metric, what was observed, what was expected at this time of week,
the expected range, and how far outside it the observation is (in scales, signed). The
text is meant to be read in a SOAR ticket by someone who has never opened a notebook.
"""

from __future__ import annotations

import polars as pl

__all__ = ["reasons_frame", "with_reasons", "REASON_Z", "MAX_REASONS", "PERFORMANCE_MEASURES"]

#: Residuals at least this far out are reasons.
REASON_Z = 3.0
MAX_REASONS = 5
#: Measures that say the connector was slow, not that its data is wrong.
PERFORMANCE_MEASURES = ("api.latency_p50_ms", "api.latency_p95_ms", "sync.duration_s")


def _num(x: pl.Expr) -> pl.Expr:
    """Whole numbers from 100 up, four significant digits below: a null rate of 0.00001
    (10 of a million records) reads as that, not as 0.0."""
    return (
        pl.when(x.abs() >= 100)
        .then(x.round(0).cast(pl.Int64).cast(pl.String))
        .otherwise(x.round_sig_figs(4).cast(pl.String))
    )


def reasons_frame(resid: pl.DataFrame, rows: pl.Series | None = None) -> pl.DataFrame:
    """Ranked reasons per sync row (top :data:`MAX_REASONS` with ``|z| >= REASON_Z``).

    ``resid`` comes from :meth:`SeasonalBaseline.residuals` followed by
    :meth:`SeasonalBaseline.expected_raw`; ``rows`` limits it to the flagged syncs.
    Returns ``row, rank, metric, observed, expected, range_lo, range_hi, distance,
    description``.
    """
    picked = resid.filter(pl.col("z").abs() >= REASON_Z)
    if rows is not None:
        picked = picked.filter(pl.col("row").is_in(rows.implode()))
    # Equal distances (clipped or twin fields) rank by metric name, so the order does not
    # depend on how the batch was split or which rows came first.
    picked = picked.with_columns(pl.col("z").abs().alias("_absz")).sort(
        ["row", "_absz", "measure"], descending=[False, True, False], maintain_order=True
    )
    picked = picked.with_columns(pl.int_range(pl.len()).over("row").alias("rank")).filter(
        pl.col("rank") < MAX_REASONS
    )
    direction = pl.when(pl.col("z") > 0).then(pl.lit("above")).otherwise(pl.lit("below"))
    description = pl.format(
        "{} is {} (expected {}, usual range {} to {}): {} scales {} expected",
        pl.col("measure"),
        _num(pl.col("value")),
        _num(pl.col("expected_raw")),
        _num(pl.col("range_lo")),
        _num(pl.col("range_hi")),
        pl.col("z").abs().round(1).cast(pl.String),
        direction,
    )
    return picked.select(
        "row",
        "rank",
        pl.col("measure").alias("metric"),
        pl.col("value").alias("observed"),
        pl.col("expected_raw").alias("expected"),
        "range_lo",
        "range_hi",
        pl.col("z").round(2).alias("distance"),
        description.alias("description"),
    )


def with_reasons(
    results: pl.DataFrame,
    reasons: pl.DataFrame,
    rule_hits: pl.DataFrame,
    *fields: str | pl.Expr,
) -> pl.DataFrame:
    """``results`` (one row per sync) with its ``reasons`` (structs of ``fields``, in rank
    order) and ``rule_hits`` (structs of ``rule, detail``) as lists, empty where none.

    ``reasons`` and ``rule_hits`` are long frames keyed by ``sync_id``, as
    :class:`detector.model.ScoreResult` holds them. A rule's pause has no model reasons:
    the rule that fired is what a reader acts on, so both go on every line.
    """
    lists = [
        frame.group_by("sync_id", maintain_order=True).agg(pl.struct(*columns).alias(name))
        for frame, columns, name in (
            (reasons, fields, "reasons"),
            (rule_hits, ("rule", "detail"), "rule_hits"),
        )
    ]
    for grouped in lists:
        results = results.join(grouped, on="sync_id", how="left", maintain_order="left")
    return results.with_columns(pl.col("reasons").fill_null([]), pl.col("rule_hits").fill_null([]))
