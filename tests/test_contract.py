"""The sync-record contract: every rule accepted and rejected, with the exact message."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_record, set_path, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from detector import contract
from detector.contract import (
    MAX_RECORD_BYTES,
    Accepted,
    Violation,
    parse_lines,
    read_inputs,
    validate_record,
)
from detector.errors import UsageError

NOW = datetime(2025, 6, 1, tzinfo=UTC)
INT_RULE = "must be an integer >= 0"
RATE_RULE = "must be a number in [0, 1]"
TS_RULE = "must be an RFC 3339 date-time with offset, e.g. 2026-11-20T14:00:07Z"
FAILED = {"status": "failed", "error_class": "auth", "resources": ...}

# (case id, field path to change, new value (... deletes), expected field, expected rule)
REJECTED = [
    ("sync_id missing", "sync_id", ..., "sync_id", "is required"),
    ("sync_id empty", "sync_id", "", "sync_id", "must not be empty"),
    ("sync_id number", "sync_id", 12, "sync_id", "must be a string"),
    ("sync_id too long", "sync_id", "x" * 257, "sync_id", "must be at most 256 characters long"),
    ("connector_id missing", "connector_id", ..., "connector_id", "is required"),
    ("connector_kind number", "connector_kind", 3, "connector_kind",
     "must be a string or null"),
    ("started_at missing", "started_at", ..., "started_at", "is required"),
    ("started_at naive", "started_at", "2025-03-03T00:00:00", "started_at", TS_RULE),
    ("started_at date only", "started_at", "2025-03-03", "started_at", TS_RULE),
    ("started_at month 13", "started_at", "2025-13-03T00:00:00Z", "started_at", TS_RULE),
    ("started_at space", "started_at", "2025-03-03 00:00:00Z", "started_at", TS_RULE),
    ("finished_at naive", "finished_at", "2025-03-03T00:02:00", "finished_at", TS_RULE),
    ("finished before started", "finished_at", "2025-03-02T23:59:59Z", "finished_at",
     "must not be before started_at"),
    ("finished before started across offsets", "finished_at", "2025-03-03T00:30:00+01:00",
     "finished_at", "must not be before started_at"),
    ("status missing", "status", ..., "status", "is required"),
    ("status unknown", "status", "ok", "status",
     'must be one of "succeeded", "partial", "failed"'),
    ("error_class unknown", "error_class", "dns", "error_class",
     'must be one of null, "auth", "rate_limit", "timeout", "schema", "write", "network", '
     '"other"'),
    ("resources missing", "resources", ..., "resources", "is required unless status is 'failed'"),
    ("resources a list", "resources", [], "resources", "must be an object"),
    ("resource type empty name", "resources", {"": {"count": 1}}, "resources.",
     "key must be 1 to 128 characters long"),
    ("count missing", "resources.user.count", ..., "resources.user.count", "is required"),
    ("count negative", "resources.user.count", -1, "resources.user.count", INT_RULE),
    ("count fraction", "resources.user.count", 1.5, "resources.user.count", INT_RULE),
    ("count boolean", "resources.user.count", True, "resources.user.count", INT_RULE),
    ("count string", "resources.user.count", "5", "resources.user.count", INT_RULE),
    ("count absurd", "resources.user.count", 10**13, "resources.user.count",
     "must be an integer <= 1000000000000"),
    ("added negative", "resources.user.added", -3, "resources.user.added", INT_RULE),
    ("removed boolean", "resources.user.removed", False, "resources.user.removed", INT_RULE),
    ("modified float", "resources.group.modified", 0.5, "resources.group.modified", INT_RULE),
    ("duplicates null", "resources.user.duplicates", None, "resources.user.duplicates",
     INT_RULE),
    ("null rate above 1", "resources.user.null_rates.email", 1.5,
     "resources.user.null_rates.email", RATE_RULE),
    ("null rate negative", "resources.user.null_rates.email", -0.1,
     "resources.user.null_rates.email", RATE_RULE),
    ("null rate boolean", "resources.user.null_rates.email", True,
     "resources.user.null_rates.email", RATE_RULE),
    ("null_rates a list", "resources.user.null_rates", [0.1], "resources.user.null_rates",
     "must be an object"),
    ("api requests negative", "api.requests", -1, "api.requests", INT_RULE),
    ("api retries boolean", "api.retries", True, "api.retries", INT_RULE),
    ("api latency negative", "api.latency_p95_ms", -0.5, "api.latency_p95_ms",
     "must be a number >= 0"),
    ("api latency string", "api.latency_p50_ms", "fast", "api.latency_p50_ms",
     "must be a number >= 0"),
    ("api not an object", "api", 5, "api", "must be an object"),
    ("metric string", "metrics.mfa_enrolled_ratio", "high", "metrics.mfa_enrolled_ratio",
     "must be a number"),
    ("metric boolean", "metrics.mfa_enrolled_ratio", True, "metrics.mfa_enrolled_ratio",
     "must be a number"),
    ("metric NaN (dict input)", "metrics.mfa_enrolled_ratio", float("nan"),
     "metrics.mfa_enrolled_ratio", "must be a number"),
]


@pytest.mark.parametrize(("path", "value", "field", "rule"),
                         [case[1:] for case in REJECTED], ids=[case[0] for case in REJECTED])
def test_each_rule_rejects_with_field_and_rule(path: str, value: Any, field: str,
                                               rule: str) -> None:
    record = set_path(make_record(), path, value)
    violation = validate_record(record, line=3, now=NOW)
    assert violation is not None
    assert (violation.field, violation.rule) == (field, rule)
    sync_id = record.get("sync_id")
    # Only an id the contract allows is repeated (it goes into the invalid_record event).
    sync_id = sync_id if isinstance(sync_id, str) and 0 < len(sync_id) <= 256 else None
    where = f"line 3 (sync_id {sync_id!r})" if sync_id else "line 3"
    assert str(violation) == f"{where}: field '{field}': {rule}"
    assert violation.connector_id == record.get("connector_id")


def test_future_start_is_rejected() -> None:
    record = make_record(started_at="2025-06-02T00:00:01Z", finished_at="2025-06-02T00:05:00Z")
    violation = validate_record(record, now=NOW)
    assert str(violation) == ("sync_id 'okta-prod:0': field 'started_at': must not be more "
                              "than 1 day in the future")
    # One day ahead is clock drift, not a lie.
    ok = make_record(started_at="2025-06-02T00:00:00Z", finished_at="2025-06-02T00:05:00Z")
    assert validate_record(ok, now=NOW) is None


ACCEPTED = [
    ("typical", {}),
    ("failed without resources", FAILED),
    ("partial with resources", {"status": "partial", "error_class": "timeout"}),
    ("no optional fields", {"connector_kind": ..., "error_class": ..., "api": ...,
                            "metrics": ...}),
    ("kind null", {"connector_kind": None}),
    ("offset +02:00", {"started_at": "2025-03-03T02:00:00+02:00",
                       "finished_at": "2025-03-03T00:01:00Z"}),
    ("lower-case t and z, fractional seconds", {"started_at": "2025-03-03t00:00:00.123456z"}),
    ("finished equals started", {"finished_at": "2025-03-03T00:00:00Z"}),
    ("unknown keys kept", {"x_vendor": {"trace": [1, 2, {"deep": True}]}}),
    ("empty resources", {"resources": {}}),
    ("integral float count (JSON Schema integer)", {"resources": {"user": {"count": 5.0}}}),
]


@pytest.mark.parametrize("overrides", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_valid_records_are_accepted(overrides: dict[str, Any]) -> None:
    record = make_record(**overrides)
    assert validate_record(record, now=NOW) is None
    [result] = parse_lines([json.dumps(record)], now=NOW)
    assert isinstance(result, Accepted)
    assert result.record == record
    assert result.content_hash == contract.hashlib.sha256(
        contract.canonical_json(record).encode()).hexdigest()


def _line(record: dict[str, Any], **replace: str) -> str:
    text = json.dumps(record)
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


LINE_CASES = [
    # (case id, raw line, expected message)
    ("NaN", _line(make_record(), **{"0.987": "NaN"}),
     "line 1 (sync_id 'okta-prod:0'): numbers must be finite (NaN is not JSON)"),
    ("Infinity", _line(make_record(), **{"180.0": "Infinity"}),
     "line 1 (sync_id 'okta-prod:0'): numbers must be finite (Infinity is not JSON)"),
    ("-Infinity", _line(make_record(), **{"180.0": "-Infinity"}),
     "line 1 (sync_id 'okta-prod:0'): numbers must be finite (-Infinity is not JSON)"),
    ("duplicate key", '{"sync_id": "a", "connector_id": "c1", "connector_id": "c2"}',
     "line 1 (sync_id 'a'): must not repeat the key 'connector_id'"),
    ("duplicate nested key", _line(make_record(), **{'"added": 3': '"added": 3, "added": 4'}),
     "line 1 (sync_id 'okta-prod:0'): must not repeat the key 'added'"),
    ("not JSON", '{"sync_id": "a", "connector_id": "c1",',
     "line 1 (sync_id 'a'): is not valid JSON: Expecting property name enclosed in double "
     "quotes at column 39"),
    ("array, not object", "[1, 2]", "line 1: must be a JSON object"),
    ("string, not object", '"hello"', "line 1: must be a JSON object"),
    ("nested 9 deep", _line(make_record(x=[[[[[[[[1]]]]]]]])),
     "line 1 (sync_id 'okta-prod:0'): must not be nested more than 8 levels deep"),
    ("nested 100000 deep", "[" * 100_000, "line 1: must not be nested more than 8 levels deep"),
]


@pytest.mark.parametrize(("raw", "message"), [c[1:] for c in LINE_CASES],
                         ids=[c[0] for c in LINE_CASES])
def test_text_level_rules(raw: str, message: str) -> None:
    [result] = parse_lines([raw], now=NOW)
    assert isinstance(result, Violation)
    assert str(result) == message
    assert result.line == 1
    assert result.raw == raw[: contract.RAW_LIMIT]


LONE_SURROGATES = [
    # (record path, value, field named, rule)
    ("sync_id", "s\ud800", "sync_id", "must be valid Unicode (\\ud800 is a lone UTF-16 surrogate)"),
    ("connector_id", "\udfffc", "connector_id",
     "must be valid Unicode (\\udfff is a lone UTF-16 surrogate)"),
    ("resources.user.null_rates", {"e\udc00": 0.5}, "resources.user.null_rates.e\\udc00",
     "key must be valid Unicode (\\udc00 is a lone UTF-16 surrogate)"),
    ("extra", [1, {"a": ["x", "y\ud83d"]}], "extra.1.a.1",
     "must be valid Unicode (\\ud83d is a lone UTF-16 surrogate)"),
]


@pytest.mark.parametrize(("path", "value", "field", "rule"), LONE_SURROGATES,
                         ids=[c[2] for c in LONE_SURROGATES])
def test_lone_surrogates_are_rejected_by_field(path: str, value: Any, field: str,
                                              rule: str) -> None:
    """A record handed over as a dict: the violation names the field in printable text
    and repeats no name that UTF-8 cannot spell."""
    record = set_path(make_record(extra="ok"), path, value)
    violation = validate_record(record, line=3, now=NOW)
    assert violation is not None
    assert (violation.field, violation.rule) == (field, rule)
    assert violation.sync_id == (None if path == "sync_id" else record["sync_id"])
    assert violation.connector_id == (None if path == "connector_id" else "okta-prod")
    for text in (str(violation), violation.field, violation.raw):
        text.encode("utf-8")  # printable, storable


def test_lone_surrogates_in_text_reject_only_their_line() -> None:
    """Escaped (the usual form) and raw in a str line (an API caller): each rejected, the
    lines around it accepted; a name salvaged from broken JSON is never made up."""
    good = json.dumps(make_record())
    escaped = json.dumps(make_record(index=1, extra="\ud800"))
    raw = json.dumps(make_record(index=2, extra="\ud800"), ensure_ascii=False)
    broken = '{"sync_id": "s\ud800", "connector_id": "okta\udc00", "status": '
    results = list(parse_lines([good, escaped, raw, broken, good.replace('"okta-prod:0"',
                                                                         '"okta-prod:3"')],
                               now=NOW))
    assert [type(r).__name__ for r in results] == ["Accepted", "Violation", "Violation",
                                                   "Violation", "Accepted"]
    assert results[1].field == results[2].field == "extra"
    assert (results[3].sync_id, results[3].connector_id) == (None, None)
    assert "\\ud800" in results[2].raw and "\\ud800" in results[3].raw


def test_nested_eight_deep_is_allowed() -> None:
    record = make_record(x=[[[[[[[1]]]]]]])  # record 1 + 7 lists = 8 levels
    assert validate_record(record, now=NOW) is None


def test_violations_name_the_connector_even_when_json_is_broken() -> None:
    lines = ['{"sync_id": "s1", "connector_id": "okta-prod", "status": ',
             b'{"sync_id": "s2", "connector_id": "aws-1", "x": "\xff"}',
             '{"connector_id": "gh-1"}']
    results = list(parse_lines(lines, now=NOW))
    assert [(v.connector_id, v.sync_id) for v in results] == [
        ("okta-prod", "s1"), ("aws-1", "s2"), ("gh-1", None)]
    assert str(results[1]) == "line 2 (sync_id 's2'): is not valid UTF-8 (byte 50)"
    assert str(results[2]) == "line 3: field 'sync_id': is required"


def test_non_utf8_rejects_only_its_line() -> None:
    good = json.dumps(make_record()).encode()
    results = list(parse_lines([good, b"\xc3\x28 not utf-8", good.replace(b":0", b":1")],
                               now=NOW))
    assert [type(r).__name__ for r in results] == ["Accepted", "Violation", "Accepted"]
    assert results[1].line == 2


def test_bom_blank_lines_and_line_numbers() -> None:
    a, b = make_record(index=0), make_record(index=1)
    lines = ["\ufeff" + json.dumps(a), "", "   ", json.dumps(b), json.dumps(make_record(sync_id=1))]
    results = list(parse_lines(lines, now=NOW))
    assert [r.line for r in results] == [1, 4, 5]
    assert results[0].record == a
    assert str(results[2]) == "line 5: field 'sync_id': must be a string"


def test_oversize_line_is_rejected_without_parsing() -> None:
    big = '{"sync_id": "big", "connector_id": "okta-prod", "pad": "' + "x" * MAX_RECORD_BYTES
    [result] = parse_lines([big + '"}'], now=NOW)
    assert str(result) == "line 1 (sync_id 'big'): must not be larger than 1 MiB"
    assert result.connector_id == "okta-prod"
    assert len(result.raw) == contract.RAW_LIMIT


def test_oversize_line_in_a_file_is_skipped_and_the_next_line_read(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    with path.open("w") as fh:
        fh.write(json.dumps(make_record(index=0)) + "\n")
        fh.write('{"connector_id": "okta-prod", "pad": "' + "x" * (3 * MAX_RECORD_BYTES) + '"}\n')
        fh.write(json.dumps(make_record(index=1)) + "\n")
    results = list(read_inputs([str(path)], now=NOW))
    assert [type(r).__name__ for r in results] == ["Accepted", "Violation", "Accepted"]
    assert [r.line for r in results] == [1, 2, 3]
    assert results[1].rule == "must not be larger than 1 MiB"


def test_fast_path_takes_typical_records() -> None:
    """Ordinary records must not fall through to jsonschema (it is ~20x slower)."""
    for overrides in [c[1] for c in ACCEPTED if "float" not in c[0]]:
        assert contract._fast_valid(make_record(**overrides)) is not None, overrides


# Values of every JSON type, so generated records break the schema in many ways.
_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**13), st.floats(-2, 2),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
    st.sampled_from(["2025-03-03T00:00:00Z", "2025-03-03T00:00:00", "succeeded", "failed"]),
)
_json = st.recursive(_json_scalars, lambda kids: st.lists(kids, max_size=3)
                     | st.dictionaries(st.text(max_size=3), kids, max_size=3), max_leaves=8)


@st.composite
def _mutated_records(draw: st.DrawFn) -> dict[str, Any]:
    record = make_record(**draw(st.sampled_from([c[1] for c in ACCEPTED])))
    paths = ["sync_id", "connector_id", "connector_kind", "started_at", "finished_at",
             "status", "error_class", "resources", "resources.user", "resources.user.count",
             "resources.user.added", "resources.user.null_rates",
             "resources.user.null_rates.email", "resources.user.extra", "api",
             "api.requests", "api.latency_p50_ms", "api.extra", "metrics",
             "metrics.mfa_enrolled_ratio", "extra"]
    for path in draw(st.lists(st.sampled_from(paths), max_size=3)):
        value = draw(st.one_of(st.just(...), _json))
        with contextlib.suppress(KeyError, TypeError):  # the parent is no longer an object
            record = set_path(record, path, value)
    return record


@settings(max_examples=400, deadline=None)
@given(_mutated_records())
def test_fast_path_never_accepts_what_the_schema_rejects(record: dict[str, Any]) -> None:
    if contract._fast_valid(record) is not None:
        assert contract._validator().is_valid(record)
        assert not contract._too_deep(record)


def test_read_inputs_array_object_and_jsonl(tmp_path: Path) -> None:
    recs = [make_record(index=i) for i in range(3)]
    array = tmp_path / "a.json"
    array.write_text("[\n" + ",\n".join(json.dumps(r, indent=1) for r in recs[:2]) + "\n]\n")
    single = tmp_path / "one.json"
    single.write_text("\ufeff" + json.dumps(recs[2], indent=2))
    jsonl = write_jsonl(tmp_path / "b.jsonl", [recs[0], "{broken"])
    results = list(read_inputs([str(array), str(single), str(jsonl)], now=NOW))
    assert [(type(r).__name__, r.source, r.line) for r in results] == [
        ("Accepted", str(array), 2), ("Accepted", str(array), 2 + json.dumps(
            recs[0], indent=1).count("\n") + 1),
        ("Accepted", str(single), 1), ("Accepted", str(jsonl), 1),
        ("Violation", str(jsonl), 2)]
    assert [r.record for r in results[:4]] == [recs[0], recs[1], recs[2], recs[0]]


def test_array_element_errors_keep_their_line(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('[\n{"sync_id": "x"},\n"text",\n{"sync_id": "y" "bad"}\n]')
    results = list(read_inputs([str(path)], now=NOW))
    assert [str(r) for r in results] == [
        "line 2 (sync_id 'x'): field 'connector_id': is required",
        "line 3: must be a JSON object",
        "line 4 (sync_id 'y'): is not valid JSON: Expecting ',' delimiter at column 17",
    ]


def test_read_inputs_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.dumps([make_record(index=0), make_record(index=1)]).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    results = list(read_inputs(["-"], now=NOW))
    assert [r.record["sync_id"] for r in results] == ["okta-prod:0", "okta-prod:1"]
    assert {r.source for r in results} == {"-"}


def test_read_inputs_checks_paths_before_reading(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^cannot read '.*nope.jsonl': no such file$"):
        read_inputs([str(write_jsonl(tmp_path / "ok.jsonl", [make_record()])),
                     str(tmp_path / "nope.jsonl")])
    with pytest.raises(UsageError, match="only once"):
        read_inputs(["-", "-"])


def test_content_hash_ignores_key_order_and_whitespace() -> None:
    record = make_record()
    shuffled = dict(reversed(list(record.items())))
    a, b = parse_lines([json.dumps(record), json.dumps(shuffled, indent=None,
                                                       separators=(", ", " : "))], now=NOW)
    assert a.content_hash == b.content_hash
    assert a.canonical == b.canonical


# Ordinary lines are accepted the short way (orjson, see contract._fast_line); these pin
# the values where orjson and json part ways.
ODD_VALUES = [
    ("small floats", [1e-05, -7.1e-05, 1.5e-07, 0.0001, 5e-324]),
    ("large floats", [1e16, 1.2345678901234568e17, 1e300, 999999999999999.9]),
    ("integers past 64 bits", [2**64, -(2**63) - 1, 10**30]),
    ("overflowing number", "1e999"),
    ("escapes", "tab\there \"q\" \\ \b\f\n\r \x00\x1f \x7f \u2028 é 😀"),
    ("null spelt with escapes", "\\u006eull"),
    ("keys in code point order", {"b": 1, "a": None, "é": 2, "A": 3, "😀": 4, "\uffff": 5}),
]


@pytest.mark.parametrize("value", [c[1] for c in ODD_VALUES], ids=[c[0] for c in ODD_VALUES])
def test_canonical_text_of_a_line_is_what_json_writes(value: Any) -> None:
    text = json.dumps(make_record(extra=value), ensure_ascii=False)
    if value == "1e999":
        text = text.replace('"1e999"', "1e999")
    elif value == "\\u006eull":
        text = text.replace("\\\\u006eull", "\\u006eull")
    [result] = parse_lines([text], now=NOW)
    try:
        expected = contract.canonical_json(json.loads(text))
    except ValueError:  # 1e999 decodes to infinity: refused, as json refuses it
        assert isinstance(result, Violation)
        assert result.rule == "numbers must be finite (NaN and Infinity are not JSON)"
        return
    assert isinstance(result, Accepted)
    assert result.canonical == expected
    assert result.content_hash == contract.hashlib.sha256(expected.encode()).hexdigest()


def test_canonical_floats_are_spelt_as_repr() -> None:
    """orjson and repr differ only where _RISKY_NUMBER sends the text back to json."""
    rng = np.random.default_rng(5)
    floats = np.concatenate([
        rng.uniform(-1, 1, 60_000) * 10.0 ** rng.integers(-9, 21, 60_000),
        np.array([round(v, d) for v, d in zip(rng.uniform(0, 1e6, 40_000).tolist(),
                                               rng.integers(0, 8, 40_000).tolist(),
                                               strict=True)]),
        rng.integers(0, 2**64, 40_000, dtype=np.uint64).view(np.float64),
    ])
    for x in floats[np.isfinite(floats)].tolist():
        fast = contract.orjson.dumps(x)
        if fast != repr(x).encode():
            assert contract._RISKY_NUMBER.search(fast), (x, fast)


@pytest.mark.parametrize("text", [b'{"a":1e-7}', b'{"a":"x","b":[2.5e+300]}', b'{"a":0.00001}',
                                  b'{"a":"azure-ad","b":1}', b'{"e-":"e+","x":"1e"}', b"e-1"])
def test_risky_is_the_regex(text: bytes) -> None:
    assert contract._risky(text) == bool(contract._RISKY_NUMBER.search(text))



def _full_path(text: str) -> Accepted | Violation:
    """What parse_lines gives a line without the short way (json, then _check)."""
    try:
        obj = contract._decoder.decode(text)
    except (ValueError, RecursionError) as exc:
        return contract._text_violation(text, *contract._decode_failure(exc), line=1,
                                        source=None)
    return contract._check(obj, line=1, now=NOW, raw=text, source=None)


SHORT_WAY_CASES = [
    ("ordinary", json.dumps(make_record())),
    ("compact", json.dumps(make_record(), separators=(",", ":"))),
    ("repeated key", json.dumps(make_record()).replace('"added": 3', '"added": 3, "added": 4')),
    ("repeated key, space before colon",
     json.dumps(make_record()).replace('"added": 3', '"added" : 3, "added": 4')),
    ("repeated key, escaped", json.dumps(make_record()).replace('"added": 3',
                                                                '"\\u0061dded": 3, "added": 4')),
    ("repeated top key", json.dumps(make_record(extra={"a": 1})).replace(
        '"extra"', '"extra": 1, "extra"')),
    ("NaN", json.dumps(make_record()).replace("0.987", "NaN")),
    ("overflow", json.dumps(make_record(extra=1.0)).replace('"extra": 1.0', '"extra": 1e999')),
    ("integer past 64 bits", json.dumps(make_record(extra=2**70))),
    ("count past 64 bits",
     json.dumps(make_record()).replace('"added": 3', '"added": 1' + "0" * 25)),
    ("small float", json.dumps(make_record(extra=[1e-07, 0.00001]))),
    ("deep extra", json.dumps(make_record(extra=[[[[[[[[[[1]]]]]]]]]]))),
    ("very deep extra", json.dumps(make_record()).replace(
        '{"sync_id"', '{"x": ' + "[" * 3000 + "]" * 3000 + ', "sync_id"')),
    ("finished first", json.dumps(make_record(started_at="2025-05-01T10:00:07Z",
                                              finished_at="2025-05-01T09:00:07Z"))),
    ("future", json.dumps(make_record(started_at="2025-07-01T00:00:00Z",
                                      finished_at="2025-07-01T00:01:00Z"))),
    ("escaped text", json.dumps(make_record(extra="tab\tquote\"é"))),
    ("raw non-ASCII", json.dumps(make_record(extra="é😀\u2028"), ensure_ascii=False)),
    ("not an object", "[1, 2]"),
    ("escaped lone surrogate", json.dumps(make_record(extra="\ud800"))),
    ("escaped lone surrogate in a key", json.dumps(make_record(extra={"k\udc00": 1}))),
    ("escaped surrogate pair", json.dumps(make_record(extra="\ud83d\ude00"))),
    ("lone surrogate in text", json.dumps(make_record(extra="\ud800"), ensure_ascii=False)),
    ("bad count", json.dumps(make_record()).replace('"added": 3', '"added": -3')),
]


SHORT_WAY = {c[1] for c in SHORT_WAY_CASES if c[0] in ("ordinary", "compact", "raw non-ASCII")}


@pytest.mark.parametrize("text", [c[1] for c in SHORT_WAY_CASES],
                         ids=[c[0] for c in SHORT_WAY_CASES])
def test_the_short_way_gives_what_the_full_path_gives(text: str) -> None:
    [result] = parse_lines([text], now=NOW)
    assert result == _full_path(text)
    short = contract._fast_line(text, line=1, now=NOW, source=None)
    assert (short is not None) == (text in SHORT_WAY)
    if isinstance(result, Accepted):
        assert list(result.record) == list(json.loads(text))  # key order kept too
