"""The webhook outbox: events waiting for delivery, durable in the store, oldest first.

Every event a webhook sink emits is written here first (so a crash mid-run loses
nothing) and removed only after the receiver answered 2xx. Rows leave in ``id`` order;
delivery stops at the first failure so order is kept across runs. A full outbox raises
`OutboxFullError` instead of dropping anything.

Several ``syncguard score`` processes may share one store. One of them at a time holds a
short lease per sink (``outbox_lease``) and delivers; the others only enqueue. That keeps
the order and stops two processes sending the same row at once. A process that crashes
between a 2xx and the delete re-sends that row next time with the same
``Idempotency-Key``, which receivers use to de-duplicate.

The tables come from store migration 3 (``OUTBOX_MIGRATION_SQL``, kept in
`detector.events.outbox_schema` so the store can import it without a cycle).
"""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from detector.errors import StoreError, SyncguardError
from detector.events.outbox_schema import (
    OUTBOX_MAX_ROWS,
    OUTBOX_MIGRATION,
    OUTBOX_MIGRATION_SQL,
)
from detector.store.db import atomic, connect

__all__ = [
    "OUTBOX_MIGRATION",
    "OUTBOX_MIGRATION_SQL",
    "DEFAULT_MAX_ROWS",
    "Outbox",
    "OutboxItem",
    "OutboxFullError",
    "lease_owner",
]

DEFAULT_MAX_ROWS = OUTBOX_MAX_ROWS


class OutboxFullError(SyncguardError):
    """The outbox holds its maximum number of rows; nothing was dropped."""


@dataclass(frozen=True)
class OutboxItem:
    """One queued event.

    Attributes
    ----------
    id : int
        Send order (oldest first).
    sink : str
    idempotency_key : str
        Sent as ``Idempotency-Key``; the same on every re-send.
    event_id : str or None
        The native ``event_id``, for people reading the queue.
    body : bytes
        The exact request body, rendered once at enqueue time.
    enqueued_at : float
        Epoch seconds.
    attempts : int
        Failed delivery runs so far.
    last_error : str or None
        The last failure, readable; never contains the webhook secret.
    """

    id: int
    sink: str
    idempotency_key: str
    event_id: str | None
    body: bytes
    enqueued_at: float
    attempts: int
    last_error: str | None


class Outbox:
    """Queue of undelivered events for one sink, in the store's SQLite file.

    Parameters
    ----------
    conn : sqlite3.Connection
        A store connection (`detector.store.db.connect`) whose file has migration 3.
    sink : str, default "webhook"
        Queue name; rows of other sinks are never touched.
    max_rows : int, default 100_000
        Enqueueing beyond this raises `OutboxFullError`.
    clock : callable, default time.time

    Raises
    ------
    StoreError
        If the outbox tables do not exist (the store was not migrated).
    ValueError
        If ``max_rows`` < 1.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        sink: str = "webhook",
        max_rows: int = DEFAULT_MAX_ROWS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.conn = conn
        self.sink = sink
        self.max_rows = max_rows
        self._clock = clock
        found = conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' "
            "AND name IN ('outbox', 'outbox_lease')"
        ).fetchone()[0]
        if found != 2:
            raise StoreError(
                "the store has no outbox tables: open it with detector.store (migration 3, "
                "'outbox') before using a webhook sink"
            )

    @classmethod
    def open(
        cls, path: str | Path, *, sink: str = "webhook", max_rows: int = DEFAULT_MAX_ROWS
    ) -> Outbox:
        """Open the outbox in the store file at ``path`` on its own connection."""
        return cls(connect(path), sink=sink, max_rows=max_rows)

    def enqueue(self, body: bytes, *, idempotency_key: str, event_id: str | None = None) -> bool:
        """Append one event; a body already queued under the same key is not queued twice.

        Returns
        -------
        bool
            True if a row was added, False if the key was already waiting.

        Raises
        ------
        OutboxFullError
            When ``max_rows`` rows wait already.
        """
        with atomic(self.conn):
            waiting = self.count()
            if waiting >= self.max_rows:
                oldest = self.conn.execute(
                    "SELECT enqueued_at, last_error FROM outbox WHERE sink = ? ORDER BY id LIMIT 1",
                    (self.sink,),
                ).fetchone()
                since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest[0]))
                raise OutboxFullError(
                    f"the {self.sink} outbox is full: {waiting} events have waited since "
                    f"{since} (last error: {oldest[1] or 'none yet'}). Nothing was dropped: "
                    "this and later events of the run were not queued, but every decision is "
                    "stored, and running the same `syncguard score` again sends them (as "
                    "replays) once the receiver drains the queue; or raise the outbox limit "
                    "(score --outbox-limit)."
                )
            cur = self.conn.execute(
                "INSERT INTO outbox (sink, idempotency_key, event_id, body, enqueued_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (sink, idempotency_key) DO NOTHING",
                (self.sink, idempotency_key, event_id, body, self._clock()),
            )
            return cur.rowcount == 1

    def head(self, limit: int = 100) -> list[OutboxItem]:
        """The oldest ``limit`` rows, oldest first."""
        rows = self.conn.execute(
            "SELECT id, sink, idempotency_key, event_id, body, enqueued_at, attempts, last_error "
            "FROM outbox WHERE sink = ? ORDER BY id LIMIT ?",
            (self.sink, limit),
        ).fetchall()
        return [OutboxItem(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], r[6], r[7]) for r in rows]

    def remove(self, item_id: int) -> None:
        """Delete a delivered row (a no-op if it is already gone)."""
        with atomic(self.conn):
            self.conn.execute("DELETE FROM outbox WHERE id = ? AND sink = ?", (item_id, self.sink))

    def record_failure(self, item_id: int, error: str) -> None:
        """Keep the row, count the failed run and remember why."""
        with atomic(self.conn):
            self.conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_attempt_at = ?, last_error = ? "
                "WHERE id = ? AND sink = ?",
                (self._clock(), error[:1000], item_id, self.sink),
            )

    def count(self) -> int:
        """Rows waiting for this sink."""
        return self.conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE sink = ?", (self.sink,)
        ).fetchone()[0]

    def __len__(self) -> int:
        return self.count()

    def acquire(self, owner: str, ttl_s: float) -> bool:
        """Take or renew the delivery lease for this sink.

        Parameters
        ----------
        owner : str
            Unique per process and sink object, ``"<host>:<pid>:<nonce>"`` (see
            `lease_owner`); a lease whose owner names this host and a process that no longer
            exists is taken over at once.
        ttl_s : float
            The lease lapses after this long without renewal (a crashed owner frees it).

        Returns
        -------
        bool
            True if ``owner`` holds the lease now.
        """
        now = self._clock()
        with atomic(self.conn):
            row = self.conn.execute(
                "SELECT owner FROM outbox_lease WHERE sink = ?", (self.sink,)
            ).fetchone()
            # A holder that crashed on this host frees the lease at once, not after its TTL.
            stale_before = math.inf if row and _dead_local_owner(row[0]) else now
            self.conn.execute(
                "INSERT INTO outbox_lease (sink, owner, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (sink) DO UPDATE SET owner = excluded.owner, "
                "expires_at = excluded.expires_at "
                "WHERE outbox_lease.owner = excluded.owner OR outbox_lease.expires_at < ?",
                (self.sink, owner, now + ttl_s, stale_before),
            )
            holder = self.conn.execute(
                "SELECT owner FROM outbox_lease WHERE sink = ?", (self.sink,)
            ).fetchone()[0]
        return holder == owner

    def release(self, owner: str) -> None:
        """Give the lease back (only if ``owner`` holds it)."""
        with atomic(self.conn):
            self.conn.execute(
                "DELETE FROM outbox_lease WHERE sink = ? AND owner = ?", (self.sink, owner)
            )


def lease_owner() -> str:
    """A new lease owner id for this process: ``"<host>:<pid>:<nonce>"``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _dead_local_owner(owner: str) -> bool:
    """True if ``owner`` names a process on this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)  # signal 0: existence check only
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by another user
    return False
