"""Where syncguard keeps its state: one home directory.

Resolution order: the ``--home`` flag, then ``SYNCGUARD_HOME``, then ``./.syncguard``.
Every path syncguard derives from configuration is checked to stay inside the home.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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

    @contextmanager
    def scratch(self, name: str) -> Iterator[Path]:
        """A private folder under ``<home>/.scratch/`` for work in progress, removed on
        exit.

        A process killed mid-work (SIGKILL, power loss) cannot clean up after itself, so
        the folder's name carries the process id, and every call first removes the
        folders of processes that no longer run on this host.
        """
        base = self.ensure().root / SCRATCH_DIR
        base.mkdir(exist_ok=True)
        _sweep(base)
        path = Path(tempfile.mkdtemp(prefix=f"{name}-{os.getpid()}-", dir=base))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


SCRATCH_DIR = ".scratch"


def _sweep(base: Path) -> None:
    """Remove scratch folders (``<name>-<pid>-<random>``) whose process is gone."""
    for entry in base.iterdir():
        parts = entry.name.rsplit("-", 2)
        if len(parts) == 3 and parts[1].isdigit() and not _running(int(parts[1])):
            shutil.rmtree(entry, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: an existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def resolve_home(flag: str | os.PathLike[str] | None = None) -> Home:
    """Return the home from the flag, the environment, or the default, in that order."""
    raw = flag or os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Home(Path(raw).expanduser().absolute())
