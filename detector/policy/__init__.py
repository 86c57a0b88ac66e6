"""Connector policy: criticality by id, glob or kind -> severity, breach action, budget.

The built-in defaults live in ``default.toml`` beside this module; a policy file given by
the user (TOML, same layout) overrides criticality settings and adds ``[[connector]]``
rules. A budget of ``N`` false pauses per ``D`` days becomes a per-sync rate with the
connector's usual interval: ``alpha = N * interval / D days``.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl

from detector.errors import UsageError
from detector.events.native import CRITICALITIES, SEVERITIES

__all__ = ["Policy", "CRITICALITIES", "load_policy"]

_ACTIONS = ("pause", "review")
_DAY_S = 86400.0


@dataclass(frozen=True)
class Policy:
    """Parsed policy: settings per criticality and ordered connector rules."""

    criticalities: dict[str, dict]
    rules: tuple[dict, ...]
    default_criticality: str = "standard"

    def criticality_of(self, connector_id: str, connector_kind: str | None) -> str:
        """First matching rule's criticality (by id, glob or kind), else the default."""
        for rule in self.rules:
            if (
                ("id" in rule and rule["id"] == connector_id)
                or ("glob" in rule and fnmatch.fnmatchcase(connector_id, rule["glob"]))
                or (
                    "kind" in rule and connector_kind is not None and rule["kind"] == connector_kind
                )
            ):
                return rule["criticality"]
        return self.default_criticality

    def table(self, connectors: pl.DataFrame) -> pl.DataFrame:
        """Per connector: criticality, severity, on_breach, and the budget per day.

        ``connectors`` has ``connector_id, connector_kind``; one Python call per connector
        (not per sync) resolves its rule.
        """
        crit = [
            self.criticality_of(cid, kind)
            for cid, kind in connectors.select("connector_id", "connector_kind").iter_rows()
        ]
        settings = [self.criticalities[c] for c in crit]
        return connectors.select("connector_id").with_columns(
            pl.Series("criticality", crit, dtype=pl.String),
            pl.Series("severity", [s["severity"] for s in settings], dtype=pl.String),
            pl.Series("on_breach", [s["on_breach"] for s in settings], dtype=pl.String),
            pl.Series(
                "budget_per_day",
                [s["budget_false_pauses"] / s["budget_days"] for s in settings],
                dtype=pl.Float64,
            ),
        )

    @staticmethod
    def alpha(budget_per_day: np.ndarray, interval_s: np.ndarray) -> np.ndarray:
        """Per-sync false-pause rate from a budget per day and the usual interval."""
        return np.clip(budget_per_day * np.asarray(interval_s, dtype=float) / _DAY_S, 1e-7, 0.5)


def _validate(data: dict, source: str) -> Policy:
    crit = data.get("criticality", {})
    for name, settings in crit.items():
        if name not in CRITICALITIES:
            raise UsageError(f"{source}: unknown criticality {name!r}; use one of {CRITICALITIES}")
        if settings.get("severity") not in SEVERITIES:
            raise UsageError(f"{source}: criticality.{name}.severity must be one of {SEVERITIES}")
        if settings.get("on_breach") not in _ACTIONS:
            raise UsageError(f"{source}: criticality.{name}.on_breach must be 'pause' or 'review'")
        n, d = settings.get("budget_false_pauses"), settings.get("budget_days")
        if not isinstance(n, int | float) or not isinstance(d, int | float) or n <= 0 or d <= 0:
            raise UsageError(
                f"{source}: criticality.{name}: budget_false_pauses and budget_days must be > 0"
            )
    rules = []
    for i, rule in enumerate(data.get("connector", []), start=1):
        keys = {"id", "glob", "kind"} & set(rule)
        if len(keys) != 1:
            raise UsageError(f"{source}: connector rule {i} needs exactly one of id, glob, kind")
        if rule.get("criticality") not in CRITICALITIES:
            raise UsageError(
                f"{source}: connector rule {i}: criticality must be one of {CRITICALITIES}"
            )
        rules.append(dict(rule))
    default = data.get("default_criticality", "standard")
    if default not in CRITICALITIES:
        raise UsageError(f"{source}: default_criticality must be one of {CRITICALITIES}")
    return Policy(criticalities=crit, rules=tuple(rules), default_criticality=default)


def load_policy(path: str | Path | None = None) -> Policy:
    """Built-in defaults, overridden by the TOML file at ``path`` when given."""
    base = tomllib.loads(resources.files("detector.policy").joinpath("default.toml").read_text())
    if path is not None:
        try:
            user = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"policy file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"policy file {path} is not valid TOML: {exc}") from None
        merged = dict(base["criticality"])
        for name, settings in user.get("criticality", {}).items():
            merged[name] = {**merged.get(name, {}), **settings}
        base = {**base, **user, "criticality": merged}
    return _validate(base, str(path) if path else "built-in policy")
