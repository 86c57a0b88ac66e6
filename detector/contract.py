"""The sync-record contract: parse input, validate each record, explain every rejection.

Structural rules live in ``detector/schemas/sync-record.schema.json`` (JSON Schema 2020-12),
the single source of truth. This module adds what JSON Schema cannot say: timestamps
ordered and not far in the future, finite numbers, no duplicate keys, no lone UTF-16
surrogates (a JSON escape such as "\\ud800" that UTF-8 cannot spell), size and depth
limits, and the input framing (one object, an array, or JSON Lines).

An ordinary JSON Lines record is decoded and written out canonically by orjson
(``_fast_line``) when that is certainly what the json module gives; anything else
(escapes, repeated keys, NaN, numbers orjson spells unlike ``repr``) takes the json path.

Validation has two paths. ``_fast_valid`` is a conservative hand-written check that
answers "certainly valid" for ordinary records in a few microseconds; anything it is
unsure of goes to the jsonschema validator, which decides and explains. The fast path
may only ever be stricter than the schema (tests check this with generated records),
so the schema stays authoritative.

Examples
--------
>>> v = validate_record({"sync_id": "a", "connector_id": "c", "status": "succeeded",
...                      "started_at": "2026-01-01T00:00:00Z",
...                      "finished_at": "2026-01-01T00:01:00Z",
...                      "resources": {"user": {"count": -1}}})
>>> str(v)
"sync_id 'a': field 'resources.user.count': must be an integer >= 0"
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from detector.errors import UsageError

if TYPE_CHECKING:  # jsonschema is imported when a record first needs it (see _validator)
    import jsonschema
    from jsonschema.exceptions import ValidationError

__all__ = [
    "Violation",
    "Accepted",
    "validate_record",
    "parse_lines",
    "read_inputs",
    "canonical_json",
    "parse_timestamp",
    "SCHEMA",
    "SCHEMA_PATH",
    "MAX_RECORD_BYTES",
    "MAX_DEPTH",
    "MAX_FUTURE",
]

MAX_RECORD_BYTES = 1 << 20
"""A record (one JSON Lines line, or one array element) may hold at most 1 MiB of JSON."""
MAX_DEPTH = 8
"""The record object itself is level 1; ``resources.T.null_rates`` is level 4."""
MAX_FUTURE = timedelta(days=1)
"""How far ``started_at`` may lie ahead of the clock (connector clocks drift; days do not)."""
MAX_DOCUMENT_BYTES = 512 << 20
"""A whole-document input (array or pretty-printed object) is parsed in memory: cap it."""
RAW_LIMIT = 64 << 10
"""Rejected text is kept for people to read, truncated to this many characters."""

WHOLE_RECORD = "<record>"

SCHEMA_PATH = Path(__file__).with_name("schemas") / "sync-record.schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text("utf-8"))


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Violation:
    """One rejected record: which record, which field, which rule.

    Attributes
    ----------
    record : str
        Locator a person can find the record by: ``"line 3 (sync_id 'a')"``, ``"line 3"``,
        ``"sync_id 'a'"`` or ``"record"``.
    field : str
        Dotted path of the offending field, ``"<record>"`` for the record as a whole.
    rule : str
        The rule that was broken, in words (``"must be an integer >= 0"``).
    line : int or None
        1-based line of the record in its input, when it came from text.
    sync_id, connector_id : str or None
        As far as the record still names them; ``connector_id`` lets the caller raise a
        ``pause(invalid_record)`` for that connector (fail closed).
    raw : str
        The offending text, truncated to 64 KiB.
    source : str or None
        Input the record came from (file name or ``"-"``), when known.
    """

    record: str
    field: str
    rule: str
    line: int | None
    sync_id: str | None
    connector_id: str | None
    raw: str
    source: str | None = None

    def __str__(self) -> str:
        if self.field == WHOLE_RECORD:
            return f"{self.record}: {self.rule}"
        return f"{self.record}: field '{self.field}': {self.rule}"


@dataclass(frozen=True)
class Accepted:
    """A record that meets the contract.

    Attributes
    ----------
    line : int or None
        1-based line in its input, when it came from text.
    record : dict
        The parsed record, unknown keys kept.
    content_hash : str
        SHA-256 (hex) of the canonical JSON: the idempotency check on ``sync_id``.
    canonical : str
        The canonical JSON text itself (sorted keys, compact), as the store keeps it.
    source : str or None
        Input the record came from, when known.
    times : tuple of datetime, or None
        ``started_at`` and ``finished_at`` as validation parsed them (the store reuses
        them instead of parsing again); None on a record built by hand.
    """

    line: int | None
    record: dict[str, Any]
    content_hash: str
    canonical: str = ""
    source: str | None = None
    times: tuple[datetime, datetime] | None = dataclasses.field(default=None, compare=False,
                                                               repr=False)

    def reject(self, field: str, rule: str) -> Violation:
        """This record turned away by a rule the store decides (it needs history, such
        as "not older than the connector's last scored sync"), named like any other."""
        sync_id, connector_id = _name(self.record, "sync_id"), _name(self.record, "connector_id")
        return _violation(field, rule, line=self.line, sync_id=sync_id,
                          connector_id=connector_id,
                          raw=self.canonical or canonical_json(self.record), source=self.source)


# --------------------------------------------------------------------------- helpers

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)


def parse_timestamp(value: object) -> datetime | None:
    """Parse an RFC 3339 timestamp that carries an offset; ``None`` if it is not one.

    Naive timestamps (no ``Z`` or ``+hh:mm``) are refused: a sync time without a zone
    is ambiguous by hours, which is larger than most sync intervals.
    """
    if type(value) is not str or _RFC3339.fullmatch(value) is None:
        return None
    try:
        # fromisoformat (3.11) takes "Z"; upper() folds RFC 3339's lower-case t and z.
        return datetime.fromisoformat(value.upper())
    except ValueError:  # month 13, hour 24, leap second...
        return None


def canonical_json(record: dict[str, Any]) -> str:
    """Return the canonical JSON text of a record: sorted keys, compact, UTF-8 kept.

    Raises
    ------
    ValueError
        For NaN or infinite numbers (they are not JSON).
    TypeError
        For values that are not JSON (sets, bytes, ...).
    """
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


# orjson spells some floats differently from ``repr`` (``0.00001`` for ``1e-05``): only
# where one of them uses an exponent, i.e. the output has a digit before "e+"/"e-" or
# the "0.0000" of a small number written out (a test holds this for millions of floats).
_RISKY_NUMBER = re.compile(rb"\de[+-]|0\.0000")


def _risky(data: bytes) -> bool:
    """Whether ``data`` may hold a number orjson spells unlike ``repr`` (``_RISKY_NUMBER``,
    found with substring searches: a regex over every record costs as much as orjson)."""
    if b"0.0000" in data:
        return True
    for mark in (b"e+", b"e-"):  # in names too ("azure-ad"): a digit before it decides
        at = data.find(mark)
        while at > 0:
            if 0x30 <= data[at - 1] <= 0x39:
                return True
            at = data.find(mark, at + 2)
    return False


# A string decoded from JSON holds a surrogate code point only when the text escaped a
# lone one ("\ud800"): json pairs the halves of a UTF-16 pair into one character, and
# UTF-8 input cannot spell a surrogate at all. Such a string cannot be written as UTF-8
# (hashed, stored, sent in an event), so the contract refuses it.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


def _printable(text: str) -> str:
    """``text`` with any surrogate written as its ``\\udxxx`` escape (so a rejection can
    still be printed, stored and sent as UTF-8)."""
    if not _has_surrogate(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _surrogate_rule(text: str) -> str:
    code = ord(_SURROGATE.search(text).group())
    return f"must be valid Unicode (\\u{code:04x} is a lone UTF-16 surrogate)"


def _surrogate_at(node: object, path: tuple[object, ...] = ()) -> tuple[str, str] | None:
    """(field, rule) for the first key or string value in ``node`` that holds a surrogate
    (depth-first, in key order); None when there is none. ``node`` is at most MAX_DEPTH
    deep (checked before), so recursion is bounded."""
    if type(node) is str:
        return (_dotted(path), _surrogate_rule(node)) if _has_surrogate(node) else None
    if type(node) is dict:
        items: Iterable[tuple[object, object]] = node.items()
    elif type(node) is list:
        items = enumerate(node)
    else:
        return None
    for key, child in items:
        if type(key) is str and _has_surrogate(key):
            return _dotted((*path, key)), "key " + _surrogate_rule(key)
        found = _surrogate_at(child, (*path, key))
        if found is not None:
            return found
    return None


def _finite_number(checker: object, value: object) -> bool:
    # JSON Schema's "number" admits NaN and inf when a dict is built in Python; the
    # contract does not, and min/max comparisons against NaN are always false.
    return type(value) in (int, float) and math.isfinite(value)


def _finite_integer(checker: object, value: object) -> bool:
    if type(value) is int:
        return True
    return type(value) is float and math.isfinite(value) and value.is_integer()


@cache
def _validator() -> jsonschema.Draft202012Validator:
    """The schema's validator, built when a record first needs it: ordinary records pass
    the fast path, and importing jsonschema costs a cold ``syncguard score`` ~0.1 s."""
    from jsonschema import Draft202012Validator, FormatChecker, validators

    format_checker = FormatChecker(formats=())
    format_checker.checks("date-time")(lambda value: parse_timestamp(value) is not None)
    extended = validators.extend(
        Draft202012Validator,
        type_checker=Draft202012Validator.TYPE_CHECKER.redefine_many(
            {"number": _finite_number, "integer": _finite_integer}
        ),
    )
    Draft202012Validator.check_schema(SCHEMA)
    return extended(SCHEMA, format_checker=format_checker)


# --------------------------------------------------------------------------- fast path
# Limits read from the schema, so the fast path cannot drift from it silently.

_PROPS = SCHEMA["properties"]
_DEFS = SCHEMA["$defs"]
_REQUIRED = tuple(SCHEMA["required"])
_STATUSES = frozenset(_PROPS["status"]["enum"])
_ERROR_CLASSES = frozenset(_PROPS["error_class"]["enum"]) - {None}
_ID_MAX = _PROPS["sync_id"]["maxLength"]
_KIND_MAX = _PROPS["connector_kind"]["maxLength"]
_COUNT_MAX = _DEFS["count"]["maximum"]
_NON_NEG_MAX = _DEFS["non_negative"]["maximum"]
_RES_MAX = _PROPS["resources"]["maxProperties"]
_RES_KEY_MAX = _PROPS["resources"]["propertyNames"]["maxLength"]
_STATS = _DEFS["resource_stats"]["properties"]
_NULL_MAX = _STATS["null_rates"]["maxProperties"]
_NULL_KEY_MAX = _STATS["null_rates"]["propertyNames"]["maxLength"]
_METRICS_MAX = _PROPS["metrics"]["maxProperties"]
_METRIC_KEY_MAX = _PROPS["metrics"]["propertyNames"]["maxLength"]
_COUNT_FIELDS = tuple(k for k, v in _STATS.items() if v.get("$ref") == "#/$defs/count")
_COUNT_FIELD_SET = frozenset(_COUNT_FIELDS)
_API_COUNTS = tuple(
    k for k, v in _PROPS["api"]["properties"].items() if v["$ref"] == "#/$defs/count"
)
_API_REALS = tuple(
    k for k, v in _PROPS["api"]["properties"].items() if v["$ref"] == "#/$defs/non_negative"
)
_NEEDS_RESOURCES = frozenset(SCHEMA["allOf"][0]["if"]["properties"]["status"]["enum"])


def _is_count(v: object) -> bool:
    return type(v) is int and 0 <= v <= _COUNT_MAX


def _is_real(v: object, hi: float) -> bool:
    # type() rather than isinstance(): bool is a subclass of int and is not a number here.
    # The chained comparison is False for NaN, so it also keeps NaN out.
    return (type(v) is float or type(v) is int) and 0 <= v <= hi


def _is_key(k: object, hi: int) -> bool:
    return type(k) is str and 0 < len(k) <= hi


_TOP_KEYS = frozenset(_PROPS)
_API_KEYS = frozenset(_PROPS["api"]["properties"])
# _fast_resources checks count fields and null rates by name; any other key is unknown.
assert frozenset(_STATS) == _COUNT_FIELD_SET | {"null_rates"}


def _deep_extras(obj: dict[str, Any], known: frozenset[str], depth: int) -> bool:
    """Whether any unknown key of ``obj`` (at nesting ``depth``) holds a too-deep value.

    Known keys are checked for type by the fast path itself, so only values the schema
    says nothing about need walking.
    """
    if len(obj) <= len(known) and obj.keys() <= known:
        return False
    return any(_too_deep(obj[k], depth + 1) for k in obj.keys() - known)


def _fast_valid(obj: dict[str, Any]) -> tuple[datetime, datetime] | None:
    """Return (started, finished) only when ``obj`` certainly satisfies the schema and
    the depth limit; None means "ask jsonschema", never "invalid"."""
    for key in _REQUIRED:
        if key not in obj:
            return None
    if not (_is_key(obj["sync_id"], _ID_MAX) and _is_key(obj["connector_id"], _ID_MAX)):
        return None
    if type(obj["status"]) is not str or obj["status"] not in _STATUSES:
        return None
    started, finished = parse_timestamp(obj["started_at"]), parse_timestamp(obj["finished_at"])
    if started is None or finished is None:
        return None
    kind = obj.get("connector_kind")
    if kind is not None and not (type(kind) is str and len(kind) <= _KIND_MAX):
        return None
    err = obj.get("error_class")
    if err is not None and (type(err) is not str or err not in _ERROR_CLASSES):
        return None
    res = obj.get("resources")
    if res is None:
        if "resources" in obj or obj["status"] in _NEEDS_RESOURCES:
            return None
    elif not _fast_resources(res):
        return None
    if "api" in obj and not _fast_api(obj["api"]):
        return None
    if "metrics" in obj and not _fast_metrics(obj["metrics"]):
        return None
    if _deep_extras(obj, _TOP_KEYS, 1):
        return None
    return started, finished


def _fast_resources(res: object) -> bool:
    # The hottest loop of validation (a few dozen values per record): the checks of
    # _is_key, _is_count and _is_real are written out, as calls cost more than the tests.
    if type(res) is not dict or len(res) > _RES_MAX:
        return False
    for name, stats in res.items():
        if type(name) is not str or not 0 < len(name) <= _RES_KEY_MAX:
            return False
        if type(stats) is not dict or "count" not in stats:
            return False
        for k, v in stats.items():
            if k in _COUNT_FIELD_SET:
                if type(v) is not int or not 0 <= v <= _COUNT_MAX:
                    return False
            elif k == "null_rates":
                if type(v) is not dict or len(v) > _NULL_MAX:
                    return False
                for field, rate in v.items():
                    # type() rather than isinstance(), and a chained comparison that NaN
                    # fails, as in _is_real.
                    if (type(field) is not str or not 0 < len(field) <= _NULL_KEY_MAX
                            or (type(rate) is not float and type(rate) is not int)
                            or not 0 <= rate <= 1):
                        return False
            elif _too_deep(v, 4):  # a key the schema does not name, at nesting level 4
                return False
    return True


def _fast_api(api: object) -> bool:
    if type(api) is not dict:
        return False
    for k in _API_COUNTS:
        if k in api and not _is_count(api[k]):
            return False
    for k in _API_REALS:
        if k in api and not _is_real(api[k], _NON_NEG_MAX):
            return False
    return not _deep_extras(api, _API_KEYS, 2)


def _fast_metrics(metrics: object) -> bool:
    if type(metrics) is not dict or len(metrics) > _METRICS_MAX:
        return False
    for k, v in metrics.items():
        if not (_is_key(k, _METRIC_KEY_MAX) and type(v) in (int, float) and math.isfinite(v)):
            return False
    return True


# --------------------------------------------------------------------------- explaining

_TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "object": "an object",
    "array": "an array",
    "boolean": "a boolean",
    "null": "null",
}
_BIG = 1e9
"""Upper bounds at or above this are sanity caps; they are named only when broken."""


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _describe(schema: dict[str, Any], keyword: str) -> str:
    """Say in words what a (sub)schema with type and bounds requires."""
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    what = " or ".join(_TYPE_WORDS.get(t, t) for t in types) or "a value"
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if keyword == "maximum" and hi is not None and hi >= _BIG:
        return f"must be {what} <= {_num(hi)}"
    if lo is not None and hi is not None and hi < _BIG:
        return f"must be {what} in [{_num(lo)}, {_num(hi)}]"
    if lo is not None:
        return f"must be {what} >= {_num(lo)}"
    return f"must be {what}"


def _dotted(path: Iterable[object]) -> str:
    return ".".join(str(p) for p in path) or WHOLE_RECORD


def _explain(error: ValidationError) -> tuple[str, str]:
    """Map a jsonschema error to (dotted field, rule in words)."""
    path = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    keyword = error.validator
    if "propertyNames" in error.absolute_schema_path:
        # error.instance is the offending key; the path names its object.
        low = schema.get("minLength", 1)
        high = schema.get("maxLength")
        return _dotted([*path, error.instance]), f"key must be {low} to {high} characters long"
    if keyword == "required":
        missing = next(k for k in error.validator_value if k not in error.instance)
        return _dotted([*path, missing]), schema.get("x-rule", "is required")
    if "x-rule" in schema:
        return _dotted(path), schema["x-rule"]
    if keyword in ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        rule = _describe(schema, keyword)
    elif keyword == "enum":
        rule = "must be one of " + ", ".join(json.dumps(v) for v in error.validator_value)
    elif keyword == "minLength":
        n = error.validator_value
        rule = "must not be empty" if n == 1 else f"must be at least {n} characters long"
    elif keyword == "maxLength":
        rule = f"must be at most {error.validator_value} characters long"
    elif keyword == "maxProperties":
        rule = f"must have at most {error.validator_value} entries"
    elif keyword == "format":
        rule = "must be an RFC 3339 date-time with offset, e.g. 2026-11-20T14:00:07Z"
    else:  # a keyword added to the schema later: jsonschema's own words are still exact
        rule = error.message
    return _dotted(path), rule


# --------------------------------------------------------------------------- checking


def _name(obj: object, key: str) -> str | None:
    # Only a name the contract allows is repeated: a violation's sync_id and connector_id
    # go into events, whose schema holds them to the same limits (and UTF-8 spells them).
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if _is_key(value, _ID_MAX) and not _has_surrogate(value) else None


def _locator(line: int | None, sync_id: str | None) -> str:
    parts = []
    if line is not None:
        parts.append(f"line {line}")
    if sync_id is not None:
        parts.append(f"(sync_id {sync_id!r})" if parts else f"sync_id {sync_id!r}")
    return " ".join(parts) or "record"


def _violation(field: str, rule: str, *, line: int | None, sync_id: str | None,
               connector_id: str | None, raw: str, source: str | None) -> Violation:
    # A field (a key) or text may hold a lone surrogate: escaped, as UTF-8 cannot spell it.
    return Violation(record=_locator(line, sync_id), field=_printable(field),
                     rule=_printable(rule), line=line, sync_id=sync_id,
                     connector_id=connector_id, raw=_printable(raw[:RAW_LIMIT]), source=source)


def _too_deep(obj: object, depth: int = 1) -> bool:
    """Whether ``obj``, found at nesting level ``depth``, nests deeper than MAX_DEPTH."""
    # Iterative so a hostile record cannot exhaust the Python stack.
    if type(obj) is not dict and type(obj) is not list:
        return False
    limit = MAX_DEPTH
    stack = [(obj, depth)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def _out_of_order(started: datetime, finished: datetime,
                  now: datetime | None) -> tuple[str, str] | None:
    """The (field, rule) the two times break, if any."""
    if finished < started:
        return "finished_at", "must not be before started_at"
    if started > (now or datetime.now(UTC)) + MAX_FUTURE:
        return "started_at", "must not be more than 1 day in the future"
    return None


def _fast_line(text: str, *, line: int, now: datetime | None,
               source: str | None) -> Accepted | None:
    """An ordinary line accepted the short way (orjson), or None: then the line takes the
    full path (json with the duplicate-key and NaN checks, then ``_check``), which alone
    decides and explains anything unusual.

    The short way gives the very record and canonical text the full path gives, because
    it only answers for lines without a backslash (so no escapes: every quote in the
    text delimits a string, and no lone surrogates) that ``_fast_valid`` takes:

    * a repeated key drops a key (and its value) from the decoded object, so its
      canonical text has fewer quotes than the line;
    * orjson refuses NaN, Infinity and numbers too large for a float, and decodes an
      integer beyond 64 bits as a float, which it writes with an exponent
      (``_risky``), as it does every float it spells unlike ``repr``.
    """
    if "\\" in text:
        return None
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    times = _fast_valid(obj)
    if times is None or _out_of_order(*times, now) is not None:
        return None
    data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    if data.count(b'"') != text.count('"') or _risky(data) or len(data) > MAX_RECORD_BYTES:
        return None
    return Accepted(line=line, record=obj, content_hash=hashlib.sha256(data).hexdigest(),
                    canonical=data.decode("utf-8"), source=source, times=times)


def _check(obj: object, *, line: int | None, now: datetime | None, raw: str | None,
           source: str | None) -> Accepted | Violation:
    """Validate one parsed value; return what the caller stores or reports."""
    sync_id, connector_id = _name(obj, "sync_id"), _name(obj, "connector_id")

    def reject(field: str, rule: str) -> Violation:
        text = raw
        if text is None:  # a record handed over as a dict: show what we can
            try:
                text = json.dumps(obj, default=repr)[:RAW_LIMIT]
            except (ValueError, RecursionError):
                text = repr(obj)[:RAW_LIMIT]
        return _violation(field, rule, line=line, sync_id=sync_id, connector_id=connector_id,
                          raw=text, source=source)

    if type(obj) is not dict:
        return reject(WHOLE_RECORD, "must be a JSON object")
    times = _fast_valid(obj)
    if times is None:
        if _too_deep(obj):
            return reject(WHOLE_RECORD, f"must not be nested more than {MAX_DEPTH} levels deep")
        from jsonschema.exceptions import best_match

        error = best_match(_validator().iter_errors(obj))
        if error is not None:
            return reject(*_explain(error))
        times = parse_timestamp(obj["started_at"]), parse_timestamp(obj["finished_at"])
    started, finished = times
    assert started is not None and finished is not None  # the schema's format check
    broken = _out_of_order(started, finished, now)
    if broken is not None:
        return reject(*broken)
    try:
        text = canonical_json(obj)
    except ValueError:
        return reject(WHOLE_RECORD, "numbers must be finite (NaN and Infinity are not JSON)")
    except TypeError:
        return reject(WHOLE_RECORD, "must hold only JSON values")
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON): not UTF-8
        return reject(*(_surrogate_at(obj) or (WHOLE_RECORD, "must be valid Unicode")))
    if len(data) > MAX_RECORD_BYTES:
        return reject(WHOLE_RECORD, "must not be larger than 1 MiB")
    digest = hashlib.sha256(data).hexdigest()
    return Accepted(line=line, record=obj, content_hash=digest, canonical=text, source=source,
                    times=(started, finished))


def validate_record(obj: object, *, line: int | None = None,
                    now: datetime | None = None) -> Violation | None:
    """Check one parsed record against the contract.

    Parameters
    ----------
    obj : object
        The parsed record (normally a dict).
    line : int, optional
        1-based input line, used in the message.
    now : datetime, optional
        The clock for the "not in the future" rule (timezone-aware); defaults to now.

    Returns
    -------
    Violation or None
        The first broken rule, or None when the record meets the contract.
    """
    result = _check(obj, line=line, now=now, raw=None, source=None)
    return result if isinstance(result, Violation) else None


# --------------------------------------------------------------------------- parsing


class _DuplicateKey(ValueError):
    pass


class _NonFinite(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # cheap test first: duplicates are rare
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _constant(name: str) -> Any:
    raise _NonFinite(name)


_decoder = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant)

_SALVAGE = {
    key: re.compile(rb'"' + key.encode() + rb'"\s*:\s*"([^"\\]{1,256})"')
    for key in ("sync_id", "connector_id")
}


def _salvage(text: bytes | str, key: str) -> str | None:
    """Best-effort name from a record that would not parse, so the violation still
    names its connector (and a pause can be raised for it)."""
    head = text[:RAW_LIMIT]
    # surrogatepass: a name holding a surrogate then fails to decode below (no name),
    # where "replace" would make up another connector's name ("okta-?").
    data = head.encode("utf-8", "surrogatepass") if isinstance(head, str) else head
    match = _SALVAGE[key].search(data)
    if match is None:
        return None
    try:
        return match.group(1).decode("utf-8")
    except UnicodeDecodeError:  # a name we cannot spell back is no name
        return None


def _decode_failure(exc: Exception) -> tuple[str, str]:
    """Rule text for text that could not be turned into a value."""
    if isinstance(exc, _DuplicateKey):
        return WHOLE_RECORD, f"must not repeat the key {exc.args[0]!r}"
    if isinstance(exc, _NonFinite):
        return WHOLE_RECORD, f"numbers must be finite ({exc.args[0]} is not JSON)"
    if isinstance(exc, RecursionError):
        return WHOLE_RECORD, f"must not be nested more than {MAX_DEPTH} levels deep"
    if isinstance(exc, json.JSONDecodeError):
        return WHOLE_RECORD, f"is not valid JSON: {exc.msg} at column {exc.colno}"
    return WHOLE_RECORD, f"is not valid JSON: {exc}"


def _text_violation(text: bytes | str, field: str, rule: str, *, line: int | None,
                    source: str | None) -> Violation:
    raw = text[:RAW_LIMIT]
    raw_str = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return _violation(field, rule, line=line, sync_id=_salvage(text, "sync_id"),
                      connector_id=_salvage(text, "connector_id"), raw=raw_str, source=source)


def _byte_size(text: str | bytes) -> int:
    if isinstance(text, bytes) or text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def parse_lines(lines: Iterable[str | bytes], *, now: datetime | None = None,
                source: str | None = None) -> Iterator[Accepted | Violation]:
    """Parse JSON Lines, one record per line, and validate each.

    Blank lines are skipped (but counted). A UTF-8 byte-order mark at the start of the
    first line is tolerated. Lines over 1 MiB are rejected without being parsed; bytes
    that are not UTF-8 reject their line only.

    Parameters
    ----------
    lines : iterable of str or bytes
        The input, one line per item (a trailing newline is allowed).
    now : datetime, optional
        Clock for the "not in the future" rule.
    source : str, optional
        Input name carried on every result.

    Yields
    ------
    Accepted or Violation
        One per non-blank line, in input order.
    """
    for number, text in enumerate(lines, start=1):
        if number == 1:
            text = text.removeprefix(b"\xef\xbb\xbf" if isinstance(text, bytes) else "\ufeff")
        text = text.rstrip(b"\r\n" if isinstance(text, bytes) else "\r\n")
        if _byte_size(text) > MAX_RECORD_BYTES:
            yield _text_violation(text, WHOLE_RECORD, "must not be larger than 1 MiB",
                                  line=number, source=source)
            continue
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield _text_violation(text, WHOLE_RECORD,
                                      f"is not valid UTF-8 (byte {exc.start + 1})",
                                      line=number, source=source)
                continue
        if not text.strip():
            continue
        fast = _fast_line(text, line=number, now=now, source=source)
        if fast is not None:
            yield fast
            continue
        try:
            obj = _decoder.decode(text)
        except (ValueError, RecursionError) as exc:
            yield _text_violation(text, *_decode_failure(exc), line=number, source=source)
            continue
        yield _check(obj, line=number, now=now, raw=text, source=source)


_WS = re.compile(r"[ \t\r\n]*")


def _parse_document(doc: str, *, now: datetime | None,
                    source: str | None) -> Iterator[Accepted | Violation]:
    """Parse a JSON array of records, or one or more concatenated JSON objects.

    Elements are decoded one at a time (``raw_decode``) so each keeps its line number and
    one bad element does not hide the others; after a syntax error there is no safe
    place to resume, so the rest of the document is reported once.
    """
    lines = _LineCounter(doc)
    pos = _WS.match(doc, 0).end()
    in_array = doc.startswith("[", pos)
    if in_array:
        pos = _WS.match(doc, pos + 1).end()
        if doc.startswith("]", pos):
            in_array = False
            pos = _WS.match(doc, pos + 1).end()
    while pos < len(doc):
        line = lines.at(pos)
        try:
            obj, end = _decoder.raw_decode(doc, pos)
        except (ValueError, RecursionError) as exc:
            end = _end_of_refused(doc, pos, exc)
            if end is None:
                at = exc.lineno if isinstance(exc, json.JSONDecodeError) else line
                yield _text_violation(doc[pos:], *_decode_failure(exc), line=at, source=source)
                return
            yield _text_violation(doc[pos:end], *_decode_failure(exc), line=line,
                                  source=source)
        else:
            if end - pos > MAX_RECORD_BYTES and _byte_size(doc[pos:end]) > MAX_RECORD_BYTES:
                yield _text_violation(doc[pos:end], WHOLE_RECORD,
                                      "must not be larger than 1 MiB", line=line, source=source)
            else:
                yield _check(obj, line=line, now=now, raw=doc[pos:end], source=source)
        pos = _WS.match(doc, end).end()
        if not in_array:
            continue  # concatenated objects: the next one starts here
        if doc.startswith(",", pos):
            pos = _WS.match(doc, pos + 1).end()
            continue
        if doc.startswith("]", pos):
            in_array = False
            pos = _WS.match(doc, pos + 1).end()
            if pos < len(doc):
                yield _text_violation(doc[pos:], WHOLE_RECORD,
                                      "unexpected text after the closing ']'",
                                      line=lines.at(pos), source=source)
            return
        yield _text_violation(doc[pos:], WHOLE_RECORD,
                              "is not valid JSON: expected ',' or ']' in the array",
                              line=lines.at(pos), source=source)
        return
    if in_array:
        yield _text_violation("", WHOLE_RECORD, "is not valid JSON: the array is not closed",
                              line=lines.at(len(doc)), source=source)


_lenient = json.JSONDecoder()


def _end_of_refused(doc: str, pos: int, exc: BaseException) -> int | None:
    """Where a value the contract refused (a repeated key, NaN or Infinity) ends, so the
    elements after it are still read; None for a syntax error (no safe place to resume)."""
    if not isinstance(exc, _DuplicateKey | _NonFinite):
        return None
    try:
        return _lenient.raw_decode(doc, pos)[1]  # the same text, without the refusals
    except (ValueError, RecursionError):
        return None


class _LineCounter:
    """Line number of a position in a document, counted incrementally (positions only
    move forward, so the whole document is scanned once)."""

    def __init__(self, doc: str) -> None:
        self._doc, self._pos, self._line = doc, 0, 1

    def at(self, pos: int) -> int:
        self._line += self._doc.count("\n", self._pos, pos)
        self._pos = pos
        return self._line


def _bounded_lines(fh: IO[bytes], progress: Callable[[int], None] | None) -> Iterator[bytes]:
    """Yield lines, but never hold more than 1 MiB + 1 byte of one line in memory: the
    rest of an oversize line is drained and its first part yielded (and then rejected)."""
    while True:
        chunk = fh.readline(MAX_RECORD_BYTES + 2)  # content + "\r\n"
        if not chunk:
            return
        size = len(chunk)
        if size > MAX_RECORD_BYTES and not chunk.endswith(b"\n"):
            while True:
                more = fh.readline(1 << 20)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    break
        if progress is not None:
            progress(size)
        yield chunk


def _next_non_blank(lines: Iterator[bytes], head: list[bytes]) -> bytes | None:
    """The next line with content (stripped, BOM removed from the input's first line),
    keeping every line read in ``head``; None at the end of input."""
    for raw in lines:
        head.append(raw)
        text = raw.removeprefix(b"\xef\xbb\xbf") if len(head) == 1 else raw
        if text.strip():
            return text.strip()
    return None


def _is_json_lines(first: bytes, second: Callable[[], bytes | None]) -> bool:
    """Whether an input is JSON Lines, from its first non-blank line (and, if that is
    unclear, the next one).

    A complete object on one line means JSON Lines; an opening "[" means one document.
    A line that opens an object without closing it is either a pretty-printed object or
    a JSON Lines record cut short: the next line tells, since a record starts with "{"
    and the inside of an object never does. Without that look, one truncated first line
    would turn a whole JSON Lines batch into a single broken document.
    """
    if not first.startswith((b"{", b"[")) or first.endswith(b"}") and first.startswith(b"{"):
        return True
    if first.startswith(b"["):
        return False
    after = second()
    return after is not None and after.startswith(b"{")


def _read_one(fh: IO[bytes], *, source: str, now: datetime | None,
              progress: Callable[[int], None] | None) -> Iterator[Accepted | Violation]:
    """Pick the framing from the first non-blank line, then parse the stream."""
    lines = _bounded_lines(fh, progress)
    head: list[bytes] = []
    first = _next_non_blank(lines, head)
    if first is None:
        return  # empty input: nothing to do
    if _is_json_lines(first, lambda: _next_non_blank(lines, head)):
        yield from parse_lines(_chain(head, lines), now=now, source=source)
        return
    rest = fh.read(MAX_DOCUMENT_BYTES + 1)
    if progress is not None:
        progress(len(rest))
    data = b"".join(head) + rest
    if len(data) > MAX_DOCUMENT_BYTES:
        raise UsageError(f"{source}: a JSON document over {MAX_DOCUMENT_BYTES >> 20} MiB; "
                         "send large batches as JSON Lines")
    try:
        doc = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        yield _text_violation(data, WHOLE_RECORD, f"is not valid UTF-8 (line {line})",
                              line=line, source=source)
        return
    yield from _parse_document(doc, now=now, source=source)


def _chain(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from head
    yield from rest


def read_inputs(paths: Sequence[str], *, now: datetime | None = None,
                progress: Callable[[int], None] | None = None
                ) -> Iterator[Accepted | Violation]:
    """Read records from files and standard input.

    Each input may be one JSON object, a JSON array of objects, or JSON Lines; the framing
    is detected per input. Paths are checked before anything is read, so a typo fails
    the command before any record is stored.

    Parameters
    ----------
    paths : sequence of str
        File paths; ``"-"`` is standard input (at most once).
    now : datetime, optional
        Clock for the "not in the future" rule.
    progress : callable, optional
        Called with the number of bytes consumed, as reading goes (for progress bars).

    Returns
    -------
    iterator of Accepted or Violation
        Results in input order, each carrying its ``source``.

    Raises
    ------
    UsageError
        A path that is missing or not a readable file, or ``"-"`` given twice.
    """
    if list(paths).count("-") > 1:
        raise UsageError("standard input ('-') can be read only once")
    for path in paths:
        if path != "-" and not Path(path).is_file():
            raise UsageError(f"cannot read {path!r}: no such file")
    return _read_all(list(paths), now=now, progress=progress)


def _read_all(paths: list[str], *, now: datetime | None,
              progress: Callable[[int], None] | None) -> Iterator[Accepted | Violation]:
    for path in paths:
        if path == "-":
            yield from _read_one(sys.stdin.buffer, source="-", now=now, progress=progress)
            continue
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below, generator-safe
        except OSError as exc:
            raise UsageError(f"cannot read {path!r}: {exc.strerror}") from exc
        with fh:
            yield from _read_one(fh, source=path, now=now, progress=progress)
