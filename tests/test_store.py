"""The SQLite store: idempotent ingest, conflicts, rejects, history, audit, migrations."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from conftest import make_record, make_records

from detector.contract import parse_lines, validate_record
from detector.errors import StoreError
from detector.store import Store
from detector.store import syncs as syncs_module
from detector.store.db import atomic, connect
from detector.store.migrations import MIGRATIONS, Migration, migrate

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def _items(records: list[dict]) -> list:
    return list(parse_lines([json.dumps(r) for r in records], now=NOW))


def _count(store: Store, table: str) -> int:
    return store.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_ingest_then_reingest_is_a_replay(store: Store) -> None:
    records = make_records(3, 4)
    first = store.ingest(_items(records), source="a.jsonl", actor="ann")
    assert first.counts() == {"accepted": 12, "replayed": 0, "conflicts": 0, "rejected": 0}
    assert first.accepted_ids == [r["sync_id"] for r in records]
    again = store.ingest(_items(records), source="a.jsonl", actor="ann")
    assert again.counts() == {"accepted": 0, "replayed": 12, "conflicts": 0, "rejected": 0}
    assert _count(store, "syncs") == 12


def test_same_record_twice_in_one_batch_is_one_row(store: Store) -> None:
    record = make_record()
    report = store.ingest(_items([record, record]), source="x")
    assert (report.accepted, report.replayed) == (1, 1)


def test_conflict_keeps_the_first_version(store: Store) -> None:
    original = make_record()
    changed = make_record(status="partial")
    store.ingest(_items([original]), source="first")
    report = store.ingest(_items([changed, changed]), source="second")
    assert report.counts() == {"accepted": 0, "replayed": 0, "conflicts": 2, "rejected": 0}
    conflict = report.conflicts[0]
    first_hash = _items([original])[0].content_hash
    assert (conflict.stored_hash, conflict.other_hash) == (
        first_hash, _items([changed])[0].content_hash)
    assert str(conflict) == (
        f"line 1 (sync_id 'okta-prod:0'): field 'sync_id': conflicts with the stored record "
        f"(stored sha256 "
        f"{first_hash[:12]}, this one {conflict.other_hash[:12]}); the first version stays")
    stored = store.history()
    assert stored["status"].to_list() == ["succeeded"]
    assert json.loads(stored["record"][0]) == original
    # The refused version is kept once for people to inspect.
    rows = store.conn.execute("SELECT sync_id, stored_hash, other_hash FROM conflicts").fetchall()
    assert rows == [("okta-prod:0", first_hash, conflict.other_hash)]


def test_rejects_are_stored_with_field_rule_line_and_raw(store: Store) -> None:
    bad = json.dumps(make_record(index=1, resources={"user": {"count": -1}}))
    items = list(parse_lines([json.dumps(make_record()), bad], now=NOW))
    report = store.ingest(items, source="in.jsonl")
    assert report.counts() == {"accepted": 1, "replayed": 0, "conflicts": 0, "rejected": 1}
    row = store.conn.execute(
        "SELECT source, line, sync_id, connector_id, field, rule, raw FROM rejects").fetchone()
    assert row == ("in.jsonl", 2, "okta-prod:1", "okta-prod", "resources.user.count",
                   "must be an integer >= 0", bad)


def test_one_audit_row_per_batch_with_counts(store: Store) -> None:
    records = make_records(2, 6)  # 12 records -> batches of 5, 5, 2
    items = _items(records) + list(parse_lines(["{}"], now=NOW))
    report = syncs_module.ingest(store.conn, items, source="f.jsonl", actor="bob",
                                 batch_size=5)
    assert report.accepted == 12
    entries = store.audit_entries(action="ingest")
    assert [(e.actor, e.subject, e.details) for e in entries] == [
        ("bob", "f.jsonl", {"accepted": 5, "replayed": 0, "conflicts": 0, "rejected": 0}),
        ("bob", "f.jsonl", {"accepted": 5, "replayed": 0, "conflicts": 0, "rejected": 0}),
        ("bob", "f.jsonl", {"accepted": 2, "replayed": 0, "conflicts": 0, "rejected": 1}),
    ]


def test_ingest_defaults_the_actor_to_the_os_user(store: Store) -> None:
    from detector.store.audit import default_actor

    store.ingest(_items([make_record()]), source="x")
    assert store.audit_entries()[0].actor == default_actor()


def test_audit_log_is_append_only(store: Store) -> None:
    store.audit(actor="ann", action="resume", subject="okta-prod", reason="fixed",
                details={"false_positive": True})
    with pytest.raises(sqlite3.IntegrityError, match="audit_log is append-only"):
        store.conn.execute("UPDATE audit_log SET actor = 'mallory'")
    with pytest.raises(sqlite3.IntegrityError, match="audit_log is append-only"):
        store.conn.execute("DELETE FROM audit_log")
    [entry] = store.audit_entries(subject="okta-prod")
    assert (entry.actor, entry.reason, entry.details) == ("ann", "fixed",
                                                          {"false_positive": True})
    assert entry.at.endswith("Z")


def test_history_frame_columns_order_and_filters(store: Store) -> None:
    records = make_records(2, 3, kinds=("okta", "github"))
    failed = make_record("github-1", 3, kind="github", status="failed", error_class="auth",
                         resources=...)
    store.ingest(_items(records + [failed]), source="x")
    frame = store.history()
    assert frame.schema == pl.Schema(syncs_module.HISTORY_SCHEMA)
    assert frame["connector_id"].to_list() == ["github-1"] * 4 + ["okta-0"] * 3
    assert frame["started_at"].to_list()[:2] == [datetime(2025, 3, 3, 0, tzinfo=UTC),
                                                 datetime(2025, 3, 3, 1, tzinfo=UTC)]
    assert frame.filter(pl.col("status") == "failed")["error_class"].to_list() == ["auth"]
    only = store.history(connector_ids=["okta-0"], since="2025-03-03T01:00:00Z",
                         until=datetime(2025, 3, 3, 2, tzinfo=UTC))
    assert only["sync_id"].to_list() == ["okta-0:1"]
    assert store.history(connector_ids=[]).height == 0
    with pytest.raises(ValueError, match="timezone-aware"):
        store.history(since="2025-03-03")


def test_history_keeps_unknown_keys_and_normalises_offsets(store: Store) -> None:
    record = make_record(started_at="2025-03-03T02:00:00.5+02:00",
                         finished_at="2025-03-03T00:05:00Z", x_vendor={"a": [1, 2]})
    store.ingest(_items([record]), source="x")
    frame = store.history()
    assert frame["started_at"][0] == datetime(2025, 3, 3, 0, 0, 0, 500000, tzinfo=UTC)
    assert json.loads(frame["record"][0])["x_vendor"] == {"a": [1, 2]}
    text = store.conn.execute("SELECT started_at FROM syncs").fetchone()[0]
    assert text == "2025-03-03T00:00:00.500000Z"


def test_ingest_reuses_the_times_validation_parsed(store: Store,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsed records carry their times into the store (no second parse); a record built
    by hand, without them, is parsed there: both store the same text and epoch."""
    from detector.contract import Accepted

    parsed = _items([make_record(index=0, started_at="2025-03-03T02:00:00.5+02:00",
                                 finished_at="2025-03-03T00:05:00Z")])
    by_hand = [Accepted(line=None, record=dict(parsed[0].record, sync_id="by-hand"),
                        content_hash="h")]
    assert parsed[0].times is not None and by_hand[0].times is None
    with monkeypatch.context() as patch:
        patch.setattr(syncs_module, "parse_timestamp", None)  # any call would fail
        store.ingest(parsed, source="x", in_time_order=True)
    store.ingest(by_hand, source="x", in_time_order=True)
    rows = store.conn.execute("SELECT started_at, started_ts, finished_at, finished_ts "
                              "FROM syncs ORDER BY sync_id").fetchall()
    assert rows[0] == rows[1] == ("2025-03-03T00:00:00.500000Z", 1740960000.5,
                                  "2025-03-03T00:05:00Z", 1740960300.0)


def test_connector_status_lists_rejected_only_connectors(store: Store) -> None:
    items = _items(make_records(1, 2, kinds=("okta",)))
    items += list(parse_lines(['{"connector_id": "vault-1", "sync_id": "v"}', "{oops"],
                              now=NOW))
    store.ingest(items, source="x")
    assert store.connector_status() == [
        {"connector_id": "okta-0", "connector_kind": "okta", "syncs": 2,
         "last_sync": "2025-03-03T01:00:00Z", "last_status": "succeeded", "rejects": 0,
         "conflicts": 0},
        {"connector_id": "vault-1", "connector_kind": None, "syncs": 0, "last_sync": None,
         "last_status": None, "rejects": 1, "conflicts": 0},
        {"connector_id": None, "connector_kind": None, "syncs": 0, "last_sync": None,
         "last_status": None, "rejects": 1, "conflicts": 0},
    ]


def test_connection_settings(store: Store) -> None:
    pragmas = {name: store.conn.execute(f"PRAGMA {name}").fetchone()[0]
               for name in ("journal_mode", "busy_timeout", "synchronous", "foreign_keys")}
    assert pragmas == {"journal_mode": "wal", "busy_timeout": 30000, "synchronous": 1,
                       "foreign_keys": 1}


def test_atomic_nests_as_savepoints(store: Store) -> None:
    with store.atomic():
        store.audit(actor="a", action="outer", subject="s", reason="r")
        with pytest.raises(RuntimeError), store.atomic():
            store.audit(actor="a", action="inner", subject="s", reason="r")
            raise RuntimeError("roll back the inner block only")
    assert [e.action for e in store.audit_entries()] == ["outer"]
    with pytest.raises(RuntimeError), store.atomic():
        store.audit(actor="a", action="gone", subject="s", reason="r")
        raise RuntimeError
    assert [e.action for e in store.audit_entries()] == ["outer"]
    assert not store.conn.in_transaction


def test_migrations_are_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    Store.open(path).close()
    with Store.open(path) as store:
        rows = store.conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    assert rows == [(m.version, m.name) for m in MIGRATIONS]


def test_appended_migration_is_applied_on_next_open(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    Store.open(path).close()
    extended = [*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "notes",
                                       "CREATE TABLE notes (x TEXT); CREATE TRIGGER notes_t "
                                       "AFTER INSERT ON notes BEGIN SELECT 1; END;")]
    conn = connect(path)
    assert migrate(conn, extended) == [len(MIGRATIONS) + 1]
    assert migrate(conn, extended) == []
    with pytest.raises(StoreError, match="newer than this syncguard knows"):
        migrate(conn, MIGRATIONS)
    renamed = [*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "renamed", "SELECT 1;")]
    with pytest.raises(StoreError, match="migrations were edited"):
        migrate(conn, renamed)
    conn.close()


def test_failed_migration_leaves_no_record(tmp_path: Path) -> None:
    conn = connect(tmp_path / "s.sqlite")
    broken = [*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "broken",
                                     "CREATE TABLE t (x); INSERT INTO nope VALUES (1);")]
    with pytest.raises(sqlite3.OperationalError, match="no such table: nope"):
        migrate(conn, broken)
    versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == [m.version for m in MIGRATIONS]
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchone() is None


def _open_and_close(path: str) -> None:
    Store.open(path).close()


def test_concurrent_openers_apply_each_migration_once(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_open_and_close, args=(path,)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT version, count(*) FROM schema_migrations GROUP BY version")
    assert rows.fetchall() == [(m.version, 1) for m in MIGRATIONS]


def test_open_reports_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open the store"):
        Store.open(path)


def test_nothing_outside_a_transaction_is_left_open(store: Store) -> None:
    store.ingest(_items(make_records(1, 3)), source="x")
    assert not store.conn.in_transaction
    with atomic(store.conn):
        assert store.conn.in_transaction


def test_accepted_built_by_hand_is_stored_canonically(store: Store) -> None:
    from detector.contract import Accepted

    record = make_record()
    assert validate_record(record) is None
    item = Accepted(line=None, record=record, content_hash="h")
    assert store.ingest([item], source="api").accepted == 1
    assert json.loads(store.history()["record"][0]) == record
