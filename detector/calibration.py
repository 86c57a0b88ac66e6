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

from detector.special import ufuncs as _ufuncs

__all__ = ["TailCalibrator"]

_LEVELS = np.linspace(0.0, 1.0, 21)


class TailCalibrator:
    """Per-group tail probabilities with a pooled generalised Pareto tail.

    Parameters
    ----------
    tail_fraction : float, default=0.1
        Share of each group's scores treated as the tail.
    min_group_size : int, default=10
        Groups with fewer held-out scores borrow the median body of all groups.
    pool_shape : bool, default=True
        Pool the tail shape across groups (few exceedances per group). With ``False``,
        each group with at least ``min_tail`` exceedances gets a tail of its own (for
        a few large groups whose tails differ, such as measure families).
    min_width : float, default=1e-9
        Floor of the body width that scales each group's exceedances.
    min_tail : int, default=200
        Exceedances a group needs for a tail fully its own when ``pool_shape`` is
        ``False``; a group with fewer (but at least 20) shrinks its shape towards the
        pooled one in proportion.
    log10_tail : bool, default=False
        For scores that are already ``-log10`` of tail probabilities: beyond each group's
        body the tail is exponential in the score, pooled across groups, and never
        flatter than ``10 ** -score``. A free GPD tail would be dominated by the few
        largest held-out scores and flatten where evidence is strongest.

    Attributes
    ----------
    body_ : ndarray of shape (n_groups, 21)
        Each group's body quantiles at levels ``0, 0.05 * (1 - tail_fraction), ...``.
    shape_, scale_ : ndarray of shape (n_groups,)
        Generalised Pareto parameters of each group's scaled exceedances.

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

    def __init__(
        self,
        *,
        tail_fraction: float = 0.1,
        min_group_size: int = 10,
        pool_shape: bool = True,
        min_width: float = 1e-9,
        min_tail: int = 200,
        log10_tail: bool = False,
    ) -> None:
        self.tail_fraction = tail_fraction
        self.min_group_size = min_group_size
        self.pool_shape = pool_shape
        self.min_width = min_width
        self.min_tail = min_tail
        self.log10_tail = log10_tail

    def fit(self, scores: np.ndarray, groups: np.ndarray, *, n_groups: int) -> TailCalibrator:
        """Fit from held-out scores of normal syncs and each score's group index."""
        if not 0.0 < self.tail_fraction < 0.5:
            raise ValueError("tail_fraction must be in (0, 0.5)")
        scores = np.asarray(scores, dtype=float)
        groups = np.asarray(groups)
        levels = _LEVELS * (1.0 - self.tail_fraction)
        body = np.full((n_groups, len(levels)), np.nan)
        sizes = np.bincount(groups, minlength=n_groups)
        # Group by group, in one stable sort on the group alone (a radix sort for small
        # integer codes): a quantile does not need its slice sorted.
        order = _group_order(groups, n_groups)
        starts = np.cumsum(sizes) - sizes
        for g in np.flatnonzero(sizes >= self.min_group_size):
            body[g] = np.quantile(scores[order[starts[g] : starts[g] + sizes[g]]], levels)
        fallback = (
            np.nanmedian(body, axis=0) if np.isfinite(body).any() else np.quantile(scores, levels)
        )
        body[~np.isfinite(body[:, 0])] = fallback
        # Each group's tail is measured in units of its own upper body width.
        width = np.maximum(body[:, -1] - body[:, len(levels) // 2], self.min_width)
        excess = (scores - body[groups, -1]) / width[groups]
        tail = excess > 0
        pooled = (0.0, 1.0) if self.log10_tail else _fit_gpd(excess[tail])
        shape = np.full(n_groups, pooled[0])
        scale = np.full(n_groups, pooled[1])
        if self.log10_tail:
            # Exponential in the score, at least as steep as 10 ** -score: held-out scores
            # that fall faster than that (dependent families) set the slope themselves.
            raw_excess = (scores - body[groups, -1])[tail]
            rate = np.log(10.0)
            if len(raw_excess) >= 20:
                rate = max(rate, 1.0 / float(np.mean(raw_excess)))
            scale = 1.0 / (rate * width)
        elif not self.pool_shape:
            # Groups with fewer than ``min_tail`` exceedances shrink their own shape towards
            # the pooled one in proportion to their data, and keep their own mean excess.
            own = np.bincount(groups[tail], minlength=n_groups)
            fitted = own >= _MIN_OWN_TAIL
            # Every fitted group's exceedances, group by group in their original order:
            # one pass over the scores, not one per group.
            rows = order[tail[order] & fitted[groups[order]]]
            g_fitted = np.flatnonzero(fitted)
            parts = np.split(excess[rows], np.cumsum(own[g_fitted])[:-1])
            for g, y in zip(g_fitted, parts, strict=True):
                shape[g], scale[g] = _fit_gpd(y)
                weight = own[g] / self.min_tail
                if weight < 1.0:
                    shape[g] = weight * shape[g] + (1.0 - weight) * pooled[0]
                    scale[g] = float(np.mean(y)) * (1.0 - shape[g])  # mean = scale / (1 - shape)
        self.body_ = body
        self.width_ = width
        self.shape_ = shape
        self.scale_ = np.maximum(scale, 1e-9)
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
        tail = self.tail_fraction * genpareto_sf(
            np.maximum(excess, 0.0), self.shape_[groups], self.scale_[groups]
        )
        return np.clip(np.where(excess > 0, tail, p), 0.0, 1.0)

    def cutoff(self, alpha: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """The raw score at which each group's tail probability equals ``alpha``."""
        self._check_fitted()
        alpha = np.asarray(alpha, dtype=float)
        top = self.body_[groups, -1]
        width = self.width_[groups]
        in_tail = alpha < self.tail_fraction
        from scipy import stats  # not on the scoring path: see genpareto_sf

        q = stats.genpareto.isf(
            np.clip(alpha / self.tail_fraction, 1e-300, 1.0),
            self.shape_[groups],
            scale=self.scale_[groups],
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
            f"{prefix}shape": self.shape_,
            f"{prefix}scale": self.scale_,
            f"{prefix}tail_fraction": np.array([self.tail_fraction]),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> TailCalibrator:
        cal = cls(tail_fraction=float(arrays[f"{prefix}tail_fraction"][0]))
        cal.body_ = arrays[f"{prefix}body"]
        cal.width_ = arrays[f"{prefix}width"]
        cal.shape_ = np.asarray(arrays[f"{prefix}shape"], dtype=float)
        cal.scale_ = np.asarray(arrays[f"{prefix}scale"], dtype=float)
        return cal


_MIN_OWN_TAIL = 20  # exceedances below which a group's own tail is not estimated at all
_MAX_TAIL_FIT = 5000  # exceedances per GPD fit: plenty for two parameters, and fast
_LOG_XMAX = float(np.log(np.finfo(float).max))  # scipy.stats' penalty per point off support


def _group_order(groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Indices ordering ``groups`` by group, stable (a radix sort for small codes)."""
    codes = groups.astype(np.int16) if n_groups < 2**15 else groups
    return np.argsort(codes, kind="stable")


def _fit_gpd(y: np.ndarray) -> tuple[float, float]:
    """Generalised Pareto shape and scale of exceedances ``y`` (exponential when few).

    ``scipy.stats.genpareto.fit(y, floc=0)``: its start and its Nelder-Mead search, on
    the same negative log-likelihood written for this one case (the generic one spends
    most of a fit on argument handling; a test holds the two equal).
    """
    if len(y) < 20:
        return 0.0, float(np.mean(y)) if len(y) else 1.0
    if len(y) > _MAX_TAIL_FIT:
        y = np.sort(y)[np.linspace(0, len(y) - 1, _MAX_TAIL_FIT).astype(int)]
    from scipy import optimize, stats  # fitting only

    start = stats.genpareto._fitstart(y)
    shape, scale = optimize.fmin(_gpd_nnlf, [start[0], start[-1]], args=(y,), disp=0)
    if shape < 0.0:
        # A bounded tail would put an end to what normal syncs can do, and any normal sync
        # beyond it would get probability zero: no lighter than exponential.
        shape, scale = 0.0, float(np.mean(y))
    return float(min(shape, 0.5)), float(scale)


def _gpd_nnlf(theta: np.ndarray, y: np.ndarray) -> float:
    """scipy.stats' penalised negative log-likelihood of ``genpareto(c, loc=0, scale)``."""
    c, scale = theta
    if not np.isfinite(c) or scale <= 0:
        return np.inf
    x = y / scale
    n_bad = 0
    if c < 0:  # support [0, -1/c]: points beyond it are dropped and penalised
        inside = x <= -1.0 / c
        n_bad = len(x) - np.count_nonzero(inside)
        x = x[inside] if n_bad else x
    logpdf = -_ufuncs.xlog1py(c + 1.0, c * x) / c if c != 0 else -x
    finite = np.isfinite(logpdf)
    n_bad += len(finite) - np.count_nonzero(finite)
    n_log_scale = len(y) * np.log(scale)
    if n_bad:
        return -np.sum(logpdf[finite]) + n_bad * _LOG_XMAX * 100 + n_log_scale
    return -np.sum(logpdf) + n_log_scale


def genpareto_sf(x: np.ndarray, shape: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``scipy.stats.genpareto.sf(x, shape, loc=0, scale=scale)``, the same arithmetic.

    Scoring needs only this from the distribution, and importing scipy.stats costs ~0.6 s
    of every cold ``syncguard score``; scipy.stats computes it as ``inv_boxcox(-z, -c)``
    inside the support, 1 below it and 0 beyond it (a test holds the two equal).
    """
    z = np.asarray(x, dtype=float) / scale
    c = np.asarray(shape, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = _ufuncs.inv_boxcox(-z, -c)
        out = np.where(z <= 0.0, 1.0, out)
        return np.where((c < 0) & (z >= -1.0 / np.where(c < 0, c, -1.0)), 0.0, out)
