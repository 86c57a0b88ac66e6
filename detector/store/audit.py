"""Append-only audit log: who did what, when, to which subject, and why.

The table's triggers abort any UPDATE or DELETE, so history cannot be rewritten through
syncguard or through a stray ``sqlite3`` session short of dropping the triggers.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from detector.store.db import atomic

__all__ = ["AuditEntry", "append", "entries", "default_actor", "utc_now"]


def utc_now() -> str:
    """The current time as RFC 3339 UTC with a ``Z``, as every store column keeps it."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def default_actor() -> str:
    """The OS user running this process (``uid:N`` when the uid has no name, as in some
    containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@dataclass(frozen=True)
class AuditEntry:
    """One audit row."""

    id: int
    at: str
    actor: str
    action: str
    subject: str
    reason: str
    details: dict[str, Any]


def append(conn: sqlite3.Connection, *, actor: str, action: str, subject: str, reason: str,
           details: dict[str, Any] | None = None) -> int:
    """Append one row; joins the caller's transaction when there is one.

    Returns
    -------
    int
        The new row's id.
    """
    if not actor:
        raise ValueError("an audit entry needs an actor")
    with atomic(conn):
        cursor = conn.execute(
            "INSERT INTO audit_log (at, actor, action, subject, reason, details) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (utc_now(), actor, action, subject, reason,
             json.dumps(details or {}, sort_keys=True, default=str)),
        )
    return int(cursor.lastrowid)


def entries(conn: sqlite3.Connection, *, subject: str | None = None,
            action: str | None = None) -> list[AuditEntry]:
    """Audit rows, oldest first, optionally for one subject and/or action."""
    sql = "SELECT id, at, actor, action, subject, reason, details FROM audit_log WHERE 1 = 1"
    params: list[str] = []
    if subject is not None:
        sql += " AND subject = ?"
        params.append(subject)
    if action is not None:
        sql += " AND action = ?"
        params.append(action)
    rows = conn.execute(sql + " ORDER BY id", params).fetchall()
    return [AuditEntry(*row[:6], details=json.loads(row[6])) for row in rows]
