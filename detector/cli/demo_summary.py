"""The demo's closing table: syncguard's pauses beside the fixed-threshold rules.

For the scored window, per connector: the faults the simulator injected (labelled syncs
and episodes), the syncs syncguard paused and the reason of its pause, and the syncs each
fixed safeguard products ship would have paused (Okta 20% of users, Entra 500 deletes,
ConductorOne count halves, SailPoint 10% removed, a 3-sigma z-score), on the same syncs.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from detector.cli.table import format_table

__all__ = ["split_by_time", "comparison", "render_comparison"]

_LABELS = {"sync_id": pl.String, "label": pl.String, "episode": pl.String}
_SHORT = {"okta_20pct_users": "okta 20%", "entra_500_deletes": "entra 500",
          "conductorone_halves": "c1 halves", "sailpoint_10pct_removed": "sailpt 10%",
          "zscore_3sigma_14d": "z 3-sigma"}


def split_by_time(syncs_path: Path, *, recent_days: float, history_path: Path,
                  recent_path: Path) -> tuple[int, int, datetime, datetime]:
    """Write the records that started in the last ``recent_days`` (at most the second half
    of the window) to ``recent_path`` and the rest to ``history_path`` (lines as they are).

    Returns
    -------
    (history count, recent count, cutoff, latest start): the scored window starts at the
    cutoff and ends with the latest start
    """
    lines = [line for line in syncs_path.read_text(encoding="utf-8").splitlines() if line]
    starts = pl.Series([json.loads(line)["started_at"] for line in lines]).str.to_datetime(
        time_zone="UTC")
    first, last = starts.min(), starts.max()
    cutoff = max(last - timedelta(days=recent_days), first + (last - first) / 2)  # type: ignore
    recent = (starts >= cutoff).to_list()
    history_path.write_text("".join(f"{x}\n" for x, r in zip(lines, recent, strict=True)
                                    if not r), encoding="utf-8")
    recent_path.write_text("".join(f"{x}\n" for x, r in zip(lines, recent, strict=True) if r),
                           encoding="utf-8")
    n_recent = sum(recent)
    return len(lines) - n_recent, n_recent, cutoff, last


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def comparison(history_path: Path, recent_path: Path, labels_path: Path | None,
               decisions: pl.DataFrame, pause_reasons: dict[str, str]
               ) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """One row per connector of the scored window.

    Parameters
    ----------
    history_path, recent_path : Path
        The records before the window (what the fixed rules' references come from) and in it.
    labels_path : Path or None
        The simulator's labels (``sync_id, label, episode``; faults are ``anomaly``).
    decisions : pl.DataFrame
        syncguard's ``sync_id, connector_id, decision`` for the window.
    pause_reasons : dict
        Connector -> the main reason of the pause syncguard opened in the window.

    Returns
    -------
    per_connector : pl.DataFrame
        ``connector, fault syncs, episodes, reason`` and, per method (syncguard and each
        fixed rule), the syncs it paused.
    quality : pl.DataFrame
        Per method: paused syncs, fault episodes caught (any of its syncs paused), normal
        syncs paused.
    episodes : int
        Fault episodes in the window.
    """
    from training.backtest import fixed_threshold_decisions  # the demo only

    history, recent = _records(history_path), _records(recent_path)
    methods = {"syncguard": decisions.select("sync_id", "decision")}
    methods.update(fixed_threshold_decisions(history, recent))
    paused = decisions.select("sync_id", "connector_id")
    for name, frame in methods.items():
        paused = paused.join(frame.select("sync_id", (pl.col("decision") == "pause")
                                          .alias(name)), on="sync_id", how="left")
    if labels_path is not None and labels_path.exists():
        labels = pl.read_ndjson(labels_path, schema=_LABELS).select(
            "sync_id", (pl.col("label") == "anomaly").alias("fault"),
            pl.when(pl.col("label") == "anomaly").then(pl.col("episode")).alias("episode"))
        paused = paused.join(labels, on="sync_id", how="left")
    else:
        paused = paused.with_columns(pl.lit(False).alias("fault"),
                                     pl.lit(None, dtype=pl.String).alias("episode"))
    per_connector = paused.group_by("connector_id").agg(
        pl.col("fault").sum().alias("fault syncs"),
        pl.col("episode").drop_nulls().n_unique().alias("episodes"),
        *[pl.col(name).sum() for name in methods],
    ).with_columns(
        pl.col("connector_id").replace_strict(pause_reasons, default="").alias("reason")
    ).sort("connector_id").rename({"connector_id": "connector"})
    quality = pl.DataFrame({
        "method": list(methods),
        "paused syncs": [int(paused[m].sum()) for m in methods],
        "fault episodes caught": [
            paused.filter(pl.col(m) & pl.col("episode").is_not_null())["episode"].n_unique()
            for m in methods],
        "normal syncs paused": [int(paused.filter(pl.col(m) & ~pl.col("fault").fill_null(False)
                                                  ).height) for m in methods],
    })
    return per_connector, quality, int(paused["episode"].drop_nulls().n_unique())


def render_comparison(per_connector: pl.DataFrame, quality: pl.DataFrame,
                      episodes: int) -> str:
    """Both tables as text; connectors with no fault and no pause at all are left out."""
    methods = quality["method"].to_list()
    counts = ["fault syncs", "episodes", *methods]
    active = per_connector.filter(pl.any_horizontal([pl.col(c) > 0 for c in counts]))
    order = ["connector", "fault syncs", "episodes", "syncguard", "reason", *methods[1:]]
    right = [i for i, c in enumerate(order) if c not in ("connector", "reason")]
    top = format_table([_SHORT.get(c, c) for c in order], active.select(order).rows(),
                       right=right)
    bottom = format_table(list(quality.columns), quality.rows(), right=(1, 2, 3))
    return (f"{top}\n\nthe same syncs, all methods ({episodes} fault episodes injected):\n"
            f"{bottom}")
