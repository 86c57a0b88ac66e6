"""MLflow tracking and registry for the fleet model: runs, versions, the champion alias.

The embedded default keeps everything under the syncguard home::

    <home>/mlflow/mlflow.db         sqlite tracking + model registry
    <home>/mlflow/artifacts/        run artifacts (experiment "syncguard")

``MLFLOW_TRACKING_URI`` (and ``MLFLOW_REGISTRY_URI``) override the default, as
anywhere in MLflow; the experiment name follows ``MLFLOW_EXPERIMENT_NAME`` when set.

A registered version is the model directory written by
:func:`detector.modelfile.save_model_dir`, logged as plain run artifacts under
``fleet-model`` and registered with ``MlflowClient.create_model_version``. No MLflow
flavour and no pickle is involved: scoring reads the local copy with
``detector.model_cache``, which never imports mlflow.

Promotion rule (:func:`is_at_least_as_good`)
    A new version takes the ``champion`` alias only when its backtest is at least as
    good as the current champion's, within small tolerances for backtest noise:

    * ``episode_recall`` not lower than the champion's by more than 0.005;
    * ``false_pauses_per_1000`` not higher than the champion's by more than 0.05;
    * ``calibration_ratio`` (observed / budgeted false-pause rate), when the
      challenger reports it, within [0.5, 2], unless its ``calibration_p`` (see
      :func:`training.backtest.poisson_two_sided_p`) is at least 0.05: a backtest window
      whose budget expects two false pauses and sees none is no evidence against the
      calibration, and a model is not held back for it.

    A metric the champion never recorded is not compared; a metric the champion has
    and the challenger lacks (or reports as NaN) fails the gate. With no champion
    the first version is promoted. ``force=True`` promotes regardless (and says so).

Version tags written here: ``syncguard.digest`` (SHA-256 of the manifest),
``syncguard.metric.<name>`` (every numeric backtest metric), and on each move of the
alias ``syncguard.promoted_by`` / ``_reason`` / ``_at``.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# A security tool keeps its usage to itself and writes nothing outside its home: MLflow 3
# telemetry would report usage and create an installation id under ~/. Opt back in by
# setting MLFLOW_DISABLE_TELEMETRY=false. Must happen before mlflow is imported.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.entities import Metric, Param, Run  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from detector.errors import ModelError, UsageError  # noqa: E402
from detector.home import Home, resolve_home  # noqa: E402
from detector.modelfile import load_model_dir  # noqa: E402

__all__ = [
    "REGISTERED_MODEL",
    "CHAMPION_ALIAS",
    "EXPERIMENT_NAME",
    "MODEL_ARTIFACT_PATH",
    "TAG_DIGEST",
    "TAG_METRIC_PREFIX",
    "KEY_METRICS",
    "RECALL_TOLERANCE",
    "FALSE_PAUSE_TOLERANCE",
    "CALIBRATION_BAND",
    "CALIBRATION_SIGNIFICANCE",
    "TrainingRun",
    "GateResult",
    "RegistrationResult",
    "tracking_uri_for",
    "registry_uri_for",
    "client_for",
    "start_training_run",
    "log_backtest",
    "is_at_least_as_good",
    "register_fleet_model",
    "champion_info",
    "list_versions",
    "show_version",
    "promote",
]

REGISTERED_MODEL = "syncguard-fleet"
CHAMPION_ALIAS = "champion"
EXPERIMENT_NAME = "syncguard"
MODEL_ARTIFACT_PATH = "fleet-model"
TAG_DIGEST = "syncguard.digest"
TAG_METRIC_PREFIX = "syncguard.metric."
TAG_PROMOTED_BY = "syncguard.promoted_by"
TAG_PROMOTED_REASON = "syncguard.promoted_reason"
TAG_PROMOTED_AT = "syncguard.promoted_at"

#: Metrics shown by ``models list`` and compared by the promotion gate.
KEY_METRICS = ("episode_recall", "false_pauses_per_1000", "calibration_ratio")
RECALL_TOLERANCE = 0.005
FALSE_PAUSE_TOLERANCE = 0.05
CALIBRATION_BAND = (0.5, 2.0)
#: A ratio outside the band fails the gate only when a count this far out is unlikely
#: under exact calibration (``calibration_p`` below this): small windows are noisy.
CALIBRATION_SIGNIFICANCE = 0.05

# MLflow caps log_batch at 1000 metrics and 100 params per call.
_METRIC_BATCH = 1000
_PARAM_BATCH = 100


@dataclass(frozen=True)
class TrainingRun:
    """An open MLflow run plus the client that talks to its store.

    Attributes
    ----------
    run : mlflow.entities.Run
        The run as created (``run.info.run_id``, ``run.info.artifact_uri``).
    client : mlflow.tracking.MlflowClient
        Client bound to the home's tracking and registry URIs; use it for anything
        this module does not wrap (``client.log_figure(run_id, ...)``).
    tracking_uri : str
    """

    run: Run
    client: MlflowClient
    tracking_uri: str

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


@dataclass(frozen=True)
class GateResult:
    """Outcome of the promotion gate; truthy when the challenger may be promoted."""

    passed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.passed


@dataclass(frozen=True)
class RegistrationResult:
    """A newly registered fleet model version and whether it became champion."""

    version: int
    promoted: bool
    reason: str


# --- where the store is ------------------------------------------------------------------


def _home(home: Home | str | os.PathLike[str] | None) -> Home:
    return home if isinstance(home, Home) else resolve_home(home)


def _embedded() -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri_for(home: Home | str | os.PathLike[str] | None) -> str:
    """Return the tracking URI: ``MLFLOW_TRACKING_URI`` if set, else the home's sqlite store.

    Parameters
    ----------
    home : Home or path-like or None
        The syncguard home (None resolves ``SYNCGUARD_HOME`` or ``./.syncguard``).

    Returns
    -------
    str
        e.g. ``sqlite:////abs/home/mlflow/mlflow.db``.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    h = _home(home)
    return f"sqlite:///{(h.mlflow_dir / 'mlflow.db').absolute()}"


def registry_uri_for(home: Home | str | os.PathLike[str] | None) -> str:
    """Return the registry URI: ``MLFLOW_REGISTRY_URI`` if set, else the tracking URI."""
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri_for(home)


def client_for(home: Home | str | os.PathLike[str] | None) -> MlflowClient:
    """Return an ``MlflowClient`` bound to the home's stores (no global MLflow state).

    For the embedded default this creates ``<home>/mlflow/``; the first call on a fresh
    database runs MLflow's schema migrations (a few seconds).
    """
    h = _home(home)
    if _embedded():
        (h.mlflow_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri_for(h), registry_uri=registry_uri_for(h))


def _experiment_id(client: MlflowClient, home: Home) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT_NAME
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # Artifacts of the embedded store live beside the database, not in ./mlruns; a
    # remote tracking server chooses its own artifact root.
    location = (home.mlflow_dir / "artifacts").absolute().as_uri() if _embedded() else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as exc:
        # Another process created it between our lookup and create.
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


# --- runs --------------------------------------------------------------------------------


@contextmanager
def start_training_run(
    home: Home | str | os.PathLike[str] | None,
    *,
    params: Mapping[str, Any],
    tags: Mapping[str, Any],
) -> Iterator[TrainingRun]:
    """Open an MLflow run in the "syncguard" experiment; end it FINISHED or FAILED.

    No global MLflow state is touched (no ``mlflow.set_tracking_uri``, no active run),
    so several homes can be used in one process.

    Parameters
    ----------
    home : Home or path-like or None
    params : mapping
        Logged as run params (values stringified; the same dict as ``config.json``).
    tags : mapping
        Run tags; ``mlflow.runName`` sets the run name.

    Yields
    ------
    TrainingRun
    """
    h = _home(home)
    client = client_for(h)
    exp_id = _experiment_id(client, h)
    run_tags = {"mlflow.source.name": "syncguard train", **{k: str(v) for k, v in tags.items()}}
    run = client.create_run(exp_id, tags=run_tags, run_name=run_tags.get("mlflow.runName"))
    run_id = run.info.run_id
    items = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(items), _PARAM_BATCH):
        client.log_batch(run_id, params=items[i : i + _PARAM_BATCH])
    status = "FAILED"
    try:
        yield TrainingRun(run=run, client=client, tracking_uri=tracking_uri_for(h))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)


def log_backtest(
    run: TrainingRun, metrics: Mapping[str, float], artifacts: Mapping[str, Path]
) -> None:
    """Log backtest metrics and artifacts to a training run.

    Parameters
    ----------
    run : TrainingRun
        From :func:`start_training_run`.
    metrics : mapping of str to float
        Flat metric names (per fault class as ``recall.schema_drift`` and so on).
        Non-numeric values are refused; NaN is logged as MLflow allows it.
    artifacts : mapping of str to path
        Artifact directory in the run -> local file or directory to put there,
        e.g. ``{"plots": Path("out/plots"), "backtest": Path("out/report.json")}``.
    """
    ts = int(datetime.now(UTC).timestamp() * 1000)
    items = []
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"metric {k!r} is {type(v).__name__}, not a number")
        items.append(Metric(k, float(v), ts, 0))
    for i in range(0, len(items), _METRIC_BATCH):
        run.client.log_batch(run.run_id, metrics=items[i : i + _METRIC_BATCH])
    for dest, local in artifacts.items():
        local = Path(local)
        if local.is_dir():
            run.client.log_artifacts(run.run_id, str(local), artifact_path=dest)
        elif local.is_file():
            run.client.log_artifact(run.run_id, str(local), artifact_path=dest)
        else:
            raise FileNotFoundError(f"artifact {dest!r}: {local} does not exist")


# --- promotion gate ----------------------------------------------------------------------


def _number(metrics: Mapping[str, Any] | None, key: str) -> float | None:
    if not metrics or key not in metrics or metrics[key] is None:
        return None
    try:
        value = float(metrics[key])
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def is_at_least_as_good(
    challenger_metrics: Mapping[str, Any], champion_metrics: Mapping[str, Any] | None
) -> GateResult:
    """Decide whether a challenger's backtest is at least as good as the champion's.

    See the module docstring for the rule. Tolerances absorb backtest noise so that a
    retrain on fresh data is not blocked by a difference nobody could measure.

    Parameters
    ----------
    challenger_metrics, champion_metrics : mapping
        Backtest metrics; ``champion_metrics`` is None when there is no champion.

    Returns
    -------
    GateResult
        Truthy when the challenger may take the alias; ``reason`` says why (not).

    Examples
    --------
    >>> bool(is_at_least_as_good({"episode_recall": 0.9}, None))
    True
    >>> g = is_at_least_as_good(
    ...     {"episode_recall": 0.80, "false_pauses_per_1000": 0.2},
    ...     {"episode_recall": 0.85, "false_pauses_per_1000": 0.2},
    ... )
    >>> g.passed, g.reason
    (False, 'episode_recall 0.8000 is below the champion 0.8500 by more than 0.005')
    """
    if champion_metrics is None:
        return GateResult(True, "no champion yet")
    failures: list[str] = []
    # (metric, sign of "worse", tolerance, word for "worse")
    comparisons = (
        ("episode_recall", -1, RECALL_TOLERANCE, "below"),
        ("false_pauses_per_1000", +1, FALSE_PAUSE_TOLERANCE, "above"),
    )
    for key, direction, tol, word in comparisons:
        champ = _number(champion_metrics, key)
        if champ is None:
            continue
        chall = _number(challenger_metrics, key)
        if chall is None:
            failures.append(f"{key} is missing but the champion has {champ:.4f}")
        elif direction * (chall - champ) > tol:
            failures.append(
                f"{key} {chall:.4f} is {word} the champion {champ:.4f} by more than {tol:g}"
            )
    ratio = _number(challenger_metrics, "calibration_ratio")
    chance = _number(challenger_metrics, "calibration_p")
    lo, hi = CALIBRATION_BAND
    outside = ratio is not None and not lo <= ratio <= hi
    if outside and (chance is None or chance < CALIBRATION_SIGNIFICANCE):
        failure = f"calibration_ratio {ratio:.3f} is outside [{lo:g}, {hi:g}]"
        if chance is not None:
            failure += f" (calibration_p {chance:.3g} < {CALIBRATION_SIGNIFICANCE:g})"
        failures.append(failure)
    if failures:
        return GateResult(False, "; ".join(failures))
    return GateResult(True, "at least as good as the champion")


# --- registry ----------------------------------------------------------------------------


def _metric_tags(metrics: Mapping[str, Any]) -> dict[str, str]:
    return {
        TAG_METRIC_PREFIX + k: repr(v) for k in metrics if (v := _number(metrics, k)) is not None
    }


def _metrics_from_tags(tags: Mapping[str, str]) -> dict[str, float]:
    out = {}
    for k, v in tags.items():
        if k.startswith(TAG_METRIC_PREFIX):
            try:
                out[k[len(TAG_METRIC_PREFIX) :]] = float(v)
            except ValueError:
                continue
    return out


def _registered_model(client: MlflowClient):
    try:
        return client.get_registered_model(REGISTERED_MODEL)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _champion_version(client: MlflowClient):
    rm = _registered_model(client)
    if rm is None:
        return None
    version = (rm.aliases or {}).get(CHAMPION_ALIAS)
    if version is None:
        return None
    return client.get_model_version(REGISTERED_MODEL, str(version))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _set_champion(client: MlflowClient, version: int, *, actor: str, reason: str) -> str:
    at = _now()
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, str(version))
    for key, value in (
        (TAG_PROMOTED_BY, actor),
        (TAG_PROMOTED_REASON, reason),
        (TAG_PROMOTED_AT, at),
    ):
        client.set_model_version_tag(REGISTERED_MODEL, str(version), key, value)
    return at


def register_fleet_model(
    home: Home | str | os.PathLike[str] | None,
    run_id: str,
    model_dir: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any],
    force: bool = False,
    promote: bool = True,
) -> RegistrationResult:
    """Log a model directory to a run, register it, and promote it if the gate passes.

    Parameters
    ----------
    home : Home or path-like or None
    run_id : str
        The training run (from :func:`start_training_run`) that produced the model.
    model_dir : path-like
        Directory written by :func:`detector.modelfile.save_model_dir`; it is verified
        before anything is logged.
    metrics : mapping
        The challenger's backtest metrics (stored as version tags, fed to the gate).
    force : bool, default False
        Move the ``champion`` alias even when the gate fails.
    promote : bool, default True
        False registers a challenger: the alias never moves (not even with no champion
        yet) and ``reason`` gives the gate's verdict for information.

    Returns
    -------
    RegistrationResult
        The new version number, whether it is now champion, and why.

    Raises
    ------
    detector.errors.ModelError
        ``model_dir`` is not a valid model directory.
    """
    h = _home(home)
    digest = load_model_dir(model_dir).digest
    client = client_for(h)
    client.log_artifacts(run_id, str(model_dir), artifact_path=MODEL_ARTIFACT_PATH)
    run = client.get_run(run_id)
    source = posixpath.join(run.info.artifact_uri, MODEL_ARTIFACT_PATH)

    if _registered_model(client) is None:
        try:
            client.create_registered_model(
                REGISTERED_MODEL, description="syncguard fleet model (plain arrays, no pickle)"
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    champion = _champion_version(client)
    tags = {TAG_DIGEST: digest, **_metric_tags(metrics)}
    mv = client.create_model_version(REGISTERED_MODEL, source, run_id=run_id, tags=tags)
    version = int(mv.version)

    gate = is_at_least_as_good(
        metrics, None if champion is None else _metrics_from_tags(champion.tags)
    )
    against = "" if champion is None else f" (vs champion v{champion.version})"
    if not promote:
        verdict = "passes" if gate else "fails"
        return RegistrationResult(
            version, False, f"challenger, not promoted; gate {verdict}: {gate.reason}{against}"
        )
    if gate:
        reason = gate.reason + against
    elif force:
        reason = f"forced; gate failed: {gate.reason}{against}"
    else:
        return RegistrationResult(version, False, f"not promoted: {gate.reason}{against}")
    _set_champion(client, version, actor="syncguard train", reason=reason)
    return RegistrationResult(version, True, reason)


def _describe(mv, *, full: bool = False) -> dict[str, Any]:
    tags = dict(mv.tags or {})
    metrics = _metrics_from_tags(tags)
    out: dict[str, Any] = {
        "version": int(mv.version),
        "aliases": sorted(mv.aliases or []),
        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
        "run_id": mv.run_id,
        "digest": tags.get(TAG_DIGEST),
        "metrics": metrics if full else {k: metrics[k] for k in KEY_METRICS if k in metrics},
        "promoted_by": tags.get(TAG_PROMOTED_BY),
        "promoted_reason": tags.get(TAG_PROMOTED_REASON),
        "promoted_at": tags.get(TAG_PROMOTED_AT),
    }
    if full:
        out.update(
            source=mv.source,
            status=mv.status,
            description=mv.description,
            tags=tags,
        )
    return out


def _get_version(client: MlflowClient, version: int | str):
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise UsageError(f"model version must be a number, got {version!r}") from None
    try:
        return client.get_model_version(REGISTERED_MODEL, str(number))
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            raise UsageError(
                f"model version {number} of {REGISTERED_MODEL} does not exist "
                "(see `syncguard models list`)"
            ) from None
        raise


def champion_info(home: Home | str | os.PathLike[str] | None) -> dict[str, Any]:
    """Return the champion's version, digest, artifact source and tracking URI.

    Raises
    ------
    detector.errors.ModelError
        No fleet model is registered, or none holds the ``champion`` alias.
    """
    h = _home(home)
    client = client_for(h)
    mv = _champion_version(client)
    if mv is None:
        raise ModelError(
            f"no {CHAMPION_ALIAS!r} version of {REGISTERED_MODEL} in {tracking_uri_for(h)}; "
            "train a model first (`syncguard train`)"
        )
    return {
        "version": int(mv.version),
        "digest": (mv.tags or {}).get(TAG_DIGEST),
        "source": mv.source,
        "tracking_uri": tracking_uri_for(h),
        "registry_uri": registry_uri_for(h),
    }


def list_versions(home: Home | str | os.PathLike[str] | None) -> list[dict[str, Any]]:
    """List every registered fleet model version, newest first.

    Returns
    -------
    list of dict
        ``version``, ``aliases``, ``created`` (UTC ISO 8601), ``run_id``, ``digest``,
        ``metrics`` (the :data:`KEY_METRICS` present) and the last promotion's
        ``promoted_by`` / ``promoted_reason`` / ``promoted_at``. Empty when nothing
        is registered.
    """
    client = client_for(_home(home))
    versions = []
    token = None
    while True:
        page = client.search_model_versions(
            f"name = '{REGISTERED_MODEL}'", max_results=1000, page_token=token
        )
        versions.extend(page)
        token = page.token
        if not token:
            break
    # search results may omit aliases on some stores; the registered model has them all.
    rm = _registered_model(client)
    by_version: dict[str, list[str]] = {}
    for alias, v in ((rm.aliases or {}) if rm else {}).items():
        by_version.setdefault(str(v), []).append(alias)
    rows = []
    for mv in versions:
        row = _describe(mv)
        row["aliases"] = sorted(set(row["aliases"]) | set(by_version.get(str(mv.version), [])))
        rows.append(row)
    return sorted(rows, key=lambda r: r["version"], reverse=True)


def show_version(home: Home | str | os.PathLike[str] | None, version: int | str) -> dict[str, Any]:
    """Describe one version: everything in :func:`list_versions` plus all metrics, tags,
    artifact source, status, description and the run's params.

    Raises
    ------
    detector.errors.UsageError
        The version does not exist.
    """
    client = client_for(_home(home))
    out = _describe(_get_version(client, version), full=True)
    if out["run_id"]:
        try:
            out["params"] = dict(client.get_run(out["run_id"]).data.params)
        except MlflowException:
            out["params"] = None  # the run was deleted; the version is still usable
    return out


def promote(
    home: Home | str | os.PathLike[str] | None,
    version: int | str,
    *,
    actor: str,
    reason: str,
) -> dict[str, Any]:
    """Move the ``champion`` alias to ``version`` by hand, recording who and why.

    The gate is not enforced (a person decided) but its verdict against the previous
    champion is returned, so the caller can show it and write it to the audit log.

    Parameters
    ----------
    home : Home or path-like or None
    version : int or str
    actor, reason : str
        Who promotes and why; both required and stored as version tags.

    Returns
    -------
    dict
        ``version``, ``previous`` (former champion or None), ``actor``, ``reason``,
        ``promoted_at``, ``digest`` and ``gate`` (``{"passed", "reason"}``).

    Raises
    ------
    detector.errors.UsageError
        Missing actor or reason, or no such version.
    detector.errors.ModelError
        The version has no digest tag (not registered by syncguard): it could never be
        verified, so it may not become champion.
    """
    if not actor or not actor.strip():
        raise UsageError("promote needs --by: who is promoting this model")
    if not reason or not reason.strip():
        raise UsageError("promote needs --reason: why this model should be champion")
    client = client_for(_home(home))
    mv = _get_version(client, version)
    digest = (mv.tags or {}).get(TAG_DIGEST)
    if not digest:
        raise ModelError(
            f"model version {mv.version} has no {TAG_DIGEST} tag, so its files cannot be "
            "verified; register models with `syncguard train`"
        )
    previous = _champion_version(client)
    gate = is_at_least_as_good(
        _metrics_from_tags(mv.tags or {}),
        None if previous is None else _metrics_from_tags(previous.tags or {}),
    )
    at = _set_champion(client, int(mv.version), actor=actor.strip(), reason=reason.strip())
    return {
        "version": int(mv.version),
        "previous": None if previous is None else int(previous.version),
        "actor": actor.strip(),
        "reason": reason.strip(),
        "promoted_at": at,
        "digest": digest,
        "gate": {"passed": gate.passed, "reason": gate.reason},
    }
