"""History as frames: records (or a store's record texts) -> syncs and features, by parts.

A sync's decoded fields, features and numbering depend on its own connector's syncs only,
so a large history is decoded and featured a run of whole connectors at a time (in
threads), with what one pass gives; the long feature frame's string keys can be held as
categoricals while a fit keeps it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import polars as pl

from detector.features import build_features
from detector.frame import in_sync_order, measures_frame, syncs_frame, to_struct_frame
from detector.parallel import in_threads

__all__ = [
    "HISTORY_CHUNK_SYNCS",
    "DecodedHistory",
    "as_strings",
    "connector_parts",
    "history_frames",
    "prepare",
]


HISTORY_CHUNK_SYNCS = 20_000  # syncs of the connectors decoded and featured together


def prepare(
    records: Iterable[Mapping[str, Any]] | pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Records (dicts, a struct frame, or a store history frame) -> (syncs, measures)."""
    wide = to_struct_frame(records)
    return syncs_frame(wide).with_row_index("row"), measures_frame(wide)


def connector_parts(frame: pl.DataFrame, rows: int) -> pl.DataFrame:
    """Runs of whole connectors, in connector order, of about ``rows`` syncs each.

    One row per connector of ``frame``: ``connector_id``, ``start`` (where its syncs
    begin in a frame sorted by connector) and ``part``: a connector opens a new part when
    the syncs before it reach a multiple of ``rows`` (part numbers rise, with gaps after a
    connector of more than ``rows`` syncs). A sync's decoded frames and features depend on
    its own connector's syncs only, so fitting and the backtest take a large history a
    part at a time, the same parts.
    """
    per_connector = frame.select("connector_id").group_by("connector_id").len().sort("connector_id")
    start = (pl.col("len").cum_sum() - pl.col("len")).cast(pl.Int64)
    return per_connector.select("connector_id", start.alias("start"), (start // rows).alias("part"))


def _connector_slices(history: pl.DataFrame) -> list[pl.DataFrame]:
    """A store history frame as runs of whole connectors of about
    ``HISTORY_CHUNK_SYNCS`` syncs (see :func:`connector_parts`): slices, no copies. One
    run when the frame is small, or not in connector order."""
    ids = history["connector_id"] if "connector_id" in history.columns else None
    if history.height <= HISTORY_CHUNK_SYNCS or ids is None:
        return [history]
    if ids.null_count() or not ids.is_sorted():
        return [history]
    starts = connector_parts(history, HISTORY_CHUNK_SYNCS).unique(
        "part", keep="first", maintain_order=True
    )["start"]
    bounds = np.r_[starts.to_numpy(), history.height]
    return [history.slice(lo, hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


class DecodedHistory:
    """A store history frame's record texts decoded once, for fits that read it again.

    ``parts``: struct frames (:func:`to_struct_frame`, in sync order) of runs of whole
    connectors (:func:`_connector_slices`); ``only``: when given, the ``sync_id`` of the
    syncs that belong to this history (the rest of the parts are left out a part at a
    time, as they are read: no second copy of the parts). Decoding the JSON texts was a
    fifth of a fit's features and was done once per screening round, for the backtest's
    safeguards and for the final fit again; the struct frames are also less than half
    the size of the texts.

    A sync's decoded fields depend on its own record only, so a part of the decoded
    syncs is what decoding those syncs' texts gives (:meth:`FleetModel.fit` and the
    backtest read either and get the same model).
    """

    def __init__(self, parts: list[pl.DataFrame], only: pl.Series | None = None) -> None:
        self.parts = parts
        self.only = only

    @classmethod
    def decode(cls, history: pl.DataFrame, n_jobs: int = 1) -> DecodedHistory:
        """Decode a store history frame (``record`` JSON texts), a part per thread."""
        decoded = in_threads(
            lambda part: in_sync_order(to_struct_frame(part)), _connector_slices(history), n_jobs
        )
        return cls([part for part in decoded if part.height])

    def keep(self, sync_ids: pl.Series) -> DecodedHistory:
        """The same parts, with only the syncs ``sync_ids`` (of those kept already)."""
        if self.only is not None:
            sync_ids = sync_ids.filter(sync_ids.is_in(self.only.implode()))
        return DecodedHistory(self.parts, sync_ids)

    def part(self, k: int) -> pl.DataFrame:
        """Part ``k``'s kept syncs (a copy when some are left out)."""
        if self.only is None:
            return self.parts[k]
        return self.parts[k].filter(pl.col("sync_id").is_in(self.only.implode()))

    def readers(self) -> list[Callable[[], pl.DataFrame]]:
        """One call per part giving :meth:`part`: handed to threads, each copy of kept
        syncs is made in the thread that reads it, not all at once beforehand."""
        return [functools.partial(self.part, k) for k in range(len(self.parts))]

    @property
    def sync_ids(self) -> pl.Series:
        if self.only is not None:
            return self.only
        return pl.concat([part["sync_id"] for part in self.parts])

    @property
    def height(self) -> int:
        return len(self.sync_ids)


def history_frames(
    history: Iterable[Mapping[str, Any]] | pl.DataFrame | DecodedHistory,
    n_jobs: int = 1,
    leave_out: pl.Series | None = None,
    *,
    compact: bool = False,
    modelled: bool = False,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`prepare` then :func:`build_features` of a history, in parts of connectors.

    Both work per connector (a connector's kind is settled over its syncs; features are
    windows over its series and joins on its syncs), so a part of whole connectors gets
    the rows one pass gives, while one pass's intermediates stay a part's size: one
    decode of a fleet's record texts holds every resource type's fields for every sync,
    and the features' joins, windows and sort were the fit's peak of memory. Parts are
    runs of connectors of a frame in connector order (as the store reads history; see
    :func:`_connector_slices`) or a :class:`DecodedHistory`'s parts, rows numbered on
    across parts; otherwise one pass. Either way the syncs are numbered in sync order
    (see :func:`in_sync_order`), whatever order they came in. Parts go ``n_jobs`` at a
    time in threads (see :func:`in_threads`). ``leave_out``: sync ids left out of a
    frame history, a part at a time (no second copy of its record texts). ``compact``:
    the features' string keys as categoricals (see :func:`_compact_keys`), a part at a
    time. ``modelled``: the measures models see only (``build_features``' ``rule_measures``
    off).
    """

    def kept(frame: pl.DataFrame) -> pl.DataFrame:
        if leave_out is None:
            return frame
        return frame.filter(~pl.col("sync_id").is_in(leave_out.implode()))

    def frames(
        part: Iterable[Mapping[str, Any]] | pl.DataFrame | Callable[[], pl.DataFrame],
    ) -> tuple[pl.DataFrame, ...]:
        if callable(part):  # a DecodedHistory's part, read in this thread
            part = part()
        syncs, features = build_features(*_prepare_history(kept(part)), rule_measures=not modelled)
        return syncs, _compact_keys(features) if compact else features

    if isinstance(history, DecodedHistory):
        pieces: list = history.readers()
    elif isinstance(history, pl.DataFrame):
        pieces = _connector_slices(history)
    else:
        pieces = [history]
    if len(pieces) == 1:
        return frames(pieces[0])
    parts = in_threads(frames, pieces, n_jobs)
    # Rows numbered on from the syncs the parts before kept.
    firsts = np.r_[0, np.cumsum([part[0].height for part in parts])[:-1]]
    renumbered = [
        tuple(f.with_columns((pl.col("row") + int(lo)).cast(pl.UInt32)) for f in part)
        for part, lo in zip(parts, firsts, strict=True)
    ]
    return tuple(pl.concat(part) for part in zip(*renumbered, strict=True))


def _prepare_history(
    history: Iterable[Mapping[str, Any]] | pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`prepare` of history put in sync order (see :func:`in_sync_order`)."""
    return prepare(in_sync_order(to_struct_frame(history)))


# The long feature frame's string keys: a fleet's few thousand distinct values, repeated
# on every (sync, measure) row (15 million at 1,000 connectors).
_KEY_COLUMNS = ("connector_id", "connector_kind", "measure", "kind", "resource")


def _compact_keys(features: pl.DataFrame) -> pl.DataFrame:
    """``features`` with its string keys as categoricals: 4 bytes a row each instead of a
    16-byte view plus, for ids and measures longer than 12 bytes, their bytes again. The
    fit holds the whole history's frame; what reads it a part at a time gets strings
    back (:func:`as_strings`), so everything it computes is as from strings (and
    categoricals order, compare and group by their strings)."""
    return features.with_columns(pl.col(c).cast(pl.Categorical) for c in _KEY_COLUMNS)


def as_strings(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with its categorical columns as strings again (see :func:`_compact_keys`)."""
    return frame.with_columns(pl.col(pl.Categorical).cast(pl.String))
