"""The native syncguard event: build, validate, serialise.

Three variants share one JSON Schema (``detector/schemas/native-event.schema.json``),
told apart by ``event_type``:

``sync_scored``
    One per scored sync (decision pause, review or proceed).
``connector_stale``
    ``check-freshness`` found a connector with no recent sync.
``invalid_record``
    A rejected record that still names its connector; always a pause (fail closed).

Builders return plain dicts (JSON-ready, keys in the documented order) that have
already passed the schema, so every sink can trust what it is given. ``event_id`` is a
UUIDv5 over the event type, connector and sync (or stale episode): the same input
always gives the same id, which is also the OCSF ``finding_info.uid``.

Examples
--------
>>> from detector.events.native import sync_scored, to_json
>>> event = sync_scored(sync_id="s1", connector_id="okta-prod", scored_at="2026-11-20T14:03:41Z",
...                     decision="proceed", severity="info")
>>> event["event_id"]
'2829cc58-51b1-5255-9257-836f7121c2d3'
>>> to_json(event)[:60]
'{"event_version":"1","event_type":"sync_scored","event_id":"'
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal, get_args

import orjson

from detector.errors import SyncguardError

if TYPE_CHECKING:
    import jsonschema  # imported by _validator: scoring emits events without validating them

    from detector.contract import Violation  # annotation only: events need no parser

__all__ = [
    "EVENT_VERSION",
    "EVENT_NAMESPACE",
    "DECISIONS",
    "SEVERITIES",
    "CRITICALITIES",
    "Decision",
    "Severity",
    "Criticality",
    "EventType",
    "Reason",
    "RuleHit",
    "NativeEventError",
    "sync_scored",
    "connector_stale",
    "invalid_record",
    "event_id",
    "event_ids",
    "event_time",
    "format_timestamp",
    "parse_timestamp",
    "schema",
    "validate",
    "canonical",
    "dumps",
    "to_json",
]

EVENT_VERSION = "1"

# Fixed forever: changing it would change every finding uid and break SOAR de-duplication.
# Its value is 323bf08e-e3bc-5610-9573-e614e1c20a9a; a test pins it.
EVENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:syncguard:events")

Decision = Literal["pause", "review", "proceed"]
Severity = Literal["critical", "high", "medium", "low", "info"]
Criticality = Literal["privileged", "leaver", "nhi", "standard", "reporting"]
EventType = Literal["sync_scored", "connector_stale", "invalid_record"]

# The values themselves, in the types' order (the policy checks its file against these).
DECISIONS: tuple[str, ...] = get_args(Decision)
SEVERITIES: tuple[str, ...] = get_args(Severity)
CRITICALITIES: tuple[str, ...] = get_args(Criticality)

# Documented key order per variant; `canonical` writes known keys in this order so that
# events built anywhere (or read back from JSON) serialise byte-for-byte the same.
_KEY_ORDER: dict[str, tuple[str, ...]] = {
    "sync_scored": (
        "event_version", "event_type", "event_id", "sync_id", "connector_id", "connector_kind",
        "scored_at", "model_version", "decision", "severity", "criticality", "score", "cutoff",
        "tail_probability", "reasons", "rule_hits", "connector_paused", "cold_start", "replay",
    ),
    "connector_stale": (
        "event_version", "event_type", "event_id", "connector_id", "connector_kind", "checked_at",
        "last_sync_id", "last_sync_at", "expected_interval_s", "overdue_by_s", "decision",
        "severity", "criticality", "connector_paused", "replay",
    ),
    "invalid_record": (
        "event_version", "event_type", "event_id", "sync_id", "connector_id", "connector_kind",
        "scored_at", "decision", "severity", "criticality", "violation", "raw_sha256",
        "rule_hits", "connector_paused", "replay",
    ),
}
_REASON_ORDER = ("metric", "observed", "expected", "expected_range", "distance", "description")
_RULE_HIT_ORDER = ("rule", "detail")
_VIOLATION_ORDER = ("record", "field", "rule", "line", "message")
_TIME_KEY = {"sync_scored": "scored_at", "connector_stale": "checked_at",
             "invalid_record": "scored_at"}


class NativeEventError(SyncguardError, ValueError):
    """An event does not match the native event schema (a bug in the producer)."""


@dataclass(frozen=True)
class Reason:
    """One model reason: a metric outside its expected range for this time of week.

    Parameters
    ----------
    metric : str
        Feature name, e.g. ``"user.count_change"``.
    observed, expected : float or None
        The value seen and the value expected for this time of week.
    expected_range : tuple of (float or None, float or None)
        ``(lo, hi)``; ``None`` for an open side.
    distance : float or None
        How far outside the range, in robust standard deviations.
    description : str
        One readable sentence; a person must know what broke from it alone.
    """

    metric: str
    observed: float | None
    expected: float | None
    expected_range: tuple[float | None, float | None]
    distance: float | None
    description: str

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dict, keys in the documented order."""
        lo, hi = self.expected_range
        return {
            "metric": self.metric,
            "observed": _number(self.observed, "reasons[].observed"),
            "expected": _number(self.expected, "reasons[].expected"),
            "expected_range": [_number(lo, "reasons[].expected_range"),
                               _number(hi, "reasons[].expected_range")],
            "distance": _number(self.distance, "reasons[].distance"),
            "description": self.description,
        }


@dataclass(frozen=True)
class RuleHit:
    """A deterministic rule that fired (rules always win over the model).

    Parameters
    ----------
    rule : str
        Rule name in snake_case, e.g. ``"count_to_zero"``.
    detail : str
        What the rule saw, e.g. ``"resource 'group' returned 0 records"``.
    """

    rule: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dict."""
        return {"rule": self.rule, "detail": self.detail}


# --------------------------------------------------------------------------- builders


def sync_scored(
    *,
    sync_id: str,
    connector_id: str,
    scored_at: datetime | str,
    decision: Decision,
    severity: Severity,
    criticality: Criticality = "standard",
    connector_kind: str | None = None,
    model_version: str | None = None,
    score: float | None = None,
    cutoff: float | None = None,
    tail_probability: float | None = None,
    reasons: Iterable[Reason | Mapping[str, Any]] = (),
    rule_hits: Iterable[RuleHit | Mapping[str, Any]] = (),
    connector_paused: bool = False,
    cold_start: bool = False,
    replay: bool = False,
) -> dict[str, Any]:
    """Build and validate a ``sync_scored`` event.

    Parameters
    ----------
    sync_id, connector_id : str
        The scored sync and its connector; together they fix ``event_id``.
    scored_at : datetime or str
        When the decision was made (timezone-aware, or RFC 3339 with offset).
    decision : {"pause", "review", "proceed"}
    severity : {"critical", "high", "medium", "low", "info"}
    criticality : {"privileged", "leaver", "nhi", "standard", "reporting"}
    connector_kind, model_version : str or None
    score, cutoff, tail_probability : float or None
        ``None`` when no model score exists (rules only, or unscorable).
    reasons : iterable of Reason or mapping
        Most important first.
    rule_hits : iterable of RuleHit or mapping
    connector_paused, cold_start, replay : bool

    Returns
    -------
    dict
        The event, already validated against the schema.

    Raises
    ------
    NativeEventError
        If any field breaks the schema (for example NaN scores or an unknown decision).
    """
    event = {
        "event_version": EVENT_VERSION,
        "event_type": "sync_scored",
        "event_id": event_id("sync_scored", connector_id, sync_id),
        "sync_id": sync_id,
        "connector_id": connector_id,
        "connector_kind": connector_kind,
        "scored_at": format_timestamp(scored_at),
        "model_version": None if model_version is None else str(model_version),
        "decision": decision,
        "severity": severity,
        "criticality": criticality,
        "score": _number(score, "score"),
        "cutoff": _number(cutoff, "cutoff"),
        "tail_probability": _number(tail_probability, "tail_probability"),
        "reasons": [_reason_dict(r) for r in reasons],
        "rule_hits": [_rule_hit_dict(h) for h in rule_hits],
        "connector_paused": connector_paused,
        "cold_start": cold_start,
        "replay": replay,
    }
    validate(event)
    return event


def connector_stale(
    *,
    connector_id: str,
    checked_at: datetime | str,
    last_sync_at: datetime | str | None,
    expected_interval_s: float,
    severity: Severity,
    decision: Literal["pause", "review"] = "review",
    criticality: Criticality = "standard",
    connector_kind: str | None = None,
    last_sync_id: str | None = None,
    overdue_by_s: float | None = None,
    connector_paused: bool = False,
    replay: bool = False,
) -> dict[str, Any]:
    """Build and validate a ``connector_stale`` event.

    Parameters
    ----------
    connector_id : str
    checked_at : datetime or str
        When ``check-freshness`` ran.
    last_sync_at : datetime, str or None
        Finish of the connector's last sync; ``None`` if it never synced.
    expected_interval_s : float
        The connector's usual interval between syncs, in seconds (> 0).
    severity : {"critical", "high", "medium", "low", "info"}
    decision : {"pause", "review"}, default "review"
    criticality, connector_kind, last_sync_id
    overdue_by_s : float, optional
        Seconds past the due time. By default ``checked_at - last_sync_at -
        expected_interval_s`` (floored at 0); required when ``last_sync_at`` is None.
    connector_paused, replay : bool

    Returns
    -------
    dict
        The event. Its ``event_id`` depends on the connector and ``last_sync_at`` only,
        so each check of the same stale episode repeats the same id (one finding in SOAR).
    """
    checked = format_timestamp(checked_at)
    last = None if last_sync_at is None else format_timestamp(last_sync_at)
    if overdue_by_s is None:
        if last is None:
            raise NativeEventError(
                f"connector_stale for {connector_id!r}: overdue_by_s is required when the "
                "connector never synced (last_sync_at is None)"
            )
        elapsed = (parse_timestamp(checked) - parse_timestamp(last)).total_seconds()
        overdue_by_s = max(0.0, elapsed - float(expected_interval_s))
    event = {
        "event_version": EVENT_VERSION,
        "event_type": "connector_stale",
        "event_id": event_id("connector_stale", connector_id, last or "never"),
        "connector_id": connector_id,
        "connector_kind": connector_kind,
        "checked_at": checked,
        "last_sync_id": last_sync_id,
        "last_sync_at": last,
        "expected_interval_s": _number(expected_interval_s, "expected_interval_s"),
        "overdue_by_s": _number(overdue_by_s, "overdue_by_s"),
        "decision": decision,
        "severity": severity,
        "criticality": criticality,
        "connector_paused": connector_paused,
        "replay": replay,
    }
    validate(event)
    return event


def invalid_record(
    violation: Violation,
    *,
    scored_at: datetime | str,
    severity: Severity = "high",
    criticality: Criticality = "standard",
    connector_kind: str | None = None,
    connector_paused: bool = True,
    replay: bool = False,
) -> dict[str, Any]:
    """Build and validate an ``invalid_record`` event (always a pause) from a violation.

    Parameters
    ----------
    violation : detector.contract.Violation
        The rejected record; must name its connector.
    scored_at : datetime or str
        When the record was rejected.
    severity, criticality, connector_kind
    connector_paused : bool, default True
        The pause this event opens (or joins).
    replay : bool

    Returns
    -------
    dict
        The event. The raw text is not copied (it may hold personal data); its SHA-256 is,
        and feeds ``event_id`` together with the connector and sync_id.

    Raises
    ------
    NativeEventError
        If the violation names no connector (nothing to pause).
    """
    if not violation.connector_id:
        raise NativeEventError(
            f"{violation.record}: an invalid_record event needs a connector_id, and this "
            "record names none; report it as a rejected input instead"
        )
    raw = violation.raw or ""
    raw_sha = hashlib.sha256(raw.encode("utf-8")).hexdigest() if raw else None
    # Without a sync_id the raw text is the only stable identity of the record.
    key = f"{violation.sync_id or ''}\x1f{raw_sha or violation.record}"
    message = str(violation)
    event = {
        "event_version": EVENT_VERSION,
        "event_type": "invalid_record",
        "event_id": event_id("invalid_record", violation.connector_id, key),
        "sync_id": violation.sync_id,
        "connector_id": violation.connector_id,
        "connector_kind": connector_kind,
        "scored_at": format_timestamp(scored_at),
        "decision": "pause",
        "severity": severity,
        "criticality": criticality,
        "violation": {
            "record": violation.record,
            "field": violation.field,
            "rule": violation.rule,
            "line": violation.line,
            "message": message,
        },
        "raw_sha256": raw_sha,
        "rule_hits": [{"rule": "invalid_record", "detail": message}],
        "connector_paused": connector_paused,
        "replay": replay,
    }
    validate(event)
    return event


# --------------------------------------------------------------------------- identity, time


def event_id(event_type: str, connector_id: str, key: str) -> str:
    """Deterministic event id: UUIDv5 over ``(event_type, connector_id, key)``.

    Parameters
    ----------
    event_type : str
    connector_id : str
    key : str
        The sync_id for scored syncs, the last sync time for stale episodes.

    Returns
    -------
    str
        Lower-case UUID string.
    """
    # \x1f (unit separator) cannot appear in ids people type, so fields cannot run together.
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{event_type}\x1f{connector_id}\x1f{key}"))


def event_ids(event_type: str, connector_ids: Iterable[str], keys: Iterable[str]) -> list[str]:
    """:func:`event_id` of many events of one type at once (a batch of scored syncs).

    The same UUIDv5 (SHA-1 of the namespace and the name, version and variant bits set),
    written without building a :class:`uuid.UUID` per event.
    """
    namespace = EVENT_NAMESPACE.bytes
    out = []
    for connector_id, key in zip(connector_ids, keys, strict=True):
        digest = bytearray(hashlib.sha1(
            namespace + f"{event_type}\x1f{connector_id}\x1f{key}".encode()).digest()[:16])
        digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
        digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
        h = digest.hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def format_timestamp(value: datetime | str) -> str:
    """Return ``value`` as RFC 3339 UTC with milliseconds (``2026-11-20T14:03:41.000Z``).

    Raises
    ------
    NativeEventError
        If the value is naive (no offset) or not RFC 3339.
    """
    moment = parse_timestamp(value) if isinstance(value, str) else value
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise NativeEventError(f"timestamp {value!r} has no timezone offset")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(value: str) -> datetime:
    """Parse an RFC 3339 timestamp with offset into an aware UTC datetime."""
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise NativeEventError(f"timestamp {value!r} is not RFC 3339") from exc
    if moment.tzinfo is None:
        raise NativeEventError(f"timestamp {value!r} has no timezone offset")
    return moment.astimezone(UTC)


def event_time(event: Mapping[str, Any]) -> datetime:
    """The moment an event describes: ``scored_at``, or ``checked_at`` for stale events."""
    return parse_timestamp(event[_TIME_KEY[event["event_type"]]])


# --------------------------------------------------------------------------- schema


@cache
def schema() -> dict[str, Any]:
    """The native event JSON Schema (draft 2020-12), loaded once from the package."""
    text = resources.files("detector").joinpath("schemas/native-event.schema.json").read_text(
        encoding="utf-8"
    )
    return json.loads(text)


@cache
def _validator(kind: str | None = None) -> jsonschema.Draft202012Validator:
    """Validator for one variant (``kind``) or, for unknown kinds, the whole schema."""
    import jsonschema

    root = schema()
    # Validating the chosen variant directly gives readable errors; oneOf errors are not.
    target = {"$defs": root["$defs"], **root["$defs"][kind]} if kind else root
    return jsonschema.Draft202012Validator(
        target, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def validate(event: Mapping[str, Any]) -> None:
    """Check ``event`` against the native event schema.

    Raises
    ------
    NativeEventError
        Naming every failing field (the variant is chosen by ``event_type``).
    """
    if not isinstance(event, Mapping):
        raise NativeEventError(f"a native event must be an object, got {type(event).__name__}")
    kind = event.get("event_type")
    validator = _validator(kind if kind in _KEY_ORDER else None)
    errors = sorted(validator.iter_errors(dict(event)), key=lambda e: list(e.absolute_path))
    if errors:
        where = event.get("event_id") or event.get("sync_id") or event.get("connector_id")
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e.absolute_path) or '<event>'}: {e.message}"
            for e in errors[:10]
        )
        raise NativeEventError(f"native event {where!r} ({kind}) breaks the schema: {detail}")


# --------------------------------------------------------------------------- serialisation


def canonical(event: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``event`` with keys in the documented order (unknown keys last, sorted)."""
    order = _KEY_ORDER.get(event.get("event_type", ""), ())
    out = _ordered(event, order)
    if isinstance(out.get("reasons"), list):
        out["reasons"] = [_ordered(r, _REASON_ORDER) for r in out["reasons"]]
    if isinstance(out.get("rule_hits"), list):
        out["rule_hits"] = [_ordered(h, _RULE_HIT_ORDER) for h in out["rule_hits"]]
    if isinstance(out.get("violation"), Mapping):
        out["violation"] = _ordered(out["violation"], _VIOLATION_ORDER)
    return out


def to_json(event: Mapping[str, Any]) -> str:
    """Serialise one event as compact JSON on one line, keys in the documented order.

    NaN and infinities are refused (JSON has no such numbers).
    """
    return dumps(canonical(event))


# Plain dicts, lists, str, int, float, bool and None only: anything else (subclasses,
# datetimes, dataclasses, numpy numbers) is left to the standard library, which encodes
# it as it always did or refuses it with its own message.
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def _not_plain(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is left to the json module")


def dumps(payload: Any) -> str:
    """Compact JSON on one line: UTF-8 text as is, key order kept, NaN and infinities refused.

    What ``json.dumps(payload, ensure_ascii=False, separators=(",", ":"),
    allow_nan=False)`` writes, up to how numbers are spelt (``1e-05`` is ``1e-5``), about
    ten times faster: orjson for plain JSON values, the json module for anything else.

    Raises
    ------
    ValueError
        For NaN or an infinity anywhere in ``payload``.
    TypeError
        For a value JSON cannot hold.
    """
    try:
        text = orjson.dumps(payload, default=_not_plain, option=_ORJSON_OPTIONS)
    except TypeError:
        text = None
    if text is None:  # outside the except block: json's own error, without orjson's
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # orjson writes a NaN or an infinity as null: only a text with a null can hide one.
    if b"null" in text and not _all_finite(payload):
        raise ValueError("Out of range float values are not JSON compliant: NaN or infinity")
    return text.decode("utf-8")


def _all_finite(value: Any) -> bool:
    """False when a float anywhere in ``value`` is NaN or infinite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_all_finite(v) for v in value)
    return True


def _ordered(obj: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    if tuple(obj) == order:  # already in the documented order, as batch-built events are
        return dict(obj)
    out = {k: obj[k] for k in order if k in obj}
    out.update({k: obj[k] for k in sorted(obj) if k not in out})
    return out


def _number(value: Any, name: str) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise NativeEventError(f"{name} must be a number, got a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise NativeEventError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(number):
        # JSON cannot carry NaN/inf; a producer that has one has a bug to fix upstream.
        raise NativeEventError(f"{name} must be finite, got {value!r}")
    # numpy scalars become plain Python numbers; integers stay integers for readability.
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        return int(value)
    return number


def _reason_dict(reason: Reason | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(reason, Reason):
        return reason.to_dict()
    rng = reason.get("expected_range") or (None, None)
    if len(rng) != 2:
        raise NativeEventError(f"reasons[].expected_range must be [lo, hi], got {rng!r}")
    return Reason(
        metric=reason.get("metric"),
        observed=reason.get("observed"),
        expected=reason.get("expected"),
        expected_range=(rng[0], rng[1]),
        distance=reason.get("distance"),
        description=reason.get("description"),
    ).to_dict()


def _rule_hit_dict(hit: RuleHit | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(hit, RuleHit):
        return hit.to_dict()
    return {"rule": hit.get("rule"), "detail": hit.get("detail")}
