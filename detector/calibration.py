"""Calibration: raw anomaly scores -> tail probabilities -> a cutoff set by a budget.

Raw scores (isolation-forest ``s``, the largest residual) are not probabilities and the
isolation-forest score saturates. :class:`TailCalibrator` estimates, for each group, the
chance that a *normal* sync scores at least this high:

* the body of each group's distribution is its own empirical quantiles (held-out scores
  from cross-fitting, so the estimate is not optimistic);
* beyond each group's ``1 - tail_fraction`` quantile, a generalised Pareto distribution
  (peaks over threshold) models the far tail. Its shape is pooled across groups after
  scaling each group by its own body, because one connector rarely has enough
  exceedances to fit a tail alone.

The false-pause budget (see :mod:`detector.policy`) becomes a per-sync rate ``alpha``;
a sync breaches when its tail probability is below ``alpha``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["TailCalibrator", "combine_tail_probabilities"]

_LEVELS = np.linspace(0.0, 1.0, 21)


def combine_tail_probabilities(*p: np.ndarray) -> np.ndarray:
    """Bonferroni combination: a sync is as surprising as its most surprising score."""
    stacked = np.vstack(p)
    return np.clip(stacked.min(axis=0) * stacked.shape[0], 0.0, 1.0)


class TailCalibrator:
    """Per-group tail probabilities with a pooled generalised Pareto tail.

    Parameters
    ----------
    tail_fraction : float, default=0.1
        Share of each group's scores treated as the tail.
    min_group_size : int, default=10
        Groups with fewer held-out scores borrow the median body of all groups.

    Attributes
    ----------
    body_ : ndarray of shape (n_groups, 21)
        Each group's body quantiles at levels ``0, 0.05 * (1 - tail_fraction), ...``.
    shape_, scale_ : float
        Pooled generalised Pareto parameters of scaled exceedances.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> s = rng.normal(size=5000)
    >>> cal = TailCalibrator().fit(s, np.zeros(5000, dtype=int), n_groups=1)
    >>> p = cal.tail_probability(np.array([2.326]), np.array([0]))[0]  # true value 0.01
    >>> bool(0.005 < p < 0.02)
    True
    """

    def __init__(self, *, tail_fraction: float = 0.1, min_group_size: int = 10) -> None:
        self.tail_fraction = tail_fraction
        self.min_group_size = min_group_size

    def fit(self, scores: np.ndarray, groups: np.ndarray, *, n_groups: int) -> TailCalibrator:
        """Fit from held-out scores of normal syncs and each score's group index."""
        if not 0.0 < self.tail_fraction < 0.5:
            raise ValueError("tail_fraction must be in (0, 0.5)")
        scores = np.asarray(scores, dtype=float)
        groups = np.asarray(groups)
        levels = _LEVELS * (1.0 - self.tail_fraction)
        body = np.full((n_groups, len(levels)), np.nan)
        sizes = np.bincount(groups, minlength=n_groups)
        order = np.lexsort((scores, groups))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        for g in np.flatnonzero(sizes >= self.min_group_size):
            body[g] = np.quantile(scores[order[starts[g] : starts[g] + sizes[g]]], levels)
        fallback = (
            np.nanmedian(body, axis=0) if np.isfinite(body).any() else np.quantile(scores, levels)
        )
        body[~np.isfinite(body[:, 0])] = fallback
        # Each group's tail is measured in units of its own upper body width.
        width = np.maximum(body[:, -1] - body[:, len(levels) // 2], 1e-9)
        excess = (scores - body[groups, -1]) / width[groups]
        y = excess[excess > 0]
        if len(y) >= 20:
            shape, _, scale = stats.genpareto.fit(y, floc=0.0)
            shape = float(np.clip(shape, -0.5, 0.5))
        else:
            shape, scale = 0.0, float(np.mean(y)) if len(y) else 1.0
        self.body_ = body
        self.width_ = width
        self.shape_ = shape
        self.scale_ = float(max(scale, 1e-9))
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "body_"):
            raise RuntimeError("this TailCalibrator is not fitted yet: call fit first")

    def tail_probability(self, scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Estimated P(normal score >= score) for each score under its group's calibration."""
        self._check_fitted()
        scores = np.asarray(scores, dtype=float)
        body = self.body_[groups]
        levels = _LEVELS * (1.0 - self.tail_fraction)
        # Position within the body by linear interpolation between the stored quantiles.
        idx = np.clip((body <= scores[:, None]).sum(axis=1) - 1, 0, len(levels) - 2)
        rows = np.arange(len(scores))
        lo, hi = body[rows, idx], body[rows, idx + 1]
        frac = np.where(hi > lo, (scores - lo) / np.where(hi > lo, hi - lo, 1.0), 1.0)
        cdf = levels[idx] + np.clip(frac, 0.0, 1.0) * (levels[idx + 1] - levels[idx])
        cdf = np.where(scores < body[:, 0], 0.0, cdf)
        p = 1.0 - cdf
        excess = (scores - body[:, -1]) / self.width_[groups]
        tail = self.tail_fraction * stats.genpareto.sf(
            np.maximum(excess, 0.0), self.shape_, loc=0.0, scale=self.scale_
        )
        return np.clip(np.where(excess > 0, tail, p), 0.0, 1.0)

    def cutoff(self, alpha: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """The raw score at which each group's tail probability equals ``alpha``."""
        self._check_fitted()
        alpha = np.asarray(alpha, dtype=float)
        top = self.body_[groups, -1]
        width = self.width_[groups]
        in_tail = alpha < self.tail_fraction
        q = stats.genpareto.isf(
            np.clip(alpha / self.tail_fraction, 1e-300, 1.0), self.shape_, scale=self.scale_
        )
        levels = _LEVELS * (1.0 - self.tail_fraction)
        body_cut = (
            np.array(
                [
                    np.interp(1.0 - a, levels, b)
                    for a, b in zip(alpha, self.body_[groups], strict=True)
                ]
            )
            if (~in_tail).any()
            else top
        )
        return np.where(in_tail, top + q * width, body_cut)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        self._check_fitted()
        return {
            f"{prefix}body": self.body_,
            f"{prefix}width": self.width_,
            f"{prefix}gpd": np.array([self.shape_, self.scale_, self.tail_fraction]),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> TailCalibrator:
        shape, scale, tail_fraction = arrays[f"{prefix}gpd"]
        cal = cls(tail_fraction=float(tail_fraction))
        cal.body_ = arrays[f"{prefix}body"]
        cal.width_ = arrays[f"{prefix}width"]
        cal.shape_, cal.scale_ = float(shape), float(scale)
        return cal
