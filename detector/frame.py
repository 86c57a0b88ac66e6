"""Sync records (nested JSON) -> flat polars frames.

Two shapes come out of a batch of records:

* ``syncs``: one row per sync (identity, timing, status, duration).
* ``measures``: one row per (sync, measure): every number a sync reports, long format,
  so that the rest of the pipeline is vectorised over connectors and measures at once
  no matter how many resource types or fields each connector has.

Measure names are ``<resource>.<stat>`` (``user.count``, ``user.removed``),
``<resource>.null_rate.<field>``, ``api.<name>``, ``sync.duration_s`` and ``metric.<name>``.
The nested JSON is unpacked by polars (Rust), never by a per-record Python loop.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

__all__ = [
    "MEASURE_KINDS",
    "RARE_SYNC_EVENTS",
    "MAX_UNCHANGED_RUN",
    "UNCHANGED_MEASURE",
    "UNCHANGED_WITH_METRICS_MEASURE",
    "REPEAT_MEASURES",
    "FRESHNESS_MEASURE",
    "UNEXPLAINED_STAT",
    "RESOURCE_TYPES_MEASURE",
    "ACCEPTED_MEASURE",
    "UNMODELLED_MEASURES",
    "resource_type_bit",
    "stat_suffix",
    "is_stat",
    "measure_kind",
    "measure_kind_expr",
    "to_struct_frame",
    "in_sync_order",
    "syncs_frame",
    "measures_frame",
]

RESOURCE_STATS = ("count", "added", "removed", "modified", "duplicates")
#: A resource type's derived measure: by how many records its count moved beyond what its
#: churn says (see :func:`detector.features.build_features`); named as a stat is.
UNEXPLAINED_STAT = "unexplained"
API_FIELDS = ("requests", "errors", "retries", "latency_p50_ms", "latency_p95_ms")

#: How each measure is modelled (see detector.features):
#: ``count`` a resource size, judged by its log change against a reference sync;
#: ``events`` a count of events in the interval (churn, duplicates, errors), judged with a
#: negative binomial whose mean scales with size and time of week; ``rate`` a proportion in
#: [0, 1] judged on the logit scale; ``log`` a positive magnitude judged on the log scale;
#: ``level`` any other number.
MEASURE_KINDS = ("count", "events", "rate", "log", "level")

_SYNC_COLUMNS = {
    "sync_id": pl.String,
    "connector_id": pl.String,
    "connector_kind": pl.String,
    "started_at": pl.String,
    "finished_at": pl.String,
    "status": pl.String,
    "error_class": pl.String,
}


#: Above this many (sync x measure) cells, measures_frame unpivots one connector kind at a
#: time (training on a large fleet); below it, all at once (scoring chunks).
_ONE_UNPIVOT_CELLS = 3_000_000

#: The start of a sync less the finish of the last successful one: how old the data it
#: replaces is.
FRESHNESS_MEASURE = "sync.freshness"

#: Syncs in a row, up to and including this one, that returned exactly the data of the sync
#: before: every count, duplicate count and null rate unchanged and no churn reported. A
#: stuck cache or a stale snapshot repeats itself; a live source rarely does for long.
UNCHANGED_MEASURE = "sync.unchanged_syncs"
#: The same run where the sync's custom metrics repeated too (syncs with metrics only). A
#: stale snapshot repeats the metrics it derives from its data; a quiet app whose count
#: often stands still repeats its resources alone on many syncs, its metrics seldom. Live
#: metrics (active sessions) move on while the data is stale: the run above stays for them.
UNCHANGED_WITH_METRICS_MEASURE = "sync.unchanged_syncs_with_metrics"
#: Every run of repeated data, the resources' first.
REPEAT_MEASURES = (UNCHANGED_MEASURE, UNCHANGED_WITH_METRICS_MEASURE)
#: Runs are counted up to here: a source that never changes (a static resource beside a
#: custom metric) then sits at a constant, instead of a count that grows past anything its
#: history saw. A day of hourly syncs; a stuck cache is flagged long before.
MAX_UNCHANGED_RUN = 24

#: The resource types a sync reported, as a bit mask (see :func:`resource_type_bit`):
#: carried in the scoring state like any measure, so the ``resource_missing`` rule can ask
#: whether a type missing now was there at the reference sync (a type dropped for good
#: pauses once, like a count that falls to zero). No model sees it.
RESOURCE_TYPES_MEASURE = "sync.resource_types"
#: A state row (value 1) that ``syncguard resume`` leaves for the connector: the values a
#: person accepted are its reference from then on, and its syncs are judged as a paused
#: connector's are (against the sync before as well as the learned level), without the
#: hold, so an accepted shift in a null rate, a metric or latency does not pause again.
ACCEPTED_MEASURE = "sync.accepted"
#: Measures the features carry for rules and state only: baselines and forests leave them.
UNMODELLED_MEASURES = (RESOURCE_TYPES_MEASURE,)
_TYPE_BITS = 52  # a float64 holds every integer below 2 ** 53 exactly


def resource_type_bit(names: pl.Series) -> pl.Expr:
    """The ``resource`` column's bit in :data:`RESOURCE_TYPES_MEASURE`'s mask, in a frame
    whose types are among ``names``: the name's CRC-32 modulo 52, the same in every
    process and version (a saved state outlives both), worked out once per distinct
    name. Two types sharing a bit only make the rule fire as it would without the mask."""
    names = names.unique().drop_nulls()
    if not len(names):
        return pl.lit(None, dtype=pl.Int64)
    bits = [zlib.crc32(name.encode()) % _TYPE_BITS for name in names.to_list()]
    return pl.col("resource").replace_strict(names, bits, return_dtype=pl.Int64)


#: Per-sync measures that are counts of events (one exposure per sync).
_EVENT_MEASURES = ("api.errors", "api.retries", "sync.partial", *REPEAT_MEASURES)

#: Per-sync events a healthy connector may never show in its history (see the baseline's
#: floor for their expected count).
RARE_SYNC_EVENTS = ("sync.partial", *REPEAT_MEASURES)


def stat_suffix(stat: str) -> str:
    """How the name of a resource type's ``stat`` measure ends: ``user.removed`` in
    ``.removed``. Names are built and told apart by this one rule."""
    return f".{stat}"


def is_stat(stat: str, measure: pl.Expr | None = None) -> pl.Expr:
    """Whether ``measure`` (default: the ``measure`` column) is a resource type's ``stat``
    (:data:`RESOURCE_STATS`, or :data:`UNEXPLAINED_STAT`)."""
    return (pl.col("measure") if measure is None else measure).str.ends_with(stat_suffix(stat))


def measure_kind(measure: str) -> str:
    """Return the modelling kind of a measure name (one of :data:`MEASURE_KINDS`)."""
    if measure.startswith("metric."):
        return "level"
    if measure in _EVENT_MEASURES:
        return "events"
    if measure.startswith("api."):
        return "log"
    if measure == "sync.duration_s" or measure == FRESHNESS_MEASURE:
        return "log"
    if ".null_rate." in measure:
        return "rate"
    stat = measure.rsplit(".", 1)[-1]
    return "count" if stat == "count" else "events"


def measure_kind_expr(measure: pl.Expr) -> pl.Expr:
    """Vectorised :func:`measure_kind` (kept in step with it by tests)."""
    return (
        pl.when(measure.str.starts_with("metric."))
        .then(pl.lit("level"))
        .when(measure.is_in(list(_EVENT_MEASURES)))
        .then(pl.lit("events"))
        .when(
            measure.str.starts_with("api.") | measure.is_in(["sync.duration_s", FRESHNESS_MEASURE])
        )
        .then(pl.lit("log"))
        .when(measure.str.contains(".null_rate.", literal=True))
        .then(pl.lit("rate"))
        .when(is_stat("count", measure))
        .then(pl.lit("count"))
        .otherwise(pl.lit("events"))
    )


def to_struct_frame(
    records: Iterable[Mapping[str, Any]] | pl.DataFrame | pl.Series,
) -> pl.DataFrame:
    """Return a frame with one column per top-level record key (nested keys as structs).

    Accepts parsed records, a frame that already has that shape, a frame from the store
    with a ``record`` JSON text column, or a series of JSON texts.
    """
    if isinstance(records, pl.Series):
        return records.str.json_decode(infer_schema_length=None).struct.unnest()
    if isinstance(records, pl.DataFrame):
        if "record" in records.columns and "resources" not in records.columns:
            return to_struct_frame(records["record"])
        return records
    rows = list(records)
    if not rows:
        return pl.DataFrame(schema=_SYNC_COLUMNS)
    return pl.from_dicts(rows, infer_schema_length=None)


def in_sync_order(wide: pl.DataFrame) -> pl.DataFrame:
    """``wide`` (from :func:`to_struct_frame`) by connector, start (UTC) and sync_id.

    A fitted model then depends on which syncs it is given, not on their order: row
    numbers pick each isolation forest's sample, and sums of floats round by order.
    A frame already in that order (the store reads history so) is returned as it is.
    """
    keys = [c for c in ("connector_id", "started_at", "sync_id") if c in wide.columns]
    if wide.height < 2 or not keys:
        return wide
    by = [_timestamp(c) if c == "started_at" else pl.col(c) for c in keys]
    order = wide.select(pl.arg_sort_by(by, nulls_last=True)).to_series().to_numpy()
    if (order[1:] > order[:-1]).all():
        return wide
    return wide[order]


def _timestamp(column: str) -> pl.Expr:
    return (
        pl.col(column).str.to_datetime(time_zone="UTC", time_unit="us", strict=False).alias(column)
    )


def syncs_frame(wide: pl.DataFrame) -> pl.DataFrame:
    """One row per sync: id, connector, kind, times (UTC), status, error class, duration."""
    for name, dtype in _SYNC_COLUMNS.items():
        if name not in wide.columns:
            wide = wide.with_columns(pl.lit(None, dtype=dtype).alias(name))
    out = wide.select(
        pl.col("sync_id").cast(pl.String),
        pl.col("connector_id").cast(pl.String),
        pl.col("connector_kind").cast(pl.String),
        _timestamp("started_at"),
        _timestamp("finished_at"),
        pl.col("status").cast(pl.String),
        pl.col("error_class").cast(pl.String),
    )
    return out.with_columns(
        # One kind per connector: connector_kind is optional, so a batch may carry it on
        # some syncs of a connector and not others (or a connector may change kind). The
        # model joins per-connector tables on (connector_id, connector_kind); two kinds
        # would give a sync two rows. The kind of its latest sync that names one wins.
        pl.col("connector_kind")
        .sort_by("started_at")
        .drop_nulls()
        .last()
        .over("connector_id")
        .fill_null("unknown"),
        ((pl.col("finished_at") - pl.col("started_at")).dt.total_microseconds() / 1e6).alias(
            "duration_s"
        ),
    )


def _struct_fields(frame: pl.DataFrame, column: str) -> list[str]:
    dtype = frame.schema.get(column)
    return [f.name for f in dtype.fields] if isinstance(dtype, pl.Struct) else []


def _long(frame: pl.DataFrame, values: dict[str, pl.Expr]) -> pl.DataFrame:
    """Unpivot named expressions into (row, measure, value) rows, skipping all-null ones."""
    schema = {"row": pl.UInt32, "measure": pl.String, "value": pl.Float64}
    if not values:
        return pl.DataFrame(schema=schema)
    wide = frame.select(
        pl.col("row"), *[expr.cast(pl.Float64).alias(name) for name, expr in values.items()]
    )
    present = [name for name in values if wide[name].null_count() < wide.height]
    if not present:
        return pl.DataFrame(schema=schema)
    return (
        wide.select("row", *present)
        .unpivot(index="row", variable_name="measure", value_name="value")
        .drop_nulls("value")
    )


def _measure_exprs(wide: pl.DataFrame) -> tuple[dict[str, pl.Expr], dict[str, str]]:
    """Expressions for every measure the frame's schema can hold, and each one's resource."""
    values: dict[str, pl.Expr] = {}
    resource_of: dict[str, str] = {}
    for resource in _struct_fields(wide, "resources"):
        res = pl.col("resources").struct.field(resource)
        stats = set(_struct_fields(wide.select(res), resource))
        for stat in RESOURCE_STATS:
            if stat in stats:
                name = resource + stat_suffix(stat)
                values[name] = res.struct.field(stat)
                resource_of[name] = resource
        if "null_rates" in stats:
            nulls = res.struct.field("null_rates")
            for field in _struct_fields(wide.select(nulls.alias("n")), "n"):
                name = f"{resource}.null_rate.{field}"
                values[name] = nulls.struct.field(field)
                resource_of[name] = resource
    for field in _struct_fields(wide, "api"):
        if field in API_FIELDS:
            values[f"api.{field}"] = pl.col("api").struct.field(field)
    for name in _struct_fields(wide, "metrics"):
        values[f"metric.{name}"] = pl.col("metrics").struct.field(name)
    return values, resource_of


def measures_frame(wide: pl.DataFrame) -> pl.DataFrame:
    """Long frame of every reported number: row, measure, resource, kind, value.

    ``row`` indexes the matching row of :func:`syncs_frame` for the same input (kept as an
    integer so a large fleet's long frame stays small). ``resource`` is the resource type a
    measure belongs to (null for api/sync/metric measures); it links churn and null rates
    to the size they are relative to. Beyond ``_ONE_UNPIVOT_CELLS`` connector kinds are
    unpivoted one at a time, so a fleet with many resource types does not materialise
    every type for every sync.
    """
    wide = wide.with_row_index("row")
    values, resource_of = _measure_exprs(wide)
    parts = [wide]
    # A batch the size of a scoring chunk unpivots at once: every kind's measures for every
    # sync is then a few million cells at most, and one unpivot is several times faster.
    # The order is the same either way (measures in schema order within each row).
    if "connector_kind" in wide.columns and wide.height * len(values) > _ONE_UNPIVOT_CELLS:
        parts = wide.partition_by("connector_kind", maintain_order=True)
    long = pl.concat([_long(part, values) for part in parts]).sort("row", maintain_order=True)
    mapping = pl.DataFrame(
        {"measure": list(resource_of), "resource": list(resource_of.values())},
        schema={"measure": pl.String, "resource": pl.String},
    )
    return long.join(mapping, on="measure", how="left", maintain_order="left").with_columns(
        measure_kind_expr(pl.col("measure")).alias("kind")
    )


def records_from_jsonl(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Parse already-validated JSON Lines (a convenience for notebooks and tests)."""
    return [json.loads(line) for line in lines if line.strip()]
