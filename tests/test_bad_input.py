"""The bad-input corpus: every case through the real ``syncguard score`` with a real home.

Each case is one row of :data:`CASES`: the bytes of a record (or of a whole input), and
what must come of it. Unless the case replaces the whole input, the bad record is line 2
of a three-line batch whose lines 1 and 3 are valid syncs of two other connectors, so
every case also checks that the valid records of the same batch are still stored and
scored, and that the rejected text is kept in the ``rejects`` table (nothing is lost).

For a rejected record the checks are: exit 4; one ``rejected:`` line on stderr naming
the line, the field and the rule; the same field and rule in the ``rejects`` table with
the raw text; an ``invalid_record`` event and an open pause for the connector it names;
no traceback anywhere.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import REPO, set_path, syncguard_cmd
from scoring_support import Fleet, ingest_history, install_champion

from detector.cli.main import cli
from detector.contract import MAX_DEPTH, MAX_RECORD_BYTES
from detector.errors import EXIT_OK, EXIT_PAUSE, EXIT_REJECTED
from detector.home import Home

pytest_plugins = ["scoring_fixtures"]  # fleet

WHOLE = "<record>"
SENTINEL = 7_654_321
"""A count no simulated record holds: replaced in the JSON text by tokens that are not
JSON numbers (NaN, Infinity, ...)."""
LONE = "must be valid Unicode (\\u%s is a lone UTF-16 surrogate)"
"""``json.dumps`` writes a lone surrogate as its escape ``\\ud800``, as a sender would."""


@dataclass(frozen=True)
class Parts:
    """The records a case is built from (all from the fleet's test window)."""

    valid: tuple[dict[str, Any], dict[str, Any]]  # lines 1 and 3, two other connectors
    bad: dict[str, Any]  # the third connector's first test sync: the one made bad
    later: dict[str, Any]  # the same connector's next sync


def dumps(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()


def with_token(token: str) -> Callable[[Parts], bytes]:
    """The bad record with its first user count written as ``token`` (not JSON)."""
    def build(p: Parts) -> bytes:
        rec = set_path(p.bad, f"resources.{first_type(p.bad)}.count", SENTINEL)
        return dumps(rec).replace(str(SENTINEL).encode(), token.encode())
    return build


def first_type(record: dict[str, Any]) -> str:
    return next(iter(record["resources"]))


def field_set(dotted: str, value: Any) -> Callable[[Parts], bytes]:
    """The bad record with ``dotted`` set to ``value`` (``...`` deletes it); ``{T}`` in
    the path is the record's first resource type."""
    return lambda p: dumps(set_path(p.bad, dotted.replace("{T}", first_type(p.bad)), value))


def text(raw: str | bytes) -> Callable[[Parts], bytes]:
    return lambda p: raw if isinstance(raw, bytes) else raw.encode()


def edit(fn: Callable[[dict[str, Any]], None]) -> Callable[[Parts], bytes]:
    """The bad record after ``fn`` changed a deep copy of it."""
    def build(p: Parts) -> bytes:
        rec = json.loads(json.dumps(p.bad))
        fn(rec)
        return dumps(rec)
    return build


def nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    for _ in range(depth - 1):
        node = {"a": node}
    return node


def prefix_key(key: str, value: str) -> Callable[[Parts], bytes]:
    """The bad record with ``key`` written a second time, first (duplicate JSON key)."""
    return lambda p: b'{"' + key.encode() + b'": ' + value.encode() + b", " + dumps(p.bad)[1:]


def oversize(p: Parts) -> bytes:
    return dumps({**p.bad, "blob": "x" * MAX_RECORD_BYTES})


def bad_utf8(p: Parts) -> bytes:
    return dumps(p.bad).replace(b'"succeeded"', b'"succ\xff\xfeeded"')


@dataclass(frozen=True)
class Case:
    """One bad input and what must come of it.

    ``field`` None means the input is acceptable (kept and scored); ``kind`` is
    ``"rejected"`` or ``"conflict"``; ``whole`` means ``build`` gives the entire input
    rather than line 2; ``before`` names parts scored in an earlier run.
    """

    name: str
    build: Callable[[Parts], bytes]
    field: str | None
    rule: str = ""
    kind: str = "rejected"
    whole: bool = False
    before: tuple[str, ...] = ()
    line: int = 2
    names_connector: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _three(p: Parts, middle: bytes, sep: bytes = b"\n") -> bytes:
    return sep.join([dumps(p.valid[0]), middle, dumps(p.valid[1])]) + sep


CASES: list[Case] = [
    # ---- framing and JSON syntax
    Case("truncated line", lambda p: dumps(p.bad)[:-40], WHOLE, "is not valid JSON"),
    Case("trailing comma", lambda p: dumps(p.bad)[:-1] + b",}", WHOLE, "is not valid JSON"),
    Case("single quotes", lambda p: dumps(p.bad).replace(b'"', b"'"), WHOLE,
         "is not valid JSON", names_connector=False),
    Case("bare word", text("hello"), WHOLE, "is not valid JSON", names_connector=False),
    Case("number not object", text("42"), WHOLE, "must be a JSON object",
         names_connector=False),
    Case("null not object", text("null"), WHOLE, "must be a JSON object",
         names_connector=False),
    Case("string not object", text('"sync"'), WHOLE, "must be a JSON object",
         names_connector=False),
    Case("array on a line", lambda p: b"[" + dumps(p.bad) + b"]", WHOLE,
         "must be a JSON object", names_connector=False),
    Case("byte-order mark mid-input", lambda p: b"\xef\xbb\xbf" + dumps(p.bad), WHOLE,
         "is not valid JSON"),
    Case("duplicate top-level key", prefix_key("status", '"failed"'), WHOLE,
         "must not repeat the key 'status'"),
    Case("duplicate nested key",
         lambda p: dumps(p.bad).replace(b'"count": ', b'"count": 1, "count": ', 1), WHOLE,
         "must not repeat the key 'count'"),
    Case("NaN count", with_token("NaN"), WHOLE, "numbers must be finite (NaN is not JSON)"),
    Case("Infinity count", with_token("Infinity"), WHOLE, "Infinity is not JSON"),
    Case("-Infinity count", with_token("-Infinity"), WHOLE, "-Infinity is not JSON"),
    Case("non-UTF-8 bytes", bad_utf8, WHOLE, "is not valid UTF-8"),
    Case("oversize record", oversize, WHOLE, "must not be larger than 1 MiB"),
    Case("nested too deep", edit(lambda r: r.update(extra=nested(MAX_DEPTH))), WHOLE,
         f"must not be nested more than {MAX_DEPTH} levels deep"),
    Case("nested 100k deep", lambda p: dumps(p.bad)[:-1] + b', "x": ' + b"[" * 100_000
         + b"]" * 100_000 + b"}", WHOLE, f"nested more than {MAX_DEPTH} levels deep"),
    # ---- lone surrogates: JSON can escape half a UTF-16 pair, UTF-8 cannot spell it
    Case("lone surrogate in an unknown field", field_set("note", "x\ud800y"), "note",
         LONE % "d800"),
    Case("lone low surrogate", field_set("note", "\udfff"), "note", LONE % "dfff"),
    Case("surrogate pair reversed", field_set("note", "\ude00\ud83d"), "note",
         LONE % "de00"),
    Case("lone surrogate in sync_id", field_set("sync_id", "s\ud800"), "sync_id",
         LONE % "d800"),
    Case("lone surrogate in connector_id", field_set("connector_id", "okta\udc00"),
         "connector_id", LONE % "dc00", names_connector=False),
    Case("lone surrogate in connector_kind", field_set("connector_kind", "okta\ud800"),
         "connector_kind", LONE % "d800"),
    Case("lone surrogate in a key", edit(lambda r: r.update({"n\ud800": 1})), "n\\ud800",
         "key " + LONE % "d800"),
    Case("lone surrogate in a resource type",
         edit(lambda r: r["resources"].update({"gr\ud800": {"count": 1}})),
         "resources.gr\\ud800", "key " + LONE % "d800"),
    Case("lone surrogate in a null-rate field",
         field_set("resources.{T}.null_rates", {"em\udbffail": 0.1}),
         "resources.{T}.null_rates.em\\udbffail", "key " + LONE % "dbff"),
    Case("lone surrogate in a metric name", field_set("metrics", {"r\ud800": 1.0}),
         "metrics.r\\ud800", "key " + LONE % "d800"),
    Case("lone surrogate nested in a list", edit(lambda r: r.update(
        owner={"team": "iam", "aliases": ["a", {"b": "\ud800"}]})), "owner.aliases.1.b",
         LONE % "d800"),
    Case("lone surrogate in a key whose value breaks a rule",
         field_set("resources.{T}.null_rates", {"e\ud800": 2}),
         "resources.{T}.null_rates.e\\ud800", "must be a number in [0, 1]"),
    Case("lone surrogate in sync_id beside a broken rule",
         edit(lambda r: r.update(sync_id="s\ud800", status="ok")), "status",
         "must be one of"),
    # ---- required fields and types
    Case("missing sync_id", field_set("sync_id", ...), "sync_id", "is required"),
    Case("missing connector_id", field_set("connector_id", ...), "connector_id",
         "is required", names_connector=False),
    Case("empty sync_id", field_set("sync_id", ""), "sync_id", "must not be empty"),
    Case("sync_id not a string", field_set("sync_id", 123), "sync_id", "must be a string"),
    Case("sync_id too long", field_set("sync_id", "s" * 300), "sync_id",
         "at most 256 characters"),
    Case("unknown status", field_set("status", "ok"), "status", "must be one of"),
    Case("unknown error_class", field_set("error_class", "bogus"), "error_class",
         "must be one of"),
    Case("resources missing", field_set("resources", ...), "resources", "required"),
    Case("resources a list", field_set("resources", []), "resources", "must be an object"),
    Case("empty resource type", edit(lambda r: r["resources"].update({"": {"count": 1}})),
         "resources.", "key must be 1 to 128 characters long"),
    Case("count missing", field_set("resources.{T}.count", ...), "resources.{T}.count",
         "is required"),
    Case("negative count", field_set("resources.{T}.count", -1), "resources.{T}.count",
         "must be an integer >= 0"),
    Case("fractional count", field_set("resources.{T}.count", 1.5), "resources.{T}.count",
         "must be an integer"),
    Case("count as string", field_set("resources.{T}.count", "100"),
         "resources.{T}.count", "must be an integer"),
    Case("count as boolean", field_set("resources.{T}.count", True),
         "resources.{T}.count", "must be an integer"),
    Case("huge count", field_set("resources.{T}.count", 10**30), "resources.{T}.count",
         "must be an integer <= 1000000000000"),
    Case("negative churn", field_set("resources.{T}.removed", -5), "resources.{T}.removed",
         "must be an integer >= 0"),
    Case("null rate above 1", field_set("resources.{T}.null_rates", {"email": 1.5}),
         "resources.{T}.null_rates.email", "must be a number in [0, 1]"),
    Case("null rate below 0", field_set("resources.{T}.null_rates", {"email": -0.1}),
         "resources.{T}.null_rates.email", "must be a number in [0, 1]"),
    Case("null rate as string", field_set("resources.{T}.null_rates", {"email": "low"}),
         "resources.{T}.null_rates.email", "must be a number"),
    Case("negative api requests", field_set("api.requests", -1), "api.requests",
         "must be an integer >= 0"),
    Case("negative latency", field_set("api.latency_p95_ms", -3.0), "api.latency_p95_ms",
         "must be a number >= 0"),
    Case("metric as string", field_set("metrics", {"ratio": "high"}), "metrics.ratio",
         "must be a number"),
    # ---- time
    Case("timestamp without offset", field_set("started_at", "2026-06-15T00:40:24"),
         "started_at", "RFC 3339 date-time with offset"),
    Case("timestamp not a date", field_set("finished_at", "yesterday"), "finished_at",
         "RFC 3339 date-time with offset"),
    Case("month 13", field_set("started_at", "2026-13-15T00:40:24Z"), "started_at",
         "RFC 3339 date-time with offset"),
    Case("finished before started", field_set("finished_at", "2026-06-14T00:00:00Z"),
         "finished_at", "must not be before started_at"),
    Case("far future", edit(lambda r: r.update(started_at="2099-01-01T00:00:00Z",
                                               finished_at="2099-01-01T00:05:00Z")),
         "started_at", "must not be more than 1 day in the future"),
    # ---- history-dependent
    Case("older than the connector's last", lambda p: dumps(p.bad), "started_at",
         "must not be before the connector's last scored sync", before=("later",)),
    Case("sync_id reused with other content",
         field_set("resources.{T}.count", SENTINEL), "sync_id",
         "conflicts with the stored record", kind="conflict", before=("bad",)),
    # ---- whole inputs
    Case("array with a bad element", lambda p: b"[\n" + b",\n".join(
        [dumps(p.valid[0]), dumps(set_path(p.bad, "status", "ok")), dumps(p.valid[1])])
        + b"\n]\n", "status", "must be one of", whole=True, line=3),
    Case("array element with NaN", lambda p: b"[\n" + b",\n".join(
        [dumps(p.valid[0]), with_token("NaN")(p), dumps(p.valid[1])]) + b"\n]\n", WHOLE,
        "NaN is not JSON", whole=True, line=3),
    Case("array element with a repeated key", lambda p: b"[\n" + b",\n".join(
        [dumps(p.valid[0]), prefix_key("status", '"failed"')(p), dumps(p.valid[1])])
        + b"\n]\n", WHOLE, "must not repeat the key 'status'", whole=True, line=3),
    Case("array element with a lone surrogate", lambda p: b"[\n" + b",\n".join(
        [dumps(p.valid[0]), field_set("note", "\ud800")(p), dumps(p.valid[1])]) + b"\n]\n",
        "note", LONE % "d800", whole=True, line=3),
    Case("array cut mid-element", lambda p: b"[\n" + dumps(p.valid[0]) + b",\n"
         + dumps(p.valid[1]) + b",\n" + dumps(p.bad)[:-30], WHOLE, "is not valid JSON",
         whole=True, line=4),
    # ---- acceptable: kept, and scored
    Case("byte-order mark at start", lambda p: b"\xef\xbb\xbf" + _three(p, dumps(p.bad)),
         None, whole=True),
    Case("CRLF line ends", lambda p: _three(p, dumps(p.bad), b"\r\n"), None, whole=True),
    Case("blank lines", lambda p: _three(p, b"\n\n" + dumps(p.bad) + b"\n   "), None,
         whole=True),
    Case("unknown top-level field", edit(lambda r: r.update(owner={"team": "iam"})), None),
    Case("unknown resource type",
         edit(lambda r: r["resources"].update(widget={"count": 5, "added": 1})), None),
    Case("unknown api field", edit(lambda r: r["api"].update(region="eu")), None),
    Case("escaped surrogate pair", field_set("note", "\U0001f600 \ud83d\ude00"), None),
    Case("same sync_id, same content", lambda p: dumps(p.bad), None, before=("bad",)),
    Case("empty input", text(b""), None, whole=True),
]


@pytest.fixture(scope="module")
def base_home(tmp_path_factory: pytest.TempPathFactory, fleet: Fleet) -> Path:
    """History stored and the champion installed, once; each case scores in a copy."""
    home = Home(tmp_path_factory.mktemp("bad-input") / "home").ensure()
    ingest_history(home, fleet.history)
    install_champion(home, fleet.model)
    return home.root


def make_parts(records: list[dict[str, Any]]) -> Parts:
    """The first syncs of three connectors (in time order) that report resources."""
    firsts: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        firsts.setdefault(record["connector_id"], []).append(record)
    connectors = [c for c, recs in firsts.items() if recs[0].get("resources")][:3]
    a, b, c = (firsts[cid] for cid in connectors)
    return Parts(valid=(a[0], b[0]), bad=c[0], later=c[1])


@pytest.fixture(scope="module")
def parts(fleet: Fleet) -> Parts:
    return make_parts(fleet.test)


def case_input(case: Case, p: Parts) -> bytes:
    """The bytes ``syncguard score`` reads for ``case``."""
    built = case.build(p)
    return built if case.whole else _three(p, built)


def run_case(case: Case, p: Parts, home: Path, work: Path) -> tuple[Path, Any]:
    """Score the case's earlier parts, then its input, in ``home``; (input path, result)."""
    for name in case.before:
        first = work / f"before-{name}.jsonl"
        first.write_bytes(dumps(getattr(p, name)) + b"\n")
        assert _score(home, first).exit_code in (EXIT_OK, EXIT_PAUSE)
    path = work / "input.jsonl"
    path.write_bytes(case_input(case, p))
    return path, _score(home, path)


def _score(home: Path, path: Path) -> Any:
    return CliRunner().invoke(cli, ["--home", str(home), "score", str(path)])


def _rows(home: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(home / "store.sqlite") as conn:
        return conn.execute(sql, args).fetchall()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_corpus(case: Case, base_home: Path, parts: Parts, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(base_home, home)
    path, result = run_case(case, parts, home, tmp_path)
    out, err = result.stdout, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), err
    assert "Traceback" not in out + err and "internal error" not in err
    events = [json.loads(line) for line in out.splitlines()]
    scored = {e["sync_id"] for e in events if e["event_type"] == "sync_scored"}
    stored = {r[0] for r in _rows(home, "SELECT sync_id FROM scores")}
    rejects = _rows(home, "SELECT line, field, rule, raw, connector_id FROM rejects")

    # The valid records of the batch are stored, scored and reported.
    valid_ids = {r["sync_id"] for r in parts.valid} if path.stat().st_size else set()
    assert valid_ids <= scored and valid_ids <= stored, err

    if case.field is None:  # acceptable input: kept and scored, nothing rejected
        assert result.exit_code in (EXIT_OK, EXIT_PAUSE), err
        assert not rejects and "rejected:" not in err
        if path.stat().st_size:
            assert parts.bad["sync_id"] in stored
            kept = _rows(home, "SELECT record FROM syncs WHERE sync_id = ?",
                         parts.bad["sync_id"])
            if not case.whole:  # stored as sent, unknown keys included
                assert json.loads(kept[0][0]) == json.loads(case.build(parts))
        else:
            assert events == [] and "scored 0 syncs" in err
        return

    assert result.exit_code == EXIT_REJECTED, err
    where = f"line {case.line}"
    problem = [line for line in err.splitlines() if line.startswith(f"{case.kind}:")]
    assert len(problem) == 1, err
    assert where in problem[0] and case.rule in problem[0], problem[0]
    expected_field = case.field.replace("{T}", first_type(parts.bad))
    if case.kind == "conflict":
        assert parts.bad["sync_id"] in problem[0]
        stored_first = _rows(home, "SELECT record FROM syncs WHERE sync_id = ?",
                             parts.bad["sync_id"])
        assert json.loads(stored_first[0][0]) == parts.bad  # the first version stays
        kept = _rows(home, "SELECT record FROM conflicts WHERE sync_id = ?",
                     parts.bad["sync_id"])
        assert len(kept) == 1  # ... and the other one is kept for people to see
        return
    if expected_field != WHOLE:
        assert f"field '{expected_field}'" in problem[0], problem[0]
    assert len(rejects) == 1, rejects
    line, got_field, rule, raw, connector = rejects[0]
    assert (line, got_field) == (case.line, expected_field) and case.rule in rule
    assert raw, "the rejected text is kept"
    assert parts.bad["sync_id"] not in stored - {r["sync_id"] for r in parts.valid}
    if case.names_connector:
        assert connector == parts.bad["connector_id"]
        invalid = [e for e in events if e["event_type"] == "invalid_record"]
        assert [e["connector_id"] for e in invalid] == [connector]
        assert _rows(home, "SELECT reason FROM pauses WHERE connector_id = ? "
                     "AND closed_at IS NULL", connector) == [("invalid_record",)]


def test_corpus_is_large_enough() -> None:
    rejected = [c for c in CASES if c.field is not None]
    assert len(CASES) >= 50 and len(rejected) >= 40


@pytest.mark.parametrize("name", ["nested 100k deep", "non-UTF-8 bytes",
                                  "lone surrogate in sync_id", "lone surrogate in a key"])
def test_real_process_reports_cleanly(name: str, base_home: Path, parts: Parts,
                                      tmp_path: Path) -> None:
    """The same cases in a real interpreter: exit code and stderr as a pipeline sees them
    (deep nesting must not crash the process's stack)."""
    case = next(c for c in CASES if c.name == name)
    home = tmp_path / "home"
    shutil.copytree(base_home, home)
    proc = subprocess.run(syncguard_cmd("score", "-", home=home), input=case_input(case, parts),
                          capture_output=True, timeout=120, cwd=REPO, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_REJECTED, err
    assert "Traceback" not in err and "rejected: -: line 2" in err and case.rule in err
    assert len(proc.stdout.decode().splitlines()) == 3  # two scored, one invalid_record
