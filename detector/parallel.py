"""Independent parts of a job run in threads, results in the parts' order.

Fitting's parts (history parts, cross-fitting parts, forests, calibration blocks) and a
large score batch's shards of connectors (:func:`connector_shards`) spend their time in
polars and numpy, which run outside the GIL, so threads use the machine's other cores;
the results are those of the plain loop.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

__all__ = ["connector_shards", "in_threads"]

# Fewest syncs a batch is scored in shards of connectors for (FleetModel.score n_jobs):
# shards cost ~10 % more CPU (each pays polars' fixed costs; the threads queue for the
# GIL), which a second core repays only on large batches. Measured on 2 cores (model
# only, median of 7, load 6-10): 3,157 syncs 0.50 s one thread vs 0.59 s in shards,
# 5,901: 0.72 vs 0.81, 7,511: 1.56 vs 1.58, 12,152: 3.64 vs 3.18 (idle, end to end:
# 3,087 0.85 vs 0.95 s, 12,152 2.87 vs 2.80 s).
_SHARD_MIN_SYNCS = 8_000


def in_threads(
    fn: Callable[[Any], Any], items: list, n_jobs: int, heavy: list[bool] | None = None
) -> list:
    """``[fn(item) for item in items]``, up to ``n_jobs`` items at a time in threads.

    The parts of a fit are independent and spend their time in polars and numpy, which
    run outside the GIL; results come back in ``items``' order, so they are those of the
    plain loop whatever thread finishes first. ``heavy``: items of which at most one
    runs at a time (see :func:`_one_heavy_at_a_time`).
    """
    if n_jobs <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    if heavy is not None and sum(heavy) > 1:
        return _one_heavy_at_a_time(fn, items, n_jobs, heavy)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n_jobs) as pool:
        return list(pool.map(fn, items))


def _one_heavy_at_a_time(
    fn: Callable[[Any], Any], items: list, n_jobs: int, heavy: list[bool]
) -> list:
    """:func:`in_threads` with at most one ``heavy`` item running at any time: a thread
    takes the next heavy item when none runs, else the next other one.

    Cross-fitting's pooled groups (every sampled sync of a kind, up to twice a chunk of
    connectors' rows) ran two at a time at the end of each pass, and that pair was the
    peak of a 1,000-connector fit; they are about a third of a pass's work, so one
    thread working through them while the other takes the chunks costs next to no time.
    """
    results: list[Any] = [None] * len(items)
    queues = {
        True: collections.deque(i for i, h in enumerate(heavy) if h),
        False: collections.deque(i for i, h in enumerate(heavy) if not h),
    }
    cond = threading.Condition()
    state: dict[str, Any] = {"heavy_running": False, "error": None}

    def next_item() -> tuple[int, bool] | None:
        with cond:
            while state["error"] is None:
                if queues[True] and not state["heavy_running"]:
                    state["heavy_running"] = True
                    return queues[True].popleft(), True
                if queues[False]:
                    return queues[False].popleft(), False
                if not queues[True]:
                    return None
                cond.wait()  # only heavy items are left, and one runs
            return None

    def worker() -> None:
        while (taken := next_item()) is not None:
            i, is_heavy = taken
            try:
                results[i] = fn(items[i])
            except BaseException as exc:  # re-raised in the caller's thread
                with cond:
                    state["error"] = exc
            finally:
                with cond:
                    if is_heavy:
                        state["heavy_running"] = False
                    cond.notify_all()

    threads = [threading.Thread(target=worker) for _ in range(n_jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if state["error"] is not None:
        raise state["error"]
    return results


def connector_shards(wide: pl.DataFrame, n_jobs: int) -> list[pl.Series] | None:
    """The connector ids of each of up to ``n_jobs`` shards of a batch to score, with
    about as many syncs in each (largest connector first into the lightest shard); None
    when the batch is scored in one pass: one job, fewer than :data:`_SHARD_MIN_SYNCS`
    syncs (a thread and the merge would cost more than they save), one connector, or a
    sync_id given twice (shards are merged back by sync_id)."""
    if n_jobs <= 1 or wide.height < _SHARD_MIN_SYNCS or "connector_id" not in wide.columns:
        return None
    ids = wide["connector_id"]
    if ids.null_count() or wide["sync_id"].is_duplicated().any():
        return None
    sizes = ids.value_counts(name="n").sort("n", "connector_id", descending=[True, False])
    n_shards = min(n_jobs, sizes.height)
    if n_shards <= 1:
        return None
    load = np.zeros(n_shards, dtype=np.int64)
    members: list[list[str]] = [[] for _ in range(n_shards)]
    for cid, n in sizes.iter_rows():  # one step per connector, not per sync
        k = int(np.argmin(load))
        members[k].append(cid)
        load[k] += n
    return [pl.Series("connector_id", m, dtype=pl.String) for m in members]
