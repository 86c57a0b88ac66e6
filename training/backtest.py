"""Backtest: fit on history, score a later window in time order, measure quality.

The quality table compares syncguard with the fixed-threshold safeguards products ship
and an Elementary-style 3-sigma z-score, all on the same test syncs:

* episode recall: a fault episode is caught when any of its syncs is paused;
* first-sync recall: the episode's first sync is paused;
* false pauses per 1,000 normal syncs; the first normal sync after a fault episode (the
  data coming back) counts neither way, nor do ``ambiguous`` syncs;
* recall per fault class;
* calibration: the realised false-pause rate of normal syncs against the rate the budget
  allows (``calibration_ratio`` = realised / budgeted), and the rate at which they breach
  the model cutoff (``breach_ratio``): a breach where only the transport moved is a
  review, not a pause (:mod:`detector.review`), so breaches can outnumber false pauses.
  A budget of one false pause per connector per year expects only a handful in a
  backtest window, so the ratio alone is mostly noise: the table also gives the count
  the budget expects (``budgeted_pauses``) and ``calibration_p``, the two-sided Poisson
  probability that a model calibrated exactly would realise a count this far from it;
* the calibration curve: how many normal syncs have a tail probability below 1, 3, 10, 30
  and 100 times their budgeted rate, against how many a calibrated model expects. Within
  ten times the budget lie ten times the syncs, so the curve tells a cutoff that is
  consistently cautious (or loose) from a handful of false pauses that fell short by luck.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy.special import pdtr, pdtrc

from detector.features import build_features
from detector.frame import UNMODELLED_MEASURES, is_stat
from detector.history import HISTORY_CHUNK_SYNCS as _CHUNK_SYNCS  # fitting's parts
from detector.history import DecodedHistory, connector_parts, prepare
from detector.model import FleetModel
from detector.next_state import next_state
from detector.parallel import in_threads

__all__ = [
    "BacktestReport",
    "run_backtest",
    "fixed_threshold_decisions",
    "evaluate",
    "format_table",
    "poisson_two_sided_p",
    "budget_counts",
    "calibration_curve",
    "CURVE_MULTIPLES",
]

#: Multiples of each sync's budgeted false-pause rate at which the calibration curve is read.
CURVE_MULTIPLES = (1, 3, 10, 30, 100)


@dataclass
class BacktestReport:
    """Decisions of every method and, with labels, their quality."""

    decisions: pl.DataFrame  # syncguard: sync_id, decision, score, cutoff, tail_probability, ...
    reasons: pl.DataFrame
    rule_hits: pl.DataFrame  # sync_id, rule, detail: the deterministic rules that fired
    baselines: dict[str, pl.DataFrame]  # name -> sync_id, decision
    quality: pl.DataFrame | None = None  # one row per method
    per_class: pl.DataFrame | None = None  # method x class recall
    calibration: dict[str, float] = field(default_factory=dict)
    # The same apart for syncs judged while their connector was already paused (against
    # the sync before; ``paused``) and while not, with their false pauses.
    calibration_by_mode: pl.DataFrame | None = None
    calibration_curve: pl.DataFrame | None = None  # see calibration_curve
    timings: dict[str, float] = field(default_factory=dict)


def _labels_frame(labels: Iterable[Mapping[str, Any]] | pl.DataFrame) -> pl.DataFrame:
    frame = (
        labels
        if isinstance(labels, pl.DataFrame)
        else pl.from_dicts(list(labels), infer_schema_length=None)
    )
    return frame.select(
        "sync_id",
        "connector_id",
        "label",
        pl.col("class").cast(pl.String),
        pl.col("episode").cast(pl.String),
    )


def _labelled(labels: pl.DataFrame, syncs: pl.DataFrame) -> pl.DataFrame:
    """Labels in time order per connector, with the recovery sync after a fault marked."""
    return (
        syncs.select("sync_id", "connector_id", "started_at")
        .join(labels.drop("connector_id"), on="sync_id", how="inner")
        .sort("connector_id", "started_at")
        .with_columns(
            (pl.col("label").shift(1).over("connector_id") == "anomaly")
            .fill_null(False)
            .alias("after_fault")
        )
    )


def _scorable_normal(labels: pl.DataFrame, syncs: pl.DataFrame) -> pl.DataFrame:
    """Normal syncs that count: not the first one after a fault, when the data comes back."""
    return (
        _labelled(labels, syncs)
        .filter((pl.col("label") == "normal") & ~pl.col("after_fault"))
        .select("sync_id")
    )


def evaluate(
    decisions: pl.DataFrame, labels: pl.DataFrame, syncs: pl.DataFrame
) -> tuple[dict[str, float], pl.DataFrame]:
    """Quality of one method's ``decisions`` (sync_id, decision) against labels.

    ``syncs`` gives ``sync_id, connector_id, started_at`` for time order.
    """
    frame = (
        _labelled(labels, syncs)
        .join(
            decisions.select("sync_id", "decision"), on="sync_id", how="left", maintain_order="left"
        )
        .with_columns((pl.col("decision") == "pause").fill_null(False).alias("paused"))
    )
    anomalies = frame.filter(pl.col("label") == "anomaly")
    episodes = anomalies.group_by("episode", "class").agg(
        pl.col("paused").any().alias("caught"), pl.col("paused").first().alias("first_caught")
    )
    normal = frame.filter((pl.col("label") == "normal") & ~pl.col("after_fault"))
    per_class = (
        episodes.group_by("class")
        .agg(pl.len().alias("episodes"), pl.col("caught").mean().alias("recall"))
        .sort("class")
    )
    n_normal = max(normal.height, 1)
    metrics = {
        "episodes": float(episodes.height),
        "episode_recall": float(episodes["caught"].mean() or 0.0)
        if episodes.height
        else float("nan"),
        "first_sync_recall": float(episodes["first_caught"].mean() or 0.0)
        if episodes.height
        else float("nan"),
        "normal_syncs": float(normal.height),
        "false_pauses": float(normal["paused"].sum()),
        "false_pauses_per_1000": 1000.0 * float(normal["paused"].sum()) / n_normal,
        "min_class_recall": float(per_class["recall"].min()) if per_class.height else float("nan"),
    }
    return metrics, per_class


def fixed_threshold_decisions(
    history: pl.DataFrame | Iterable[Mapping[str, Any]],
    test: pl.DataFrame | Iterable[Mapping[str, Any]],
) -> dict[str, pl.DataFrame]:
    """Decisions of the fixed safeguards products ship, on the test syncs.

    Okta: more than 20% of an app's users removed (apps over 100 users); Entra: 500 or
    more deletes in one sync; ConductorOne: a resource type's count halves; SailPoint:
    more than 10% of a resource type removed; Elementary-style: any measure more than
    3 standard deviations from its trailing 14-day mean.
    """
    return _fixed_thresholds(*_joined_features(history, test))


def _safeguards_and_state(
    history: pl.DataFrame | list[Mapping[str, Any]] | DecodedHistory,
    test: pl.DataFrame | list[Mapping[str, Any]],
    test_order: pl.DataFrame,
    n_jobs: int = 1,
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, pl.DataFrame]:
    """The safeguards' decisions on ``test`` (in ``test_order``'s sync order) and the
    state at the end of history, as :meth:`FleetModel.initial_state` gives it.

    Both come from the features of history then test, built once. A sync's features
    depend on its own connector's syncs only, so frames of more than ``_CHUNK_SYNCS``
    history syncs go a part of whole connectors at a time (``n_jobs`` parts at once, in
    threads; merged in part order): in one pass, a large fleet's whole history held
    every record's fields and the features' joins at once (the peak of a
    1,000-connector backtest). A :class:`DecodedHistory` goes in its own parts.
    """
    parts = [(history, test)]
    if isinstance(history, DecodedHistory):
        part_of = pl.concat(
            [
                p.select(pl.col("connector_id").unique(), pl.lit(k, pl.Int64).alias("part"))
                for k, p in enumerate(history.parts)
            ]
        )
        # Connectors new in the window go with the first part.
        test_part = test.join(part_of, on="connector_id", how="left")["part"].fill_null(0)
        parts = [
            (read, test.filter(test_part == k)) for k, read in enumerate(history.readers())
        ]
    elif (
        isinstance(history, pl.DataFrame)
        and isinstance(test, pl.DataFrame)
        and history.height > _CHUNK_SYNCS
    ):
        part_of = connector_parts(history, _CHUNK_SYNCS).select("connector_id", "part")
        # Connectors new in the window go with the first part.
        test_part = test.join(part_of, on="connector_id", how="left")["part"].fill_null(0)
        history_part = history.join(part_of, on="connector_id", how="left")["part"]
        parts = [
            (history.filter(history_part == k), test.filter(test_part == k))
            for k in part_of["part"].unique().sort()  # a connector may span whole chunks
        ]
    baselines: dict[str, list[pl.DataFrame]] = {}
    states, facts = [], []
    for part_rules, state, fact in in_threads(_part_safeguards_and_state, parts, n_jobs):
        for name, decisions in part_rules.items():
            baselines.setdefault(name, []).append(decisions)
        states.append(state)
        facts.append(fact)
    order = test_order.select("sync_id")
    return (
        {
            name: order.join(pl.concat(frames), on="sync_id", how="left", maintain_order="left")
            for name, frames in baselines.items()
        },
        pl.concat(states).sort("connector_id", "measure"),
        pl.concat(facts).sort("connector_id"),
    )


def _part_safeguards_and_state(
    part: tuple[
        pl.DataFrame | list[Mapping[str, Any]] | Callable[[], pl.DataFrame],
        pl.DataFrame | list[Mapping[str, Any]],
    ],
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, pl.DataFrame]:
    """The safeguards' decisions on one part's test syncs (none when it has none) and
    the state and facts at the end of its history (see :func:`_safeguards_and_state`)."""
    part_history, part_test = part
    if callable(part_history):  # a DecodedHistory's part, read in this thread
        part_history = part_history()
    rules = {}
    if len(part_test):
        syncs, feats, offset = _joined_features(part_history, part_test)
        rules = _fixed_thresholds(syncs, feats, offset)
    else:  # a part whose connectors sent nothing in the window
        syncs, feats = build_features(*prepare(part_history))
        offset = syncs.height
    in_history = pl.col("row") < offset
    state, fact = next_state(syncs.filter(in_history), feats.filter(in_history), None, None)
    return rules, state, fact


def _joined_features(
    history: pl.DataFrame | Iterable[Mapping[str, Any]],
    test: pl.DataFrame | Iterable[Mapping[str, Any]],
) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Syncs and features of history then test (test rows numbered from ``offset``).

    A sync's features depend on earlier syncs only, so the history rows are what history
    alone gives: the backtest builds them once for its start state and the safeguards.
    """
    h_syncs, h_measures = prepare(history)
    t_syncs, t_measures = prepare(test)
    offset = h_syncs.height
    syncs = pl.concat([h_syncs, t_syncs.with_columns(pl.col("row") + offset)])
    measures = pl.concat([h_measures, t_measures.with_columns(pl.col("row") + offset)])
    syncs, feats = build_features(syncs, measures)
    return syncs, feats, offset


def _fixed_thresholds(
    syncs: pl.DataFrame, feats: pl.DataFrame, offset: int
) -> dict[str, pl.DataFrame]:
    """:func:`fixed_threshold_decisions` on features built by :func:`_joined_features`."""
    is_test = pl.col("row") >= offset
    counts = feats.filter(pl.col("kind") == "count").select(
        "row", "resource", pl.col("value").alias("count"), pl.col("reference").alias("prev")
    )
    removed = feats.filter(is_stat("removed")).select(
        "row", "resource", pl.col("value").alias("removed")
    )
    per_type = counts.join(removed, on=["row", "resource"], how="left").with_columns(
        pl.max_horizontal(
            pl.col("removed").fill_null(0.0), (pl.col("prev") - pl.col("count")).fill_null(0.0)
        ).alias("lost")
    )
    user_like = pl.col("resource").is_in(["user", "users", "worker", "account", "member"])
    rules = {
        "okta_20pct_users": per_type.filter(
            user_like & (pl.col("prev") > 100) & (pl.col("lost") > 0.2 * pl.col("prev"))
        ),
        "entra_500_deletes": per_type.group_by("row")
        .agg(pl.col("lost").sum())
        .filter(pl.col("lost") >= 500),
        "conductorone_halves": per_type.filter(
            (pl.col("prev") > 0) & (pl.col("count") <= 0.5 * pl.col("prev"))
        ),
        "sailpoint_10pct_removed": per_type.filter(
            (pl.col("prev") > 0) & (pl.col("lost") > 0.1 * pl.col("prev"))
        ),
    }
    # Elementary-style: trailing 14-day mean and standard deviation per measure.
    z = (
        feats.filter(~pl.col("measure").is_in(UNMODELLED_MEASURES))
        .join(syncs.select("row", "started_at"), on="row", how="left", suffix="_s")
        .sort("connector_id", "measure", "started_at")
        .with_columns(
            pl.col("value")
            .rolling_mean_by("started_at", window_size="14d", closed="left")
            .over("connector_id", "measure")
            .alias("m"),
            pl.col("value")
            .rolling_std_by("started_at", window_size="14d", closed="left")
            .over("connector_id", "measure")
            .alias("s"),
        )
        .filter((pl.col("s") > 0) & ((pl.col("value") - pl.col("m")).abs() > 3 * pl.col("s")))
    )
    rules["zscore_3sigma_14d"] = z
    out = {}
    test_rows = syncs.filter(is_test).select("row", "sync_id")
    for name, hits in rules.items():
        hit_rows = hits.select("row").unique()
        out[name] = test_rows.join(
            hit_rows.with_columns(pl.lit("pause").alias("decision")), on="row", how="left"
        ).select("sync_id", pl.col("decision").fill_null("proceed"))
    return out


def run_backtest(
    history: Iterable[Mapping[str, Any]] | pl.DataFrame | DecodedHistory,
    test: Iterable[Mapping[str, Any]] | pl.DataFrame,
    *,
    labels: Iterable[Mapping[str, Any]] | pl.DataFrame | None = None,
    model: FleetModel | None = None,
    progress=None,
) -> BacktestReport:
    """Fit on ``history`` (faults labelled in it are left out), score ``test`` in time order.

    Each test sync sees only what came before it: the model is fitted on history only, and
    the test window is scored as one batch in time order, which gives the same decisions
    as scoring it one sync at a time.
    """
    if not isinstance(history, pl.DataFrame | DecodedHistory):
        history = list(history)
    test = list(test) if not isinstance(test, pl.DataFrame) else test
    label_frame = _labels_frame(labels) if labels is not None else None
    fit_on = history
    if label_frame is not None and isinstance(history, list):
        faulty = set(label_frame.filter(pl.col("label") != "normal")["sync_id"].to_list())
        fit_on = [r for r in history if r["sync_id"] not in faulty]
    model = model or FleetModel()
    timings = {}
    t0 = time.perf_counter()
    model.fit(fit_on, progress=progress)
    timings["fit_s"] = time.perf_counter() - t0
    if progress is not None:
        progress("scoring the test window")
    t_syncs = prepare(test)[0]
    # The state at the end of history from the features the safeguards need anyway.
    baselines, state, facts = _safeguards_and_state(history, test, t_syncs, model.n_jobs)
    t0 = time.perf_counter()
    # In shards of connectors, model.n_jobs at once: the one-pass result (see score).
    scored = model.score(test, state=state, facts=facts, n_jobs=model.n_jobs)
    timings["score_s"] = time.perf_counter() - t0
    timings["test_syncs"] = float(scored.results.height)
    report = BacktestReport(
        decisions=scored.results,
        reasons=scored.reasons,
        rule_hits=scored.rule_hits,
        baselines=baselines,
        timings=timings,
    )
    breach = scored.results.with_columns(
        (pl.col("score") > pl.col("cutoff")).alias("breach"),
        (10 ** (-pl.col("cutoff"))).alias("alpha"),
    )
    if label_frame is not None:
        rows, classes = [], []
        methods = {"syncguard": scored.results, **baselines}
        for name, decisions in methods.items():
            metrics, per_class = evaluate(decisions, label_frame, t_syncs)
            rows.append({"method": name, **metrics})
            classes.append(per_class.with_columns(pl.lit(name).alias("method")))
        report.quality = pl.DataFrame(rows)
        report.per_class = (
            pl.concat(classes).pivot("method", index="class", values="recall").sort("class")
        )
        normal = breach.join(_scorable_normal(label_frame, t_syncs), on="sync_id")
    else:
        normal = breach
    overall = _calibration_table(normal).row(0, named=True)
    report.calibration = {
        key: overall[key]
        for key in (
            "budgeted_rate",
            "realised_rate",
            "calibration_ratio",
            "breach_rate",
            "breach_ratio",
            "normal_syncs",
            "false_pauses",
            "budgeted_pauses",
            "calibration_p",
        )
    }
    report.calibration_by_mode = _calibration_table(normal, "paused")
    report.calibration_curve = calibration_curve(normal)
    return report


def calibration_curve(
    normal: pl.DataFrame, multiples: tuple[float, ...] = CURVE_MULTIPLES
) -> pl.DataFrame:
    """How many ``normal`` syncs have a tail probability below ``m`` times their budgeted
    rate (``alpha``), against the count a calibrated model expects (the sum of ``m *
    alpha``, each at most 1), for each multiple ``m``: all syncs together and apart for
    those judged while their connector was already paused (``paused``).

    Returns one row per multiple: ``multiple``, ``observed``, ``expected``, ``ratio``,
    ``p`` (two-sided Poisson, as :func:`poisson_two_sided_p`) and ``ratio_not_paused``,
    ``ratio_paused``. At ``m = 1`` the count is the model's breaches of its cutoff (rule
    pauses aside); further out it rests on many more syncs than the false pauses do.

    >>> normal = pl.DataFrame({"tail_probability": [0.001, 0.02, 0.5, 0.9],
    ...                        "alpha": [0.01] * 4, "paused": [False, True, False, False]})
    >>> calibration_curve(normal, (1, 3))["observed"].to_list()
    [1, 2]
    """
    cells = normal.select("tail_probability", "alpha", "paused").join(
        pl.DataFrame({"multiple": list(multiples)}), how="cross"
    )
    by_mode = cells.group_by("multiple", "paused").agg(
        (pl.col("tail_probability") < pl.col("multiple") * pl.col("alpha")).sum().alias("observed"),
        (pl.col("multiple") * pl.col("alpha")).clip(upper_bound=1.0).sum().alias("expected"),
    )
    ratio = (pl.col("observed") / pl.col("expected")).fill_nan(None)
    # All syncs: the modes' counts summed (one pass over the syncs for both).
    curve = (
        by_mode.group_by("multiple")
        .agg(pl.col("observed", "expected").sum())
        .with_columns(ratio.alias("ratio"))
        .sort("multiple")
    )
    curve = curve.with_columns(
        pl.Series(
            "p", poisson_two_sided_p(curve["observed"].to_numpy(), curve["expected"].to_numpy())
        )
    )
    for paused, name in ((False, "ratio_not_paused"), (True, "ratio_paused")):
        mode = by_mode.filter(pl.col("paused") == paused).select("multiple", ratio.alias(name))
        curve = curve.join(mode, on="multiple", how="left")  # null: no sync in that mode
    return curve


def _calibration_table(normal: pl.DataFrame, *by: str) -> pl.DataFrame:
    """Budgeted and realised false-pause rates of ``normal`` syncs (``alpha``, ``breach``
    and ``decision`` columns), their ratio, the false pauses, and the rate and ratio of
    breaches of the model cutoff (pauses and reviews): one row, or one per ``by``."""
    paused = pl.col("decision") == "pause"
    rates = [
        pl.len().cast(pl.Float64).alias("normal_syncs"),
        paused.sum().alias("false_pauses"),
        pl.col("alpha").mean().fill_null(0.0).alias("budgeted_rate"),
        pl.col("alpha").sum().alias("budgeted_pauses"),
        paused.mean().fill_null(0.0).alias("realised_rate"),
        pl.col("breach").mean().fill_null(0.0).alias("breach_rate"),
    ]
    table = normal.group_by(by).agg(rates).sort(by) if by else normal.select(rates)

    def over_budget(rate: str) -> pl.Expr:
        return (
            pl.when(pl.col("budgeted_rate") > 0)
            .then(pl.col(rate) / pl.col("budgeted_rate"))
            .otherwise(float("nan"))
        )

    table = table.with_columns(
        over_budget("realised_rate").alias("calibration_ratio"),
        over_budget("breach_rate").alias("breach_ratio"),
    )
    p = poisson_two_sided_p(table["false_pauses"].to_numpy(), table["budgeted_pauses"].to_numpy())
    return table.with_columns(pl.Series("calibration_p", p))


def budget_counts(false_pauses: float, budgeted: float) -> str:
    """The calibration's counts in words, as the report, ``syncguard train`` and the
    detection benchmark print them.

    >>> budget_counts(4, 9.26)
    '4 false pauses where the budget expects 9.3'
    """
    return f"{false_pauses:.0f} false pauses where the budget expects {budgeted:.1f}"


def poisson_two_sided_p(observed: Any, expected: Any) -> Any:
    """Two-sided probability that a Poisson count with mean ``expected`` lands at least as
    far out as ``observed`` on its side (twice the smaller tail, at most 1).

    >>> round(float(poisson_two_sided_p(4, 9.3)), 3)
    0.091
    >>> float(poisson_two_sided_p(0, 0.4))
    1.0
    """
    observed = np.asarray(observed, dtype=float)
    expected = np.asarray(expected, dtype=float)
    at_most = pdtr(observed, expected)
    at_least = np.where(observed > 0, pdtrc(observed - 1, expected), 1.0)
    return np.minimum(1.0, 2.0 * np.minimum(at_most, at_least))


def format_table(report: BacktestReport) -> str:
    """The quality, per-class and calibration tables as plain text."""
    lines = []
    with pl.Config(
        tbl_rows=100,
        tbl_cols=20,
        tbl_width_chars=200,
        float_precision=3,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
    ):
        if report.quality is not None:
            lines += [
                "Quality (test window)",
                str(
                    report.quality.select(
                        "method",
                        "episodes",
                        "episode_recall",
                        "first_sync_recall",
                        "false_pauses",
                        "normal_syncs",
                        "false_pauses_per_1000",
                        "min_class_recall",
                    )
                ),
            ]
        if report.per_class is not None:
            lines += ["Episode recall per fault class", str(report.per_class)]
    c = report.calibration
    lines.append(
        "Calibration: budgeted false-pause rate {:.5f} per sync, realised {:.5f} "
        "(ratio {:.2f}) over {:d} normal syncs: {} (exact calibration lands this far out "
        "with p = {:.2f}); cutoff breached (pauses and reviews) at {:.5f} "
        "(ratio {:.2f})".format(
            c["budgeted_rate"],
            c["realised_rate"],
            c["calibration_ratio"],
            int(c["normal_syncs"]),
            budget_counts(c["false_pauses"], c["budgeted_pauses"]),
            c["calibration_p"],
            c["breach_rate"],
            c["breach_ratio"],
        )
    )
    if report.calibration_curve is not None:
        with pl.Config(
            tbl_rows=20, float_precision=2, tbl_hide_dataframe_shape=True,
            tbl_hide_column_data_types=True,
        ):
            lines += [
                "Calibration curve: normal syncs whose tail probability is below m x their "
                "budgeted rate (observed), against the count a calibrated model expects",
                str(report.calibration_curve),
            ]
    t = report.timings
    lines.append(
        f"Time: fit {t.get('fit_s', 0):.1f} s, score {t.get('score_s', 0):.1f} s "
        f"for {int(t.get('test_syncs', 0))} test syncs"
    )
    return "\n".join(lines)
