"""Deterministic rules: hard evidence that a sync cannot be trusted. They always win.

Each rule is a vectorised predicate over the batch. A hit names the rule and says what it
saw. Rules see the reference sync (see :mod:`detector.features`), so "count to zero" means
the count fell to zero from a non-zero reference, and "field entirely null" means a field
that was populated now is null on every record.
"""

from __future__ import annotations

import polars as pl

from detector.frame import (
    FRESHNESS_MEASURE,
    REPEAT_MEASURES,
    RESOURCE_TYPES_MEASURE,
    UNCHANGED_MEASURE,
    UNCHANGED_WITH_METRICS_MEASURE,
    resource_type_bit,
)

__all__ = ["RULES", "rule_hits", "count_losses", "OVERDUE_FACTOR", "MIN_RECORDS",
           "MIN_POPULATED", "MAX_PARTIAL_RATE", "MIN_REPEATS", "MAX_REPEAT_RATE", "REPEAT_RATES",
           "MIN_LOSS_SHARE",
           "LOSS_FACTOR", "MIN_LOSS_RECORDS", "PAGE_MULTIPLE", "MIN_PAGE_LOSS_SHARE",
           "MAX_SHARED_LOSS"]

#: A sync is overdue when the data it replaces is this many usual intervals old (and at
#: least an hour late), e.g. an hourly connector that skipped two syncs, and this many
#: times as old as the sync before's was (a schedule that moved is overdue once).
OVERDUE_FACTOR = 3.0

#: Rules on counts and fields need this many records at the reference sync to speak.
MIN_RECORDS = 5
#: Records expected to carry a field before all-null on it is a rule hit (exp(-20) ~ 2e-9).
MIN_POPULATED = 20
#: Connectors that report ``partial`` on more syncs than this, or than their budget's
#: false-pause rate allows (the rule alone would spend more), have it judged by the model.
MAX_PARTIAL_RATE = 0.01
#: A resource type losing at least this share of its records in one sync ("the count
#: halved", the fixed safeguard products ship) ...
MIN_LOSS_SHARE = 0.5
#: ... and this many times the largest share the connector lost in one sync in its
#: history: a small app whose teams come and go in bursts of a third is not paused for
#: the next burst, and a directory that never lost 5 % is paused when it halves.
LOSS_FACTOR = 1.5
#: Records a type needs at the sync before for that rule to speak: two of three roles or
#: entitlements gone at once, where the connector never lost a third, is a lost page of a
#: small type, not chance.
MIN_LOSS_RECORDS = 3
#: Listing APIs return records a page at a time (100 to 2,000 a page: GitHub 100, Okta
#: 200, Google 500, Salesforce 2,000) and cap results (1,000, 10,000, 50,000), so a listing
#: cut short returns whole pages: a type that loses ``MIN_PAGE_LOSS_SHARE`` or more of its
#: records and lands on an exact multiple of ``PAGE_MULTIPLE`` is a truncated listing. By
#: chance about one such loss in a hundred lands there, so the loss must be the type's
#: own: no other type of the sync (not itself on whole pages) lost ``MAX_SHARED_LOSS`` or
#: more (a team leaving takes its users and their grants: the model judges that). On
#: simulated fleets: 1 normal sync in 180,000, and every truncation (94 of 94). A type
#: that loses that much often in normal life (a count swinging over the day) would land
#: there by chance more often than its budget allows; the model judges its losses.
PAGE_MULTIPLE = 100
MIN_PAGE_LOSS_SHARE = 0.05
MAX_SHARED_LOSS = 0.025
#: Syncs in a row returning exactly the data of the sync before (no count, null rate or
#: duplicate moved, no churn) before a connector that rarely repeats itself is paused. Two:
#: one repeat can be a quiet hour, a second in a row from a source that changes on nearly
#: every sync is a stuck cache or a stale snapshot.
MIN_REPEATS = 2
#: Connectors whose history repeats itself more often than this (repeated syncs per sync)
#: have their runs judged by the model (a quiet app may not change for days).
MAX_REPEAT_RATE = 0.01
#: The column of ``rare_event_rates`` that holds each run's learned rate of repeats.
REPEAT_RATES = {
    UNCHANGED_MEASURE: "repeat_rate",
    UNCHANGED_WITH_METRICS_MEASURE: "metrics_repeat_rate",
}

RULES = {
    "sync_failed": "the connector reported the sync as failed",
    "auth_failure": "the connector could not authenticate",
    "count_to_zero": "a resource type that had records returned none",
    "resource_missing": "a resource type the connector always reports is missing",
    "field_entirely_null": "a field that was populated is null on every record",
    "overdue_sync": "the sync arrived long after the connector's usual interval",
    "partial_sync": "the connector reported its data as partial, which it rarely does",
    "loss_beyond_history": "a resource type lost half or more of its records at once, far "
    "more than it ever lost in one sync before",
    "truncated_listing": "a resource type lost records and landed on a whole number of "
    "pages, as a listing cut short does",
    "repeated_snapshot": "the connector returned exactly its previous data again, which it "
    "rarely does",
}


def _fmt(x: pl.Expr) -> pl.Expr:
    return x.cast(pl.Int64).cast(pl.String)


def _reference_of(features: pl.DataFrame, measure: str, name: str) -> pl.DataFrame:
    """``row`` and, as ``name``, the reference sync's value of a per-sync ``measure``."""
    return features.filter(pl.col("measure") == measure).select(
        "row", pl.col("reference").alias(name)
    )


def _rarely_seen(
    hits: pl.DataFrame, rare: pl.DataFrame, rule: str, detail: pl.Expr
) -> pl.DataFrame:
    """Rows of ``hits`` (each an event) whose connector is in ``rare`` (its learned rate of
    the event low enough for a rule), as rule hits."""
    return hits.join(rare, on="connector_id", how="inner").select(
        "row", pl.lit(rule).alias("rule"), detail.alias("detail")
    )


def _repeat_hits(features: pl.DataFrame, rare_event_rates: pl.DataFrame) -> pl.DataFrame:
    """``repeated_snapshot`` hits: a run of repeated data (:data:`REPEAT_MEASURES`) of
    ``MIN_REPEATS`` or more on a connector that rarely repeats itself so. One hit per
    sync, the resources' run first where both runs speak."""
    rates = rare_event_rates.unpivot(
        on=list(REPEAT_RATES.values()),
        index="connector_id",
        variable_name="measure",
        value_name="_rate",
    ).select(
        "connector_id",
        pl.col("measure").replace_strict(list(REPEAT_RATES.values()), list(REPEAT_RATES)),
        pl.col("_rate").alias("repeat_rate"),
    )
    with_metrics = pl.col("measure") == UNCHANGED_WITH_METRICS_MEASURE
    return (
        features.filter(
            pl.col("measure").is_in(list(REPEAT_MEASURES)) & (pl.col("value") >= MIN_REPEATS)
        )
        .join(rates.filter(pl.col("repeat_rate") < MAX_REPEAT_RATE), on=["connector_id", "measure"])
        .sort("row", with_metrics)
        .unique("row", keep="first", maintain_order=True)
        .select(
            "row",
            pl.lit("repeated_snapshot").alias("rule"),
            pl.format(
                "the data of the sync before returned unchanged {} syncs in a row (no count, "
                "null rate or duplicate moved{}, no churn); this connector repeats itself so "
                "on {}% of syncs",
                _fmt(pl.col("value")),
                pl.when(with_metrics).then(pl.lit(", nor any metric")).otherwise(pl.lit("")),
                (pl.col("repeat_rate") * 100).round(2),
            ).alias("detail"),
        )
    )


def _seldom_sharp(
    losses: pl.DataFrame, largest_losses: pl.DataFrame | None, rates: pl.DataFrame | None
) -> pl.DataFrame:
    """``losses`` of types whose sharp losses in history (``sharp_loss_rate``: the share of
    syncs losing ``MIN_PAGE_LOSS_SHARE`` or more) land on whole pages by chance no more
    often than the connector's budget allows (``alpha``, from ``rates``). Types without
    such history keep the rule."""
    if largest_losses is None or rates is None or "sharp_loss_rate" not in largest_losses.columns:
        return losses
    chance = pl.col("sharp_loss_rate") / PAGE_MULTIPLE
    return (
        losses.join(
            largest_losses.select("connector_id", "resource", "sharp_loss_rate"),
            on=["connector_id", "resource"],
            how="left",
        )
        .join(rates.select("connector_id", "alpha"), on="connector_id", how="left")
        .filter(chance.is_null() | pl.col("alpha").is_null() | (chance <= pl.col("alpha")))
    )


def _loss_hits(losses: pl.DataFrame, rule: str, why: str, *why_args: pl.Expr) -> pl.DataFrame:
    """Rows of ``losses`` (see :func:`count_losses`) as hits of ``rule``, the detail saying
    what fell, from what to what, and ``why`` (a format string of ``why_args``)."""
    return losses.select(
        "row",
        pl.lit(rule).alias("rule"),
        pl.format(
            "{} fell from {} to {} records ({}% lost)" + why,
            pl.col("resource"),
            _fmt(pl.col("reference")),
            _fmt(pl.col("value")),
            (pl.col("loss") * 100).round(0).cast(pl.Int64),
            *why_args,
        ).alias("detail"),
    )


def count_losses(features: pl.DataFrame) -> pl.DataFrame:
    """The count rows ``loss_beyond_history`` speaks on (``MIN_LOSS_RECORDS`` at the sync
    before), with ``loss``: the share of the records lost (negative for a gain). Fitting
    learns each connector's largest loss from the same rows."""
    return features.filter(
        (pl.col("kind") == "count") & (pl.col("reference") >= MIN_LOSS_RECORDS)
    ).with_columns((1.0 - pl.col("value") / pl.col("reference")).alias("loss"))


def rule_hits(
    syncs: pl.DataFrame,
    features: pl.DataFrame,
    *,
    intervals: pl.DataFrame,
    expected_resources: pl.DataFrame | None = None,
    rare_event_rates: pl.DataFrame | None = None,
    largest_losses: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One row per rule hit: ``row, rule, detail``.

    Parameters
    ----------
    syncs, features : pl.DataFrame
        From :func:`detector.features.build_features`.
    intervals : pl.DataFrame
        ``connector_id, interval_s``.
    expected_resources : pl.DataFrame, optional
        ``connector_id, resource`` the connector always reported in history.
    rare_event_rates : pl.DataFrame, optional
        ``connector_id, partial_rate, alpha`` and the columns of :data:`REPEAT_RATES`:
        how often the connector said ``partial``, and repeated its previous data (its
        resources; with its metrics), per sync in history, and its budget's per-sync
        false-pause rate.
    largest_losses : pl.DataFrame, optional
        ``connector_id, resource, largest_loss``: the largest share of a resource type's
        records the connector lost in one sync in history.
    """
    status_hits = pl.concat(
        [
            syncs.filter(pl.col("status") == "failed").select(
                "row",
                pl.lit("sync_failed").alias("rule"),
                pl.format(
                    "status failed (error_class {})", pl.col("error_class").fill_null("none")
                ).alias("detail"),
            ),
            syncs.filter(pl.col("error_class") == "auth").select(
                "row",
                pl.lit("auth_failure").alias("rule"),
                pl.format("error_class auth with status {}", pl.col("status")).alias("detail"),
            ),
        ]
    )
    zero = features.filter(
        (pl.col("kind") == "count") & (pl.col("value") == 0) & (pl.col("reference") >= MIN_RECORDS)
    ).select(
        "row",
        pl.lit("count_to_zero").alias("rule"),
        pl.format(
            "{} returned 0 records (previously {})", pl.col("resource"), _fmt(pl.col("reference"))
        ).alias("detail"),
    )
    # Only a field that was really populated: if k records were expected to carry it,
    # chance alone blanks them all about exp(-k) of the time (a 130-record set whose field
    # is 96% null goes all-null every 200 syncs). The model judges the rarer fields.
    size = pl.min_horizontal(pl.col("exposure").fill_null(0.0), pl.col("current_size").fill_null(0))
    populated = (1.0 - pl.col("reference")) * size
    all_null = features.filter(
        (pl.col("kind") == "rate")
        & (pl.col("value") >= 1.0)
        & (pl.col("reference") < 1.0)
        & (populated >= MIN_POPULATED)
    ).select(
        "row",
        pl.lit("field_entirely_null").alias("rule"),
        pl.format(
            "{} is null on all records (previously {}% null)",
            pl.col("measure").str.replace(".null_rate.", ".", literal=True),
            (pl.col("reference") * 100).round(1),
        ).alias("detail"),
    )
    # Late against the usual interval and against the sync before (whose freshness is the
    # reference): a connector whose schedule moved from hourly to every four hours is
    # overdue once, not on every sync until the model is retrained.
    late = (
        syncs.join(intervals, on="connector_id", how="inner")
        .join(_reference_of(features, FRESHNESS_MEASURE, "_fresh_before"), on="row", how="left")
        .filter(
            (pl.col("fresh_gap_s") > OVERDUE_FACTOR * pl.col("interval_s"))
            & (pl.col("fresh_gap_s") - pl.col("interval_s") > 3600.0)
            & (
                pl.col("_fresh_before").is_null()
                | (pl.col("fresh_gap_s") > OVERDUE_FACTOR * pl.col("_fresh_before"))
            )
        )
        .select(
            "row",
            pl.lit("overdue_sync").alias("rule"),
            pl.format(
                "{} h since the previous successful sync (usual interval {} h)",
                (pl.col("fresh_gap_s") / 3600).round(1),
                (pl.col("interval_s") / 3600).round(1),
            ).alias("detail"),
        )
    )
    losses = count_losses(features)
    on_pages = (pl.col("value") >= PAGE_MULTIPLE) & (pl.col("value") % PAGE_MULTIPLE == 0)
    shared = losses.group_by("row").agg(
        pl.col("loss").filter(~on_pages).max().fill_null(0.0).alias("_shared_loss")
    )
    truncated = (
        losses.filter(on_pages & (pl.col("loss") >= MIN_PAGE_LOSS_SHARE))
        .join(shared, on="row", how="left")
        .filter(pl.col("_shared_loss") < MAX_SHARED_LOSS)
        .pipe(_seldom_sharp, largest_losses, rare_event_rates)
    ).pipe(
        _loss_hits,
        "truncated_listing",
        ", an exact multiple of {}: a listing cut short at a page or result limit",
        pl.lit(PAGE_MULTIPLE),
    )
    parts = [status_hits, zero, all_null, late, truncated]
    if rare_event_rates is not None:
        # The connector itself says the data is incomplete. Some connectors say so
        # routinely (skipped objects they may not read); those are left to the model.
        parts.append(
            _rarely_seen(
                syncs.filter(pl.col("status") == "partial"),
                rare_event_rates.filter(
                    (pl.col("partial_rate") < MAX_PARTIAL_RATE)
                    & (pl.col("partial_rate") <= pl.col("alpha"))
                ),
                "partial_sync",
                pl.format(
                    "status partial (error_class {}); this connector's usual partial rate {}%",
                    pl.col("error_class").fill_null("none"),
                    (pl.col("partial_rate") * 100).round(2),
                ),
            )
        )
        parts.append(_repeat_hits(features, rare_event_rates))
    if largest_losses is not None and largest_losses.height:
        share = pl.col("loss")
        parts.append(
            losses.filter(pl.col("value") > 0)  # none left is count_to_zero
            .join(largest_losses, on=["connector_id", "resource"], how="inner")
            .filter((share >= MIN_LOSS_SHARE) & (share >= LOSS_FACTOR * pl.col("largest_loss")))
            .pipe(
                _loss_hits,
                "loss_beyond_history",
                "; the most it lost in one sync in history was {}%",
                (pl.col("largest_loss") * 100).round(0).cast(pl.Int64),
            )
        )
    if expected_resources is not None and expected_resources.height:
        reported = features.filter(pl.col("kind") == "count").select("row", "resource")
        want = (
            syncs.filter(pl.col("status") != "failed")
            .select("row", "connector_id")
            .join(expected_resources, on="connector_id", how="inner")
        )
        missing = want.join(reported, on=["row", "resource"], how="anti")
        # Only a type its reference sync reported (the last one not paused, or while
        # paused the one before): a type dropped for good pauses once, and a person who
        # resumes accepts its absence (see RESOURCE_TYPES_MEASURE).
        bit = resource_type_bit(missing["resource"])
        types_before = pl.col("_types_before").cast(pl.Int64)
        had_it = (types_before // pl.lit(2, dtype=pl.Int64).pow(bit)) % 2 == 1
        before = _reference_of(features, RESOURCE_TYPES_MEASURE, "_types_before")
        missing = (
            missing.join(before, on="row", how="left")
            .filter(pl.col("_types_before").is_null() | had_it)
            .select(
                "row",
                pl.lit("resource_missing").alias("rule"),
                pl.format("{} is missing from the sync", pl.col("resource")).alias("detail"),
            )
        )
        parts.append(missing)
    return pl.concat(parts).unique(["row", "rule", "detail"], maintain_order=True)
