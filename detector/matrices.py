"""Long residual rows -> per-sync matrices: the forest's inputs laid out by each model
group's residual vector, and each sync's largest residual per tail family.

The scatter is numpy indexing on integer codes, found once per distinct group and measure;
fitting (held-out and in-sample, a part at a time) and scoring both read it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from detector.families import Families, residual_sign, size_decade
from detector.review import OUTLYING_Z, review_only

__all__ = ["scatter_residuals"]

_FOREST_Z_CLIP = 50.0  # forest inputs: beyond this, further distance isolates nothing new


def scatter_residuals(
    resid: pl.DataFrame,
    width: int,
    columns: pl.DataFrame,
    groups: list[str],
    family_lookup: Callable[[pl.Series], np.ndarray],
    n_families: int,
    families: str = "dense",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    """Scatter long residual rows into per-sync matrices.

    Returns the forest inputs (syncs x width, per the group's layout, clipped; float32,
    the precision the forest splits on), the row ids, the group index, and each
    family's largest residual (syncs x families; 0 where the family has no residual in
    the direction it names). Syncs come ordered by group index, then row. With
    ``families="sparse"`` the family maxima are the same entries as
    :class:`Families` (fitting keeps them so: a dense matrix is mostly zeros, and
    its pages cost more than the scatter), with ``"none"`` they are not made.

    String keys are turned into integer codes once per distinct value (groups and
    measures are few); the scatter itself is numpy indexing.
    """
    measures = pl.concat([resid["measure"].unique(), columns["measure"]]).unique().sort()
    m_codes = pl.Series(np.arange(len(measures), dtype=np.int64))
    g_codes = pl.Series(np.arange(len(groups), dtype=np.int64))

    def codes(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(
            pl.col("group").replace_strict(groups, g_codes, default=None).alias("g"),
            pl.col("measure").replace_strict(measures, m_codes).alias("m"),
        )

    coded = codes(
        resid.select("row", "group", "measure", "z", "z_tail", size_decade().alias("decade"))
    ).drop_nulls("g")
    layout = codes(columns).drop_nulls("g")
    # Dense lookups: vector column of (group, measure), family of each measure.
    col_of = np.full((len(groups), len(measures)), -1, dtype=np.int32)
    col_of[layout["g"].to_numpy(), layout["m"].to_numpy()] = layout["col"].to_numpy()
    fam_of = family_lookup(measures)

    # Per-row temporaries are as long as the residual frame (30 rows a sync, twice
    # for the pooled models): small integer types, each freed once used.
    row = coded["row"].to_numpy()
    g = coded["g"].to_numpy().astype(np.int32)
    m = coded["m"].to_numpy().astype(np.int32)
    n_rows = int(row.max()) + 1 if len(row) else 1
    key = g.astype(np.int64) * n_rows + row
    del row
    # A sync's residual rows arrive together: number the runs of equal keys, then
    # the distinct keys among the runs (about one per sync, not one per measure).
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    keys, run = np.unique(key[starts], return_inverse=True)
    del key
    i = np.repeat(run.astype(np.int32), np.diff(np.r_[starts, len(g)]))
    z = coded["z"].to_numpy()
    x = np.zeros((len(keys), width), dtype=np.float32)
    col = col_of[g, m]
    sel = col >= 0
    x[i[sel], col[sel]] = np.clip(z[sel], -_FOREST_Z_CLIP, _FOREST_Z_CLIP)
    del col, g
    if families == "none":
        return x, keys % n_rows, keys // n_rows, None
    u = fam_of[m, coded["decade"].to_numpy().astype(np.int8)]
    sel = u >= 0
    # Family "<name>+" is 2u, "<name>-" is 2u + 1 (the sign of z, as residual_sign).
    j = 2 * u[sel] + (z[sel] < 0)
    values = np.abs(coded["z_tail"].to_numpy()[sel])
    if families == "sparse":
        f = Families.maxima(i[sel], j, values, n_families)
        moved = np.abs(z) >= OUTLYING_Z
        names = np.char.add(measures.to_numpy().astype(str)[m[moved]], residual_sign(z[moved]))
        f = dataclasses.replace(f, review=review_only(i[moved], names, len(keys), z[moved]))
    else:
        f = np.zeros((len(keys), n_families))
        np.maximum.at(f, (i[sel], j), values)
    return x, keys % n_rows, keys // n_rows, f
