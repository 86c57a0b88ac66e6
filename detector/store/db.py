"""SQLite connections for the embedded store: WAL, busy timeout, explicit transactions.

Every write goes through :func:`atomic`, which opens ``BEGIN IMMEDIATE`` (the write lock
is taken up front, so two writers queue on the busy timeout instead of one failing on
upgrade) and turns nested calls into savepoints.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from detector.errors import StoreError

__all__ = ["connect", "atomic", "BUSY_TIMEOUT_MS"]

BUSY_TIMEOUT_MS = 30_000
"""How long one statement waits for another process's lock before SQLite gives up."""

_BEGIN_ATTEMPTS = 8
"""BEGIN IMMEDIATE retries on top of the busy timeout. SQLite can answer SQLITE_BUSY
without calling the busy handler (WAL recovery, a checkpoint holding the lock, a
deadlock it detects), so a bounded retry with jitter covers what the timeout cannot."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _retry_busy(conn: sqlite3.Connection, sql: str) -> sqlite3.Cursor:
    """Run one statement, retrying with backoff while the database is busy."""
    delay = 0.05
    for attempt in range(_BEGIN_ATTEMPTS):
        try:
            return conn.execute(sql)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or attempt == _BEGIN_ATTEMPTS - 1:
                raise StoreError(f"store is busy: {exc} (another syncguard holds the "
                                 f"write lock for more than {BUSY_TIMEOUT_MS // 1000} s)"
                                 ) from exc
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def connect(path: str | Path) -> sqlite3.Connection:
    """Open the store file with the settings every syncguard process must share.

    Parameters
    ----------
    path : str or Path
        The SQLite file; its directory must exist.

    Returns
    -------
    sqlite3.Connection
        In autocommit mode (``isolation_level=None``): transactions are only the ones
        :func:`atomic` opens, never implicit ones.

    Raises
    ------
    StoreError
        When the file cannot be opened or is not a SQLite database.
    """
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=True)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # journal_mode needs no transaction open and an exclusive moment on the file; it
        # persists in the file, so it is only switched when not already on.
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() != "wal":
            mode = _retry_busy(conn, "PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{path}: cannot switch the store to WAL mode (got {mode!r}); "
                                 "is it on a network file system?")
        # NORMAL is durable across application crashes in WAL mode; only a power loss can
        # drop the last transactions, and it never corrupts the file.
        conn.execute("PRAGMA synchronous = NORMAL")
        # A page cache of up to 64 MiB (the default is 2 MiB): a scoring run's transaction
        # dirties more pages than that (records, scores, events, audit rows and their
        # indexes), and a smaller cache spills them to the WAL and reads them back.
        conn.execute("PRAGMA cache_size = -65536")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open the store {str(path)!r}: {exc}") from exc
    return conn


@contextmanager
def atomic(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block in a transaction; nested blocks become savepoints.

    The outermost block starts ``BEGIN IMMEDIATE`` and commits on success; any exception
    rolls back (the savepoint only, when nested) and propagates.

    Examples
    --------
    >>> conn = sqlite3.connect(":memory:", isolation_level=None)
    >>> _ = conn.execute("CREATE TABLE t (x)")
    >>> with atomic(conn):
    ...     _ = conn.execute("INSERT INTO t VALUES (1)")
    ...     try:
    ...         with atomic(conn):
    ...             _ = conn.execute("INSERT INTO t VALUES (2)")
    ...             raise ValueError
    ...     except ValueError:
    ...         pass
    >>> conn.execute("SELECT x FROM t").fetchall()
    [(1,)]
    """
    if not conn.in_transaction:
        _retry_busy(conn, "BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            _retry_busy(conn, "COMMIT")
        except StoreError:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return
    # SQLite resolves RELEASE / ROLLBACK TO against the innermost savepoint of that name,
    # so one name serves every nesting level.
    conn.execute("SAVEPOINT syncguard_nested")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK TO syncguard_nested")
        conn.execute("RELEASE syncguard_nested")
        raise
    conn.execute("RELEASE syncguard_nested")
