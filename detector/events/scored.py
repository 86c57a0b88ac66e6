"""Native ``sync_scored`` events for a whole batch of results, built column-wise.

:func:`detector.events.native.sync_scored` builds and schema-validates one event at a time
(about 0.25 ms each); a batch of thousands of syncs builds them here instead, with polars,
and serialises them with polars too. Every event of a batch has one of three shapes
(no reasons or rule hits, with reasons, with rule hits), so the first event of each
shape is checked against the schema, and every value is checked column by column
(enums, finite numbers, ranges, non-empty names, rule name pattern). The schema check
is a hand-written one first (``_certainly_valid``, limits read from the schema), which
may only be stricter than the schema: what it is unsure of goes to the JSON Schema
validator, which decides and explains. An ordinary batch so never imports jsonschema,
~0.05 s of every cold ``syncguard score``.

The model's reasons carry a *signed* distance (below expected is negative); the native
event's ``distance`` is how far outside the range, so it is the absolute value here (the
direction is in ``observed`` against ``expected`` and in the description). A metric the
model lists twice for one sync is kept once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import polars as pl

from detector.events.native import (
    CRITICALITIES,
    DECISIONS,
    EVENT_VERSION,
    SEVERITIES,
    NativeEventError,
    event_ids,
    schema,
    validate,
)

__all__ = ["ScoredEvents", "scored_events"]

_REASON_NUMBERS = ("observed", "expected", "range_lo", "range_hi", "distance")
_REASON = pl.Struct({"metric": pl.String, "observed": pl.Float64, "expected": pl.Float64,
                     "expected_range": pl.List(pl.Float64), "distance": pl.Float64,
                     "description": pl.String})
_RULE_HIT = pl.Struct({"rule": pl.String, "detail": pl.String})


# --------------------------------------------------------------- the schema, the short way
# Read from the schema, so the short check cannot drift from it silently.
_DEFS = schema()["$defs"]
_EVENT = _DEFS["sync_scored"]
_KEYS = frozenset(_EVENT["properties"])
_REASON_KEYS = frozenset(_DEFS["reason"]["properties"])
_RULE_HIT_KEYS = frozenset(_DEFS["rule_hit"]["properties"])
_ID_LEN = (_DEFS["sync_id"]["minLength"], _DEFS["sync_id"]["maxLength"])
_CONNECTOR_LEN = (_DEFS["connector_id"]["minLength"], _DEFS["connector_id"]["maxLength"])
_KIND_MAX = _DEFS["connector_kind"]["maxLength"]
_EVENT_ID = re.compile(_DEFS["event_id"]["pattern"])
_TIMESTAMP = re.compile(_DEFS["timestamp"]["pattern"])
_RULE = re.compile(_DEFS["rule_hit"]["properties"]["rule"]["pattern"])
_ENUMS = {key: frozenset(_DEFS[key]["enum"]) for key in ("severity", "criticality")}
_ENUMS["decision"] = frozenset(_EVENT["properties"]["decision"]["enum"])


def _number(v: object) -> bool:
    # type() rather than isinstance(): a bool is not a number in JSON Schema.
    return type(v) is int or (type(v) is float and math.isfinite(v))


def _number_or_none(v: object) -> bool:
    return v is None or _number(v)


def _text(v: object, low: int, high: float = math.inf) -> bool:
    return type(v) is str and low <= len(v) <= high


def _matches(pattern: re.Pattern[str], v: object) -> bool:
    # Python's "$" also matches before a final newline: refuse any newline outright.
    return type(v) is str and "\n" not in v and pattern.search(v) is not None


def _timestamp(v: object) -> bool:
    if not _matches(_TIMESTAMP, v):
        return False
    try:  # the "date-time" format as well as the pattern: no month 13
        datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _reason(r: object) -> bool:
    if type(r) is not dict or r.keys() != _REASON_KEYS:
        return False
    rng, distance = r["expected_range"], r["distance"]
    return (_text(r["metric"], 1) and _text(r["description"], 1)
            and _number_or_none(r["observed"]) and _number_or_none(r["expected"])
            and type(rng) is list and len(rng) == 2 and all(map(_number_or_none, rng))
            and (distance is None or (_number(distance) and distance >= 0)))


def _rule_hit(h: object) -> bool:
    return (type(h) is dict and h.keys() == _RULE_HIT_KEYS and _matches(_RULE, h["rule"])
            and _text(h["detail"], 1))


def _certainly_valid(event: dict[str, Any]) -> bool:
    """True only when ``event`` certainly meets the schema's ``sync_scored`` variant;
    False means "ask the JSON Schema validator", never "invalid"."""
    if type(event) is not dict or event.keys() != _KEYS:
        return False
    e = event
    kind, version, p = e["connector_kind"], e["model_version"], e["tail_probability"]
    flags = (e["connector_paused"], e["cold_start"], e["replay"])
    return (e["event_version"] == EVENT_VERSION and e["event_type"] == "sync_scored"
            and _matches(_EVENT_ID, e["event_id"]) and _text(e["sync_id"], *_ID_LEN)
            and _text(e["connector_id"], *_CONNECTOR_LEN)
            and (kind is None or _text(kind, 0, _KIND_MAX))
            and _timestamp(e["scored_at"]) and (version is None or _text(version, 1))
            and all(type(e[k]) is str and e[k] in allowed for k, allowed in _ENUMS.items())
            and _number_or_none(e["score"]) and _number_or_none(e["cutoff"])
            and (p is None or (_number(p) and 0 <= p <= 1))
            and type(e["reasons"]) is list and all(map(_reason, e["reasons"]))
            and type(e["rule_hits"]) is list and all(map(_rule_hit, e["rule_hits"]))
            and all(type(f) is bool for f in flags))


def _finite(name: str) -> pl.Expr:
    """The column where finite, else null (JSON has no NaN or infinity)."""
    col = pl.col(name).cast(pl.Float64)
    return pl.when(col.is_finite()).then(col).otherwise(None).alias(name)


def _clean_reasons(reasons: pl.DataFrame) -> pl.DataFrame:
    """Each metric once per sync, numbers finite or null, distance unsigned."""
    return reasons.unique(["sync_id", "metric"], keep="first", maintain_order=True).with_columns(
        *[_finite(c) for c in _REASON_NUMBERS]
    ).with_columns(pl.col("distance").abs())


def _reasons(reasons: pl.DataFrame) -> pl.DataFrame:
    """``sync_id, reasons``: each sync's reasons as a list of native reason structs."""
    if reasons.height == 0:
        return pl.DataFrame(schema={"sync_id": pl.String, "reasons": pl.List(_REASON)})
    return reasons.group_by("sync_id", maintain_order=True).agg(
        pl.struct(
            "metric", "observed", "expected",
            pl.concat_list("range_lo", "range_hi").alias("expected_range"),
            "distance", "description",
        ).alias("reasons")
    )


def _rule_hits(hits: pl.DataFrame) -> pl.DataFrame:
    """``sync_id, rule_hits``: each sync's rule hits as a list of ``{rule, detail}``."""
    if hits.height == 0:
        return pl.DataFrame(schema={"sync_id": pl.String, "rule_hits": pl.List(_RULE_HIT)})
    return hits.group_by("sync_id", maintain_order=True).agg(
        pl.struct("rule", "detail").alias("rule_hits"))


@dataclass(frozen=True)
class ScoredEvents:
    """A batch of ``sync_scored`` events, three ways.

    Attributes
    ----------
    frame : pl.DataFrame
        One row per event, columns in the documented key order.
    events : list of dict
        The events as dicts (what sinks take).
    texts : list of str
        Each event as compact JSON (what the store keeps).
    """

    frame: pl.DataFrame
    events: list[dict[str, Any]]
    texts: list[str]


def _check_lists(reasons: pl.DataFrame, hits: pl.DataFrame) -> list[str]:
    """Column-wise checks of the reasons and rule hits (before aggregation)."""
    problems = []
    if reasons.height:
        empty = reasons.filter((pl.col("metric").fill_null("") == "")
                               | (pl.col("description").fill_null("") == ""))
        if empty.height:
            problems.append(f"reason without a metric or description (sync_id "
                            f"{empty['sync_id'][0]!r})")
        if (reasons["distance"].drop_nulls() < 0).any():
            problems.append("negative reasons[].distance")
    if hits.height:
        bad = hits.filter(~pl.col("rule").fill_null("").str.contains(r"^[a-z][a-z0-9_]*$")
                          | (pl.col("detail").fill_null("") == ""))
        if bad.height:
            problems.append(f"rule hit {bad['rule'][0]!r} without a snake_case name or a "
                            f"detail (sync_id {bad['sync_id'][0]!r})")
    return problems


def _check_values(frame: pl.DataFrame, problems: list[str]) -> None:
    """Column-wise checks of what the schema says about each value."""
    for col, allowed in (("decision", DECISIONS), ("severity", SEVERITIES),
                         ("criticality", CRITICALITIES)):
        bad = frame.filter(~pl.col(col).is_in(list(allowed)) | pl.col(col).is_null())
        if bad.height:
            problems.append(f"{col} {bad[col][0]!r} (sync_id {bad['sync_id'][0]!r})")
    p = frame["tail_probability"]
    if ((p < 0) | (p > 1)).any():
        problems.append("tail_probability outside [0, 1]")
    if problems:
        raise NativeEventError("scored events break the native event schema: "
                               + "; ".join(problems))


def scored_events(results: pl.DataFrame, reasons: pl.DataFrame, rule_hits: pl.DataFrame, *,
                  scored_at: str, model_version: str | None) -> ScoredEvents:
    """One validated native event per row of ``results``, in the same order.

    Parameters
    ----------
    results, reasons, rule_hits : pl.DataFrame
        As in :class:`detector.model.ScoreResult`.
    scored_at : str
        RFC 3339 UTC with milliseconds (:func:`detector.events.native.format_timestamp`).
    model_version : str or None

    Returns
    -------
    ScoredEvents
        ``sync_scored`` events, keys in the documented order, ``replay`` false.

    Raises
    ------
    NativeEventError
        When a value breaks the schema (a bug in the producer).
    """
    ids = event_ids("sync_scored", results["connector_id"], results["sync_id"])
    reasons = _clean_reasons(reasons)
    frame = (
        results.join(_reasons(reasons), on="sync_id", how="left", maintain_order="left")
        .join(_rule_hits(rule_hits), on="sync_id", how="left", maintain_order="left")
        .select(
            pl.lit(EVENT_VERSION).alias("event_version"),
            pl.lit("sync_scored").alias("event_type"),
            pl.Series("event_id", ids, dtype=pl.String),
            "sync_id", "connector_id", "connector_kind",
            pl.lit(scored_at).alias("scored_at"),
            pl.lit(model_version, dtype=pl.String).alias("model_version"),
            "decision", "severity", "criticality",
            _finite("score"), _finite("cutoff"), _finite("tail_probability"),
            pl.col("reasons").fill_null([]), pl.col("rule_hits").fill_null([]),
            pl.col("connector_paused").fill_null(False),
            pl.col("cold_start").fill_null(False),
            pl.lit(False).alias("replay"),
        )
    )
    _check_values(frame, _check_lists(reasons, rule_hits))
    texts = frame.select(pl.struct(pl.all()).struct.json_encode()).to_series().to_list()
    # The dicts are read back from the texts: several times faster than to_dicts on nested
    # lists, and the stored text and the emitted event cannot disagree.
    events = [orjson.loads(text) for text in texts]
    # The first event of each shape checked against the schema (the short way first).
    shapes = frame.select(
        pl.int_range(pl.len()).alias("i"),
        (pl.col("reasons").list.len() > 0).alias("r"),
        (pl.col("rule_hits").list.len() > 0).alias("h"),
    ).unique(["r", "h"], keep="first", maintain_order=True)
    for i in shapes["i"]:
        if not _certainly_valid(events[i]):
            validate(events[i])
    return ScoredEvents(frame, events, texts)
