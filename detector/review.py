"""Breaches that ask for a look, not a hold: only the connector's transport moved.

A sync that was slow, or that met a few API errors and retried them, while every
figure about its data stayed in line, is a sync whose data can be trusted: SPEC.md's
``review`` ("only latency moved"). Holding it would pause propagation for an API blip
that the connector already recovered from. An *unstable* API is different: typical
latency up together with failing calls is how an outage that may have cost data
starts, so that breach still pauses. So does a *storm* of failing calls, errors or
retries at least :data:`STORM_Z` scales out (dozens where the connector meets one now
and then): a retry loop resends pages, and what it returns twice or never is data.

The same test is applied to the held-out scores the cutoffs are calibrated on, so a
cutoff still lets normal syncs *pause* at the budgeted rate.
"""

from __future__ import annotations

import numpy as np

from detector.explain import PERFORMANCE_MEASURES

__all__ = ["TRANSPORT_MEASURES", "OUTLYING_Z", "STORM_Z", "review_only"]

#: Measures about how the connector talked to its source, not about what it returned.
TRANSPORT_MEASURES = (*PERFORMANCE_MEASURES, "api.requests", "api.errors", "api.retries")
#: A residual this many scales out counts as moved.
OUTLYING_Z = 3.0
#: Failing calls this many scales out are a storm, not a blip (a tail probability of
#: about 1e-23: retries a connector's history cannot explain).
STORM_Z = 10.0
_TRANSPORT = [m + sign for m in TRANSPORT_MEASURES for sign in "+-"]
_SLOW = ["api.latency_p50_ms+"]  # typical latency up: the whole API is slow, not one call
_FAILING = ["api.errors+", "api.retries+"]


def review_only(rows: np.ndarray, moved: np.ndarray, n_rows: int, z: np.ndarray) -> np.ndarray:
    """Per sync: did only its transport move, short of an unstable API?

    ``rows[i]`` is the sync (``0 .. n_rows - 1``) of the ``i``-th residual that moved
    (at least :data:`OUTLYING_Z` out), ``moved[i]`` its measure with the sign of the
    move (``"api.errors+"``; a tail family name works as well) and ``z[i]`` its residual.
    A sync with nothing moved is not review-only: a breach it has comes from the forest,
    which sees the whole vector.
    """
    moved = np.asarray(moved)

    def any_of(hit: np.ndarray) -> np.ndarray:
        out = np.zeros(n_rows, dtype=bool)
        out[rows[hit]] = True
        return out

    failing = np.isin(moved, _FAILING)
    data_moved = any_of(np.isin(moved, _TRANSPORT, invert=True))
    unstable = any_of(np.isin(moved, _SLOW)) & any_of(failing)
    storm = any_of(failing & (np.abs(np.asarray(z)) >= STORM_Z))
    return any_of(np.ones(len(rows), dtype=bool)) & ~data_moved & ~unstable & ~storm
