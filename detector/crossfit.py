"""Cross-fitting by parts: chunks of whole connectors, then each pooled group, each split
into two folds (a connector's halves in time; a pooled group's connectors by a hash).

Baselines are per group, so a fold is fitted and scored one part at a time: only that
part's rows are copied, and the parts' results together are those of one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from detector.baseline import SeasonalBaseline
from detector.families import Families
from detector.groups import IN_FLEET_SAMPLE, IN_KIND_SAMPLE, POOLED_ALL
from detector.history import as_strings

__all__ = ["XfitPart", "merged_baseline", "stacked_matrices", "xfit_parts"]


@dataclass(frozen=True)
class XfitPart:
    """Whole model groups cross-fitted together, and how their rows split into folds.

    ``key`` is ``"connector_id"`` for a chunk of connectors (``source`` carries the
    chunk number in ``_xfit_chunk``; ``span``: where its rows are, when they are one run
    of ``source``) or ``"connector_kind"`` for one pooled group (``ids``: the connectors
    of ``source``, as strings).
    """

    key: str
    source: pl.DataFrame
    groups: tuple[str, ...]
    chunk: int = 0
    ids: pl.Series | None = None
    span: tuple[int, int] | None = None

    @property
    def pooled(self) -> bool:
        """A pooled group (judged against the sync before only), not a chunk of connectors."""
        return self.key != "connector_id"

    def rows(self, fold: bool | None) -> pl.DataFrame:
        """The part's rows on side ``fold`` (None: all): a copy of those rows, when asked,
        with string keys (the source's may be categoricals, see :func:`_compact_keys`)."""
        if self.key == "connector_id":
            if self.span is not None:  # a slice: no pass over the whole frame
                mine = self.source.slice(self.span[0], self.span[1] - self.span[0])
            else:
                mine = self.source.filter(pl.col("_xfit_chunk") == self.chunk)
            mine = mine.drop("_xfit_chunk")
            if fold is not None:
                # Each connector's later half of syncs (rows numbered in time order) is fold 1.
                seq = pl.col("row").rank("dense").over("connector_id")
                mine = mine.filter((seq * 2 > seq.max().over("connector_id")) == fold)
            return as_strings(mine)
        # Pooled: hold out whole connectors, the way a cold start meets the model.
        side = pl.lit(True) if fold is None else self._pooled_side(fold)
        if self.groups == (POOLED_ALL,):
            every = self.source.filter(side & IN_FLEET_SAMPLE)
            return as_strings(every.drop("_pool")).with_columns(
                pl.lit(POOLED_ALL).alias("connector_kind")
            )
        mine = side & IN_KIND_SAMPLE & (pl.col("connector_kind") == self.groups[0])
        return as_strings(self.source.filter(mine).drop("_pool"))

    def _pooled_side(self, fold: bool) -> pl.Expr:
        """Rows of the connectors on side ``fold``: the side of a connector is a hash of its
        id (as a string), taken once per connector rather than once per row."""
        ids = self.ids
        on_side = ids.filter((ids.hash(7) % 2 == 1) == fold)
        return pl.col("connector_id").is_in(on_side.implode())

    @property
    def against_reference(self) -> pl.Expr | None:
        """Rows judged against the sync before: pooled models always, connectors when
        paused (None: :meth:`SeasonalBaseline.residuals`' default, the ``paused`` column)."""
        return pl.lit(True) if self.key == "connector_kind" else None

    def fit_residuals(
        self, method: str, rows: pl.DataFrame, ivals: pl.DataFrame
    ) -> tuple[SeasonalBaseline, np.ndarray, np.ndarray]:
        """The part's baseline fitted on ``rows`` (pooled ones always seasonal profiles),
        and the ``z``, ``z_tail`` of ``rows`` it gives, as the part's models judge them."""
        if self.key == "connector_id":
            base = SeasonalBaseline(method=method)
        else:
            base = SeasonalBaseline(key="connector_kind")
        z, z_tail = base.fit_residuals(rows, ivals, against_reference=self.against_reference)
        return base, z, z_tail


def xfit_parts(
    per_connector: pl.DataFrame, pooled: pl.DataFrame, chunk_rows: int
) -> list[XfitPart]:
    """Chunks of whole connectors of about ``chunk_rows`` rows, then each pooled group
    (``pooled``: the feature rows with their ``_pool`` code, see :func:`pooled_sample`).

    A chunk's rows are found by a small integer column rather than by connector ids: one
    cheap comparison per row and chunk, where a string lookup would cost far more.
    """
    sizes = per_connector.group_by("connector_id").len().sort("connector_id")
    chunk = ((sizes["len"].cum_sum() - sizes["len"]) // chunk_rows).cast(pl.UInt32)
    source = per_connector.with_columns(
        pl.col("connector_id")
        .replace_strict(sizes["connector_id"], chunk, return_dtype=pl.UInt32)
        .alias("_xfit_chunk")
    )
    ids = sizes["connector_id"].to_list()
    n_chunks = int(chunk.max()) + 1 if len(chunk) else 0
    spans: list[tuple[int, int] | None] = [None] * n_chunks
    if source["_xfit_chunk"].is_sorted():
        # Rows in sync order (connectors in id order, as fitting numbers them): each
        # chunk's rows are one run of the frame, read as a slice where a filter passed
        # over all of it (15 million rows at 1,000 connectors) for every side of every
        # chunk.
        at = np.searchsorted(source["_xfit_chunk"].to_numpy(), np.arange(n_chunks + 1))
        spans = [(int(lo), int(hi)) for lo, hi in zip(at[:-1], at[1:], strict=True)]
    connectors = [
        XfitPart(
            "connector_id",
            source,
            tuple(ids[i] for i in np.flatnonzero(chunk == c)),
            c,
            span=spans[c],
        )
        for c in range(n_chunks)
    ]
    kinds = sorted({*pooled["connector_kind"].unique().to_list(), POOLED_ALL})
    # Found once: every pooled part reads them for each side it takes (a pass over the
    # whole long frame each time).
    pooled_ids = pooled["connector_id"].unique().cast(pl.String)
    return connectors + [
        XfitPart("connector_kind", pooled, (kind,), ids=pooled_ids) for kind in kinds
    ]


def stacked_matrices(pieces: list[tuple]) -> tuple:
    """Group matrices of consecutive slices of syncs as one: arrays stacked, the sparse
    family maxima renumbered on (``None`` stays ``None``)."""
    x = [p[0] for p in pieces]
    fam = [p[2] for p in pieces]
    if fam[0] is not None:
        starts = np.cumsum([0] + [len(m) for m in x[:-1]])
        fam = Families.concat([f.shifted(int(n)) for f, n in zip(fam, starts, strict=True)])
    else:
        fam = None
    return np.concatenate(x), np.concatenate([p[1] for p in pieces]), fam


def merged_baseline(
    parts: list[XfitPart], bases: list[SeasonalBaseline | None], key: str
) -> SeasonalBaseline:
    """The baselines of the parts keyed by ``key`` (chunks of connectors, or pooled
    groups) as one."""
    return SeasonalBaseline.concat(
        [b for p, b in zip(parts, bases, strict=True) if p.key == key and b is not None]
    )
