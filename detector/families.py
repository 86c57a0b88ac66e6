"""Tail families: which signed tail a residual is judged by, and each sync's family maxima.

A residual's tail is the most specific of its measure's candidates that has data enough
(resource type and size decade, type, size, or the plain family: ``count-``,
``api.errors+``, ``null_rate+``...); a sync's largest residual in each family is what the
family calibrators judge, held sparse (:class:`Families`) since most syncs have
residuals in a few families only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from detector.history import as_strings
from detector.parallel import in_threads

__all__ = [
    "Families",
    "family_index",
    "family_weights",
    "residual_sign",
    "size_decade",
    "tail_families",
    "tail_family_expr",
]


_TAIL_MIN_ROWS = 2000  # about 100 tail exceedances a side (see TailCalibrator)


_TAIL_MIN_CONNECTORS = 4


_MAX_DECADE = 4  # size decades of resource tails: < 100, < 1,000, < 10,000, more


_CAL_BLOCK_ROWS = 250_000  # family maxima per block of the combined statistic when fitting


def _resource_prefix(measure: pl.Expr) -> pl.Expr:
    """``user.`` for a measure of the ``user`` resource type; null for sync, API, metrics."""
    resource = ~(
        measure.str.starts_with("api.")
        | measure.str.starts_with("sync.")
        | measure.str.starts_with("metric.")
    )
    return pl.when(resource).then(pl.concat_str(measure.str.split(".").list.first(), pl.lit(".")))


def _size_suffix(decade: pl.Expr | None = None) -> pl.Expr:
    """``@2`` for a resource of 100-999 records (its larger side of the change); null else.

    ``decade``: the row's :func:`size_decade`, when already computed.

    Small apps move in bursts (a team of 12 leaves a 37-seat app at once) that are 10
    to 30 residual scales out; in a directory of 50,000 that never happens in normal
    life, so a 3 % loss there is damning. Tails per size decade keep the two apart.
    """
    decade = size_decade() if decade is None else decade
    return pl.when(decade > 0).then(pl.concat_str(pl.lit("@"), decade.cast(pl.String)))


def size_decade() -> pl.Expr:
    """1 (< 100 records) to ``_MAX_DECADE`` (>= 10,000) for resource measures; 0 otherwise."""
    size = pl.max_horizontal(pl.col("exposure"), pl.col("current_size"))
    decade = size.clip(lower_bound=1.0).log10().floor().clip(1, _MAX_DECADE).cast(pl.Int64)
    return pl.when(size.is_not_null()).then(decade).otherwise(0)


def _tail_keys(measure: pl.Expr, z: pl.Expr, decade: pl.Expr | None = None) -> list[pl.Expr]:
    """Candidate tails of a residual, most specific first (null where one does not apply).

    ``user.count@4-`` (type and size), ``user.count-`` (type), ``count@4-`` (size) and
    ``count-`` (family). Needs ``exposure`` and ``current_size`` columns, or ``decade``
    (the :func:`size_decade` they give). A custom metric's type is its name
    (``metric.mfa_ratio-``): metrics share nothing but the word, and one that swings with
    office hours would otherwise give a ratio that never moves a tail as heavy as its own.
    """
    base, sign, size = _family_base(measure), residual_sign(z), _size_suffix(decade)
    typed = (
        pl.when(measure.str.starts_with("metric."))
        .then(measure)
        .otherwise(pl.concat_str(_resource_prefix(measure), base))
    )
    return [
        pl.concat_str(typed, size, sign),
        pl.concat_str(typed, sign),
        pl.concat_str(base, size, sign),
        pl.concat_str(base, sign),
    ]


def _family_base(measure: pl.Expr) -> pl.Expr:
    """Unsigned measure family: resource measures lose their resource type (``user.count``
    -> ``count``), null rates their field; sync, API measures and metrics keep their names.
    """
    return (
        pl.when(measure.str.starts_with("api.") | measure.str.starts_with("sync."))
        .then(measure)
        .when(measure.str.starts_with("metric."))
        .then(pl.lit("metric"))
        .when(measure.str.contains(".null_rate.", literal=True))
        .then(pl.lit("null_rate"))
        .otherwise(measure.str.split(".").list.last())
    )


def residual_sign(z: pl.Expr | np.ndarray) -> pl.Expr | np.ndarray:
    """ "+" where a residual is at or above its level, else "-": the sign in tail family
    names and in the moved measures the review test reads, of polars or numpy residuals."""
    if isinstance(z, np.ndarray):
        return np.where(z >= 0, "+", "-")
    return pl.when(z >= 0).then(pl.lit("+")).otherwise(pl.lit("-"))


def tail_family_expr(measure: pl.Expr, z: pl.Expr, families: list[str]) -> pl.Expr:
    """The tail a residual is judged by: the most specific of its candidate tails that
    the model has (see :func:`_tail_keys`); its plain family otherwise."""
    known = pl.lit(pl.Series(families, dtype=pl.String)).implode()
    *specific, family = _tail_keys(measure, z)
    expr = pl.when(specific[0].is_in(known)).then(specific[0])
    for key in specific[1:]:
        expr = expr.when(key.is_in(known)).then(key)
    return expr.otherwise(family).alias("family")


def family_index(measures: pl.Series, families: list[str]) -> np.ndarray:
    """Unsigned tail family index of each (measure, size decade): ``len(measures) x
    (_MAX_DECADE + 1)``, -1 where the pair has no family among ``families``."""
    decades = np.arange(_MAX_DECADE + 1)
    pairs = (
        pl.DataFrame(
            {
                "measure": np.repeat(measures.to_numpy(), len(decades)),
                "decade": np.tile(decades, len(measures)),
            }
        )
        .with_columns(
            # A size in the decade (decade 0: no size), for the tail-key expressions.
            pl.when(pl.col("decade") > 0)
            .then(10.0 ** pl.col("decade").cast(pl.Float64))
            .alias("exposure"),
        )
        .with_columns(pl.col("exposure").alias("current_size"))
    )
    keys = pairs.select(tail_family_expr(pl.col("measure"), pl.lit(1.0), families).str.head(-1))[
        "family"
    ].to_list()
    unsigned = {f[:-1]: i for i, f in enumerate(families[::2])}
    return np.array([unsigned.get(k, -1) for k in keys], dtype=np.int32).reshape(
        len(measures), len(decades)
    )


def tail_families(features: pl.DataFrame) -> list[str]:
    """Signed tails to fit: every family, plus the more specific tails with data enough.

    Residuals go to the most specific tail (type and size, type, size) that has
    ``_TAIL_MIN_ROWS`` of them from ``_TAIL_MIN_CONNECTORS`` connectors: fewer, and its
    tail would be one connector's habits; those residuals stay in a broader tail.
    """
    # A row's candidate tails depend on its measure and size decade only: the string
    # work is done once per connector, measure and decade, each counting its rows.
    # Grouped on plain columns, the decade as one byte: a computed key held twice the
    # memory (4 GiB at 1,000 connectors). The order of the groups matters not: sums,
    # distinct counts and a sorted list come out.
    distinct = as_strings(
        features.select("connector_id", "measure", size_decade().cast(pl.Int8).alias("decade"))
        .group_by("connector_id", "measure", "decade")
        .len("rows")
    )
    keys = [
        k.str.head(-1).alias(f"k{i}")
        for i, k in enumerate(_tail_keys(pl.col("measure"), pl.lit(1.0), pl.col("decade")))
    ]
    tagged = distinct.select("connector_id", "rows", *keys).with_columns(
        pl.lit(None, pl.String).alias("tail")
    )
    chosen: set[str] = set(tagged["k3"].unique().to_list())
    for i in range(3):
        open_rows = tagged.filter(pl.col("tail").is_null() & pl.col(f"k{i}").is_not_null())
        enough = (
            open_rows.group_by(f"k{i}")
            .agg(
                pl.col("rows").sum().alias("n"),
                pl.col("connector_id").n_unique().alias("connectors"),
            )
            .filter(
                (pl.col("n") >= _TAIL_MIN_ROWS) & (pl.col("connectors") >= _TAIL_MIN_CONNECTORS)
            )[f"k{i}"]
        )
        chosen |= set(enough.to_list())
        tagged = tagged.with_columns(
            pl.when(pl.col("tail").is_null() & pl.col(f"k{i}").is_in(enough.implode()))
            .then(pl.col(f"k{i}"))
            .otherwise(pl.col("tail"))
            .alias("tail")
        )
    return [f + sign for f in sorted(chosen) for sign in "+-"]


@functools.lru_cache(maxsize=8)
def family_weights(families: tuple[str, ...], loss_weight: float) -> np.ndarray:
    """Weight of each tail family in a sync's smallest tail probability (a weighted
    Bonferroni: a family's probability is divided by its weight).

    Records lost, a count falling or removals rising, weigh ``loss_weight`` against 1
    for every other family. Loss is what makes governance revoke live access, and a
    small app's lost page competes with some 30 other families of its sync for the same
    false-pause budget. The combined statistic is calibrated after weighting, so the
    cutoff is still set to the budget.
    """
    unsigned = (
        "" if f.startswith("metric.") else f.split("@")[0].rstrip("+-").rsplit(".", 1)[-1] + f[-1]
        for f in families
    )
    return np.array([loss_weight if u in ("count-", "removed+") else 1.0 for u in unsigned])


@dataclass(frozen=True)
class Families:
    """The positive family maxima of held-out syncs (syncs x families), row by row.

    Dense, they would take 8 bytes per sync and family although most syncs have
    residuals in a few families only. Entries are in row-major order, the order of
    ``fam[fam > 0]`` on the dense matrix.
    """

    rows: np.ndarray  # int32: the sync
    cols: np.ndarray  # int32: the family
    values: np.ndarray
    # Per sync, when fitting: did only its transport move (see :mod:`review`)? Judged on
    # the residuals as scoring judges them, so a cutoff is calibrated on the syncs that
    # would pause.
    review: np.ndarray | None = None

    @classmethod
    def of(cls, fam: np.ndarray) -> Families:
        rows, cols = np.nonzero(fam > 0)
        return cls(rows.astype(np.int32), cols.astype(np.int32), fam[rows, cols])

    @classmethod
    def maxima(
        cls, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_cols: int
    ) -> Families:
        """The entries ``of`` the dense matrix ``np.maximum.at(zeros, (rows, cols),
        values)`` gives (``values`` >= 0), without making that matrix."""
        cell = rows.astype(np.int64) * n_cols + cols
        order = np.argsort(cell, kind="stable")
        cell = cell[order]
        starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]]) if len(cell) else cell
        top = np.maximum.reduceat(values[order], starts) if len(cell) else values[:0]
        kept = top > 0  # as ``fam > 0`` in :meth:`of`: a maximum of 0 is no entry
        cell = cell[starts[kept]]
        return cls((cell // n_cols).astype(np.int32), (cell % n_cols).astype(np.int32), top[kept])

    def __getitem__(self, syncs: slice) -> Families:
        """The entries of syncs ``start:stop``, numbered from 0 (as a dense matrix's rows)."""
        lo, hi = np.searchsorted(self.rows, [syncs.start, syncs.stop])
        return Families(
            self.rows[lo:hi] - np.int32(syncs.start),
            self.cols[lo:hi],
            self.values[lo:hi],
            None if self.review is None else self.review[syncs],
        )

    def where(self, mine: np.ndarray) -> Families:
        """The entries of the rows where ``mine`` (bool per row) is true, renumbered from
        0 in order: what :meth:`of` gives of the dense matrix's ``fam[mine]``."""
        keep = mine[self.rows]
        number = np.cumsum(mine, dtype=np.int32) - np.int32(1)
        return Families(number[self.rows[keep]], self.cols[keep], self.values[keep])

    @classmethod
    def concat(cls, parts: list[Families]) -> Families:
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0))
        reviews = [p.review for p in parts]
        return cls(
            np.concatenate([p.rows for p in parts]),
            np.concatenate([p.cols for p in parts]),
            np.concatenate([p.values for p in parts]),
            None if any(r is None for r in reviews) else np.concatenate(reviews),
        )

    def shifted(self, n: int) -> Families:
        """The same entries for syncs numbered from ``n``."""
        return Families(self.rows + np.int32(n), self.cols, self.values, self.review)

    def row_min(
        self, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], n_rows: int, n_jobs: int = 1
    ) -> np.ndarray:
        """Each row's smallest ``fn(values, cols)`` over its entries (1 for a row without).

        ``fn`` is applied elementwise, ``_CAL_BLOCK_ROWS`` entries at a time, ``n_jobs``
        blocks at once in threads (``fn`` is numpy on whole blocks, outside the GIL); a
        minimum is the same in any order.
        """

        def block_min(lo: int) -> tuple[np.ndarray, np.ndarray]:
            rows = self.rows[lo : lo + _CAL_BLOCK_ROWS]
            p = fn(self.values[lo : lo + _CAL_BLOCK_ROWS], self.cols[lo : lo + _CAL_BLOCK_ROWS])
            starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
            return rows[starts], np.minimum.reduceat(p, starts)

        out = np.ones(n_rows)
        blocks = list(range(0, len(self.values), _CAL_BLOCK_ROWS))
        # A row cut by a block's end is met again in the next one.
        for first, low in in_threads(block_min, blocks, n_jobs):
            out[first] = np.minimum(out[first], low)
        return out
