"""Polars frames as plain numpy arrays and back: no pickle, text columns coded.

A model file holds its fitted frames column by column, under ``<frame>/<column>`` keys,
with each frame's schema in its JSON config; reading them gives back the same frames.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

__all__ = ["frame_from_arrays", "frames_to_arrays"]

_DISTINCT, _CODES = "@distinct", "@codes"


def _text_codes(key: str, text: np.ndarray) -> dict[str, np.ndarray]:
    """A text column as its sorted distinct values and each row's code into them.

    A model's text columns are keys (connector, measure, kind) repeated over thousands of
    rows: as fixed-width text they were over half of a model file's bytes, inflated and
    turned into Python strings at every cold score; coded they are a few kilobytes.
    """
    distinct, codes = np.unique(text, return_inverse=True)
    smallest = np.min_scalar_type(max(len(distinct) - 1, 0))
    return {f"{key}{_DISTINCT}": distinct, f"{key}{_CODES}": codes.reshape(-1).astype(smallest)}


def frames_to_arrays(
    frames: Mapping[str, pl.DataFrame],
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, str]]]:
    """Every column of each frame as an array keyed ``<name>/<column>`` (text coded, see
    :func:`_text_codes`), and each frame's schema as text, for :func:`frame_from_arrays`."""
    arrays: dict[str, np.ndarray] = {}
    schemas = {}
    for name, frame in frames.items():
        schemas[name] = {c: str(t) for c, t in frame.schema.items()}
        for col in frame.columns:
            values = frame[col].to_numpy()
            if values.dtype == object:
                arrays.update(
                    _text_codes(f"{name}/{col}", frame[col].fill_null("").to_numpy().astype(str))
                )
            else:
                arrays[f"{name}/{col}"] = values
    return arrays, schemas


def frame_from_arrays(
    arrays: Mapping[str, np.ndarray],
    schemas: Mapping[str, Mapping[str, str]],
    name: str,
    older: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Frame ``name`` of :func:`frames_to_arrays`' ``arrays`` and ``schemas``; ``older``:
    what it is in a file written before it existed."""
    if older is not None and name not in schemas:
        return older
    schema = schemas[name]
    out = pl.DataFrame({c: _column(arrays, f"{name}/{c}") for c in schema})
    casts = {}
    for c, t in schema.items():
        if t.startswith("String"):
            casts[c] = pl.String
        elif t in ("Int16", "Int32", "Int64", "UInt32", "Float64", "Boolean"):
            casts[c] = getattr(pl, t)
    # numpy holds a missing float as NaN; a fitted model holds nulls (no NaN), and
    # scoring fills nulls: a NaN would pass through as a value.
    return out.cast(casts).with_columns(pl.col(pl.Float64).fill_nan(None))


def _column(arrays: Mapping[str, np.ndarray], key: str) -> pl.Series | np.ndarray:
    """Column ``key`` of a frame (see :func:`frames_to_arrays`)."""
    if f"{key}{_CODES}" in arrays:  # text as codes into its distinct values
        distinct = pl.Series(arrays[f"{key}{_DISTINCT}"].tolist(), dtype=pl.String)
        return distinct.gather(arrays[f"{key}{_CODES}"])
    values = arrays[key]  # a model file written before text was coded
    # Fixed-width numpy text goes through a list: polars reads numpy's "<U" arrays
    # several times slower, and model loading is part of every cold score.
    return pl.Series(values.tolist(), dtype=pl.String) if values.dtype.kind == "U" else values
