"""Native events: built events meet native-event.schema.json; ids and bytes are stable."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from event_samples import (
    SCORED_AT,
    all_findings,
    invalid_event,
    pause_event,
    proceed_event,
    stale_event,
    violation,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.events import native
from detector.events.native import NativeEventError, Reason, RuleHit, sync_scored
from detector.events.scored import _certainly_valid

SCHEMA_PATH = Path(__file__).parents[1] / "detector" / "schemas" / "native-event.schema.json"


@pytest.fixture(scope="module")
def schema_validator() -> jsonschema.Draft202012Validator:
    # Read from the file, not through detector.events.native: the file is the contract.
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def every_event() -> dict[str, dict]:
    return {**all_findings(), "proceed": proceed_event()}


@pytest.mark.parametrize("name", sorted(every_event()))
def test_built_events_meet_the_schema(schema_validator, name):
    event = json.loads(native.to_json(every_event()[name]))  # what a consumer reads
    errors = [e.message for e in schema_validator.iter_errors(event)]
    assert errors == []


def test_architecture_example_meets_the_schema(schema_validator):
    # The example in docs/architecture.md, plus the two keys the variants need.
    example = {
        "event_version": "1", "event_type": "sync_scored",
        "event_id": native.event_id("sync_scored", "okta-prod", "okta-prod:1"),
        "sync_id": "okta-prod:1", "connector_id": "okta-prod", "connector_kind": "okta",
        "scored_at": "2026-11-20T14:03:41.000Z", "model_version": "3", "decision": "pause",
        "severity": "high", "criticality": "standard", "score": 1.7, "cutoff": 1.2,
        "tail_probability": 0.0003,
        "reasons": [{"metric": "user.count_change", "observed": 8000, "expected": 18400,
                     "expected_range": [18300, 18500], "distance": 41.2, "description": "..."}],
        "rule_hits": [{"rule": "count_to_zero", "detail": "resource 'group' returned 0 records"}],
        "connector_paused": False, "cold_start": False, "replay": False,
    }
    assert list(schema_validator.iter_errors(example)) == []
    native.validate(example)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda e: e.pop("sync_id"), "sync_id"),
        (lambda e: e.update(decision="stop"), "decision"),
        (lambda e: e.update(tail_probability=1.5), "tail_probability"),
        (lambda e: e.update(scored_at="2026-11-20 14:03"), "scored_at"),
        (lambda e: e["reasons"][0].update(expected_range=[1]), "expected_range"),
        (lambda e: e.update(extra=1), "extra"),
        (lambda e: e.update(event_type="something"), "event_type"),
    ],
)
def test_schema_rejects_broken_events(schema_validator, mutate, needle):
    event = json.loads(native.to_json(pause_event()))
    mutate(event)
    assert list(schema_validator.iter_errors(event)), "schema accepted a broken event"
    with pytest.raises(NativeEventError, match=needle):
        native.validate(event)


def test_enumerations_are_the_schemas(tmp_path: Path):
    """The decisions, severities and criticalities of events, of the batch's column checks
    and of the policy file are the schema's, in the types' order."""
    from detector.errors import UsageError
    from detector.policy import load_policy

    defs = native.schema()["$defs"]
    assert tuple(defs["sync_scored"]["properties"]["decision"]["enum"]) == native.DECISIONS
    assert tuple(defs["severity"]["enum"]) == native.SEVERITIES
    assert tuple(defs["criticality"]["enum"]) == native.CRITICALITIES
    path = tmp_path / "policy.toml"
    for severity in native.SEVERITIES:
        path.write_text(f'[criticality.standard]\nseverity = "{severity}"\n')
        assert load_policy(path).criticalities["standard"]["severity"] == severity
    path.write_text('[criticality.standard]\nseverity = "urgent"\n')
    with pytest.raises(UsageError, match="severity must be one of"):
        load_policy(path)


def test_event_id_is_deterministic_and_namespace_is_pinned():
    # Changing the namespace would change every finding uid SOAR tools de-duplicate on.
    assert str(native.EVENT_NAMESPACE) == "323bf08e-e3bc-5610-9573-e614e1c20a9a"
    a, b = pause_event(), pause_event()
    assert a["event_id"] == b["event_id"]
    assert uuid.UUID(a["event_id"]).version == 5
    assert pause_event(sync_id="other")["event_id"] != a["event_id"]
    # The decision and the time do not change identity: a replay is the same finding.
    assert pause_event(replay=True, scored_at="2027-01-01T00:00:00Z")["event_id"] == a["event_id"]
    assert a["event_id"] == native.event_id("sync_scored", a["connector_id"], a["sync_id"])


def test_stale_episode_keeps_its_id_across_checks():
    first = stale_event(checked_at="2026-11-20T18:00:00Z")
    later = stale_event(checked_at="2026-11-20T19:00:00Z")
    assert first["event_id"] == later["event_id"]
    assert later["overdue_by_s"] == 6 * 3600  # 7 h since the last sync, 1 h interval
    assert first["overdue_by_s"] == 5 * 3600
    assert stale_event(last_sync_at="2026-11-20T13:00:00Z")["event_id"] != first["event_id"]


def test_stale_without_last_sync_needs_overdue():
    with pytest.raises(NativeEventError, match="overdue_by_s is required"):
        stale_event(last_sync_at=None)


def test_to_json_has_documented_key_order_whatever_the_input_order():
    event = pause_event()
    shuffled = dict(reversed(list(event.items())))
    shuffled["reasons"] = [dict(reversed(list(r.items()))) for r in event["reasons"]]
    assert native.to_json(shuffled) == native.to_json(event)
    keys = list(json.loads(native.to_json(event)))
    assert keys[:4] == ["event_version", "event_type", "event_id", "sync_id"]
    assert keys == list(native.schema()["$defs"]["sync_scored"]["required"])
    assert "\n" not in native.to_json(event)


def test_timestamps_are_normalised_to_utc_milliseconds():
    event = pause_event(scored_at="2026-11-20T15:03:41.5+01:00")
    assert event["scored_at"] == "2026-11-20T14:03:41.500Z"
    with pytest.raises(NativeEventError, match="no timezone offset"):
        pause_event(scored_at="2026-11-20T14:03:41")


def test_numpy_numbers_become_json_numbers_and_nan_is_refused():
    event = pause_event(score=np.float64(1.25), cutoff=np.float32(1.0),
                        reasons=[Reason("m", np.int64(3), 5.0, (4, 6), 1.0, "m is low")])
    text = native.to_json(event)
    assert json.loads(text)["score"] == 1.25
    assert json.loads(text)["reasons"][0]["observed"] == 3
    with pytest.raises(NativeEventError, match="score must be finite"):
        pause_event(score=math.nan)
    with pytest.raises(NativeEventError, match="must be a number"):
        pause_event(cutoff="high")


def test_reasons_and_rule_hits_accept_mappings():
    event = sync_scored(
        sync_id="s", connector_id="c", scored_at=SCORED_AT, decision="review", severity="low",
        reasons=[{"metric": "m", "observed": 1, "expected": 2, "expected_range": [1.5, None],
                  "distance": 0.5, "description": "m fell"}],
        rule_hits=[{"rule": "stale", "detail": "late"}],
    )
    assert event["reasons"][0]["expected_range"] == [1.5, None]
    assert event["rule_hits"] == [RuleHit("stale", "late").to_dict()]


def test_invalid_record_is_a_pause_without_the_raw_text():
    event = invalid_event()
    assert event["decision"] == "pause"
    assert event["rule_hits"][0]["rule"] == "invalid_record"
    assert event["violation"]["message"] == str(violation())
    assert '"count": -1' not in native.to_json(event)  # raw text may hold personal data
    assert len(event["raw_sha256"]) == 64
    # No sync_id: the raw text's hash keeps the id stable across re-reads of the input.
    a = invalid_event(sync_id=None, record="line 9", line=9)
    b = invalid_event(sync_id=None, record="line 12", line=12)
    assert a["event_id"] == b["event_id"]


def test_invalid_record_needs_a_connector():
    with pytest.raises(NativeEventError, match="names none"):
        invalid_event(connector_id=None)


def test_invalid_record_from_the_real_contract_violation(schema_validator):
    contract = pytest.importorskip("detector.contract")
    v = contract.Violation(record="line 2", field="status", rule="must be one of ...", line=2,
                           sync_id="x:1", connector_id="x", raw='{"status": "odd"}')
    event = native.invalid_record(v, scored_at=SCORED_AT)
    assert list(schema_validator.iter_errors(event)) == []
    assert event["violation"]["message"] == str(v)


def test_event_time_reads_the_variant_time_field():
    assert native.event_time(stale_event()).isoformat() == "2026-11-20T18:00:00+00:00"
    assert native.event_time(pause_event()).isoformat() == "2026-11-20T14:03:41+00:00"


def _stdlib(payload) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def test_dumps_writes_what_the_json_module_writes():
    """The fast encoder gives the standard library's text up to how numbers are spelt."""
    payloads = [native.canonical(e) for e in every_event().values()] + [
        {"text": "é \u2028 \"q\" \\ \n", "small": 1e-05, "big": 1e16, "neg": -0.0,
         "huge": 2**70, "keys": {1: "int key"}, "tuple": (1, None, True)},
        {"numpy": np.float64(0.25)},  # a float subclass: handed to the json module
    ]
    for payload in payloads:
        text = native.dumps(payload)
        assert json.loads(text) == json.loads(_stdlib(payload))
        assert "\n" not in text
        assert list(json.loads(text)) == list(json.loads(_stdlib(payload)))  # key order


@pytest.mark.parametrize("payload", [
    {"x": math.nan}, {"x": [None, {"y": -math.inf}]}, {"x": None, "y": [math.inf]},
    {"x": np.float64("nan")},
])
def test_dumps_refuses_nan_and_infinity_even_beside_nulls(payload):
    with pytest.raises(ValueError, match="not JSON compliant"):
        native.dumps(payload)


@pytest.mark.parametrize("payload", [{"t": native.parse_timestamp(SCORED_AT)}, {"s": {1}},
                                     {"n": np.int64(1)}])
def test_dumps_refuses_what_json_cannot_hold(payload):
    with pytest.raises(TypeError, match="not JSON serializable"):
        native.dumps(payload)


# ----------------------------------------------------------- the batch's short schema check

# Values near the schema's edges (enum members of other fields, lengths at and past the
# limits, timestamps and ids just off the pattern, numbers just outside [0, 1]) and any JSON.
_NEAR = [None, True, False, 0, 1, -1, 2, 0.5, 1.0000001, -1e-9, 10**20, math.nan, math.inf,
         "", "x", "x" * 64, "x" * 65, "x" * 256, "x" * 257, "\n", "1", "Count", "count_to_zero",
         *native.DECISIONS, *native.SEVERITIES, *native.CRITICALITIES, "sync_scored",
         "2026-11-20T14:03:41.000Z", "2026-13-20T14:03:41.000Z", "2026-11-20T14:03:60.000Z",
         "2026-11-20T14:03:41.000Z\n", "2026-11-20T14:03:41Z",
         "5f0a7c3e-1d2b-5a4c-8e6f-0123456789ab", "5f0a7c3e-1d2b-4a4c-8e6f-0123456789ab",
         "5F0A7C3E-1D2B-5A4C-8E6F-0123456789AB", "5f0a7c3e-1d2b-5a4c-8e6f-0123456789ab\n",
         "count_to_zero\n", [], [None, None], [1, 2], [1], [1, 2, 3], [None, "1"], {},
         {"rule": "r", "detail": "d"}, ...]
_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                          st.text(max_size=3))
_json = st.recursive(_json_scalars, lambda kids: st.lists(kids, max_size=3)
                     | st.dictionaries(st.text(max_size=3), kids, max_size=3), max_leaves=6)
_EVENT_PATHS = ["event_version", "event_type", "event_id", "sync_id", "connector_id",
                "connector_kind", "scored_at", "model_version", "decision", "severity",
                "criticality", "score", "cutoff", "tail_probability", "reasons", "rule_hits",
                "connector_paused", "cold_start", "replay", "extra", "reasons.0",
                "reasons.0.metric", "reasons.0.observed", "reasons.0.expected",
                "reasons.0.expected_range", "reasons.0.expected_range.1", "reasons.0.distance",
                "reasons.0.description", "reasons.0.extra", "rule_hits.0", "rule_hits.0.rule",
                "rule_hits.0.detail", "rule_hits.0.extra"]


def _event_with_a_rule_hit() -> dict:
    return sync_scored(sync_id="s", connector_id="c", scored_at=SCORED_AT, decision="pause",
                       severity="high", criticality="leaver", model_version=None,
                       rule_hits=[RuleHit("count_to_zero", "user count went to 0")])


def _set(event: dict, dotted: str, value: object) -> dict:
    out = copy.deepcopy(event)
    *parents, last = dotted.split(".")
    node: Any = out
    for key in parents:
        node = node[int(key) if isinstance(node, list) else key]
    key = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return out


@st.composite
def _mutated_events(draw: st.DrawFn) -> dict:
    event = draw(st.sampled_from(_base_events()))
    for path in draw(st.lists(st.sampled_from(_EVENT_PATHS), max_size=2)):
        value = draw(st.one_of(st.just(...), st.sampled_from(_NEAR), _json))
        with contextlib.suppress(KeyError, IndexError, TypeError, ValueError):
            event = _set(event, path, value)
    return event


def _base_events() -> list[dict]:
    # As a batch's events are: read back from their JSON.
    return [json.loads(native.dumps(make())) for make in
            (pause_event, proceed_event, _event_with_a_rule_hit)]


def test_short_check_never_passes_what_the_schema_rejects_one_field_off(
        schema_validator: jsonschema.Draft202012Validator) -> None:
    """Every field of every shape set to every value near the edges (or removed)."""
    passed = 0
    for event in _base_events():
        for path in _EVENT_PATHS:
            for value in _NEAR:
                with contextlib.suppress(KeyError, IndexError, TypeError):
                    changed = _set(event, path, value)
                    if _certainly_valid(changed):
                        passed += 1
                        assert list(schema_validator.iter_errors(changed)) == [], (path, value)
    assert passed > 100  # the check is exercised, not only refusing


@settings(max_examples=300, deadline=None)
@given(_mutated_events())
def test_short_check_never_passes_what_the_schema_rejects(
        schema_validator: jsonschema.Draft202012Validator, event: dict) -> None:
    if _certainly_valid(event):
        assert list(schema_validator.iter_errors(event)) == []


def test_short_check_passes_ordinary_events_and_catches_broken_ones() -> None:
    """Not vacuous: the built events pass it (so a batch needs no jsonschema), and
    breaking one field at a time fails it."""
    events = _base_events()
    assert all(_certainly_valid(e) for e in events)
    for path, value in [("severity", "urgent"), ("event_id", "x"), ("tail_probability", 2),
                        ("scored_at", "2026-11-20T14:03:41Z"), ("replay", 0), ("extra", 1),
                        ("reasons.0.distance", -1), ("reasons.0.expected_range", [1]),
                        ("sync_id", ""), ("model_version", "")]:
        broken = _set(events[0], path, value)
        assert not _certainly_valid(broken), path
    assert not _certainly_valid(_set(events[2], "rule_hits.0.rule", "Count"))
