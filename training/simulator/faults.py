"""Fault episodes and planned access-review clean-ups, laid over normal life.

Each fault class changes what the connector *reports* (``State.R``, duplicates,
status, API modifiers) and never the true state, so that once an episode ends
the next sync's keyed diff brings the data back to the truth on its own: that
recovery sync is labelled normal, as it is in real life.

Access-review clean-ups are the opposite: they change the truth (10-25% of an
entitlement-like type really goes away and stays gone), so they are applied to
the true churn before counts are derived.

Planning is deterministic for a seed. Classes are dealt round-robin over a
seeded permutation so that even a tiny fleet sees a balanced mix, then each
episode goes to the eligible connector with the lowest load relative to its
flakiness, at a random free position after the warm-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .normal import State, recount

__all__ = ["FAULT_CLASSES", "Episode", "apply_access_review", "apply_episode", "eligible",
           "plan_class_sequence"]

FAULT_CLASSES: tuple[str, ...] = (
    "partial_silent", "partial_reported", "page_truncation", "schema_drift",
    "missing_entitlements", "retry_duplicates", "frozen_snapshot", "auth_failure",
    "empty_success", "subtle_partial", "api_instability", "api_instability_loss",
)

# Episode length in syncs (inclusive range): most faults are caught or heal
# within a sync or two; a stuck cache or revoked credential lingers.
LENGTHS: dict[str, tuple[int, int]] = {
    "partial_silent": (1, 2), "partial_reported": (1, 2), "page_truncation": (1, 3),
    "schema_drift": (1, 4), "missing_entitlements": (1, 2), "retry_duplicates": (1, 2),
    "frozen_snapshot": (3, 8), "auth_failure": (1, 4), "empty_success": (1, 2),
    "subtle_partial": (1, 3), "api_instability": (1, 3), "api_instability_loss": (1, 2),
}

_BIG_DIRECTORY = 50_000
_PAGE_CAPS = (1000, 2000, 5000, 10000, 50000, 100000)


@dataclass(frozen=True)
class Episode:
    """One planned fault episode (or access review) on one connector.

    Parameters
    ----------
    episode_id : str
        ``ep-0042`` for faults, ``ar-0007`` for access reviews.
    connector : int
        Index of the connector in the fleet.
    cls : str
        Fault class or ``access_review_cleanup``.
    start : int
        Index of the first affected sync.
    length : int
        Number of affected syncs.
    """

    episode_id: str
    connector: int
    cls: str
    start: int
    length: int


def _entitlement_like(state: State) -> list[str]:
    names = state.conn.entitlement_types()
    if state.conn.spec.family == "cloud_iam":
        names = [*names, "role"]
    return names


def eligible(cls: str, state: State) -> bool:
    """Whether a fault class can happen on this connector at all.

    Parameters
    ----------
    cls : str
        Fault class.
    state : State
        The connector's simulated truth.

    Returns
    -------
    bool
    """
    conn = state.conn
    if cls == "subtle_partial":
        return (conn.spec.family == "directory"
                and int(state.C[conn.primary].min()) >= _BIG_DIRECTORY)
    if cls == "missing_entitlements":
        return bool(_entitlement_like(state))
    if cls == "page_truncation":
        return max(int(state.C[t].min()) for t in conn.types) > 2 * conn.page_size
    return True


def plan_class_sequence(n_episodes: int, weights: Mapping[str, float],
                        rng: np.random.Generator) -> list[str]:
    """Deal fault classes for ``n_episodes`` in a balanced, seeded order.

    Parameters
    ----------
    n_episodes : int
        Total episodes.
    weights : mapping of str to float
        Relative weight of each class (0 switches a class off).
    rng : numpy.random.Generator
        Planning stream.

    Returns
    -------
    list of str
        Classes in dealing order: every round of the seeded permutation deals
        each class that still has quota, so the first rounds cover all classes.
    """
    classes = [c for c in FAULT_CLASSES if weights.get(c, 0.0) > 0]
    if not classes or n_episodes <= 0:
        return []
    w = np.array([weights[c] for c in classes], dtype=float)
    exact = n_episodes * w / w.sum()
    quota = np.floor(exact).astype(int)
    # Largest remainder, ties broken by the seeded permutation.
    order = rng.permutation(len(classes))
    rest = n_episodes - int(quota.sum())
    rem_order = sorted(order.tolist(), key=lambda j: -(exact[j] - quota[j]))
    for j in rem_order[:rest]:
        quota[j] += 1
    seq: list[str] = []
    while len(seq) < n_episodes:
        for j in order:
            if quota[j] > 0:
                seq.append(classes[j])
                quota[j] -= 1
    return seq


def apply_access_review(state: State, i: int, ep_id: str, rng: np.random.Generator) -> None:
    """A planned clean-up removes 10-25% of one entitlement-like type for good.

    Parameters
    ----------
    state : State
        Connector truth (``recount`` is called afterwards).
    i : int
        The sync that carries the clean-up.
    ep_id : str
        Episode id for the label.
    rng : numpy.random.Generator
        Episode stream.
    """
    names = state.conn.entitlement_types()
    name = names[int(rng.integers(len(names)))]
    prev = int(state.C[name][i - 1]) if i > 0 else state.conn.sizes[name]
    k = int(round(prev * rng.uniform(0.10, 0.25)))
    state.r[name][i] += k
    recount(state)
    state.label[i] = "ambiguous"
    state.cls[i] = "access_review_cleanup"
    state.episode[i] = ep_id


def _pick_types(state: State, rng: np.random.Generator, p_primary: float = 0.5,
                p_second: float = 0.25) -> list[str]:
    types = state.conn.types
    first = types[0] if rng.random() < p_primary else types[int(rng.integers(len(types)))]
    out = [first]
    if len(types) > 1 and rng.random() < p_second:
        other = [t for t in types if t != first]
        out.append(other[int(rng.integers(len(other)))])
    return out


def _lose(state: State, name: str, ix: np.ndarray, lo: float, hi: float,
          rng: np.random.Generator) -> None:
    """Drop a fraction in [lo, hi] of one type's records at the episode's syncs."""
    frac = np.clip(rng.uniform(lo, hi) + rng.normal(0, 0.02, len(ix)), lo, hi)
    state.R[name][ix] = np.rint(state.C[name][ix] * (1.0 - frac)).astype(np.int64)


def _pages(state: State, ix: np.ndarray) -> np.ndarray:
    ps = state.conn.page_size
    return sum(np.ceil(state.C[t][ix] / ps) for t in state.conn.types)


def _instability(state: State, ix: np.ndarray, rng: np.random.Generator) -> None:
    """Slow, erroring API: latency x3-20, many errors and retries, longer syncs."""
    k = len(ix)
    state.lat_mult[ix] = rng.uniform(3.0, 20.0) * np.exp(rng.normal(0, 0.1, k))
    err = 3 + rng.poisson(_pages(state, ix) * rng.uniform(0.02, 0.2))
    state.err_add[ix] += err
    state.retry_add[ix] += rng.poisson(err * 0.2)


def apply_episode(state: State, ep: Episode, rng: np.random.Generator) -> None:
    """Lay one fault episode over the connector's reported state.

    Parameters
    ----------
    state : State
        Connector after :func:`~training.simulator.normal.init_reported`.
    ep : Episode
        The planned episode.
    rng : numpy.random.Generator
        Episode stream.
    """
    ix = np.arange(ep.start, ep.start + ep.length)
    k = len(ix)
    conn = state.conn
    cls = ep.cls
    if cls in ("partial_silent", "partial_reported"):
        for name in _pick_types(state, rng):
            _lose(state, name, ix, 0.2, 0.7, rng)
        if cls == "partial_reported":
            state.status[ix] = "partial"
            state.error_class[ix] = rng.choice(
                np.array(["timeout", "rate_limit", "network", None], dtype=object),
                p=[0.4, 0.3, 0.2, 0.1])
            state.err_add[ix] += rng.integers(1, 9, k)
        elif rng.random() < 0.3:
            state.err_add[ix] += rng.poisson(2, k)  # errors the connector swallowed
    elif cls == "page_truncation":
        ps = conn.page_size
        big = [t for t in conn.types if state.C[t][ix].min() > 2 * ps]
        name = max(big, key=lambda t: int(state.C[t][ep.start]))
        true = int(state.C[name][ix].min())
        caps = [c for c in _PAGE_CAPS if c % ps == 0 and c < 0.95 * true]
        if caps and rng.random() < 0.6:
            cap = caps[int(rng.integers(len(caps)))]  # an API offset/result limit
        else:
            cap = ps * max(1, int(rng.uniform(0.3, 0.95) * true // ps))  # stopped paging
        targets = [t for t in conn.types if state.C[t][ix].min() > cap]
        if rng.random() < 0.5:
            targets = [name]
        for t in targets:
            state.R[t][ix] = np.minimum(state.C[t][ix], cap)
    elif cls == "schema_drift":
        choices = [(t, j) for t in conn.types
                   for j in range(len(conn.null_fields[t]))
                   if state.p_null[t][ep.start, j] < 0.5]
        name, j = choices[int(rng.integers(len(choices)))]
        u = rng.random()
        new = 1.0 if u < 0.3 else rng.uniform(0.93, 0.999) if u < 0.9 else rng.uniform(0.9, 0.93)
        old = float(state.p_null[name][ep.start, j])
        state.p_null[name][ix, j] = new
        if rng.random() < 0.5:
            # The diff compares that attribute: every record it blanked is "modified".
            c = int(state.C[name][ep.start])
            state.mod_extra[name][ep.start] += rng.binomial(c, max(new - old, 0.0))
            end = ep.start + k
            if end < state.n:
                state.mod_extra[name][end] += rng.binomial(c, max(new - old, 0.0))
    elif cls == "missing_entitlements":
        names = _entitlement_like(state)
        name = names[int(rng.integers(len(names)))]
        if rng.random() < 0.4:
            state.R[name][ix] = 0
        else:
            _lose(state, name, ix, 0.6, 1.0, rng)
    elif cls == "retry_duplicates":
        names = conn.types if rng.random() < 0.2 else _pick_types(state, rng, 0.6, 0.0)
        frac = rng.uniform(0.05, 0.5)
        for name in names:
            state.dup[name][ix] = np.rint(state.C[name][ix] * frac).astype(np.int64)
        state.req_mult[ix] = 1.0 + frac
        retries = rng.integers(5, 51, k)
        state.retry_add[ix] += retries
        state.err_add[ix] += rng.binomial(retries, 0.8)
        state.lat_mult[ix] = rng.uniform(1.0, 1.5, k)
    elif cls == "frozen_snapshot":
        src = ep.start - 1
        state.frozen_src[ix] = src
        for name in conn.types:
            state.R[name][ix] = state.R[name][src]
            state.dup[name][ix] = state.dup[name][src]
        # A cache hit: a couple of requests, seconds instead of minutes.
        state.override["requests"][ix] = rng.integers(1, 4, k)
        state.override["errors"][ix] = 0
        state.override["retries"][ix] = 0
        state.override["duration"][ix] = rng.uniform(0.5, 8.0, k)
        state.lat_mult[ix] = rng.uniform(0.2, 0.6, k)
    elif cls == "auth_failure":
        state.has_res[ix] = False
        state.status[ix] = "failed"
        state.error_class[ix] = "auth"
        state.no_metrics[ix] = True
        req = rng.integers(1, 3, k)
        retries = rng.integers(0, 3, k)
        state.override["requests"][ix] = req + retries
        state.override["errors"][ix] = req + retries
        state.override["retries"][ix] = retries
        state.override["duration"][ix] = rng.uniform(0.3, 5.0, k)
        p50 = rng.uniform(50, 400, k)
        state.override["p50"][ix] = p50
        state.override["p95"][ix] = p50 * rng.uniform(1.0, 2.0, k)
    elif cls == "empty_success":
        names = conn.types if rng.random() < 0.7 else [conn.primary]
        for name in names:
            state.R[name][ix] = 0
            state.dup[name][ix] = 0
        if len(names) == len(conn.types):
            state.no_metrics[ix] = True
    elif cls == "subtle_partial":
        _lose(state, conn.primary, ix, 0.03, 0.10, rng)
    elif cls == "api_instability":
        _instability(state, ix, rng)
    elif cls == "api_instability_loss":
        _instability(state, ix, rng)
        names = _pick_types(state, rng, 0.4, 0.0)
        _lose(state, names[0], ix, 0.05, 0.30, rng)
        if rng.random() < 0.6:
            state.status[ix] = "partial"
            state.error_class[ix] = rng.choice(
                np.array(["timeout", "rate_limit", "network"], dtype=object))
    else:
        raise ValueError(f"unknown fault class {cls!r}; expected one of {FAULT_CLASSES}")
    state.label[ix] = "anomaly"
    state.cls[ix] = cls
    state.episode[ix] = ep.episode_id


def free_window(occupied: np.ndarray, start: int, length: int) -> bool:
    """Whether syncs ``start-1 .. start+length`` are all free (clean neighbours)."""
    lo = max(start - 1, 0)
    hi = min(start + length + 1, len(occupied))
    return not occupied[lo:hi].any()


def place(occupied: np.ndarray, first: int, length: int, rng: np.random.Generator,
          candidates: Sequence[int] | None = None, tries: int = 40) -> int | None:
    """A random free start index at or after ``first`` (``None`` if none found)."""
    n = len(occupied)
    if first + length > n or first < 1:
        return None
    for _ in range(tries):
        if candidates is not None and len(candidates):
            s = int(candidates[int(rng.integers(len(candidates)))])
        else:
            s = int(rng.integers(first, n - length + 1))
        if s >= first and s + length <= n and free_window(occupied, s, length):
            return s
    return None
