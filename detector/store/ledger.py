"""The pause ledger and people's labels: what people decide about connectors and syncs.

A pause opens when a sync is decided ``pause`` (or a connector sends a record that breaks
the contract, or cannot be scored) and stays open until a person resumes the connector.
At most one pause is open per connector (a partial unique index enforces it, so several
scorers at once cannot open two). Labels say whether a sync was a fault or normal; the
latest label per sync counts, and every change is in the audit log.

Training reads both tables: syncs that opened a pause not resumed as a false positive, and
syncs labelled ``fault``, are left out of the fit.

Tables: ``pauses`` and ``labels`` (store migration 2). Every function here joins the
caller's transaction, or opens its own.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from detector.errors import UsageError
from detector.store import audit
from detector.store.db import atomic

__all__ = ["Pause", "Label", "LABELS", "open_pauses", "open_pause_many", "resume", "set_label",
           "label_of", "pauses_of"]

LABELS = ("fault", "normal")

_PAUSE_COLUMNS = ("id, connector_id, opened_sync_id, opened_at, reason, reasons, closed_at, "
                  "closed_by, close_reason, false_positive")


@dataclass(frozen=True)
class Pause:
    """One row of the pause ledger."""

    id: int
    connector_id: str
    opened_sync_id: str | None
    opened_at: str
    reason: str
    reasons: list[str]
    closed_at: str | None = None
    closed_by: str | None = None
    close_reason: str | None = None
    false_positive: bool = False

    @property
    def is_open(self) -> bool:
        """True until a person resumes the connector."""
        return self.closed_at is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Label:
    """A person's verdict on one sync."""

    sync_id: str
    label: str
    actor: str
    reason: str
    at: str


def _pause(row: Sequence[Any]) -> Pause:
    return Pause(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6], row[7],
                 row[8], bool(row[9]))


def open_pauses(conn: sqlite3.Connection,
                connector_ids: Iterable[str] | None = None) -> dict[str, Pause]:
    """Open pauses by connector (all connectors, or only ``connector_ids``)."""
    sql = f"SELECT {_PAUSE_COLUMNS} FROM pauses WHERE closed_at IS NULL"
    params: list[str] = []
    if connector_ids is not None:
        sql += " AND connector_id IN (SELECT value FROM json_each(?))"
        params.append(json.dumps(sorted(set(connector_ids))))
    return {p.connector_id: p for p in map(_pause, conn.execute(sql, params))}


def pauses_of(conn: sqlite3.Connection, connector_id: str) -> list[Pause]:
    """Every pause of one connector, oldest first."""
    rows = conn.execute(f"SELECT {_PAUSE_COLUMNS} FROM pauses WHERE connector_id = ? "
                        "ORDER BY id", (connector_id,))
    return [_pause(r) for r in rows]


def open_pause_many(conn: sqlite3.Connection,
                    pauses: Iterable[tuple[str, str | None, str, list[str]]], *,
                    at: str, actor: str) -> list[str]:
    """Open a pause for each ``(connector_id, sync_id, reason, reasons)`` whose connector
    has none open; audit each one opened.

    Returns
    -------
    list of str
        The connectors a pause was opened for (the others already had one).
    """
    opened: list[str] = []
    with atomic(conn):
        for connector_id, sync_id, reason, reasons in pauses:
            cursor = conn.execute(
                "INSERT INTO pauses (connector_id, opened_sync_id, opened_at, reason, reasons) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (connector_id) WHERE closed_at IS NULL DO NOTHING",
                (connector_id, sync_id, at, reason, json.dumps(reasons)))
            if cursor.rowcount == 1:
                opened.append(connector_id)
                audit.append(conn, actor=actor, action="pause", subject=connector_id,
                             reason=reason, details={"sync_id": sync_id, "reasons": reasons,
                                                     "pause_id": cursor.lastrowid})
    return opened


def resume(conn: sqlite3.Connection, connector_id: str, *, by: str, reason: str,
           false_positive: bool, at: str) -> Pause:
    """Close the connector's open pause; audit who, when and why.

    Raises
    ------
    UsageError
        When ``by`` or ``reason`` is empty, or the connector has no open pause.
    """
    if not by.strip() or not reason.strip():
        raise UsageError("resume needs --by WHO and --reason TEXT (both non-empty): the audit "
                         "log records who resumed the connector and why")
    with atomic(conn):
        current = open_pauses(conn, [connector_id]).get(connector_id)
        if current is None:
            known = conn.execute("SELECT 1 FROM syncs WHERE connector_id = ? LIMIT 1",
                                 (connector_id,)).fetchone()
            what = "has no open pause" if known else "is not a connector in the store"
            raise UsageError(f"connector {connector_id!r} {what}; nothing to resume "
                             "(`syncguard status` lists open pauses)")
        conn.execute("UPDATE pauses SET closed_at = ?, closed_by = ?, close_reason = ?, "
                     "false_positive = ? WHERE id = ?",
                     (at, by, reason, int(false_positive), current.id))
        audit.append(conn, actor=by, action="resume", subject=connector_id, reason=reason,
                     details={"pause_id": current.id, "opened_sync_id": current.opened_sync_id,
                              "false_positive": false_positive, "pause_reason": current.reason})
    return _pause(conn.execute(f"SELECT {_PAUSE_COLUMNS} FROM pauses WHERE id = ?",
                               (current.id,)).fetchone())


def label_of(conn: sqlite3.Connection, sync_id: str) -> Label | None:
    """The current label of a sync, if any."""
    row = conn.execute("SELECT sync_id, label, actor, reason, at FROM labels WHERE sync_id = ?",
                       (sync_id,)).fetchone()
    return Label(*row) if row else None


def set_label(conn: sqlite3.Connection, sync_id: str, label: str, *, by: str, reason: str,
              at: str) -> Label | None:
    """Label a sync ``fault`` or ``normal`` (replacing an earlier label); audit it.

    Returns
    -------
    Label or None
        The label it replaced.

    Raises
    ------
    UsageError
        For an unknown label, an empty ``by``/``reason``, or a sync_id not in the store.
    """
    if label not in LABELS:
        raise UsageError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    if not by.strip() or not reason.strip():
        raise UsageError("label needs --by WHO and --reason TEXT (both non-empty)")
    with atomic(conn):
        if not conn.execute("SELECT 1 FROM syncs WHERE sync_id = ?", (sync_id,)).fetchone():
            raise UsageError(f"sync_id {sync_id!r} is not in the store; only stored syncs can "
                             "be labelled")
        before = label_of(conn, sync_id)
        conn.execute(
            "INSERT INTO labels (sync_id, label, actor, reason, at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (sync_id) DO UPDATE SET label = excluded.label, actor = excluded.actor, "
            "reason = excluded.reason, at = excluded.at", (sync_id, label, by, reason, at))
        audit.append(conn, actor=by, action="label", subject=sync_id, reason=reason,
                     details={"label": label,
                              "previous": None if before is None else before.label})
    return before
