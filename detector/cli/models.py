"""``syncguard models list | show | promote``: the registered fleet model versions."""

from __future__ import annotations

import json
from typing import Any

import click

from detector.cli.options import json_option, pass_home
from detector.cli.table import format_table
from detector.errors import UsageError
from detector.home import Home

__all__ = ["command", "render_versions", "render_version", "verify_version"]

_HEADERS = ("version", "aliases", "created", "run", "episode recall", "false pauses/1000",
            "calibration", "promoted by")


def _registry():
    """``training.register``, imported on use: it loads mlflow (seconds)."""
    from detector.cli.train import quiet_mlflow
    from training import register

    quiet_mlflow()
    return register


def _num(value: Any, fmt: str = ".3f") -> str | None:
    return None if value is None else format(value, fmt)


def render_versions(rows: list[dict[str, Any]]) -> str:
    """The versions table, newest first."""
    if not rows:
        return "no fleet model registered yet: run `syncguard train`"
    body = [[r["version"], ",".join(r["aliases"]) or None, r["created"], (r["run_id"] or "")[:12],
             _num(r["metrics"].get("episode_recall")),
             _num(r["metrics"].get("false_pauses_per_1000"), ".2f"),
             _num(r["metrics"].get("calibration_ratio"), ".2f"), r["promoted_by"]]
            for r in rows]
    return format_table(_HEADERS, body, right=(0, 4, 5, 6))


def render_version(info: dict[str, Any]) -> str:
    """One version: identity, promotion, every metric and the run's params."""
    lines = [
        f"syncguard-fleet v{info['version']}"
        + (f" ({', '.join(info['aliases'])})" if info["aliases"] else ""),
        f"created:   {info['created']}",
        f"run:       {info['run_id']}",
        f"digest:    {info['digest']}",
        f"source:    {info['source']}",
    ]
    if info.get("promoted_at"):
        lines.append(f"promoted:  {info['promoted_at']} by {info['promoted_by']}: "
                     f"{info['promoted_reason']}")
    metrics = info.get("metrics") or {}
    if metrics:
        lines += ["", format_table(("metric", "value"),
                                   [[k, f"{v:.4g}"] for k, v in sorted(metrics.items())],
                                   right=(1,))]
    params = info.get("params") or {}
    if params:
        lines += ["", format_table(("param", "value"), sorted(params.items()))]
    return "\n".join(lines)


@click.group("models")
def command() -> None:
    """List, inspect and promote registered fleet model versions (MLflow registry).

    The registry is the home's embedded MLflow store, or MLFLOW_TRACKING_URI.
    """


@command.command("list")
@json_option
@pass_home
def list_command(home: Home, as_json: bool) -> None:
    """List every version of syncguard-fleet, newest first, with its key backtest metrics."""
    rows = _registry().list_versions(home)
    click.echo(json.dumps(rows, indent=2) if as_json else render_versions(rows))


@command.command("show")
@click.argument("version")
@json_option
@pass_home
def show_command(home: Home, version: str, as_json: bool) -> None:
    """Show one VERSION: every backtest metric, the training params, promotion history."""
    info = _registry().show_version(home, version)
    click.echo(json.dumps(info, indent=2) if as_json else render_version(info))


def verify_version(home: Home, version: str) -> None:
    """Download a version's files and check them against its registered digest.

    Raises
    ------
    detector.errors.ModelError
        The version has no digest, cannot be downloaded, or its files fail verification:
        it must not become champion.
    """
    import mlflow.artifacts

    from detector.errors import ModelError
    from detector.modelfile import load_model_dir

    register = _registry()
    info = register.show_version(home, version)
    if not info["digest"]:
        raise ModelError(f"model version {info['version']} has no {register.TAG_DIGEST} tag, "
                         "so its files cannot be verified; it cannot become champion")
    with home.scratch("verify") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=info["source"], dst_path=str(tmp),
                tracking_uri=register.tracking_uri_for(home),
                registry_uri=register.registry_uri_for(home))
        except Exception as exc:
            raise ModelError(f"cannot download model version {info['version']} from "
                             f"{info['source']}: {exc}") from exc
        try:
            load_model_dir(local, expected_digest=info["digest"])
        except ModelError as exc:
            raise ModelError(f"model version {info['version']} was not promoted: {exc}") from exc


@command.command("promote")
@click.argument("version")
@click.option("--by", "actor", required=True, metavar="NAME", help="Who promotes (audited).")
@click.option("--reason", required=True, metavar="TEXT", help="Why (audited).")
@json_option
@pass_home
def promote_command(home: Home, version: str, actor: str, reason: str, as_json: bool) -> None:
    """Make VERSION the champion that scoring uses, whatever its backtest says.

    The version's files are downloaded and checked against their registered SHA-256
    first: a missing or tampered model is refused. The promotion gate's verdict against
    the previous champion is shown and audited, but a person's decision stands. The local
    champion copy is refreshed at once.
    """
    from detector.errors import ModelError
    from detector.model_cache import refresh_champion
    from detector.store import Store

    if not actor.strip() or not reason.strip():  # before any download
        raise UsageError("promote needs a non-empty --by (who) and --reason (why)")
    verify_version(home, version)
    result = _registry().promote(home, version, actor=actor, reason=reason)
    try:
        cache = f"scoring now uses the local copy in {refresh_champion(home)}"
    except ModelError as exc:
        cache = f"the local champion copy was not refreshed: {exc}"
    with Store.open(home.ensure().store_path) as store:
        store.audit(actor=result["actor"], action="promote",
                    subject=f"syncguard-fleet v{result['version']}", reason=result["reason"],
                    details={"previous": result["previous"], "gate": result["gate"],
                             "digest": result["digest"]})
    if as_json:
        click.echo(json.dumps({**result, "cache": cache}, indent=2))
        return
    was = f"v{result['previous']}" if result["previous"] is not None else "none"
    gate = result["gate"]
    click.echo(f"syncguard-fleet v{result['version']} is now champion (was {was}), promoted by "
               f"{result['actor']}: {result['reason']}")
    click.echo(f"promotion gate: {'passed' if gate['passed'] else 'failed'} ({gate['reason']})")
    click.echo(cache)
