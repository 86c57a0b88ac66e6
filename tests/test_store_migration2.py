"""Store migration 2 (scores, pauses, labels, scoring state) and 3 (outbox), on real SQLite."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import make_record

from detector.contract import parse_lines
from detector.store import Store


def _ingest(store: Store, *records: dict) -> None:
    import json

    store.ingest(parse_lines([json.dumps(r) for r in records], source="t"), source="t")


def test_migrations_are_listed_in_order_with_the_outbox_last(store: Store) -> None:
    rows = store.conn.execute("SELECT version, name FROM schema_migrations ORDER BY version")
    assert rows.fetchall() == [(1, "syncs_rejects_conflicts_audit"),
                               (2, "scores_pauses_labels_state"), (3, "outbox")]
    tables = {name for (name,) in store.conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"scores", "pauses", "labels", "scoring_state", "connector_facts", "outbox",
            "outbox_lease"} <= tables


def test_one_open_pause_per_connector(store: Store) -> None:
    insert = ("INSERT INTO pauses (connector_id, opened_sync_id, opened_at, reason) "
              "VALUES (?, ?, '2025-01-01T00:00:00Z', 'count_to_zero')")
    store.conn.execute(insert, ("okta-prod", "s1"))
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        store.conn.execute(insert, ("okta-prod", "s2"))
    store.conn.execute("UPDATE pauses SET closed_at = 'x', closed_by = 'ann' WHERE id = 1")
    store.conn.execute(insert, ("okta-prod", "s3"))  # after a resume, a new pause may open
    assert store.conn.execute("SELECT count(*) FROM pauses").fetchone() == (2,)


def test_scores_and_labels_need_a_stored_sync(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        store.conn.execute("INSERT INTO labels VALUES ('nope', 'fault', 'ann', 'r', 'now')")
    _ingest(store, make_record("okta-prod", 0))
    store.conn.execute("INSERT INTO labels VALUES ('okta-prod:0', 'fault', 'ann', 'r', 'now')")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        store.conn.execute("UPDATE labels SET label = 'maybe'")
