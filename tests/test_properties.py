"""Property-based tests: the record parser on any input, the model on any valid record,
and a short byte-level fuzz of a batch through ``syncguard score``.

Hypothesis runs are bounded (``max_examples``) and have no deadline: the machine is
shared, and a slow example is not a failure.
"""

from __future__ import annotations

import json
import math
import sqlite3
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scoring_support import Fleet

from detector.cli.main import cli
from detector.contract import (
    MAX_RECORD_BYTES,
    Accepted,
    Violation,
    canonical_json,
    parse_lines,
    read_inputs,
    validate_record,
)
from detector.home import Home

pytest_plugins = ["scoring_fixtures"]  # fleet, scoring_home

NOW = datetime(2026, 11, 21, tzinfo=UTC)
BOUNDED = settings(max_examples=150, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])


def _check_results(results: list[Accepted | Violation], lines: int) -> None:
    """One result per non-blank line, each either a stored record or a located error."""
    assert len(results) == lines
    for item in results:
        if isinstance(item, Violation):
            assert item.rule and item.field and item.line is not None
            assert str(item).startswith(f"line {item.line}")
        else:
            assert validate_record(item.record, now=NOW) is None
            assert json.loads(item.canonical) == item.record
            assert canonical_json(item.record) == item.canonical


# ----------------------------------------------------------------------------- parser


@BOUNDED
@given(st.lists(st.binary(max_size=120), max_size=6))
def test_any_bytes_give_one_result_per_line(chunks: list[bytes]) -> None:
    lines = [c.replace(b"\n", b" ").replace(b"\r", b" ") for c in chunks]
    results = list(parse_lines(lines, now=NOW))
    blank = sum(1 for i, line in enumerate(lines)
                if _blank(line.removeprefix(b"\xef\xbb\xbf") if i == 0 else line))
    _check_results(results, len(lines) - blank)


def _blank(data: bytes) -> bool:
    """Whether the parser skips this line: valid UTF-8 holding only white space."""
    try:
        return not data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["2026-06-15T00:00:00Z", "2026-06-15T00:00:00", "succeeded", "failed",
                     "partial", "auth", "user", "count"]),
)
_values = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=4)
                       | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                       max_leaves=20)
_KEYS = ["sync_id", "connector_id", "connector_kind", "started_at", "finished_at", "status",
         "error_class", "resources", "api", "metrics", "extra"]


@st.composite
def _record_like(draw: st.DrawFn) -> dict[str, Any]:
    """Objects with the contract's keys, holding values of every JSON shape."""
    keys = draw(st.lists(st.sampled_from(_KEYS), unique=True, max_size=len(_KEYS)))
    return {k: draw(_values) for k in keys}


@BOUNDED
@given(st.one_of(_values, _record_like()))
def test_any_json_value_is_accepted_or_named(value: Any) -> None:
    text = json.dumps(value, allow_nan=True)
    results = list(parse_lines([text], now=NOW))
    _check_results(results, 1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_values, _record_like()), min_size=1, max_size=5),
       st.sampled_from(["jsonl", "array", "pretty"]), st.booleans())
def test_any_framing_of_a_file_gives_a_result_per_record(values: list[Any], framing: str,
                                                         bom: bool) -> None:
    if framing == "jsonl":
        data = "".join(json.dumps(v) + "\n" for v in values)
    elif framing == "array":
        data = json.dumps(values, indent=1)
    else:
        data = "\n".join(json.dumps(v, indent=2) for v in values)
    raw = ("\ufeff" if bom else "") + data
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.json"
        path.write_text(raw, encoding="utf-8")
        results = list(read_inputs([str(path)], now=NOW))
    assert all(isinstance(r, Accepted | Violation) for r in results)
    # Framing is read from the first line: an object there means JSON Lines, an array a
    # document. Other first lines (a pretty-printed object, a bare "[]") are ambiguous,
    # and only need to end in results rather than an exception.
    if framing == "array" or (framing == "jsonl" and isinstance(values[0], dict)):
        assert len(results) == len(values)


# ----------------------------------------------------------------------------- model


@st.composite
def _valid_sync(draw: st.DrawFn, template: dict[str, Any]) -> dict[str, Any]:
    """A valid record of the template's connector, with any values the contract allows."""
    rec = json.loads(json.dumps(template))
    start = datetime.fromisoformat(template["started_at"]) + timedelta(
        seconds=draw(st.integers(0, 30 * 86_400)))
    duration = draw(st.one_of(st.just(0), st.integers(0, 7 * 86_400)))
    rec["started_at"] = start.isoformat().replace("+00:00", "Z")
    rec["finished_at"] = (start + timedelta(seconds=duration)).isoformat().replace("+00:00", "Z")
    rec["sync_id"] = f"prop-{draw(st.integers(0, 10**9))}"
    rec["status"] = draw(st.sampled_from(["succeeded", "partial", "failed"]))
    rec["error_class"] = draw(st.sampled_from([None, "auth", "timeout", "schema", "other"]))
    big = st.one_of(st.integers(0, 50), st.integers(0, 10**12))
    if rec["status"] == "failed" and draw(st.booleans()):
        rec.pop("resources", None)
    else:
        types = list(template.get("resources", {})) or ["user"]
        if draw(st.booleans()):
            types.append(draw(st.sampled_from(["widget", "user", "device"])))
        rec["resources"] = {}
        for t in dict.fromkeys(types):
            stats: dict[str, Any] = {"count": draw(big)}
            for k in ("added", "removed", "modified", "duplicates"):
                if draw(st.booleans()):
                    stats[k] = draw(big)
            if draw(st.booleans()):
                rates = st.floats(0, 1, allow_nan=False)
                stats["null_rates"] = {"email": draw(rates), "manager": draw(rates)}
            rec["resources"][t] = stats
    if draw(st.booleans()):
        real = st.floats(0, 1e12, allow_nan=False, allow_infinity=False)
        rec["api"] = {"requests": draw(big), "errors": draw(big), "retries": draw(big),
                      "latency_p50_ms": draw(real), "latency_p95_ms": draw(real)}
    else:
        rec.pop("api", None)
    if draw(st.booleans()):
        rec["metrics"] = {"ratio": draw(st.floats(-1e300, 1e300, allow_nan=False,
                                                  allow_infinity=False))}
    assert validate_record(rec, now=NOW + timedelta(days=400)) is None, rec
    return rec


@pytest.fixture(scope="module")
def model_and_state(fleet: Fleet) -> tuple[Any, pl.DataFrame, pl.DataFrame, dict]:
    state, facts = fleet.model.initial_state(fleet.history)
    templates = {}
    for record in fleet.test:
        templates.setdefault(record["connector_id"], record)
    return fleet.model, state, facts, templates


def _assert_bounded(results: pl.DataFrame, reasons: pl.DataFrame) -> None:
    for row in results.iter_rows(named=True):
        assert row["decision"] in ("pause", "review", "proceed")
        assert row["score"] is not None and not math.isnan(row["score"]), row
        assert row["cutoff"] is not None and math.isfinite(row["cutoff"]), row
        p = row["tail_probability"]
        assert p is not None and 0.0 <= p <= 1.0, row
    for column in ("observed", "expected", "distance"):
        values = reasons[column].drop_nulls().to_numpy()
        assert not np.isnan(values).any(), reasons.filter(pl.col(column).is_nan())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_valid_sync_gets_a_bounded_score(model_and_state, data: st.DataObject) -> None:
    model, state, facts, templates = model_and_state
    connectors = data.draw(st.lists(st.sampled_from(sorted(templates)), min_size=1,
                                    max_size=3))
    records = [data.draw(_valid_sync(templates[c])) for c in connectors]
    for i, rec in enumerate(records):
        rec["sync_id"] += f"-{i}"
    result = model.score(records, state=state, facts=facts)
    assert result.results.height == len(records)
    _assert_bounded(result.results, result.reasons)


# ----------------------------------------------------------------------------- fuzz


def _mutate(line: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(line)
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(0, 4))
        at = int(rng.integers(0, max(1, len(data))))
        if op == 0 and data:
            data[at] = int(rng.integers(0, 256))
        elif op == 1:
            data[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 4))).tolist())
        elif op == 2:
            del data[at:at + int(rng.integers(1, 20))]
        else:
            data = data[:at]
    return bytes(data).replace(b"\n", b" ")


def test_fuzzed_batch_through_score_loses_nothing(scoring_home: Home, fleet: Fleet,
                                                  tmp_path: Path) -> None:
    """300 byte-mutated records and the originals in one batch: the process reports
    cleanly, and every line is either stored (and scored) or kept as a reject."""
    rng = np.random.default_rng(7)
    originals = [json.dumps(r).encode() for r in fleet.test[:100]]
    lines = [_mutate(originals[int(rng.integers(0, 100))], rng) for _ in range(300)]
    lines += originals
    lines = [line for line in lines if line.strip() and len(line) < MAX_RECORD_BYTES]
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(cli, ["--home", str(scoring_home.root), "score", str(path)])
    assert result.exit_code in (0, 3, 4), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    with sqlite3.connect(scoring_home.store_path) as conn:
        rejects = conn.execute("SELECT count(*) FROM rejects WHERE source = ?",
                               (str(path),)).fetchone()[0]
        conflicts = conn.execute("SELECT count(*) FROM conflicts").fetchone()[0]
        unscored = conn.execute("SELECT count(*) FROM syncs s WHERE source = ? AND NOT "
                                "EXISTS (SELECT 1 FROM scores c WHERE c.sync_id = s.sync_id)",
                                (str(path),)).fetchone()[0]
    accepted = [r for r in parse_lines(lines) if isinstance(r, Accepted)]
    rejected = len(lines) - len(accepted)
    assert rejects == rejected  # each bad line is kept
    assert unscored == 0
    assert f"{rejects} rejected, {conflicts} conflicts" in result.stderr
    for original in fleet.test[:100]:
        assert f'"sync_id":"{original["sync_id"]}"' in result.stdout.replace(" ", "")
