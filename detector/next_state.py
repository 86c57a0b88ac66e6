"""The scoring state a batch leaves for the next one.

Per connector and measure, the last value and the value at the last sync not paused (the
reference later syncs are judged against); per connector, its last success, last start
and whether it is paused. Connectors and measures the batch did not touch keep their
rows.
"""

from __future__ import annotations

import polars as pl

from detector.features import FACTS_SCHEMA, STATE_SCHEMA

__all__ = ["NEXT_STATE_COLUMNS", "next_state"]

# The feature columns next_state reads (all a scored batch keeps of its features for it).
NEXT_STATE_COLUMNS = ("row", "connector_id", "measure", "value", "started_at")


def next_state(syncs, features, state, facts, decided=None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per connector and measure: last value, and value at the last sync not paused."""
    rows = features.select(NEXT_STATE_COLUMNS)
    if decided is not None:
        held = decided.select("row", (pl.col("decision") == "pause").alias("held"))
        rows = rows.join(held, on="row", how="left")
    else:
        rows = rows.with_columns(pl.lit(False).alias("held"))
    # The latest value of each series, and the latest not held: the rows put in time order
    # once (a group keeps its rows' order), instead of two groupings sorting every group.
    kept = ~pl.col("held").fill_null(False)
    batch_state = (
        rows.sort("started_at", "row")
        .group_by("connector_id", "measure")
        .agg(pl.col("value").last(), pl.col("value").filter(kept).last().alias("ref_value"))
    )
    if state is not None and state.height:
        old = state.join(
            batch_state.select("connector_id", "measure"),
            on=["connector_id", "measure"],
            how="anti",
        )
        prev_ref = state.select("connector_id", "measure", pl.col("ref_value").alias("_old_ref"))
        batch_state = (
            batch_state.join(prev_ref, on=["connector_id", "measure"], how="left")
            .with_columns(pl.coalesce("ref_value", "_old_ref").alias("ref_value"))
            .drop("_old_ref")
        )
        batch_state = pl.concat(
            [
                old.select(list(STATE_SCHEMA)),
                batch_state.select(list(STATE_SCHEMA)).cast(STATE_SCHEMA),
            ]
        )
    new_state = (
        batch_state.select(list(STATE_SCHEMA)).cast(STATE_SCHEMA).sort("connector_id", "measure")
    )

    paused_now = (
        decided.group_by("connector_id").agg(
            ((pl.col("decision") == "pause") | pl.col("paused")).any().alias("_p")
        )
        if decided is not None
        else syncs.select("connector_id").unique().with_columns(pl.lit(False).alias("_p"))
    )
    batch_facts = (
        syncs.group_by("connector_id")
        .agg(
            pl.col("finished_at")
            .filter(pl.col("status") != "failed")
            .max()
            .alias("state_last_success"),
            pl.col("started_at").max().alias("state_last_start"),
        )
        .join(paused_now, on="connector_id", how="left")
    )
    if facts is not None and facts.height:
        batch_facts = batch_facts.join(
            facts, on="connector_id", how="left", suffix="_old"
        ).with_columns(
            pl.coalesce("state_last_success", "state_last_success_old").alias("state_last_success"),
            (pl.col("_p").fill_null(False) | pl.col("state_paused").fill_null(False)).alias("_p"),
        )
        untouched = facts.join(batch_facts.select("connector_id"), on="connector_id", how="anti")
    else:
        untouched = None
    batch_facts = batch_facts.select(
        "connector_id",
        "state_last_success",
        "state_last_start",
        pl.col("_p").fill_null(False).alias("state_paused"),
    ).cast(FACTS_SCHEMA)
    if untouched is not None and untouched.height:
        batch_facts = pl.concat(
            [untouched.select(list(FACTS_SCHEMA)).cast(FACTS_SCHEMA), batch_facts]
        )
    return new_state, batch_facts.sort("connector_id")
