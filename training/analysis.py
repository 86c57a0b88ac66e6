"""Helpers for the analyst notebooks (``notebooks/``): small, public, tested.

The notebooks hold no logic of their own; what they need beyond ``detector`` and
``training`` lives here:

* :func:`pick_connector`, :func:`connector_decisions`, :func:`recent_pauses`: read the
  store's ``scores`` and ``pauses`` tables (store migration 2);
* :func:`metric_bands`: each metric of one connector over time with the seasonal
  expected value and expected range a fitted :class:`FleetModel` holds for it;
* :func:`backtest_split`, :func:`write_budget_policy`, :func:`calibration_curve`: set up
  a backtest like ``syncguard train`` does and measure calibration at several budgets;
* :func:`log_challenger`, :func:`config_from_params`: log a notebook backtest to
  MLflow and register its model as a challenger (the champion alias does not move).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from detector.features import build_features
from detector.history import prepare
from detector.home import Home, resolve_home
from detector.model import FleetModel
from detector.policy import CRITICALITIES
from detector.store import Store
from training import dataset
from training.backtest import BacktestReport, _scorable_normal
from training.pipeline import TrainConfig, backtest_metrics, fit_final, save_fleet_model

__all__ = [
    "pick_connector",
    "connector_decisions",
    "recent_pauses",
    "metric_bands",
    "backtest_split",
    "write_budget_policy",
    "calibration_curve",
    "config_from_params",
    "log_challenger",
    "promote_version",
]


def _home(home: Home | str | os.PathLike[str] | None) -> Home:
    return home if isinstance(home, Home) else resolve_home(home)


def pick_connector(store: Store) -> str:
    """The connector with the most pauses (ties and no pauses: the most syncs).

    Raises
    ------
    ValueError
        The store holds no syncs.
    """
    row = store.conn.execute(
        """SELECT s.connector_id,
                  (SELECT COUNT(*) FROM pauses p WHERE p.connector_id = s.connector_id) AS n_p,
                  COUNT(*) AS n_s
           FROM syncs s GROUP BY s.connector_id ORDER BY n_p DESC, n_s DESC, s.connector_id
           LIMIT 1"""
    ).fetchone()
    if row is None:
        raise ValueError(f"the store {store.path} holds no syncs")
    return row[0]


def connector_decisions(store: Store, connector_id: str) -> pl.DataFrame:
    """Scored syncs of one connector, oldest first.

    Returns ``sync_id, started_at (UTC datetime), decision, severity, score, cutoff,
    tail_probability, cold_start, model_version``; empty when nothing was scored.
    """
    rows = store.conn.execute(
        """SELECT sync_id, started_ts, decision, severity, score, cutoff, tail_probability,
                  cold_start, model_version
           FROM scores WHERE connector_id = ? ORDER BY started_ts""",
        (connector_id,),
    ).fetchall()
    schema = {
        "sync_id": pl.String,
        "started_ts": pl.Float64,
        "decision": pl.String,
        "severity": pl.String,
        "score": pl.Float64,
        "cutoff": pl.Float64,
        "tail_probability": pl.Float64,
        "cold_start": pl.Int64,
        "model_version": pl.String,
    }
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    return frame.select(
        "sync_id",
        (pl.col("started_ts") * 1e6)
        .cast(pl.Int64)
        .cast(pl.Datetime("us", "UTC"))
        .alias("started_at"),
        *[c for c in schema if c not in ("sync_id", "started_ts")],
    )


def recent_pauses(
    store: Store, *, connector_id: str | None = None, limit: int = 10
) -> pl.DataFrame:
    """The most recent pauses, newest first, with their reasons as one readable string.

    Returns ``id, connector_id, opened_at, opened_sync_id, reason, reasons, open,
    closed_by, close_reason, false_positive``. ``reasons`` joins every reason's
    description (or rule and detail) with ``"; "``.
    """
    import json

    sql = (
        "SELECT id, connector_id, opened_at, opened_sync_id, reason, reasons, closed_at, "
        "closed_by, close_reason, false_positive FROM pauses"
    )
    args: tuple[Any, ...] = ()
    if connector_id is not None:
        sql += " WHERE connector_id = ?"
        args = (connector_id,)
    sql += " ORDER BY id DESC LIMIT ?"
    rows = []
    for r in store.conn.execute(sql, (*args, int(limit))).fetchall():
        try:
            items = json.loads(r[5] or "[]")
        except ValueError:
            items = []
        text = "; ".join(
            str(i.get("description") or " ".join(str(i.get(k, "")) for k in ("rule", "detail")))
            if isinstance(i, dict)
            else str(i)
            for i in items
        )
        rows.append(
            {
                "id": r[0],
                "connector_id": r[1],
                "opened_at": r[2],
                "opened_sync_id": r[3],
                "reason": r[4],
                "reasons": text,
                "open": r[6] is None,
                "closed_by": r[7],
                "close_reason": r[8],
                "false_positive": bool(r[9]),
            }
        )
    schema = {
        "id": pl.Int64,
        "connector_id": pl.String,
        "opened_at": pl.String,
        "opened_sync_id": pl.String,
        "reason": pl.String,
        "reasons": pl.String,
        "open": pl.Boolean,
        "closed_by": pl.String,
        "close_reason": pl.String,
        "false_positive": pl.Boolean,
    }
    return pl.DataFrame(rows, schema=schema)


def metric_bands(model: FleetModel, history: pl.DataFrame, connector_id: str) -> pl.DataFrame:
    """Each metric of one connector over time, with its seasonal expected value and range.

    Every sync is judged against the learned seasonal level (as an unpaused sync is);
    a connector without a model of its own uses the pooled baseline of its kind.

    Parameters
    ----------
    model : FleetModel
        Fitted (e.g. ``FleetModel().fit(...)`` or the champion via
        ``FleetModel.from_arrays``).
    history : pl.DataFrame
        Store history (``Store.history``); only ``connector_id``'s syncs are used.
    connector_id : str

    Returns
    -------
    pl.DataFrame
        ``sync_id, started_at, measure, kind, observed, expected, range_lo, range_hi, z``
        sorted by measure and time; ``range_lo``/``range_hi`` bound the central 99.7%.
        Empty when the connector has no syncs in ``history``.
    """
    own = history.filter(pl.col("connector_id") == connector_id)
    out_cols = [
        "sync_id",
        "started_at",
        "measure",
        "kind",
        "observed",
        "expected",
        "range_lo",
        "range_hi",
        "z",
    ]
    if own.height == 0:
        return pl.DataFrame(schema={c: pl.Float64 for c in out_cols}).select(out_cols)
    syncs, measures = prepare(own)
    syncs, features = build_features(syncs, measures)
    known = model.intervals_.filter(pl.col("n_syncs") >= model.min_history)["connector_id"]
    intervals = model.intervals_.select("connector_id", "interval_s")
    if connector_id in set(known.to_list()):
        baseline = model.baseline_
        resid = baseline.residuals(features, intervals, against_reference=pl.lit(False))
    else:
        baseline = model.pooled_baseline_
        kinds = set(baseline.series_["connector_kind"].unique().to_list())
        features = features.with_columns(
            pl.when(pl.col("connector_kind").is_in(list(kinds)))
            .then(pl.col("connector_kind"))
            .otherwise(pl.lit("*"))
            .alias("connector_kind")
        )
        resid = baseline.residuals(features, intervals, against_reference=pl.lit(True))
    resid = baseline.expected_raw(resid.filter(pl.col("scale").is_not_null()))
    return (
        resid.join(syncs.select("row", "sync_id", pl.col("started_at").alias("_t")), on="row")
        .select(
            "sync_id",
            pl.col("_t").alias("started_at"),
            "measure",
            "kind",
            pl.col("value").alias("observed"),
            pl.col("expected_raw").alias("expected"),
            "range_lo",
            "range_hi",
            "z",
        )
        .sort("measure", "started_at")
    )


def backtest_split(
    home: Home | str | os.PathLike[str] | None,
    *,
    holdout_days: float = dataset.DEFAULT_HOLDOUT_DAYS,
    labels_path: str | os.PathLike[str] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None, pl.DataFrame]:
    """The data ``syncguard train`` backtests on: (clean history, window, labels, frame).

    ``labels_path`` defaults to ``<home>/demo/labels.jsonl`` when that file exists;
    labels in the store win over the file (see :func:`training.dataset.backtest_labels`).
    History and window carry :data:`training.dataset.HISTORY_COLUMNS`, ready for
    :func:`training.backtest.run_backtest`; ``frame`` is the whole training frame.
    """
    h = _home(home)
    if labels_path is None and (h.root / "demo" / "labels.jsonl").is_file():
        labels_path = h.root / "demo" / "labels.jsonl"
    file_labels = dataset.read_labels_file(labels_path) if labels_path is not None else None
    with Store.open(h.store_path) as store:
        frame = dataset.load_training_data(store.conn).frame
    if file_labels is not None:
        frame = dataset.exclude_labelled(frame, file_labels)
    before, window, _cutoff = dataset.split_holdout(frame, holdout_days=holdout_days)
    labels = dataset.backtest_labels(window, file_labels)
    history = dataset.fit_history(before)
    return history, window.select(dataset.HISTORY_COLUMNS), labels, frame


def write_budget_policy(path: str | os.PathLike[str], false_pauses: float, days: float) -> Path:
    """Write a policy TOML giving every criticality a budget of ``false_pauses`` per ``days``.

    Load it with :func:`detector.policy.load_policy` (severities and actions keep their
    built-in values). Returns the path.
    """
    path = Path(path)
    lines = []
    for name in CRITICALITIES:
        lines += [
            f"[criticality.{name}]",
            f"budget_false_pauses = {float(false_pauses)!r}",
            f"budget_days = {float(days)!r}",
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def calibration_curve(
    report: BacktestReport,
    labels: pl.DataFrame | None,
    test: pl.DataFrame,
    factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
) -> pl.DataFrame:
    """Budgeted false-pause rate against the rate of breaches of the model cutoff, if
    every budget were ``factor`` times larger.

    The tail probabilities of a backtest do not depend on the budget; only the cutoff
    does (``alpha`` is proportional to the budget, clipped to [1e-7, 0.5]). So one
    backtest gives the whole curve: for each factor, the mean budgeted rate and the
    share of scorable normal syncs (all syncs without labels) whose tail probability
    falls below it. Breaches are pauses and reviews alike (whether a breach would be a
    review needs its residuals); factor 1 reproduces ``report.calibration``'s
    ``breach_rate``, an upper bound on its false-pause rate.

    Returns ``factor, budgeted_rate, breach_rate, breach_ratio, normal_syncs``.
    """
    frame = report.decisions.select("sync_id", "tail_probability", "cutoff").drop_nulls()
    if labels is not None:
        t_syncs = prepare(test)[0]
        frame = frame.join(_scorable_normal(labels, t_syncs), on="sync_id")
    alpha = 10 ** (-frame["cutoff"].to_numpy())
    p = frame["tail_probability"].to_numpy()
    rows = []
    for f in factors:
        a = np.clip(alpha * f, 1e-7, 0.5)
        budget = float(a.mean()) if len(a) else float("nan")
        realised = float((p < a).mean()) if len(a) else float("nan")
        rows.append(
            {
                "factor": float(f),
                "budgeted_rate": budget,
                "breach_rate": realised,
                "breach_ratio": realised / budget if budget else float("nan"),
                "normal_syncs": len(a),
            }
        )
    return pl.DataFrame(rows)


def config_from_params(params: dict[str, str] | None) -> TrainConfig:
    """A :class:`TrainConfig` from an MLflow run's params (unknown keys ignored)."""
    params = params or {}
    out: dict[str, Any] = {}
    for f in fields(TrainConfig):
        if f.name not in params:
            continue
        raw = params[f.name]
        if f.name == "policy_path":
            out[f.name] = None if raw in ("built-in", "None", "") else raw
        elif f.name == "baseline_method":
            out[f.name] = raw
        elif f.type in ("float", float):  # holdout_days, loss_weight
            out[f.name] = float(raw)
        elif f.type in ("bool", bool):  # screen_history: MLflow keeps "True" / "False"
            out[f.name] = raw == "True"
        else:
            out[f.name] = int(float(raw))
    return TrainConfig(**out)


def log_challenger(
    home: Home | str | os.PathLike[str] | None,
    config: TrainConfig,
    report: BacktestReport,
    frame: pl.DataFrame,
    *,
    run_name: str | None = None,
    figures: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Log a backtest to MLflow and register its model as a challenger (never champion).

    Fits the final model on every clean sync of ``frame`` (as ``syncguard train``
    does, though it screens its history itself: ``train`` takes the screening of its
    own backtest, see :func:`training.pipeline.screened_by_backtest`), logs params,
    :func:`training.pipeline.backtest_metrics` and ``figures``
    (name -> matplotlib figure, under ``plots/``), and registers the version without
    moving the ``champion`` alias; promote it with :func:`training.register.promote`.

    Returns ``run_id, version, gate`` (the promotion gate's verdict against the
    champion, for information) and ``metrics``.
    """
    from training import register

    h = _home(home)
    h.ensure()
    metrics = backtest_metrics(report)
    name = run_name or "notebook-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tags = {"mlflow.runName": name, "syncguard.home": str(h.root), "syncguard.role": "challenger"}
    with (
        tempfile.TemporaryDirectory(prefix=".nb-", dir=h.root) as tmp,
        register.start_training_run(h, params=config.params(), tags=tags) as run,
    ):
        plots = Path(tmp) / "plots"
        plots.mkdir()
        for fig_name, fig in (figures or {}).items():
            fig.savefig(plots / f"{fig_name}.png", dpi=90)
        register.log_backtest(run, metrics, {"plots": plots} if figures else {})
        model_dir = save_fleet_model(
            fit_final(config, frame),
            Path(tmp) / "fleet-model",
            metrics=metrics,
            meta={"run_id": run.run_id, "train_params": config.params(), "source": "notebook"},
        )
        result = register.register_fleet_model(
            h, run.run_id, model_dir, metrics=metrics, promote=False
        )
    return {
        "run_id": run.run_id,
        "version": result.version,
        "gate": result.reason,
        "metrics": metrics,
    }


def promote_version(
    home: Home | str | os.PathLike[str] | None, version: int, *, actor: str, reason: str
) -> dict[str, Any]:
    """Promote ``version`` to champion as ``syncguard models promote`` does.

    Calls :func:`training.register.promote`, refreshes the local champion copy scoring
    reads (:func:`detector.model_cache.refresh_champion`) and writes the audit log.
    Returns the promotion record plus ``cache`` (what happened to the local copy).
    """
    from detector.errors import ModelError
    from detector.model_cache import refresh_champion
    from training import register

    h = _home(home)
    result = register.promote(h, version, actor=actor, reason=reason)
    try:
        cache = f"scoring now uses the local copy in {refresh_champion(h)}"
    except ModelError as exc:
        cache = f"the local champion copy was not refreshed: {exc}"
    with Store.open(h.ensure().store_path) as store:
        store.audit(
            actor=result["actor"],
            action="promote",
            subject=f"{register.REGISTERED_MODEL} v{result['version']}",
            reason=result["reason"],
            details={
                "previous": result["previous"],
                "gate": result["gate"],
                "digest": result["digest"],
            },
        )
    return {**result, "cache": cache}
