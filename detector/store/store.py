"""The :class:`Store` facade: one object per open store file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from detector.contract import Accepted, Violation
from detector.errors import StoreError
from detector.store import audit as _audit
from detector.store import syncs
from detector.store.db import atomic, connect
from detector.store.migrations import migrate

__all__ = ["Store"]


class Store:
    """The embedded SQLite store (WAL): sync history, rejects, conflicts, audit log.

    Open with :meth:`open`; one instance per process and thread. Any number of processes
    may hold the same file open and write at once.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with Store.open(pathlib.Path(tempfile.mkdtemp()) / "store.sqlite") as store:
    ...     store.audit(actor="ann", action="note", subject="okta-prod", reason="example")
    ...     [e.action for e in store.audit_entries()]
    ['note']
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open (creating if needed) and migrate the store at ``path``.

        Raises
        ------
        StoreError
            When the file cannot be created, opened or migrated.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store directory {str(path.parent)!r}: "
                             f"{exc.strerror}") from exc
        conn = connect(path)
        try:
            migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"cannot migrate the store {str(path)!r}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def atomic(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); nested calls are savepoints."""
        return atomic(self.conn)

    def ingest(self, items: Iterable[Accepted | Violation], *, source: str,
               actor: str | None = None, in_time_order: bool = False) -> syncs.IngestReport:
        """Store contract results; see :func:`detector.store.syncs.ingest`."""
        return syncs.ingest(self.conn, items, source=source, actor=actor,
                            in_time_order=in_time_order)

    def history(self, *, connector_ids: Iterable[str] | None = None,
                since: datetime | str | None = None,
                until: datetime | str | None = None) -> pl.DataFrame:
        """Stored syncs as a frame; see :func:`detector.store.syncs.history`."""
        return syncs.history(self.conn, connector_ids=connector_ids, since=since, until=until)

    def connector_status(self) -> list[dict[str, Any]]:
        """Per-connector summary; see :func:`detector.store.syncs.connector_status`."""
        return syncs.connector_status(self.conn)

    def audit(self, *, actor: str, action: str, subject: str, reason: str,
              details: dict[str, Any] | None = None) -> None:
        """Append one row to the append-only audit log."""
        _audit.append(self.conn, actor=actor, action=action, subject=subject, reason=reason,
                      details=details)

    def audit_entries(self, *, subject: str | None = None,
                      action: str | None = None) -> list[_audit.AuditEntry]:
        """Audit rows, oldest first."""
        return _audit.entries(self.conn, subject=subject, action=action)
