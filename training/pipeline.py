"""``syncguard train``: read the store, backtest, fit the fleet, log to MLflow, register.

The pipeline, one step per function::

    store --(training.dataset)--> training frame (exclusions marked)
          --split at latest - holdout_days--> before | held-out window
    backtest: FleetModel fitted on the clean syncs *before* the window scores every sync
              in the window in time order (training.backtest.run_backtest)
    final:    FleetModel fitted on *all* clean syncs, window included
    model dir (detector.modelfile) + MLflow run (params, metrics, artifacts)
          --> registered version of ``syncguard-fleet``; ``champion`` moves only when the
              gate passes (training.register), or when forced

Honest evaluation: the registered model is the final fit, which has seen the window, so
its own score on the window would flatter it. The backtest metrics are those of the
same procedure (same parameters, same exclusions) fitted on the earlier history only
and judged on syncs it never saw: the usual "refit on everything after validation"
scheme, which slightly *under*-states the final model (it has more history).

Everything the run logs:

* params: the fitting configuration (the model's ``config.json``), the held-out
  window, the data counts and exclusions;
* metrics: the backtest quality (episode recall, false pauses per 1,000 normal syncs,
  recall per fault class, the fixed-threshold safeguards' figures under
  ``fixed.<rule>.``) where labels exist; the alert rate (pauses and reviews per 1,000
  syncs) and calibration (realised / budgeted false-pause rate) always; timings;
* artifacts: ``fleet-model/`` (the registered model directory), ``summary/connectors.csv``
  (one row per connector), ``plots/calibration.png``, ``backtest/`` (the quality table
  as text and CSV, recall per class, the calibration curve, every held-out decision as
  Parquet).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from detector.errors import ModelError, UsageError
from detector.frame import to_struct_frame
from detector.history import DecodedHistory
from detector.home import Home, resolve_home
from detector.model import FleetModel
from detector.modelfile import save_model_dir
from detector.policy import load_policy
from detector.store import Store
from training import allocator, dataset
from training.backtest import BacktestReport, format_table, run_backtest

__all__ = ["TrainConfig", "TrainResult", "TOTAL_STEPS", "train", "ui_command"]

FIT_PHASES = 6
"""Progress phases :meth:`FleetModel.fit` reports (features ... isolation forests), with
``screen_history`` (without it, one fewer: no "screening history")."""

TOTAL_STEPS = 1 + FIT_PHASES + 1 + (FIT_PHASES - 1) + 1 + 1
"""Progress calls :func:`train` makes: read, backtest fit, score, final fit (which takes
the backtest's screening: no "screening history" of its own), log, register."""

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """What ``syncguard train`` fits with; logged as MLflow params.

    Parameters
    ----------
    n_estimators, max_samples, min_history, baseline_method, random_state, loss_weight
        As in :class:`detector.model.FleetModel`.
    pooled_max_connectors : int, default=64
        Connectors each pooled cold-start model (per kind, and the fleet's) is fitted on
        at most, as in :class:`detector.model.FleetModel`: larger fleets are sampled.
    screen_history : bool, default=True
        Fit again without the history syncs the model's own held-out scores would
        pause, as in :class:`detector.model.FleetModel` (faults nobody labelled).
    n_jobs : int, default=2
        Threads the fit runs its independent parts in (``FleetModel(n_jobs=...)``; this
        machine has two cores).
    holdout_days : float, default=14
        The held-out window for the backtest: the latest ``holdout_days`` of history.
    policy_path : str, optional
        Connector policy TOML; the built-in policy when omitted.
    """

    n_estimators: int = 100
    max_samples: int = 256
    min_history: int = 30
    baseline_method: str = "profile"
    random_state: int = 0
    loss_weight: float = 2.0
    pooled_max_connectors: int = 64
    screen_history: bool = True
    n_jobs: int = 2
    holdout_days: float = dataset.DEFAULT_HOLDOUT_DAYS
    policy_path: str | None = None

    def total_steps(self) -> int:
        """Progress calls :func:`train` makes with this configuration."""
        return TOTAL_STEPS - (0 if self.screen_history else 1)

    def model(self) -> FleetModel:
        """A fresh, unfitted :class:`FleetModel` with these settings."""
        return FleetModel(
            n_estimators=self.n_estimators,
            max_samples=self.max_samples,
            min_history=self.min_history,
            baseline_method=self.baseline_method,
            random_state=self.random_state,
            loss_weight=self.loss_weight,
            n_jobs=self.n_jobs,
            policy=load_policy(self.policy_path),
            pooled_max_connectors=self.pooled_max_connectors,
            screen_history=self.screen_history,
        )

    def params(self) -> dict[str, Any]:
        """The configuration as MLflow params (``policy_path`` as ``"built-in"`` if unset)."""
        out = asdict(self)
        out["policy_path"] = self.policy_path or "built-in"
        return out


@dataclass
class TrainResult:
    """What one training run produced.

    Attributes
    ----------
    run_id, experiment_id, tracking_uri, artifact_uri : str
        Where the MLflow run is.
    version : int
        The registered version of ``syncguard-fleet``.
    promoted : bool
        Whether it now holds the ``champion`` alias.
    reason : str
        Why it was (not) promoted.
    metrics : dict of str to float
        Every metric logged (finite values only).
    data : dict
        Sync counts: total, clean, excluded by reason, held-out window.
    cache_note : str
        What happened to the local champion copy scoring uses.
    timings : dict of str to float
        Seconds per stage.
    """

    run_id: str
    experiment_id: str
    tracking_uri: str
    artifact_uri: str
    version: int
    promoted: bool
    reason: str
    metrics: dict[str, float]
    data: dict[str, Any]
    cache_note: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ui_command(self) -> str | None:
        """The command that opens the MLflow UI on this store (None for a server URI)."""
        return ui_command(self.tracking_uri)


def ui_command(tracking_uri: str) -> str | None:
    """``mlflow ui --backend-store-uri ...`` for a local store; None for an MLflow server."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    return f"mlflow ui --backend-store-uri '{tracking_uri}' --host 127.0.0.1 --port 5000"


# --- steps ---------------------------------------------------------------------------


def _read(home: Home, file_labels: pl.DataFrame | None) -> pl.DataFrame:
    """The training frame, with the faults of a labels file excluded too."""
    if not home.store_path.exists():
        raise UsageError(
            f"no store at {home.store_path}: ingest sync records first (`syncguard ingest FILE`)"
        )
    with Store.open(home.store_path) as store:
        frame = dataset.load_training_data(store.conn).frame
    if file_labels is not None:
        frame = dataset.exclude_labelled(frame, file_labels)
    return frame


class _Phases:
    """Forward FleetModel phases as ``"<label>: <phase>"`` and time each one.

    Timings land in ``timings`` as ``<key>.<phase>_s`` when the next phase starts or
    :meth:`close` is called.
    """

    def __init__(self, progress: Progress, label: str, key: str, timings: dict[str, float]):
        self.progress, self.label, self.key, self.timings = progress, label, key, timings
        self.current: str | None = None
        self.started = time.perf_counter()

    def close(self) -> None:
        if self.current is not None:
            name = self.current.replace(" ", "_").replace("-", "_")
            self.timings[f"{self.key}.{name}_s"] = time.perf_counter() - self.started
            self.current = None

    def __call__(self, phase: str) -> None:
        self.close()
        self.current, self.started = phase, time.perf_counter()
        self.progress(f"{self.label}: {phase}")


def _backtest(
    clean: DecodedHistory,
    window: pl.DataFrame,
    labels: pl.DataFrame | None,
    config: TrainConfig,
    progress: Progress,
    timings: dict[str, float],
) -> tuple[BacktestReport, pl.Series | None]:
    """Fit on the ``clean`` syncs before the window; score every sync of the window.

    ``clean`` is decoded and ``window`` a struct frame already (see :func:`train`).
    Returns the report and, when the configuration screens history, what the final fit
    leaves out (:func:`screened_by_backtest`).
    """
    if clean.height == 0:
        raise UsageError(
            "every sync before the held-out window is excluded (labelled fault or paused); "
            "nothing is left to fit the backtest model on"
        )
    phases = _Phases(progress, "backtest", "backtest", timings)
    model = config.model()
    report = run_backtest(clean, window, labels=labels, model=model, progress=phases)
    phases.close()
    return report, screened_by_backtest(model, report) if config.screen_history else None


def screened_by_backtest(model: FleetModel, report: BacktestReport) -> pl.Series:
    """``sync_id`` of the syncs the final fit leaves out instead of screening its history
    again: those the backtest fit's screening left out (the history before the window)
    and the window's syncs the backtest paused, as production leaves its paused syncs
    out of training.

    The final fit's history is the backtest's plus the window: screening it again ran
    the cross-fitting and calibration twice more to find nearly the same syncs, while
    the window's syncs have held-out scores already, the backtest's own (a model that
    never saw them, scoring them in time order as production would).
    """
    paused = report.decisions.filter(pl.col("decision") == "pause")["sync_id"]
    return pl.concat(
        [pl.Series("sync_id", model.screened_out_, dtype=pl.String), paused.cast(pl.String)]
    ).unique(maintain_order=True)


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if value is None or isinstance(value, bool):
            continue
        value = float(value)
        if math.isfinite(value):
            out[key] = value
    return out


def backtest_metrics(report: BacktestReport) -> dict[str, float]:
    """Flat MLflow metrics from a backtest report (NaN and undefined values left out).

    Keys: the syncguard row of the quality table (``episode_recall``,
    ``false_pauses_per_1000``, ...), ``recall.<class>``, ``fixed.<rule>.<metric>``,
    the calibration figures and the alert rate (``pauses_per_1000``, ``reviews_per_1000``
    over every held-out sync).
    """
    metrics: dict[str, Any] = {}
    decisions = report.decisions
    n = max(decisions.height, 1)
    metrics["test_syncs"] = decisions.height
    for decision in ("pause", "review"):
        count = int((decisions["decision"] == decision).sum())
        metrics[f"{decision}s_per_1000"] = 1000.0 * count / n
    metrics["cold_start_share"] = float(decisions["cold_start"].mean() or 0.0)
    c = report.calibration
    metrics.update(
        calibration_ratio=c.get("calibration_ratio"),
        budgeted_rate=c.get("budgeted_rate"),
        realised_rate=c.get("realised_rate"),
        breach_ratio=c.get("breach_ratio"),
        calibration_normal_syncs=c.get("normal_syncs"),
        calibration_false_pauses=c.get("false_pauses"),
        budgeted_false_pauses=c.get("budgeted_pauses"),
        calibration_p=c.get("calibration_p"),
    )
    if report.quality is not None:
        for row in report.quality.iter_rows(named=True):
            method = row.pop("method")
            if method == "syncguard":
                metrics.update(row)
            else:
                for key in ("episode_recall", "false_pauses_per_1000", "min_class_recall"):
                    metrics[f"fixed.{method}.{key}"] = row.get(key)
    if report.per_class is not None and "syncguard" in report.per_class.columns:
        for cls, recall in report.per_class.select("class", "syncguard").iter_rows():
            metrics[f"recall.{cls}"] = recall
    return _finite(metrics)


def history_summary(frame: pl.DataFrame) -> pl.DataFrame:
    """Per connector of a training frame: ``connector_id, connector_kind, syncs, excluded,
    first_sync, last_sync`` (what :func:`connector_summary` needs of the history, taken
    before fitting so that the frame need not outlive the read)."""
    return frame.group_by("connector_id").agg(
        pl.col("connector_kind").last(),
        pl.len().alias("syncs"),
        pl.col("excluded").sum().alias("excluded"),
        pl.col("started_at").min().alias("first_sync"),
        pl.col("started_at").max().alias("last_sync"),
    )


def connector_summary(
    history: pl.DataFrame,
    model: FleetModel,
    report: BacktestReport,
    labels: pl.DataFrame | None,
) -> pl.DataFrame:
    """One row per connector: history, exclusions, own model or pooled, held-out decisions.

    ``history`` is :func:`history_summary` of the training frame. Columns:
    ``connector_id, connector_kind, syncs, excluded, first_sync, last_sync, interval_h,
    own_model, test_syncs, pauses, reviews, median_score, max_score, cutoff`` and, with
    labels, ``fault_syncs, paused_normal_syncs``.
    """
    fitted = model.intervals_.select(
        "connector_id",
        (pl.col("interval_s") / 3600.0).alias("interval_h"),
        (pl.col("n_syncs") >= model.min_history).alias("own_model"),
    )
    decisions = report.decisions
    if labels is not None:
        decisions = decisions.join(
            labels.select("sync_id", "label"), on="sync_id", how="left", maintain_order="left"
        )
    paused = pl.col("decision") == "pause"
    aggs = [
        pl.len().alias("test_syncs"),
        paused.sum().alias("pauses"),
        (pl.col("decision") == "review").sum().alias("reviews"),
        pl.col("score").median().alias("median_score"),
        pl.col("score").max().alias("max_score"),
        pl.col("cutoff").median().alias("cutoff"),
    ]
    if labels is not None:
        aggs += [
            (pl.col("label") == "anomaly").sum().alias("fault_syncs"),
            (paused & (pl.col("label") == "normal")).sum().alias("paused_normal_syncs"),
        ]
    held_out = decisions.group_by("connector_id").agg(aggs)
    return (
        history.join(fitted, on="connector_id", how="left")
        .join(held_out, on="connector_id", how="left")
        .with_columns(pl.col("own_model").fill_null(False))
        .sort("connector_id")
    )


def calibration_plot(report: BacktestReport, labels: pl.DataFrame | None, path: Path) -> Path:
    """Write a PNG: realised against nominal tail probability, and the score histogram.

    Left: for each level ``a``, the share of normal held-out syncs whose tail
    probability is below ``a``; a calibrated model follows the diagonal, and the
    budgeted rates sit where the cutoffs are. Right: held-out scores by label, with the
    median cutoff. Uses matplotlib's object API (no pyplot, no global backend).
    """
    from matplotlib.figure import Figure  # imported here: only training draws plots

    decisions = report.decisions
    if labels is not None:
        decisions = decisions.join(labels.select("sync_id", "label"), on="sync_id", how="left")
        normal = decisions.filter(pl.col("label") == "normal")
    else:
        decisions = decisions.with_columns(pl.lit("unlabelled").alias("label"))
        normal = decisions
    p = np.sort(normal["tail_probability"].drop_nulls().to_numpy())
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    levels = np.logspace(-5, 0, 60)
    if len(p):
        realised = np.searchsorted(p, levels, side="left") / len(p)
        seen = realised > 0  # a log axis cannot show "none below this level"
        left.loglog(levels[seen], realised[seen], marker=".", label="realised")
    left.loglog(levels, levels, linestyle="--", color="grey", label="perfect calibration")
    alphas = 10 ** (-decisions["cutoff"].drop_nulls().to_numpy())
    if len(alphas):
        left.axvspan(
            alphas.min(),
            alphas.max(),
            alpha=0.15,
            color="tab:red",
            label="budgeted false-pause rates",
        )
    left.set_xlabel("nominal tail probability a")
    left.set_ylabel("share of normal syncs with tail probability < a")
    left.set_title(f"Calibration on {len(p)} normal held-out syncs")
    left.legend(loc="upper left", fontsize=8)
    scores = decisions.select("score", "label").drop_nulls("score")
    bins = np.linspace(0.0, max(float(scores["score"].max() or 1.0), 1.0), 50)
    for label in sorted(scores["label"].fill_null("unlabelled").unique().to_list()):
        values = scores.filter(pl.col("label").fill_null("unlabelled") == label)["score"]
        right.hist(values.to_numpy(), bins=bins, alpha=0.6, label=label, log=True)
    cut = decisions["cutoff"].median()
    if cut is not None:
        right.axvline(float(cut), color="tab:red", linestyle="--", label="median cutoff")
    right.set_xlabel("score = -log10(tail probability)")
    right.set_ylabel("held-out syncs")
    right.set_title("Held-out scores")
    right.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _write_artifacts(
    out: Path,
    history: pl.DataFrame,
    model: FleetModel,
    report: BacktestReport,
    labels: pl.DataFrame | None,
) -> dict[str, Path]:
    """Artifact folders to log: summary, plots, backtest (``history``: :func:`history_summary`).

    ``summary/screened_out.csv`` lists the history syncs the model left out
    (``screened_out_``), so a run says which syncs it did not learn from.
    """
    summary, plots, backtest = out / "summary", out / "plots", out / "backtest"
    for folder in (summary, plots, backtest):
        folder.mkdir(parents=True)
    connector_summary(history, model, report, labels).write_csv(summary / "connectors.csv")
    pl.DataFrame({"sync_id": model.screened_out_}, schema={"sync_id": pl.String}).write_csv(
        summary / "screened_out.csv"
    )
    calibration_plot(report, labels, plots / "calibration.png")
    (backtest / "report.txt").write_text(format_table(report) + "\n", encoding="utf-8")
    if report.quality is not None:
        report.quality.write_csv(backtest / "quality.csv")
    if report.per_class is not None:
        report.per_class.write_csv(backtest / "recall_per_class.csv")
    if report.calibration_curve is not None:
        report.calibration_curve.write_csv(backtest / "calibration_curve.csv")
    report.decisions.write_parquet(backtest / "decisions.parquet")
    return {"summary": summary, "plots": plots, "backtest": backtest}


def _refresh_cache(home: Home) -> str:
    """Copy the new champion into the local cache scoring reads; never fails training."""
    from detector.model_cache import refresh_champion

    try:
        path = refresh_champion(home)
    except ModelError as exc:
        return f"the local champion copy was not refreshed: {exc}"
    return f"scoring now uses the local copy in {path}"


def train(
    home: Home | str | os.PathLike[str] | None,
    config: TrainConfig | None = None,
    *,
    labels_path: str | os.PathLike[str] | None = None,
    force: bool = False,
    actor: str | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Backtest, fit and register a fleet model from the home's store.

    Parameters
    ----------
    home : Home or path-like or None
        The syncguard home (its store must hold ingested syncs).
    config : TrainConfig, optional
        Fitting settings; the defaults when omitted.
    labels_path : path-like, optional
        Simulator-format labels (``labels.jsonl``): their anomalies are left out of the
        fit and the backtest reports recall per fault class. Labels in the store
        (``syncguard label``) are used too, and win over the file.
    force : bool, default False
        Make the new version champion even when the gate fails.
    actor : str, optional
        Who trains, for the audit log (default: the OS user).
    progress : callable, optional
        Called with a short step name at the start of each of about
        :data:`TOTAL_STEPS` steps.

    Returns
    -------
    TrainResult

    Raises
    ------
    detector.errors.UsageError
        No store or no syncs, a held-out window that leaves too little history, a
        missing labels file or policy file.
    detector.errors.ModelError
        The fitted model could not be written or verified.
    """
    home = home if isinstance(home, Home) else resolve_home(home)
    config = config or TrainConfig()
    # Fitting makes and frees arrays of a few MiB in two threads: without this, glibc
    # keeps the freed pages resident (see training.allocator).
    allocator.limit_retention(config.n_jobs)
    report_step = progress or (lambda _name: None)

    def step(name: str) -> None:
        allocator.release()  # what the last step freed, before the next one allocates
        report_step(name)

    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    step("reading the store")
    file_labels = dataset.read_labels_file(labels_path) if labels_path is not None else None
    frame = _read(home, file_labels)
    before, window, cutoff = dataset.split_holdout(frame, holdout_days=config.holdout_days)
    labels = dataset.backtest_labels(window, file_labels)
    sources = [
        name
        for name, present in (
            ("file", file_labels is not None),
            ("store", dataset.has_verdicts(window)),
        )
        if present
    ]
    data = dataset.describe(frame)
    data.update(
        holdout_start=cutoff.isoformat().replace("+00:00", "Z"),
        holdout_syncs=window.height,
        labels="+".join(sources) or "none",
    )
    summary = history_summary(frame)
    # From here on only what the fits read: the clean syncs, their record texts decoded
    # once (the backtest's screening rounds, its safeguards and the final fit each
    # decoded them again), and the window decoded as scoring decodes it. The final fit is
    # handed its history (``fits.pop``) so that it can free it once it has its features.
    decoded = DecodedHistory.decode(dataset.fit_history(frame), config.n_jobs)
    clean = decoded.keep(dataset.fit_history(before)["sync_id"])
    fits = {"history": decoded}
    window = to_struct_frame(window.select(dataset.HISTORY_COLUMNS))
    del before, frame, decoded
    timings["read_s"] = time.perf_counter() - t_start

    # Imported here: mlflow costs seconds to import and is only needed from now on.
    from training import register

    run_name = "train-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    params = {**config.params(), **{f"data.{k}": v for k, v in data.items()}}
    tags = {"mlflow.runName": run_name, "syncguard.home": str(home.root)}
    home.ensure()
    with (
        home.scratch("train") as tmp,
        register.start_training_run(home, params=params, tags=tags) as run,
    ):
        t0 = time.perf_counter()
        report, screened = _backtest(clean, window, labels, config, step, timings)
        del clean, window
        timings["backtest_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        phases = _Phases(step, "final model", "final", timings)
        model = config.model().fit(fits.pop("history"), progress=phases, screened=screened)
        phases.close()
        timings["final_fit_s"] = time.perf_counter() - t0

        step("logging the run to MLflow")
        t0 = time.perf_counter()
        metrics = backtest_metrics(report)
        metrics["history_screened_out"] = len(model.screened_out_)
        model_dir = save_fleet_model(
            model,
            Path(tmp) / "fleet-model",
            metrics=metrics,
            meta={
                "run_id": run.run_id,
                "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "train_params": config.params(),
                "data": data,
                "connectors": model.intervals_.height,
            },
        )
        artifacts = _write_artifacts(Path(tmp) / "artifacts", summary, model, report, labels)
        timings["artifacts_s"] = time.perf_counter() - t0
        register.log_backtest(
            run, {**metrics, **{f"time.{k}": v for k, v in timings.items()}}, artifacts
        )

        step("registering the model")
        registered = register.register_fleet_model(
            home, run.run_id, model_dir, metrics=metrics, force=force
        )
        experiment_id = run.run.info.experiment_id
        artifact_uri = run.run.info.artifact_uri
        tracking_uri = run.tracking_uri

    cache_note = _refresh_cache(home) if registered.promoted else "the champion is unchanged"
    with Store.open(home.store_path) as store:
        store.audit(
            actor=actor or "syncguard train",
            action="train",
            subject=f"{register.REGISTERED_MODEL} v{registered.version}",
            reason=registered.reason,
            details={
                "run_id": run.run_id,
                "promoted": registered.promoted,
                "forced": force,
                "tracking_uri": tracking_uri,
                **{k: metrics[k] for k in register.KEY_METRICS if k in metrics},
            },
        )
    timings["total_s"] = time.perf_counter() - t_start
    return TrainResult(
        run_id=run.run_id,
        experiment_id=experiment_id,
        tracking_uri=tracking_uri,
        artifact_uri=artifact_uri,
        version=registered.version,
        promoted=registered.promoted,
        reason=registered.reason,
        metrics=metrics,
        data=data,
        cache_note=cache_note,
        timings=timings,
    )


def fit_final(
    config: TrainConfig, frame: pl.DataFrame, progress=None, *, screened: pl.Series | None = None
) -> FleetModel:
    """The model to register: fitted on every sync of ``frame`` not ``excluded``, less
    ``screened`` when given (see :func:`screened_by_backtest`; otherwise the fit screens
    its history itself when ``config.screen_history``)."""
    return config.model().fit(dataset.fit_history(frame), progress=progress, screened=screened)


def save_fleet_model(
    model: FleetModel, path: Path, *, metrics: dict[str, Any], meta: dict[str, Any]
) -> Path:
    """Write ``model`` as a safe model directory (no pickle) and return its path."""
    arrays, model_config = model.to_arrays()
    return save_model_dir(path, arrays=arrays, config=model_config, metrics=metrics, meta=meta)
