"""Seasonal baselines: what each measure should be at this time of week, and how far off it is.

For every series (a connector and a measure, or a connector kind and a measure for the
pooled cold-start model) the baseline learns an expected value per time-of-week bucket
and a robust scale, then turns each observation into a signed residual ``z`` (how many
scales above or below expected).

* ``count`` measures are judged by their log change against the reference sync.
* ``events`` (churn, duplicates, API errors and retries) are counts: the expected count
  is a per-record rate for this time of week times the resource's size and the time since
  the previous sync, and the noise is negative binomial with a dispersion learned per
  series, so a 40-user app whose teams come and go in bursts is not judged like a
  100,000-user directory. ``z`` is the normal quantile of the mid-p tail probability.
* ``rate`` measures (null rates) are judged on the logit scale, with a floor at the
  binomial standard error for the resource's size; on resources of up to 100 records,
  and where a field's null (or populated) records are expected to be few, as
  beta-binomial counts of null records instead (see :func:`betabinom_signed_z`).
* ``log`` and ``level`` measures are judged on the log and raw scale.

Profiles are medians per four-hour block of the week shrunk towards the series median, with
an offset per hour of the week where a measure swings within its blocks (see
:meth:`SeasonalBaseline._hour_offsets`); scales are MADs: a fault left unlabelled in history
barely moves either. Missing values are simply absent
rows, so they never poison a fit. ``method="stl"`` estimates the profiles of continuous
measures with statsmodels' robust STL instead (compared in the backtest).

While a connector is paused, level-like measures (null rates, custom metrics, durations,
API figures) must be off both their learned level and the sync just before, so a level
shift that persists yields one pause, not one per sync, and data coming back after a
fault does not pause again. The pooled cold-start model knows a kind's level, not the
connector's, so it judges them against the sync before only.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from detector.features import N_BUCKETS, block_expr, bucket_expr
from detector.frame import FRESHNESS_MEASURE, RARE_SYNC_EVENTS, is_stat
from detector.special import ufuncs as _ufuncs

__all__ = ["SeasonalBaseline", "SCHEDULE_RELATIVE_MEASURES", "empty_hours", "transform_expr",
           "nb_signed_z"]

#: Measures that are news only when high: a partial sync, a repeat of the sync before, a
#: sync that comes late. Less of them (fewer partial syncs than usual, data that changed
#: sooner than its runs of repeats last, a sync starting soon after a long one finished)
#: is nothing wrong with the data: their residuals' low side is 0.
ONE_SIDED_MEASURES = (*RARE_SYNC_EVENTS, FRESHNESS_MEASURE)
#: Measures judged against the closer of their learned level and the sync before, paused
#: or not: a connector whose schedule moved (hourly to every four hours) is late once, not
#: on every sync until the model is retrained.
SCHEDULE_RELATIVE_MEASURES = (FRESHNESS_MEASURE,)
#: Residuals are clipped here only to keep them finite: calibration needs far tails.
Z_CLIP = 1e4
_TAIL_QUANTILE = 0.99
_GAUSS_TAIL_Z = 2.576  # the 99th percentile of |z| for a Gaussian series
_SHRINK = 4.0  # pseudo-observations pulling a bucket towards the series median
_MIN_EVENT_MEAN = 0.05
# A connector that has not said "partial", repeated its last data or reported duplicates
# in its history: about one sync in a thousand. Churn is life and keeps the floor above;
# these are fault signatures that many healthy connectors never show.
_MIN_RARE_EVENT_MEAN = 1e-3
_MIN_DISPERSION = 0.02
_MAX_DISPERSION = 20.0
_SCALE_FLOOR = {"count": 2e-4, "rate": 0.05, "log": 0.05, "level": 1e-9, "events": 0.0}
_STD_SHARE = 0.3
_MIN_SWING = 1.0  # hours get offsets where the swing within blocks is this many x a sync's noise
_SWINGING_KINDS = ("level", "log")  # the measure kinds that get hour offsets at all
_LOG_OFFSET = 1.0  # seconds, milliseconds or requests: a unit never matters at that size
_CHUNK_ROWS = 1_000_000  # rows fitted or scored together: bounds a large fleet's memory
_SMALL_RATE_N = 100  # records up to which null rates are judged as beta-binomial counts
_BETABINOM_BLOCK = 2_000  # rows per block of beta-binomial tail terms (x 40 terms: temporaries
# that stay in the caches and the heap; 20,000 rows made 6 MB arrays, fresh pages each)
_BETABINOM_TERMS = 40  # terms of a beta-binomial tail summed past the observed count


def transform_expr(value: pl.Expr, *, kind: pl.Expr, reference: pl.Expr, size: pl.Expr) -> pl.Expr:
    """The scale each kind of measure is judged on (null for ``events``)."""
    n = size.fill_null(1000.0).clip(lower_bound=1.0)
    logit_value = ((value * n + 0.5) / (n + 1.0)).log() - (
        ((1.0 - value) * n + 0.5) / (n + 1.0)
    ).log()
    return (
        pl.when(kind == "count")
        .then((value + 1.0).log() - (reference + 1.0).log())
        .when(kind == "rate")
        .then(logit_value)
        .when(kind == "log")
        .then((value + _LOG_OFFSET).log())
        .when(kind == "level")
        .then(value)
        .otherwise(None)
    )


def _level_x(value: pl.Expr, kind: pl.Expr, size: pl.Expr) -> pl.Expr:
    """Transform of a reference value for kinds judged level-against-reference."""
    return transform_expr(value, kind=kind, reference=pl.lit(None), size=size)


def _judged(expected_x: pl.Expr, scale: pl.Expr, suffix: str) -> tuple[pl.Expr, pl.Expr]:
    """``expected_x`` and the floored ``scale`` of a comparison (named with ``suffix``).

    Counts are never judged finer than one record in the reference; null rates never
    finer than the binomial error of the resource's size at the expected rate.
    """
    n = pl.col("current_size").fill_null(1000.0).clip(lower_bound=1.0)
    p = (1.0 / (1.0 + (-expected_x).exp())).clip(1e-4, 1 - 1e-4)
    floored = (
        pl.when(pl.col("kind") == "count")
        .then(pl.max_horizontal(scale, 1.0 / (pl.col("reference").fill_null(0.0) + 1.0)))
        .when(pl.col("kind") == "rate")
        .then(pl.max_horizontal(scale, 1.0 / (n * p * (1.0 - p)).sqrt()))
        .otherwise(scale)
    )
    return expected_x.alias(f"expected_x{suffix}"), floored.alias(f"scale{suffix}")


def nb_signed_z(x: np.ndarray, mu: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Signed normal score of a count under a negative binomial (mid-p, clipped).

    Positive when ``x`` is higher than expected. ``phi`` is the dispersion (variance is
    ``mu + phi * mu**2``).
    """
    n = 1.0 / phi
    p = 1.0 / (1.0 + mu * phi)
    # scipy.stats.nbinom's own ufuncs and norm.isf = -ndtri, called without importing
    # scipy.stats (~0.6 s of every cold `syncguard score`); a test holds them equal.
    k = np.floor(x)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        sf = np.where(k < 0, 1.0, _ufuncs._nbinom_sf(k, n, p))
        pmf = np.where(np.isnan(x), np.nan,
                       np.where((k == x) & (k >= 0), _ufuncs._nbinom_pmf(k, n, p), 0.0))
    upper = np.clip(sf + 0.5 * pmf, 1e-300, 1.0 - 1e-16)
    return np.clip(-_ufuncs.ndtri(upper), -Z_CLIP, Z_CLIP)


def betabinom_signed_z(k: np.ndarray, n: np.ndarray, p: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Signed normal score of ``k`` nulls among ``n`` records (mid-p, clipped).

    The null rate varies from sync to sync as a Beta with mean ``p`` and standard
    deviation ``sd``; given the rate, nulls are binomial. On a few dozen records the
    logit-normal residual is far too mild: 23 of 26 API keys without a policy, where none
    ever lacked one, is a one-in-1e30 sync, not four scales. Positive when ``k`` is
    higher than expected. The tail is summed term by term from ``P(k)`` (each term the
    one before times a ratio of small factors), so far tails keep their precision and no
    special function runs per term.
    """
    n = np.rint(np.asarray(n, dtype=float))
    k = np.clip(np.rint(np.asarray(k, dtype=float)), 0.0, n)
    p = np.clip(np.asarray(p, dtype=float), 1e-9, 1.0 - 1e-9)
    # a + b of the Beta from its mean and variance; near-binomial when the spread is tiny.
    ab = np.clip(p * (1.0 - p) / np.maximum(sd, 1e-12) ** 2 - 1.0, 1e-3, 1e7)
    a, b = p * ab, (1.0 - p) * ab
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        log_pk = (
            _ufuncs.gammaln(n + 1.0)
            - _ufuncs.gammaln(k + 1.0)
            - _ufuncs.gammaln(n - k + 1.0)
            + _ufuncs.betaln(k + a, n - k + b)
            - _ufuncs.betaln(a, b)
        )
    # Only the tail on k's side of the mean is summed, and at most _BETABINOM_TERMS terms
    # past k: on up to 100 records, further terms change z by less than 0.005 (tested).
    # Rows that need few terms are blocked together: most null counts sit near the mean.
    upward = k > n * p
    terms = np.minimum(np.where(upward, n - k, k), _BETABINOM_TERMS)
    tail = np.exp(log_pk) * 0.5
    order = np.argsort(terms, kind="stable")
    for lo in range(0, len(n), _BETABINOM_BLOCK):
        s = order[lo : lo + _BETABINOM_BLOCK]
        width = int(terms[s].max()) if len(s) else 0
        if width == 0:
            continue
        nn, kk, aa, bb, on_up = (v[s, None] for v in (n, k, a, b, upward))
        i = np.arange(1, width + 1, dtype=float)[None, :]
        # log P(j) / P(j - 1) for j = k + i upwards, log P(j) / P(j + 1) for j = k - i.
        j = np.where(on_up, kk + i, kk - i)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            ratio = np.where(
                on_up,
                (nn - j + 1) * (j - 1 + aa) / (j * (nn - j + bb)),
                (j + 1) * (nn - j - 1 + bb) / ((nn - j) * (j + aa)),
            )
            steps = np.where(i <= terms[s, None], np.log(ratio), -np.inf)
            terms_p = np.exp(log_pk[s, None] + np.minimum(np.cumsum(steps, axis=1), 700.0))
            # Summed left to right (not numpy's pairwise sum): a row's sum then does not
            # depend on how wide its block is, so results do not depend on the batch.
            tail[s] += np.cumsum(terms_p, axis=1)[:, -1]
    tail = np.clip(tail, 1e-300, 1.0 - 1e-16)
    z = np.where(upward, -_ufuncs.ndtri(tail), _ufuncs.ndtri(tail))
    return np.clip(z, -Z_CLIP, Z_CLIP)


def _gap_factor(gap_s: pl.Expr, interval_s: pl.Expr) -> pl.Expr:
    return (gap_s / interval_s).fill_null(1.0).fill_nan(1.0).clip(0.25, 8.0)


class SeasonalBaseline:
    """Per-series time-of-week baseline with robust scales.

    Parameters
    ----------
    key : str, default="connector_id"
        Column that identifies whose baseline a row belongs to: ``"connector_id"`` for
        per-connector baselines, ``"connector_kind"`` for the pooled cold-start baseline.
    shrinkage : float, default=4.0
        Pseudo-observations pulling each bucket's expected value towards the series
        median; buckets with little history lean on the whole week.
    method : {"profile", "stl"}, default="profile"
        How the seasonal profile of continuous measures is estimated.
    winsor_quantile : float, default=0.98
        Event rates above this quantile of a series are capped when fitting, so that a
        fault left in history does not inflate the expected churn.
    min_logit_records : float, default=20.0
        A null rate is judged on the logit scale only where both its expected null and
        populated records number at least this many (and the resource holds more than
        100); otherwise as a beta-binomial count of null records. The logit's Gaussian
        error needs both counts large: a field null on 0.2 % of 326 records has a
        binomial logit error of 1.4, and blanking 96 % of them came out 7 scales, as
        ordinary as a 97 %-null field going all-null. ``0`` counts small resources only.
    min_series_syncs : int, default=10
        Syncs a series (a connector's measure) needs in history to be judged. A custom
        metric or field reported on a handful of syncs has no spread to speak of: its
        level and scale would come from those few values (and screening, which leaves out
        the syncs they disagree on, shrinks them further), so it is left unjudged.

    Attributes
    ----------
    series_ : pl.DataFrame
        One row per series: key, measure, kind, center, scale, rate, dispersion, and
        ``tail_width``: the series' own 99th percentile of ``|z|`` in history over the
        Gaussian one (at least 1). A small app whose counts jump with every team that
        joins has wide tails; a large directory that moves by a few records does not.
    profile_ : pl.DataFrame
        Expected value (or event rate) per series and block of the week (``bucket``:
        0..41, see :func:`detector.features.block_expr`).
    hours_ : pl.DataFrame
        ``offset`` of an hour of the week (``bucket``: 0..167) from its block's expected
        value, for the series whose level swings within blocks (see
        :meth:`_hour_offsets`); hours not listed sit at their block's level.
    """

    def __init__(
        self,
        *,
        key: str = "connector_id",
        shrinkage: float = _SHRINK,
        method: str = "profile",
        winsor_quantile: float = 0.98,
        min_logit_records: float = 20.0,
        min_series_syncs: int = 10,
    ) -> None:
        self.key = key
        self.shrinkage = shrinkage
        self.method = method
        self.winsor_quantile = winsor_quantile
        self.min_logit_records = min_logit_records
        self.min_series_syncs = min_series_syncs

    def _unfitted_copy(self) -> SeasonalBaseline:
        """A baseline with the same parameters and nothing fitted."""
        return type(self)(
            key=self.key,
            shrinkage=self.shrinkage,
            method=self.method,
            winsor_quantile=self.winsor_quantile,
            min_logit_records=self.min_logit_records,
            min_series_syncs=self.min_series_syncs,
        )

    # ------------------------------------------------------------------ fit
    def _check_params(self) -> None:
        if self.key not in ("connector_id", "connector_kind"):
            raise ValueError(f"key must be 'connector_id' or 'connector_kind', got {self.key!r}")
        if self.method not in ("profile", "stl"):
            raise ValueError(f"method must be 'profile' or 'stl', got {self.method!r}")
        if not 0.5 < self.winsor_quantile <= 1.0:
            raise ValueError("winsor_quantile must be in (0.5, 1]")
        if self.shrinkage < 0:
            raise ValueError("shrinkage must be >= 0")
        if self.min_series_syncs < 1:
            raise ValueError("min_series_syncs must be >= 1")

    def fit(self, features: pl.DataFrame, intervals: pl.DataFrame) -> SeasonalBaseline:
        """Learn profiles and scales from clean history.

        Parameters
        ----------
        features : pl.DataFrame
            From :func:`detector.features.build_features` on history (faults left out).
        intervals : pl.DataFrame
            ``connector_id, interval_s``: each connector's usual time between syncs.
        """
        self._fit(features, intervals, None)
        return self

    def fit_residuals(
        self,
        features: pl.DataFrame,
        intervals: pl.DataFrame,
        *,
        against_reference: pl.Expr | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fit, then ``z`` and ``z_tail`` of every row of ``features``, in its order.

        The same values as ``fit(features, intervals).residuals(features, intervals,
        against_reference=...)``, without a second pass over the rows: fitting already
        judges every row (for the tail widths), against the learned level; only rows a
        reference would judge (see :meth:`judged_against_reference`) are judged again.
        """
        use_ref = pl.col("paused") if against_reference is None else against_reference
        return self._fit(features, intervals, use_ref)

    def _fit(
        self, features: pl.DataFrame, intervals: pl.DataFrame, use_ref: pl.Expr | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`fit`; with ``use_ref``, also what :meth:`fit_residuals` returns."""
        self._check_params()
        k = self.key
        # Only the columns fitting reads: every join and filter below then moves less.
        needed = ["connector_id", k, "measure", "bucket", "kind", "value", "reference"]
        needed += ["current_size", "exposure", "gap_s"]
        needed += ["started_at"] if self.method == "stl" else []
        extra = []
        if use_ref is not None:  # what fit_residuals needs: the variant, each row's place
            extra = [use_ref.alias("_use_ref"), pl.int_range(pl.len(), dtype=pl.UInt32).alias("_i")]
        slim = features.select(*dict.fromkeys(needed), *extra)
        # Series in chunks of about _CHUNK_ROWS rows: every series is fitted from its own
        # rows only, so chunks give the same baseline as one pass, in less memory. Key
        # groups stay whole, but one larger than a chunk (a pooled kind, the fleet's "*")
        # is cut by measure.
        sizes = slim.group_by(k, "measure").len().sort(k, "measure")
        per_key = sizes.group_by(k, maintain_order=True).agg(pl.col("len").sum())
        chunks = [pl.lit(True)]
        if per_key["len"].sum() <= _CHUNK_ROWS:
            parts = [self._fit_part(slim, intervals)]
        else:
            small = per_key.filter(pl.col("len") <= _CHUNK_ROWS)
            chunks = [pl.col(k).is_in(ids[k].implode()) for ids in _chunks(small, k)]
            for key in per_key.filter(pl.col("len") > _CHUNK_ROWS)[k].to_list():
                chunks += [
                    (pl.col(k) == key) & pl.col("measure").is_in(ids["measure"].implode())
                    for ids in _chunks(sizes.filter(pl.col(k) == key), "measure")
                ]
            parts = [self._fit_part(slim.filter(rows), intervals) for rows in chunks]
        merged = type(self).concat([part for part, _ in parts])
        self.series_, self.profile_, self.hours_ = merged.series_, merged.profile_, merged.hours_
        if use_ref is None:
            return None
        # A part's table of one row joins as one broadcast value, which polars divides by
        # as a product with its reciprocal (the last bit can differ): the rows of such a
        # part (one series in a chunk) are judged again by the whole baseline, as
        # residuals() judges them.
        broadcast = [
            rows
            for rows, (part, _) in zip(chunks, parts, strict=True)
            if len(parts) > 1 and min(part.series_.height, part.profile_.height) == 1
        ]
        # Each part's rows in its own order: placed back in the order of ``features``
        # (each part's arrays freed once placed).
        z, z_tail = np.empty(slim.height), np.empty(slim.height)
        while parts:
            i, part_z, part_tail = parts.pop()[1]
            z[i], z_tail[i] = part_z, part_tail
        for rows in broadcast:
            again = slim.filter(rows)
            redone = self._added_columns(again, intervals, pl.col("_use_ref"), ["z", "z_tail"])
            i = again["_i"].to_numpy()
            z[i], z_tail[i] = redone["z"].to_numpy(), redone["z_tail"].to_numpy()
        return z, z_tail

    @classmethod
    def concat(cls, parts: list[SeasonalBaseline]) -> SeasonalBaseline:
        """One baseline holding the series of ``parts``: baselines with the same parameters
        fitted on rows of different key groups (each series is fitted from its own rows
        only, so this is the baseline of all their rows at once)."""
        out = parts[0]._unfitted_copy()
        k = out.key
        # Sorted: group_by hands series out in no fixed order, and a model file should not
        # depend on which thread finished first.
        out.series_ = pl.concat([p.series_ for p in parts], how="diagonal_relaxed").sort(
            k, "measure"
        )
        out.profile_ = pl.concat([p.profile_ for p in parts], how="diagonal_relaxed").sort(
            k, "measure", "bucket"
        )
        out.hours_ = pl.concat([p.hours_ for p in parts]).sort(k, "measure", "bucket")
        return out

    def _fit_part(
        self, rows: pl.DataFrame, intervals: pl.DataFrame
    ) -> tuple[SeasonalBaseline, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
        """A baseline with these parameters fitted on ``rows`` (whole series only).

        With ``_use_ref`` and ``_i`` columns in ``rows``, also each row's ``_i``, and its
        ``z`` and ``z_tail`` judged with ``_use_ref`` (see :meth:`fit_residuals`).
        """
        k = self.key
        part = self._unfitted_copy()
        rows = rows.join(intervals, on="connector_id", how="left").with_columns(
            *self._observed_columns()
        )
        level_cols = [k, "measure", "bucket", "kind", "x"]
        level_cols += ["started_at"] if self.method == "stl" else []
        levels = self._fit_levels(
            rows.filter(pl.col("kind") != "events").drop_nulls("x").select(level_cols)
        )
        events = self._fit_events(
            rows.filter(pl.col("kind") == "events").select(
                k, "measure", "bucket", "kind", "value", "exposure_eff"
            )
        )
        rows = rows.drop("interval_s", "x", "exposure_eff")
        series = pl.concat([levels[0], events[0]], how="diagonal_relaxed")
        judged = series.filter(pl.col("n") >= self.min_series_syncs).select(k, "measure")
        part.series_ = series.join(judged, on=[k, "measure"], how="semi")
        part.profile_ = pl.concat([levels[1], events[1]], how="diagonal_relaxed").join(
            judged, on=[k, "measure"], how="semi"
        )
        part.hours_ = levels[2].join(judged, on=[k, "measure"], how="semi")
        # In-sample residuals against the learned level: only z is read (a long frame's
        # other columns are not made).
        wanted = "_use_ref" in rows.columns
        if not wanted:
            z = part._added_columns(rows, intervals, pl.lit(False), keep=["z"])
        else:
            # Judged as asked, and against the level (for the tail widths), in one pass.
            both = part._added_columns(
                rows, intervals, pl.col("_use_ref"), keep=["z", "z_alt"], alternative=pl.lit(False)
            )
            asked, z = both.select("z"), both.select(pl.col("z_alt").alias("z"))
            del both
        width = rows.select(k, "measure").hstack(z).group_by(k, "measure").agg(
            (pl.col("z").abs().quantile(_TAIL_QUANTILE) / _GAUSS_TAIL_Z)
            .clip(lower_bound=1.0)
            .alias("tail_width")
        )
        part.series_ = part.series_.join(width, on=[k, "measure"], how="left").with_columns(
            pl.col("tail_width").fill_null(1.0)
        )
        if not wanted:
            return part, None
        # z_tail as the residual pass makes it: over the series' tail width (1 without one).
        tails = (
            rows.select(k, "measure", "_i")
            .hstack(asked)
            .join(
                part.series_.select(k, "measure", "tail_width"),
                on=[k, "measure"],
                how="left",
                maintain_order="left",
            )
            .select("_i", "z", (pl.col("z") / pl.col("tail_width").fill_null(1.0)).alias("z_tail"))
        )
        return part, tuple(tails[c].to_numpy() for c in ("_i", "z", "z_tail"))

    def _observed_columns(self) -> tuple[pl.Expr, pl.Expr]:
        """``x`` (the value on its judging scale) and ``exposure_eff``: fitting and
        scoring read a row the same way."""
        x = transform_expr(
            pl.col("value"),
            kind=pl.col("kind"),
            reference=pl.col("reference"),
            size=pl.col("current_size"),
        )
        return x.alias("x"), self._exposure_expr().alias("exposure_eff")

    def _exposure_expr(self) -> pl.Expr:
        """What an event count is relative to: size x time for churn, 1 for API events."""
        size = pl.col("exposure").fill_null(pl.col("current_size")).fill_null(1.0)
        per_size = size.clip(lower_bound=1.0)
        gap = _gap_factor(pl.col("gap_s"), pl.col("interval_s"))
        per_sync = pl.col("measure").str.starts_with("api.") | pl.col("measure").is_in(
            list(RARE_SYNC_EVENTS)
        )
        return (
            pl.when(per_sync)
            .then(pl.lit(1.0))
            .when(is_stat("duplicates"))
            .then(pl.col("current_size").fill_null(1.0).clip(lower_bound=1.0))
            .otherwise(per_size * gap)
        )

    def _shrunk(self, bucket_value: pl.Expr, n: pl.Expr, overall: pl.Expr) -> pl.Expr:
        return (n * bucket_value + self.shrinkage * overall) / (n + self.shrinkage)

    def _fit_levels(
        self, rows: pl.DataFrame
    ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        """Series, block profile and hour offsets of the measures judged on a scale."""
        k = self.key
        keys = [k, "measure"]
        rows = rows.with_columns(block_expr(pl.col("bucket")).alias("block"))
        overall = rows.group_by(keys).agg(
            pl.col("kind").first(), pl.col("x").median().alias("center"), pl.len().alias("n")
        )
        if self.method == "stl":
            blocks = _stl_bucket_medians(rows.drop("bucket").rename({"block": "bucket"}), keys)
            blocks = blocks.rename({"bucket": "block"})
        else:
            blocks = rows.group_by([*keys, "block"]).agg(
                pl.col("x").median().alias("bucket_x"), pl.len().alias("bucket_n")
            )
        blocks = blocks.join(overall.select(*keys, "center"), on=keys).with_columns(
            self._shrunk(pl.col("bucket_x"), pl.col("bucket_n"), pl.col("center")).alias(
                "expected"
            )
        )
        profile = blocks.select(*keys, pl.col("block").alias("bucket"), "expected")
        dev = pl.col("x") - pl.col("expected")
        resid = rows.join(
            blocks.select(*keys, "block", "expected"), on=[*keys, "block"], how="left"
        ).with_columns(dev.abs().alias("abs_dev"), dev.alias("dev"))

        def spread(of: pl.Expr) -> list[pl.Expr]:
            return [
                # Half the 10-90% range guards against a MAD of zero on mostly-constant
                # series.
                ((of.quantile(0.9) - of.quantile(0.1)) / 2.563).alias("iqr_scale"),
                of.std().fill_null(0.0).alias("std"),
            ]

        mad = (pl.col("abs_dev").median() * 1.4826).alias("mad_scale")
        dev_std = pl.col("dev").std().fill_null(0.0).alias("dev_std")
        scales = overall.join(
            resid.group_by(keys).agg(mad, dev_std, *spread(pl.col("x"))), on=keys
        )
        hours = empty_hours(k)
        if self.method == "profile":
            # Hours of the day move metrics, latency, durations; a resource's size or a
            # field's null rate does not swing within four hours, and the level shifts
            # of its history, spread unevenly over the hours, would pass for a swing.
            hour_stats = self._hour_stats(
                rows.filter(pl.col("kind").is_in(_SWINGING_KINDS)), blocks
            )
            hours = self._hour_offsets(hour_stats, scales)
            if hours.height:
                # The spread about the blocks holds the swing within them: the noise of an
                # hour's median is judged again by the spread about the hours so found,
                # and a swing too small to matter against it is left out.
                about = self._about_hours(resid, hours, [mad, dev_std])
                hours = self._hour_offsets(
                    hour_stats.join(about, on=keys, how="semi"),
                    scales.update(about, on=keys),
                    _MIN_SWING,
                )
        if hours.height:
            # Series with hour offsets: their MAD about the hours' own levels, and for
            # levels the guards' spread too: a metric is not noisy for swinging over the
            # day. (Changes and rates keep the spread of their values.)
            is_level = pl.col("kind").first().is_in(["level", "log"])
            redone = self._about_hours(
                resid, hours, [mad, *(pl.when(is_level).then(e) for e in spread(pl.col("dev")))]
            )
            scales = scales.update(redone, on=keys)
        series = scales.with_columns(
            pl.max_horizontal(
                pl.col("mad_scale"),
                0.5 * pl.col("iqr_scale"),
                # Discrete series (integer seconds, k of n records) have a MAD of zero and
                # steps far larger than it; a share of the plain deviation keeps them sane.
                _STD_SHARE * pl.col("std"),
                _scale_floor(),
            ).alias("scale")
        ).select(*keys, "kind", "center", "scale", "n")
        return series, profile, hours

    def _hour_stats(self, rows: pl.DataFrame, blocks: pl.DataFrame) -> pl.DataFrame:
        """Per series and hour of the week with syncs: ``d``, the hour's median less its
        block's, ``to_block``, less its block's expected value, ``hour_n`` and
        ``bucket_n`` (their syncs) and ``informative`` (its block has other hours with
        syncs: a block of one hour says nothing about hours)."""
        keys = [self.key, "measure"]
        return (
            rows.group_by([*keys, "bucket"])
            .agg(pl.col("block").first(), pl.col("x").median().alias("hour_x"),
                 pl.len().alias("hour_n"))
            .join(blocks.select(*keys, "block", "bucket_x", "bucket_n", "expected"),
                  on=[*keys, "block"])
            .select(
                *keys,
                "bucket",
                (pl.col("hour_x") - pl.col("bucket_x")).alias("d"),
                (pl.col("hour_x") - pl.col("expected")).alias("to_block"),
                "hour_n",
                "bucket_n",
                (pl.len().over([*keys, "block"]) > 1).alias("informative"),
            )
            .sort([*keys, "bucket"])  # means in a fixed order: the same model bit for bit
        )

    def _hour_offsets(
        self, hour_stats: pl.DataFrame, scales: pl.DataFrame, min_swing: float = 0.0
    ) -> pl.DataFrame:
        """Each hour's offset from its block's expected value, shrunk by empirical Bayes.

        An hour's median differs from its block's by the series' true swing within the
        block plus noise (about pi/2 sigma^2 (1/hour_n - 1/bucket_n) for medians of normal
        noise; sigma, a sync's noise, from ``scales``' ``mad_scale`` and ``dev_std`` as the
        scale's guards take them). The swing's variance, estimated per series from its
        hours, decides how far each hour moves off its block towards its own median: a
        metric that swings with the hour of the day gets its own hours, one that does not
        (or has too few syncs per hour to show it) keeps its blocks exactly, and so does
        one whose swing's standard deviation is under ``min_swing`` sigma.
        """
        keys = [self.key, "measure"]
        # The noise of one sync: its MAD, unless the series is discrete (see the scale's
        # guards in _fit_levels) or below the kind's floor.
        sigma = pl.max_horizontal(pl.col("mad_scale"), _STD_SHARE * pl.col("dev_std"),
                                  _scale_floor())
        var = math.pi / 2 * pl.col("sigma") ** 2
        hours = hour_stats.join(
            scales.select(*keys, sigma.alias("sigma")), on=keys
        ).with_columns(
            (var * (1.0 / pl.col("hour_n") - 1.0 / pl.col("bucket_n")).clip(lower_bound=0.0))
            .alias("noise"),
            (var / pl.col("hour_n")).alias("hour_noise"),
        )
        # The mean of d^2 - noise estimates the swing's variance; its standard error is
        # about noise x sqrt(2 / hours) when there is no swing. Less two of those, a
        # series without one keeps its blocks (rather than fitting offsets to noise).
        swing = (
            hours.filter(pl.col("informative"))
            .group_by(keys, maintain_order=True)
            .agg(
                (
                    (pl.col("d") ** 2 - pl.col("noise")).mean()
                    - 2.0 * (2.0 / pl.len()).sqrt() * pl.col("noise").mean()
                ).alias("tau2"),
                pl.col("sigma").first(),
            )
            .filter(pl.col("tau2") > (min_swing * pl.col("sigma")) ** 2)
        )
        return (
            hours.join(swing, on=keys)
            .select(
                *keys,
                "bucket",
                (
                    pl.col("to_block") * pl.col("tau2") / (pl.col("tau2") + pl.col("hour_noise"))
                ).alias("offset"),
            )
            .filter(pl.col("offset") != 0.0)
        )

    def _about_hours(
        self, resid: pl.DataFrame, hours: pl.DataFrame, aggs: list[pl.Expr]
    ) -> pl.DataFrame:
        """``aggs`` per series with hour offsets, over its rows' ``dev`` and ``abs_dev``
        about the hours' levels (``resid``: rows with their block's ``expected``)."""
        keys = [self.key, "measure"]
        dev = pl.col("x") - pl.col("expected") - pl.col("offset").fill_null(0.0)
        return (
            resid.join(hours.select(keys).unique(), on=keys, how="semi")
            .join(hours, on=[*keys, "bucket"], how="left")
            .with_columns(dev.abs().alias("abs_dev"), dev.alias("dev"))
            .group_by(keys, maintain_order=True)
            .agg(*aggs)
        )

    def _fit_events(self, rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        k = self.key
        keys = [k, "measure"]
        # Event rates are learned per block of the week: counts are too noisy for hours.
        rows = rows.with_columns(
            block_expr(pl.col("bucket")).alias("bucket"),
            (pl.col("value") / pl.col("exposure_eff")).alias("r"),
        )
        cap = rows.group_by(keys).agg(pl.col("r").quantile(self.winsor_quantile).alias("r_cap"))
        # Winsorising guards the rate against bursts in history; one event in a sync is no
        # burst. Capped below one, an event seen on fewer syncs than the quantile leaves
        # (a connector saying "partial" on 1.5 % of syncs) would be learned as never seen.
        capped = pl.max_horizontal(pl.col("r_cap") * pl.col("exposure_eff"), 1.0)
        rows = rows.join(cap, on=keys).with_columns(
            pl.min_horizontal(pl.col("value"), capped).alias("v_w")
        )
        overall = rows.group_by(keys).agg(
            pl.col("kind").first(),
            (pl.col("v_w").sum() / pl.col("exposure_eff").sum()).alias("rate"),
            pl.col("exposure_eff").mean().alias("mean_exposure"),
            pl.len().alias("n"),
        )
        buckets = rows.group_by([*keys, "bucket"]).agg(
            pl.col("v_w").sum().alias("sum_v"), pl.col("exposure_eff").sum().alias("sum_e")
        )
        s = self.shrinkage
        profile = (
            buckets.join(overall, on=keys)
            .with_columns(
                (
                    (pl.col("sum_v") + s * pl.col("rate") * pl.col("mean_exposure"))
                    / (pl.col("sum_e") + s * pl.col("mean_exposure"))
                ).alias("expected")
            )
            .select(*keys, "bucket", "expected")
        )
        moments = rows.join(profile, on=[*keys, "bucket"]).with_columns(
            (pl.col("expected") * pl.col("exposure_eff"))
            .clip(lower_bound=_MIN_EVENT_MEAN)
            .alias("mu")
        )
        dispersion = moments.group_by(keys).agg(
            (
                ((pl.col("v_w") - pl.col("mu")) ** 2 - pl.col("v_w")).sum()
                / (pl.col("mu") ** 2).sum()
            ).alias("dispersion")
        )
        series = (
            overall.join(dispersion, on=keys)
            .with_columns(
                pl.col("dispersion")
                .fill_nan(1.0)
                .fill_null(1.0)
                .clip(_MIN_DISPERSION, _MAX_DISPERSION),
                pl.lit(0.0).alias("center"),
                pl.lit(1.0).alias("scale"),
            )
            .select(*keys, "kind", "center", "scale", "rate", "dispersion", "n")
        )
        return series, profile

    # --------------------------------------------------------------- score
    def _check_fitted(self) -> None:
        if not hasattr(self, "series_"):
            raise RuntimeError("this SeasonalBaseline is not fitted yet: call fit first")

    def residuals(
        self,
        features: pl.DataFrame,
        intervals: pl.DataFrame,
        *,
        against_reference: pl.Expr | None = None,
        alternative: pl.Expr | None = None,
    ) -> pl.DataFrame:
        """Residual ``z`` of every (sync, measure) row, with what it was compared to.

        Parameters
        ----------
        features : pl.DataFrame
            From :func:`detector.features.build_features`.
        intervals : pl.DataFrame
            ``connector_id, interval_s``.
        against_reference : pl.Expr, optional
            Boolean expression over ``features``: rows whose level-like measures are judged
            against the reference sync rather than the learned level (defaults to the
            ``paused`` column).
        alternative : pl.Expr, optional
            Another ``against_reference``: ``z_alt`` and ``z_tail_alt`` are then the
            residuals judged that way, made in the same pass.

        Returns
        -------
        pl.DataFrame
            ``features`` plus ``x`` (transformed value), ``expected_x``, ``scale``, ``mu``,
            ``dispersion`` and ``z`` (0 where a series has no baseline).
        """
        self._check_fitted()
        added = self._added_columns(features, intervals, against_reference, alternative=alternative)
        # "scale" and the like replace any input column of the same name.
        return features.drop(added.columns, strict=False).hstack(added)

    def judged_against_reference(self) -> pl.Expr:
        """Rows a reference judges when asked (``against_reference`` in :meth:`residuals`):
        level-like measures with a reference value. Every other row's residual is the
        same either way (:data:`SCHEDULE_RELATIVE_MEASURES` are judged so always)."""
        level_like = pl.col("kind").is_in(["rate", "level", "log"])
        return level_like & pl.col("reference").is_not_null()

    def _added_columns(
        self,
        features: pl.DataFrame,
        intervals: pl.DataFrame,
        against_reference: pl.Expr | None,
        keep: list[str] | None = None,
        *,
        alternative: pl.Expr | None = None,
    ) -> pl.DataFrame:
        """The columns :meth:`residuals` adds (only ``keep`` of them, when given).

        With ``alternative`` (another ``against_reference``), also ``z_alt`` and
        ``z_tail_alt``: each row's residual judged that way, from the same pass (both
        comparisons are made for every row anyway; a second pass over the rows whose
        judgement differs cost fitting a third of its residual work).
        """
        k = self.key
        use_ref = pl.col("paused") if against_reference is None else against_reference
        # Computed on the columns it reads, in the input's row order, then placed beside
        # the input's own columns: the wide feature columns are never copied by the joins.
        needed = ["connector_id", k, "measure", "bucket", "kind", "value", "reference"]
        needed += ["current_size", "exposure", "gap_s"]
        alt = [] if alternative is None else [alternative.alias("_use_ref_alt")]
        slim = features.select(*dict.fromkeys(needed), use_ref.alias("_use_ref"), *alt)
        # In slices of rows: the joins' and expressions' intermediates stay bounded.
        return pl.concat(
            [
                self._residual_columns(slim.slice(start, _CHUNK_ROWS), intervals).select(
                    keep or pl.all()
                )
                for start in range(0, max(slim.height, 1), _CHUNK_ROWS)
            ]
        )

    def _profile_lookup(self) -> tuple[pl.DataFrame, pl.Series, int, pl.Series | None] | None:
        """The series (less ``kind``, ``n``) numbered in ``_sid``, the profile's
        ``expected`` at ``_sid * n_blocks + block`` (null where the profile has no
        value), ``n_blocks``, and the hours' offsets at ``_sid * N_BUCKETS + bucket`` (0
        where an hour has none; None without offsets); None when some profile or hour row
        names no series or a negative bucket (then residuals join the tables themselves).

        Built once per fitted series and profile: scoring's largest join was the
        profile's, on two strings and the bucket for every (sync, measure) row.
        """
        tables = (self.series_, self.profile_, self.hours_)
        cached = getattr(self, "_lookup_cache", None)
        if cached is not None and all(a is b for a, b in zip(cached[0], tables, strict=True)):
            return cached[1]
        keys = [self.key, "measure"]
        series = self.series_.drop("kind", "n").with_row_index("_sid")
        placed = self.profile_.join(series.select(*keys, "_sid"), on=keys, how="inner")
        hours = self.hours_.join(series.select(*keys, "_sid"), on=keys, how="inner")
        lookup = None
        if (
            placed.height == self.profile_.height
            and hours.height == self.hours_.height
            and (placed.height == 0 or placed["bucket"].min() >= 0)  # type: ignore[operator]
            and (hours.height == 0 or hours["bucket"].min() >= 0)  # type: ignore[operator]
        ):
            n_buckets = int(placed["bucket"].max() or 0) + 1
            at = pl.col("_sid").cast(pl.Int64) * n_buckets + pl.col("bucket").cast(pl.Int64)
            expected = (
                pl.DataFrame({"at": pl.int_range(series.height * n_buckets, eager=True)})
                .join(placed.select(at.alias("at"), "expected"), on="at", how="left",
                      maintain_order="left")
                .get_column("expected")
            )
            offsets = None
            if hours.height:
                dense = np.zeros(series.height * N_BUCKETS)
                at_hour = hours["_sid"].cast(pl.Int64) * N_BUCKETS + hours["bucket"].cast(pl.Int64)
                dense[at_hour.to_numpy()] = hours["offset"].to_numpy()
                offsets = pl.Series("offset", dense)
            lookup = (series, expected, n_buckets, offsets)
        self._lookup_cache = (tables, lookup)
        return lookup

    def _residual_columns(self, slim: pl.DataFrame, intervals: pl.DataFrame) -> pl.DataFrame:
        """The columns :meth:`residuals` adds, for rows holding only what it reads."""
        k = self.key
        keys = [k, "measure"]
        rows = slim.join(intervals, on="connector_id", how="left", maintain_order="left")
        lookup = self._profile_lookup()
        if lookup is None:
            rows = (
                rows.with_columns(block_expr(pl.col("bucket")).alias("_block"))
                .join(self.series_.drop("kind", "n"), on=keys, how="left", maintain_order="left")
                .join(
                    self.profile_.rename({"bucket": "_block"}),
                    on=[*keys, "_block"],
                    how="left",
                    maintain_order="left",
                )
                .join(self.hours_, on=[*keys, "bucket"], how="left", maintain_order="left")
                .with_columns(pl.col("expected") + pl.col("offset").fill_null(0.0))
                .drop("_block", "offset")
            )
        else:
            series, expected, n_buckets, offsets = lookup
            sid = pl.col("_sid").cast(pl.Int64)
            block = block_expr(pl.col("bucket")).cast(pl.Int64)
            at = pl.when(block.is_between(0, n_buckets - 1)).then(sid * n_buckets + block)
            # The profile's value by position (null where it has none): what the join on
            # the series' strings and the bucket gives, without hashing them per row.
            looked_up = pl.lit(expected).gather(at)
            if offsets is not None:
                hour = pl.col("bucket").cast(pl.Int64)
                at_hour = pl.when(hour.is_between(0, N_BUCKETS - 1)).then(sid * N_BUCKETS + hour)
                looked_up = looked_up + pl.lit(offsets).gather(at_hour).fill_null(0.0)
            rows = (
                rows.join(series, on=keys, how="left", maintain_order="left")
                .with_columns(looked_up.alias("expected"))
                .drop("_sid")
            )
        # The reference's transform as a column of its own: _judged reads it twice, and
        # an expression would be evaluated at each use.
        ref_x = _level_x(pl.col("reference"), pl.col("kind"), pl.col("exposure"))
        # From here to the clipped z's one lazy query: the steps' shared subexpressions
        # (the kind tests, the transforms) are computed once (~10 % of this stretch).
        lazy = rows.lazy().with_columns(
            *self._observed_columns(),
            pl.col("expected").fill_null(pl.col("rate")).fill_null(pl.col("center")),
            ref_x.alias("_ref_x"),
        )
        always = pl.col("measure").is_in(list(SCHEDULE_RELATIVE_MEASURES))
        judge_ref = (pl.col("_use_ref") | always) & self.judged_against_reference()
        # Two candidate comparisons: the learned level for this time of week, and the
        # reference sync (the difference of two syncs: sqrt(2) scales of noise).
        lazy = lazy.with_columns(
            *_judged(pl.col("expected"), pl.col("scale"), "_lvl"),
            *_judged(pl.col("_ref_x"), pl.col("scale") * math.sqrt(2.0), "_ref"),
            pl.max_horizontal(
                pl.col("expected") * pl.col("exposure_eff"),
                pl.when(pl.col("measure").is_in(list(RARE_SYNC_EVENTS)) | is_stat("duplicates"))
                .then(pl.lit(_MIN_RARE_EVENT_MEAN))
                .otherwise(pl.lit(_MIN_EVENT_MEAN)),
            ).alias("mu"),
        )
        # Pooled models know the kind's level, not this connector's: the reference only. A
        # paused connector's measure must be off both its learned level and the sync just
        # before: a level shift that persists (or data coming back) then pauses no more.
        lazy = lazy.with_columns(
            ((pl.col("x") - pl.col(f"expected_x{c}")) / pl.col(f"scale{c}")).alias(f"z{c}")
            for c in ("_lvl", "_ref")
        )
        closer = pl.lit(k == "connector_kind") | (pl.col("z_ref").abs() < pl.col("z_lvl").abs())
        variants = {"": judge_ref & closer}
        if "_use_ref_alt" in slim.columns:
            alt_ref = (pl.col("_use_ref_alt") | always) & self.judged_against_reference() & closer
            variants["_alt"] = alt_ref
            # The only rows whose residual the alternative changes.
            lazy = lazy.with_columns(
                (alt_ref.fill_null(False) != variants[""].fill_null(False)).alias("_differs")
            )
        rows = (
            lazy.with_columns(
                pl.when(use_ref).then(pl.col(f"{c}_ref")).otherwise(pl.col(f"{c}_lvl"))
                .alias(c + v)
                for v, use_ref in variants.items()
                for c in ("expected_x", "scale", "z")
            )
            .drop(f"{c}{m}" for c in ("expected_x", "scale", "z") for m in ("_lvl", "_ref"))
            .with_columns(pl.col("z" + v).clip(-Z_CLIP, Z_CLIP) for v in variants)
            .collect()
        )
        if "_alt" in variants:
            differs = rows["_differs"].to_numpy()
            rows = rows.drop("_differs")
        events = (pl.col("kind") == "events") & pl.col("dispersion").is_not_null()
        ev = rows.select(
            events.alias("m"),
            "value",
            "mu",
            "dispersion",
            pl.col("measure").is_in(list(ONE_SIDED_MEASURES)).alias("one_sided"),
        )
        nb_mask = ev["m"].fill_null(False).to_numpy()
        nb_z = None
        if nb_mask.any():  # the same under either comparison: events are never judged by one
            nb_z = nb_signed_z(
                ev["value"].to_numpy()[nb_mask],
                ev["mu"].to_numpy()[nb_mask],
                ev["dispersion"].to_numpy()[nb_mask],
            )
        one_sided = ev["one_sided"].to_numpy()
        z = self._final_z(rows, "", nb_mask, nb_z, None)
        z[one_sided] = np.maximum(z[one_sided], 0.0)
        out = rows.with_columns(pl.Series("z", z))
        if "_alt" in variants:
            z_alt = z.copy()
            z_alt[differs] = self._final_z(rows, "_alt", nb_mask, nb_z, differs)[differs]
            z_alt[one_sided] = np.maximum(z_alt[one_sided], 0.0)
            out = out.with_columns(pl.Series("z_alt", z_alt))
        width = pl.col("tail_width") if "tail_width" in rows.columns else pl.lit(1.0)
        return out.with_columns(
            (pl.col("z" + v) / width.fill_null(1.0)).alias("z_tail" + v) for v in variants
        ).drop(
            *slim.columns,
            "expected",
            "rate",
            "center",
            "_ref_x",
            *(f"{c}_alt" for c in ("expected_x", "scale")),
            strict=False,
        )

    def _final_z(
        self,
        rows: pl.DataFrame,
        v: str,
        nb_mask: np.ndarray,
        nb_z: np.ndarray | None,
        only: np.ndarray | None,
    ) -> np.ndarray:
        """Column ``z<v>`` with counts judged as counts: events under their negative
        binomial (``nb_z`` at ``nb_mask``), null rates of small resources and of fields
        with few null or populated records (``min_logit_records``) as beta-binomial
        counts (against ``expected_x<v>``, ``scale<v>``; only at rows ``only``, when given),
        NaN as 0 and infinities clipped."""
        z = rows["z" + v].to_numpy(allow_copy=True).astype(float, copy=True)
        if nb_z is not None:
            z[nb_mask] = nb_z
        p_expected = 1.0 / (1.0 + (-pl.col("expected_x" + v)).exp())
        rarer_side = pl.col("current_size") * pl.min_horizontal(p_expected, 1.0 - p_expected)
        small = rows.select(
            (pl.col("kind") == "rate")
            & pl.col("value").is_not_null()
            & (pl.col("current_size") >= 1.0)
            & (
                (pl.col("current_size") <= _SMALL_RATE_N)
                | (rarer_side < self.min_logit_records)
            )
            & pl.col("scale" + v).is_not_null(),
            "value",
            "current_size",
            "expected_x" + v,
            "scale" + v,
        )
        mask = small.to_series(0).fill_null(False).to_numpy()
        if only is not None:
            mask &= only
        if mask.any():
            n = small["current_size"].to_numpy()[mask]
            p = _ufuncs.expit(small["expected_x" + v].to_numpy()[mask])
            # The sync-to-sync spread of the rate beyond the binomial noise at this size.
            spread = small["scale" + v].to_numpy()[mask] * p * (1.0 - p)
            floor = _SCALE_FLOOR["rate"] * p * (1.0 - p)
            between = np.maximum(spread**2 - p * (1.0 - p) / n, floor**2)
            z[mask] = betabinom_signed_z(
                np.rint(small["value"].to_numpy()[mask] * n), n, p, np.sqrt(between)
            )
        return np.nan_to_num(z, nan=0.0, posinf=Z_CLIP, neginf=-Z_CLIP)

    def expected_raw(self, rows: pl.DataFrame) -> pl.DataFrame:
        """Observed, expected and expected range in the measure's own units.

        ``rows`` are residual rows (from :meth:`residuals`); the range is the central
        99.7% (three scales, or the negative binomial's 0.135%-99.865% quantiles).
        """
        kind = rows["kind"].to_numpy()
        x_exp = rows["expected_x"].to_numpy().astype(float)
        scale = rows["scale"].to_numpy().astype(float)
        ref = rows["reference"].fill_null(0.0).to_numpy().astype(float)
        mu = rows["mu"].to_numpy().astype(float)
        phi = rows["dispersion"].fill_null(1.0).to_numpy().astype(float)
        out = np.full((rows.height, 3), np.nan)
        lo_x, hi_x = x_exp - 3 * scale, x_exp + 3 * scale

        def exp(x: np.ndarray) -> np.ndarray:  # bounded: a range beyond e^50 says no more
            return np.exp(np.clip(x, -50.0, 50.0))

        for name, inverse in (
            ("count", lambda x: (ref + 1.0) * exp(x) - 1.0),
            ("rate", _ufuncs.expit),
            ("log", lambda x: exp(x) - _LOG_OFFSET),
            # A custom metric in its own units: bounding it would misstate it.
            ("level", lambda x: x),
        ):
            m = kind == name
            if m.any():
                out[m, 0] = inverse(x_exp)[m]
                out[m, 1] = inverse(lo_x)[m]
                out[m, 2] = inverse(hi_x)[m]
        m = kind == "events"
        if m.any():
            n = 1.0 / phi[m]
            p = 1.0 / (1.0 + mu[m] * phi[m])
            out[m, 0] = mu[m]
            out[m, 1] = _ufuncs._nbinom_ppf(0.00135, n, p)  # = scipy.stats.nbinom.ppf
            out[m, 2] = _ufuncs._nbinom_ppf(0.99865, n, p)
        out = np.where(np.isfinite(out), np.maximum(out, 0.0), np.nan)
        return rows.with_columns(
            pl.Series("expected_raw", out[:, 0]),
            pl.Series("range_lo", out[:, 1]),
            pl.Series("range_hi", out[:, 2]),
        )


def _scale_floor() -> pl.Expr:
    """The least scale of a series (``kind``, ``center``): the kind's floor, and for a
    custom metric 1 % of its level."""
    return pl.max_horizontal(
        pl.col("kind").replace_strict(_SCALE_FLOOR, default=1e-9, return_dtype=pl.Float64),
        pl.when(pl.col("kind") == "level").then(pl.col("center").abs() * 0.01).otherwise(0.0),
    )


def empty_hours(key: str) -> pl.DataFrame:
    """A baseline's ``hours_`` without offsets (every hour at its block's level)."""
    return pl.DataFrame(
        schema={key: pl.String, "measure": pl.String, "bucket": pl.Int16, "offset": pl.Float64}
    )


def _chunks(sizes: pl.DataFrame, name: str) -> list[pl.DataFrame]:
    """Consecutive values of column ``name`` holding about ``_CHUNK_ROWS`` rows together
    (``sizes`` gives each value's ``len``)."""
    chunk = (sizes["len"].cum_sum() - sizes["len"]) // _CHUNK_ROWS
    return sizes.select(name, chunk.alias("_chunk")).partition_by(
        "_chunk", include_key=False, maintain_order=True
    )


def _stl_bucket_medians(rows: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Bucket profiles from statsmodels' robust STL on each series' own time grid.

    Each series is laid on a regular grid at its usual step, gaps interpolated so that a
    missing value cannot turn the decomposition to NaN, decomposed with
    ``STL(period=<steps per week>, robust=True)``; seasonal plus median trend, taken per
    time-of-week bucket, is the expected value. Series too short for two weeks fall back
    to bucket medians.
    """
    from statsmodels.tsa.seasonal import STL

    medians = rows.group_by([*keys, "bucket"]).agg(
        pl.col("x").median().alias("bucket_x"), pl.len().alias("bucket_n")
    )
    week_s = 7 * 86400.0
    out = []
    ordered = rows.sort(*keys, "started_at")
    for key_values, part in ordered.group_by(keys, maintain_order=True):
        t = part["started_at"].dt.epoch("s").to_numpy().astype(float)
        x = part["x"].to_numpy().astype(float)
        if len(t) < 4:
            continue
        step = float(np.median(np.diff(t))) or 3600.0
        period = int(round(week_s / step))
        grid = np.arange(t[0], t[-1] + step / 2, step)
        if period < 2 or len(grid) < 2 * period + 1 or len(grid) > 50_000:
            continue
        filled = np.interp(grid, t, x)
        res = STL(filled, period=period, robust=True).fit()
        smooth = res.seasonal + np.median(res.trend)
        stamps = pl.Series(grid * 1e6).cast(pl.Int64).cast(pl.Datetime("us", "UTC"))
        buckets = stamps.to_frame("t").select(block_expr(bucket_expr(pl.col("t")))).to_series()
        frame = (
            pl.DataFrame({"bucket": buckets, "bucket_x": smooth})
            .group_by("bucket")
            .agg(pl.col("bucket_x").median(), pl.len().cast(pl.UInt32).alias("bucket_n"))
        )
        out.append(
            frame.with_columns(*[pl.lit(v).alias(k) for k, v in zip(keys, key_values, strict=True)])
        )
    if not out:
        return medians
    stl = pl.concat(out).select(*keys, "bucket", "bucket_x", "bucket_n")
    # Series STL could not decompose keep their bucket medians.
    rest = medians.join(stl.select(keys).unique(), on=keys, how="anti")
    return pl.concat([stl, rest.cast(stl.schema)])
