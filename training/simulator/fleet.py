"""Fleet orchestration: draw connectors, plan episodes, simulate, sort and write.

Randomness is split by purpose so that changing one thing does not reshuffle
everything else: each connector has its own stream (``SeedSequence(seed)``
child *i*), planning has its own, and every episode draws from a stream keyed
by its number.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .faults import (
    FAULT_CLASSES,
    LENGTHS,
    Episode,
    apply_access_review,
    apply_episode,
    eligible,
    place,
    plan_class_sequence,
)
from .kinds import KIND_WEIGHTS, KINDS
from .normal import Connector, draw_connector, finalize, init_reported, render, simulate_truth

__all__ = ["DEFAULT_START", "FAULT_CLASSES", "describe_fleet", "simulate_fleet", "write_fleet"]

DEFAULT_START = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
WARMUP_DAYS = 7
_BIG_DIRECTORY = 50_000


def _kind_mix(n: int, rng: np.random.Generator) -> list[str]:
    """Kinds for ``n`` connectors: largest-remainder shares of KIND_WEIGHTS, shuffled."""
    names = list(KIND_WEIGHTS)
    w = np.array([KIND_WEIGHTS[k] for k in names])
    exact = n * w / w.sum()
    quota = np.floor(exact).astype(int)
    for j in np.argsort(-(exact - quota), kind="stable")[: n - int(quota.sum())]:
        quota[j] += 1
    kinds = [k for k, q in zip(names, quota, strict=True) for _ in range(q)]
    return [kinds[j] for j in rng.permutation(len(kinds))]


def _draw_connectors(n: int, seed: int) -> tuple[list[Connector], list[np.random.Generator]]:
    """Each connector's personality, drawn from its own stream (child i of the seed)."""
    root = np.random.SeedSequence(seed)
    children = root.spawn(n + 1)
    mix_rng = np.random.default_rng(children[-1].spawn(1)[0])
    kinds = _kind_mix(n, mix_rng)
    dirs = [i for i, k in enumerate(kinds) if KINDS[k].family == "directory"]
    # Make sure large directories exist: they are where a 5% loss hides.
    n_big = min(len(dirs), max(1, round(0.05 * n))) if dirs else 0
    big = set(dirs[:n_big])
    ordinal: Counter[str] = Counter()
    conns: list[Connector] = []
    rngs: list[np.random.Generator] = []
    for i, kind in enumerate(kinds):
        rng = np.random.default_rng(children[i])
        conns.append(draw_connector(KINDS[kind], i, ordinal[kind], rng, big=i in big))
        ordinal[kind] += 1
        rngs.append(rng)
    return conns, rngs


def describe_fleet(n_connectors: int = 100, seed: int = 0) -> list[dict]:
    """The fleet's connectors as :func:`simulate_fleet` draws them for a seed.

    Useful for notebooks and tests that need what a record does not carry:
    the connector's time zone, cadence, page size and starting sizes.

    Parameters
    ----------
    n_connectors : int, default 100
        Number of connectors.
    seed : int, default 0
        Seed, as given to :func:`simulate_fleet`.

    Returns
    -------
    list of dict
        One per connector, in fleet order: ``connector_id``, ``connector_kind``,
        ``family``, ``tz``, ``region``, ``interval_h``, ``page_size``, ``sizes``
        (initial true count per resource type) and ``small_app``.
    """
    conns, _ = _draw_connectors(n_connectors, seed)
    return [
        {"connector_id": c.connector_id, "connector_kind": c.spec.kind,
         "family": c.spec.family, "tz": c.tz, "region": c.region, "interval_h": c.interval_h,
         "page_size": c.page_size, "sizes": dict(c.sizes), "small_app": c.small_app}
        for c in conns
    ]


def _episode_rng(seed: int, tag: int, k: int) -> np.random.Generator:
    return np.random.default_rng([seed, tag, k])


def simulate_fleet(
    n_connectors: int = 100,
    days: int = 90,
    seed: int = 0,
    *,
    start: dt.datetime | None = None,
    fault_rate: float = 1.0,
    ambiguous_rate: float = 0.5,
    class_weights: Mapping[str, float] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Simulate a labelled fleet of identity-connector syncs.

    Parameters
    ----------
    n_connectors : int, default 100
        Number of connectors.
    days : int, default 90
        Length of the window in days.
    seed : int, default 0
        Seed; the same seed (and arguments) gives identical output.
    start : datetime, optional
        Window start (timezone-aware); default 2026-06-01T00:00:00Z.
    fault_rate : float, default 1.0
        Fault episodes per connector per 30 days after the 7-day warm-up, over
        all classes together. The total is fixed (rounded), not drawn.
    ambiguous_rate : float, default 0.5
        Access-review clean-ups per eligible connector (one with an
        entitlement-like type) per 30 days after the warm-up.
    class_weights : mapping of str to float, optional
        Relative weight per fault class (default: equal; 0 disables a class).

    Returns
    -------
    records : list of dict
        Sync records valid against ``detector/schemas/sync-record.schema.json``,
        sorted by ``started_at`` (then ``connector_id``).
    labels : list of dict
        One per record, same order: ``sync_id``, ``connector_id``, ``label``
        (``normal``/``anomaly``/``ambiguous``), ``class`` (fault class,
        ``access_review_cleanup`` or ``normal``) and ``episode`` (``ep-NNNN``,
        ``ar-NNNN`` or ``None``).

    Examples
    --------
    >>> records, labels = simulate_fleet(3, days=10, seed=1)
    >>> len(records) == len(labels) and records[0]["sync_id"] == labels[0]["sync_id"]
    True
    """
    if n_connectors < 1 or days < 1:
        raise ValueError("n_connectors and days must be >= 1")
    if fault_rate < 0 or ambiguous_rate < 0:
        raise ValueError("fault_rate and ambiguous_rate must be >= 0")
    weights = dict.fromkeys(FAULT_CLASSES, 1.0)
    if class_weights is not None:
        unknown = set(class_weights) - set(FAULT_CLASSES)
        if unknown:
            raise ValueError(f"unknown fault classes {sorted(unknown)}; "
                             f"expected names from {FAULT_CLASSES}")
        weights.update({k: float(v) for k, v in class_weights.items()})
    start = DEFAULT_START if start is None else start
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    start_s = int(start.timestamp())
    warm_s = start_s + WARMUP_DAYS * 86400
    active_days = max(days - WARMUP_DAYS, 0)

    conns, rngs = _draw_connectors(n_connectors, seed)
    states = [simulate_truth(c, start_s, days, rng) for c, rng in zip(conns, rngs, strict=True)]
    plan = np.random.default_rng([seed, 1])
    occupied = [np.zeros(s.n, dtype=bool) for s in states]
    first = [int(np.searchsorted(s.t, warm_s)) for s in states]
    for s, rng in zip(states, rngs, strict=True):
        # Labels live on the state; the reported state starts as the truth.
        init_reported(s, rng)

    # --- access reviews (change the truth, so they go first) -------------------
    amb_ok = [i for i, s in enumerate(states) if s.conn.entitlement_types()]
    n_amb = round(ambiguous_rate * len(amb_ok) * active_days / 30)
    order = [amb_ok[j] for j in plan.permutation(len(amb_ok))] if amb_ok else []
    for k in range(n_amb):
        c = order[k % len(order)]
        s = states[c]
        rng = _episode_rng(seed, 2, k)
        # Clean-ups are planned work: weekday business hours, local time.
        office = np.flatnonzero((s.weekday < 5) & (s.load >= 0.75)
                                & (np.arange(s.n) >= first[c]))
        i0 = place(occupied[c], first[c], 1, rng, office if len(office) else None)
        if i0 is None:
            continue
        occupied[c][i0] = True
        apply_access_review(s, i0, f"ar-{k + 1:04d}", rng)
    for s in states:
        # The reported state must follow the truth the clean-ups changed.
        for name in s.conn.types:
            s.R[name] = s.C[name].copy()

    # --- faults -----------------------------------------------------------------
    n_faults = round(fault_rate * n_connectors * active_days / 30)
    sequence = plan_class_sequence(n_faults, weights, plan)
    flakiness = plan.gamma(4.0, 0.25, n_connectors)  # some connectors break more often
    load = np.zeros(n_connectors)
    elig_cache: dict[tuple[str, int], bool] = {}
    for k, cls in enumerate(sequence):
        rng = _episode_rng(seed, 3, k)
        cands = []
        for c, s in enumerate(states):
            key = (cls, c)
            if key not in elig_cache:
                elig_cache[key] = eligible(cls, s)
            if elig_cache[key]:
                cands.append(c)
        if not cands:
            continue
        rank = (load[cands] + 1.0 + rng.random(len(cands)) * 0.5) / flakiness[cands]
        lo, hi = LENGTHS[cls]
        length = int(rng.integers(lo, hi + 1))
        for j in np.argsort(rank, kind="stable"):
            c = cands[int(j)]
            i0 = place(occupied[c], first[c], length, rng)
            if i0 is None:
                continue
            occupied[c][i0 - 1: i0 + length + 1] = True
            apply_episode(states[c], Episode(f"ep-{k + 1:04d}", c, cls, i0, length), rng)
            load[c] += 1
            break

    records: list[dict] = []
    labels: list[dict] = []
    keys: list[np.ndarray] = []
    for c, (s, rng) in enumerate(zip(states, rngs, strict=True)):
        finalize(s, rng)
        recs, labs = render(s)
        records.extend(recs)
        labels.extend(labs)
        keys.append(np.stack([s.t, np.full(s.n, c)]))
    key = np.concatenate(keys, axis=1)
    # Sort by start time, then by connector id (unique, so the order is total).
    ids = np.array([s.conn.connector_id for s in states])
    order_ids = np.argsort(ids, kind="stable")
    rank_of = np.empty(len(ids), dtype=np.int64)
    rank_of[order_ids] = np.arange(len(ids))
    perm = np.lexsort((rank_of[key[1]], key[0]))
    return [records[j] for j in perm], [labels[j] for j in perm]


def write_fleet(out_dir: Path, n_connectors: int = 100, days: int = 90, seed: int = 0,
                **kw: object) -> dict:
    """Simulate a fleet and write ``syncs.jsonl`` and ``labels.jsonl``.

    Parameters
    ----------
    out_dir : Path
        Directory to write into (created if missing).
    n_connectors, days, seed
        As in :func:`simulate_fleet`.
    **kw
        Passed to :func:`simulate_fleet` (``start``, ``fault_rate``,
        ``ambiguous_rate``, ``class_weights``).

    Returns
    -------
    dict
        Summary: ``syncs``, ``connectors``, ``labels`` (syncs per label),
        ``classes`` (syncs per class), ``episodes`` (episodes per class),
        ``kinds`` (connectors per kind), ``start``, ``days``, ``seed`` and the
        two file paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records, labels = simulate_fleet(n_connectors, days, seed, **kw)  # type: ignore[arg-type]
    syncs_path = out_dir / "syncs.jsonl"
    labels_path = out_dir / "labels.jsonl"
    dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    # Write bytes with "\n" explicitly so output is identical on every platform.
    with open(syncs_path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(map(dumps, records)))
        fh.write("\n")
    with open(labels_path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(map(dumps, labels)))
        fh.write("\n")
    episodes: dict[str, set[str]] = {}
    kinds: Counter[str] = Counter()
    seen_conn: set[str] = set()
    for rec, lab in zip(records, labels, strict=True):
        if lab["episode"] is not None:
            episodes.setdefault(lab["class"], set()).add(lab["episode"])
        if rec["connector_id"] not in seen_conn:
            seen_conn.add(rec["connector_id"])
            kinds[rec["connector_kind"]] += 1
    start = kw.get("start") or DEFAULT_START
    return {
        "syncs": len(records),
        "connectors": len(seen_conn),
        "days": days,
        "seed": seed,
        "start": start.isoformat().replace("+00:00", "Z"),  # type: ignore[union-attr]
        "labels": dict(sorted(Counter(lab["label"] for lab in labels).items())),
        "classes": dict(sorted(Counter(lab["class"] for lab in labels).items())),
        "episodes": {k: len(v) for k, v in sorted(episodes.items())},
        "kinds": dict(sorted(kinds.items())),
        "syncs_path": str(syncs_path),
        "labels_path": str(labels_path),
    }
