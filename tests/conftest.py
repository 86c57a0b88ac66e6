"""Shared test helpers: valid sync records, input files, a store, and the CLI as a process.

Records are made here, not by the fleet simulator, so contract and store tests do not
depend on simulation details; each helper builds a record that meets the contract and
tests then break exactly one rule.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2025, 3, 3, 0, 0, tzinfo=UTC)
"""Start of generated history: a Monday, safely in the past for the future-time rule."""


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def make_record(connector_id: str = "okta-prod", index: int = 0, *,
                kind: str | None = "okta", start: datetime | None = None,
                rng: np.random.Generator | None = None, **overrides: Any) -> dict[str, Any]:
    """A valid sync record, the ``index``-th hourly sync of ``connector_id``.

    Parameters
    ----------
    connector_id, index
        Identify the sync; ``sync_id`` is ``"{connector_id}:{index}"``.
    kind
        ``connector_kind`` (omitted when None).
    start
        Start time; default ``T0 + index hours``.
    rng
        Varies the numbers (default: fixed numbers, so equal arguments give equal records).
    **overrides
        Top-level keys to set (a value of ``...`` removes the key).
    """
    start = start or T0 + timedelta(hours=index)
    jitter = (lambda n: int(rng.integers(0, n))) if rng is not None else (lambda n: 0)
    record: dict[str, Any] = {
        "sync_id": f"{connector_id}:{index}",
        "connector_id": connector_id,
        "connector_kind": kind,
        "started_at": _rfc3339(start),
        "finished_at": _rfc3339(start + timedelta(seconds=120 + jitter(60))),
        "status": "succeeded",
        "error_class": None,
        "resources": {
            "user": {"count": 18_000 + jitter(50), "added": 3 + jitter(5),
                     "removed": jitter(4), "modified": 200 + jitter(30), "duplicates": 0,
                     "null_rates": {"email": 0.0004, "manager": 0.031}},
            "group": {"count": 1_700 + jitter(5), "added": 0, "removed": 0, "modified": 9},
        },
        "api": {"requests": 214 + jitter(10), "errors": 0, "retries": 1,
                "latency_p50_ms": 180.0, "latency_p95_ms": 420.5},
        "metrics": {"mfa_enrolled_ratio": 0.987},
    }
    if kind is None:
        del record["connector_kind"]
    for key, value in overrides.items():
        if value is ...:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def make_records(n_connectors: int = 3, n_syncs: int = 10, *, seed: int = 0,
                 kinds: tuple[str, ...] = ("okta", "workday", "github")
                 ) -> list[dict[str, Any]]:
    """Hourly records for ``n_connectors`` connectors, ``n_syncs`` each, ordered by time."""
    rng = np.random.default_rng(seed)
    return [make_record(f"{kinds[c % len(kinds)]}-{c}", i, kind=kinds[c % len(kinds)], rng=rng)
            for i in range(n_syncs) for c in range(n_connectors)]


def iter_records(n_connectors: int, n_syncs: int, *, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Like :func:`make_records`, lazily (for benchmarks of large fleets)."""
    rng = np.random.default_rng(seed)
    for i in range(n_syncs):
        for c in range(n_connectors):
            yield make_record(f"okta-{c}", i, rng=rng)


def set_path(record: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``record`` with ``dotted`` (e.g. ``"resources.user.count"``) set to
    ``value``; a value of ``...`` deletes the key."""
    out = copy.deepcopy(record)
    *parents, last = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


def write_jsonl(path: Path, records: Iterable[dict[str, Any] | str]) -> Path:
    """Write records (dicts, or raw lines as str) as JSON Lines."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def syncguard_cmd(*args: str | os.PathLike[str], home: Path) -> list[str]:
    """argv running the real CLI in a fresh interpreter."""
    return [sys.executable, "-m", "detector.cli.main", "--home", str(home), *map(str, args)]


def run_syncguard(*args: str | os.PathLike[str], home: Path, stdin: str | None = None,
                  timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``syncguard --home HOME ARGS...`` as a subprocess and capture its output."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SYNCGUARD_HOME", None)
    return subprocess.run(syncguard_cmd(*args, home=home), input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO, check=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh syncguard home directory (not yet created)."""
    return tmp_path / "home"


@pytest.fixture
def store(tmp_path: Path):
    """An open store on a real SQLite file."""
    from detector.store import Store

    with Store.open(tmp_path / "store.sqlite") as opened:
        yield opened


@pytest.fixture
def receiver():
    """A signature-checking webhook receiver on 127.0.0.1 (see ``test_events_webhook``)."""
    from test_events_webhook import SECRET, Receiver

    r = Receiver(SECRET)
    yield r
    if r.server is not None:
        r.stop()


def with_fleet_copy(frame: pl.DataFrame) -> pl.DataFrame:
    """One pass's rows for the pooled models: each kind, plus every row again under kind
    ``"*"`` (fitting never makes this frame; tests compare its parts against it). With a
    ``_pool`` column (fitting's sample of connectors), the kinds' and the fleet's samples."""
    from detector.groups import POOLED_ALL

    kinds, fleet = frame, frame
    if "_pool" in frame.columns:
        kinds = frame.filter(pl.col("_pool") >= 1).drop("_pool")
        fleet = frame.filter(pl.col("_pool") == 2).drop("_pool")
    return pl.concat([kinds, fleet.with_columns(pl.lit(POOLED_ALL).alias("connector_kind"))])
