"""The outbox tables' SQL: store migration 3.

A module of its own, importing nothing, so that ``detector.store.migrations`` can list it
while ``detector.events.outbox`` imports the store (no import cycle).
"""

from __future__ import annotations

__all__ = ["OUTBOX_MIGRATION", "OUTBOX_MIGRATION_SQL", "OUTBOX_MAX_ROWS"]

OUTBOX_MAX_ROWS = 100_000
"""Default cap on undelivered events per sink (about 100 MB of native events). Beyond it
``enqueue`` raises rather than drop anything; ``score --outbox-limit`` changes it."""

OUTBOX_MIGRATION_SQL = """\
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    event_id TEXT,
    body BLOB NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_attempt_at REAL,
    last_error TEXT,
    UNIQUE (sink, idempotency_key)
) STRICT;
CREATE INDEX IF NOT EXISTS outbox_sink_id ON outbox (sink, id);
CREATE TABLE IF NOT EXISTS outbox_lease (
    sink TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
) STRICT;
"""
# AUTOINCREMENT (not plain rowid) so ids never go back after deletes: id order is send order.

OUTBOX_MIGRATION: tuple[int, str, str] = (3, "outbox", OUTBOX_MIGRATION_SQL)
