"""Where syncguard keeps its state: one home directory.

Resolution order: the ``--home`` flag, then ``SYNCGUARD_HOME``, then ``./.syncguard``.
Every path syncguard derives from configuration is checked to stay inside the home.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from detector.errors import UsageError

__all__ = ["Home", "resolve_home", "HOME_ENV", "DEFAULT_HOME"]

HOME_ENV = "SYNCGUARD_HOME"
DEFAULT_HOME = ".syncguard"


@dataclass(frozen=True)
class Home:
    """The syncguard home directory and the fixed layout inside it."""

    root: Path

    @property
    def store_path(self) -> Path:
        """SQLite store: sync history, scores, pauses, labels, audit log, outbox."""
        return self.root / "store.sqlite"

    @property
    def mlflow_dir(self) -> Path:
        """Embedded MLflow: ``mlflow.db`` (sqlite tracking + registry) and ``artifacts/``."""
        return self.root / "mlflow"

    @property
    def model_cache_dir(self) -> Path:
        """Local copy of the champion model, checked by SHA-256 before use."""
        return self.root / "models"

    @property
    def events_dir(self) -> Path:
        return self.root / "events"

    def inside(self, relative: str | os.PathLike[str]) -> Path:
        """Resolve ``relative`` under the home, refusing anything that escapes it."""
        candidate = (self.root / relative).resolve()
        root = self.root.resolve()
        if candidate != root and root not in candidate.parents:
            raise UsageError(f"path {str(relative)!r} escapes the syncguard home {root}")
        return candidate

    def ensure(self) -> Home:
        self.root.mkdir(parents=True, exist_ok=True)
        return self


def resolve_home(flag: str | os.PathLike[str] | None = None) -> Home:
    """Return the home from the flag, the environment, or the default, in that order."""
    raw = flag or os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Home(Path(raw).expanduser().absolute())
