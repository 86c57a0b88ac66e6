"""Schema migrations of the embedded store: an ordered, append-only list.

How to add tables (scores, pauses, labels, outbox, ...)
-------------------------------------------------------
Append one :class:`Migration` to :data:`MIGRATIONS` with the next version number and
a short snake_case name, e.g.::

    Migration(2, "scores", '''
        CREATE TABLE scores (
            sync_id TEXT PRIMARY KEY REFERENCES syncs (sync_id),
            ...
        ) STRICT;
    '''),

Rules, because stores in the field already carry the earlier versions:

- Never edit, reorder or remove a migration once it is merged; change a table by
  appending another migration (``ALTER TABLE ... ADD COLUMN``, or create-copy-rename).
  :func:`migrate` refuses a store whose recorded names differ from this list.
- Versions are 1, 2, 3, ... without gaps; two engineers appending at once resolve the
  clash at merge time by renumbering the later one.
- The SQL runs inside one transaction together with its ``schema_migrations`` row, so
  it must not contain BEGIN/COMMIT, VACUUM or ``PRAGMA journal_mode``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

from detector.errors import StoreError
from detector.events.outbox_schema import OUTBOX_MIGRATION
from detector.store.db import atomic

__all__ = ["Migration", "MIGRATIONS", "migrate", "applied_versions"]


@dataclass(frozen=True)
class Migration:
    """One step of the store schema."""

    version: int
    name: str
    sql: str


_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
) STRICT;
"""

MIGRATIONS: list[Migration] = [
    Migration(1, "syncs_rejects_conflicts_audit", _SCHEMA_MIGRATIONS + """
CREATE TABLE syncs (
    sync_id        TEXT PRIMARY KEY,
    connector_id   TEXT NOT NULL,
    connector_kind TEXT,
    started_at     TEXT NOT NULL,   -- RFC 3339, UTC, "Z"
    started_ts     REAL NOT NULL,   -- epoch seconds, for range queries
    finished_at    TEXT NOT NULL,
    finished_ts    REAL NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('succeeded', 'partial', 'failed')),
    error_class    TEXT,
    content_hash   TEXT NOT NULL,   -- sha256 of the canonical JSON
    record         TEXT NOT NULL,   -- canonical JSON, unknown keys kept
    source         TEXT,
    ingested_at    TEXT NOT NULL
) STRICT;
CREATE INDEX syncs_connector_started ON syncs (connector_id, started_ts);

CREATE TABLE rejects (
    id           INTEGER PRIMARY KEY,
    received_at  TEXT NOT NULL,
    source       TEXT,
    line         INTEGER,
    sync_id      TEXT,
    connector_id TEXT,              -- so a pause(invalid_record) can name the connector
    field        TEXT NOT NULL,
    rule         TEXT NOT NULL,
    raw          TEXT NOT NULL
) STRICT;
CREATE INDEX rejects_connector ON rejects (connector_id, received_at);

CREATE TABLE conflicts (
    id           INTEGER PRIMARY KEY,
    sync_id      TEXT NOT NULL REFERENCES syncs (sync_id),
    connector_id TEXT NOT NULL,
    stored_hash  TEXT NOT NULL,     -- the first version, which stays
    other_hash   TEXT NOT NULL,     -- the version that was refused
    record       TEXT NOT NULL,     -- the refused version, canonical JSON
    source       TEXT,
    line         INTEGER,
    received_at  TEXT NOT NULL,
    UNIQUE (sync_id, other_hash)
) STRICT;
CREATE INDEX conflicts_connector ON conflicts (connector_id);

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after a failed insert
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    reason  TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'         -- JSON object
) STRICT;
CREATE INDEX audit_log_subject ON audit_log (subject, at);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
"""),
    Migration(2, "scores_pauses_labels_state", """
-- One row per scored sync: the single decision it ever gets (a replay returns this row).
CREATE TABLE scores (
    sync_id          TEXT PRIMARY KEY REFERENCES syncs (sync_id),
    connector_id     TEXT NOT NULL,
    started_ts       REAL NOT NULL,   -- epoch seconds of the sync's start, for ordering
    scored_at        TEXT NOT NULL,   -- RFC 3339, UTC, "Z"
    model_version    TEXT,            -- NULL when no model could be loaded (unscorable)
    decision         TEXT NOT NULL CHECK (decision IN ('pause', 'review', 'proceed')),
    severity         TEXT NOT NULL,
    criticality      TEXT,
    score            REAL,
    cutoff           REAL,
    tail_probability REAL,
    connector_paused INTEGER NOT NULL CHECK (connector_paused IN (0, 1)),
    cold_start       INTEGER NOT NULL CHECK (cold_start IN (0, 1)),
    unscorable       INTEGER NOT NULL DEFAULT 0 CHECK (unscorable IN (0, 1)),
    reasons          TEXT NOT NULL DEFAULT '[]',   -- JSON array, most important first
    rule_hits        TEXT NOT NULL DEFAULT '[]',   -- JSON array
    event            TEXT NOT NULL                 -- the native sync_scored event, JSON
) STRICT;
CREATE INDEX scores_connector_started ON scores (connector_id, started_ts);
CREATE INDEX scores_decision ON scores (decision, connector_id);

-- The pause ledger: a pause stays open (closed_at NULL) until a person resumes it.
CREATE TABLE pauses (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    connector_id   TEXT NOT NULL,
    opened_sync_id TEXT,              -- the sync whose decision opened it (NULL: a rejected
                                      -- record without a sync_id)
    opened_at      TEXT NOT NULL,
    reason         TEXT NOT NULL,     -- main reason: a rule name, a metric, invalid_record,
                                      -- unscorable
    reasons        TEXT NOT NULL DEFAULT '[]',   -- JSON: every reason and rule hit
    closed_at      TEXT,
    closed_by      TEXT,
    close_reason   TEXT,
    false_positive INTEGER NOT NULL DEFAULT 0 CHECK (false_positive IN (0, 1)),
    CHECK ((closed_at IS NULL) = (closed_by IS NULL))
) STRICT;
-- At most one open pause per connector, even with several scorers at once.
CREATE UNIQUE INDEX pauses_one_open ON pauses (connector_id) WHERE closed_at IS NULL;
CREATE INDEX pauses_opened_sync ON pauses (opened_sync_id);

-- People's verdicts on syncs (the latest per sync; every change is in the audit log).
CREATE TABLE labels (
    sync_id TEXT PRIMARY KEY REFERENCES syncs (sync_id),
    label   TEXT NOT NULL CHECK (label IN ('fault', 'normal')),
    actor   TEXT NOT NULL,
    reason  TEXT NOT NULL,
    at      TEXT NOT NULL
) STRICT;

-- What the next scoring run starts from (detector.features.STATE_SCHEMA): per connector
-- and measure, the value at the last scored sync and at the last sync not paused.
CREATE TABLE scoring_state (
    connector_id  TEXT NOT NULL,
    measure       TEXT NOT NULL,
    value         REAL,
    ref_value     REAL,
    model_version TEXT,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (connector_id, measure)
) STRICT, WITHOUT ROWID;

-- Per connector facts the next run starts from; times as epoch microseconds (exact).
CREATE TABLE connector_facts (
    connector_id    TEXT PRIMARY KEY,
    last_success_us INTEGER,          -- finish of the last sync that did not fail
    last_start_us   INTEGER,          -- start of the last scored sync
    paused          INTEGER NOT NULL CHECK (paused IN (0, 1)),
    model_version   TEXT,
    updated_at      TEXT NOT NULL
) STRICT;
"""),
    Migration(*OUTBOX_MIGRATION),
]


def _statements(sql: str) -> list[str]:
    """Split a script into statements (executescript would COMMIT the transaction).

    ``sqlite3.complete_statement`` knows about trigger bodies and string literals, so a
    ``;`` inside ``BEGIN ... END`` does not split.
    """
    out: list[str] = []
    buf = ""
    for piece in sql.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                out.append(buf.strip())
            buf = ""
    if buf.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in migration: {buf.strip()[:80]!r}")
    return out


def applied_versions(conn: sqlite3.Connection) -> dict[int, str]:
    """Versions recorded in ``schema_migrations`` (empty for a new store)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not exists:
        return {}
    return dict(conn.execute("SELECT version, name FROM schema_migrations"))


def _check_history(applied: dict[int, str], migrations: list[Migration]) -> None:
    known = {m.version: m.name for m in migrations}
    for version, name in sorted(applied.items()):
        if version not in known:
            raise StoreError(f"the store has schema version {version} ({name}), newer than "
                             "this syncguard knows: upgrade syncguard")
        if known[version] != name:
            raise StoreError(f"the store's schema version {version} is {name!r} but this "
                             f"syncguard calls it {known[version]!r}: migrations were edited")


def migrate(conn: sqlite3.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply every migration the store has not recorded yet.

    Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with its
    ``schema_migrations`` row, and the recorded versions are read again after the lock
    is taken: processes opening the store at the same time apply each migration once.

    Parameters
    ----------
    conn : sqlite3.Connection
        From :func:`detector.store.db.connect`.
    migrations : list of Migration, optional
        Defaults to :data:`MIGRATIONS` (tests pass their own).

    Returns
    -------
    list of int
        The versions this call applied (empty when the store was up to date).
    """
    migrations = MIGRATIONS if migrations is None else migrations
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must be 1..n in order, got {versions}")
    applied = applied_versions(conn)  # lock-free read: the common case is "nothing to do"
    _check_history(applied, migrations)
    done: list[int] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        with atomic(conn):
            conn.execute(_SCHEMA_MIGRATIONS)
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?",
                            (migration.version,)).fetchone():
                continue  # another process applied it while we waited for the lock
            for statement in _statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, datetime.now(UTC).isoformat()),
            )
        done.append(migration.version)
    return done
