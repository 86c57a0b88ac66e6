"""Embedded SQLite store (WAL): sync history, rejects, conflicts, append-only audit log.

Other modules add tables only by appending to :data:`detector.store.migrations.MIGRATIONS`.
"""

from detector.store.audit import AuditEntry
from detector.store.store import Store
from detector.store.syncs import Conflict, IngestReport

__all__ = ["Store", "IngestReport", "Conflict", "AuditEntry"]
