"""Local copy of the champion model, so scoring never needs MLflow.

Layout under ``Home.model_cache_dir`` (``<home>/models``)::

    champion.json          {"version": 7, "digest": "<sha256 of manifest>", "path": "7", ...}
    7/manifest.json        the model directory as registered (detector.modelfile)
    7/arrays.npz

:func:`refresh_champion` asks the MLflow registry which version holds the
``champion`` alias, downloads it if the local copy is missing or differs, checks it
against the digest recorded at registration and only then repoints ``champion.json``
(an atomic rename). :func:`load_champion` reads the pointer and the local copy and
re-checks every SHA-256; it imports nothing from MLflow, so scoring keeps working
when the MLflow store is down or unreachable. A failed refresh never deletes or
repoints the cache: the previous champion stays in use. Older versions are kept
for rollback; nothing here prunes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from detector.errors import ModelError
from detector.home import Home, resolve_home
from detector.modelfile import LoadedModel, load_model_dir

__all__ = ["POINTER_NAME", "refresh_champion", "load_champion", "champion_pointer"]

POINTER_NAME = "champion.json"


def _home(home: Home | str | os.PathLike[str] | None) -> Home:
    return home if isinstance(home, Home) else resolve_home(home)


def refresh_champion(home: Home | str | os.PathLike[str] | None) -> Path:
    """Make the local cache hold the registry's current champion, verified by digest.

    Parameters
    ----------
    home : Home or path-like or None
        The syncguard home (None resolves ``SYNCGUARD_HOME`` or ``./.syncguard``).

    Returns
    -------
    pathlib.Path
        ``<home>/models/<version>``, the verified local copy now named by
        ``champion.json``.

    Raises
    ------
    detector.errors.ModelError
        The registry cannot be reached, has no champion, the version has no digest
        tag, or the downloaded files fail verification. The cache is left as it was.
    """
    h = _home(home)
    cache = h.model_cache_dir
    try:
        # Imported here, not at module level: the scoring path imports this module and
        # must not pay for (or depend on) mlflow. training.register pulls mlflow in.
        import mlflow.artifacts

        from training import register
    except ImportError as exc:  # pragma: no cover - mlflow is a declared dependency
        raise ModelError(f"cannot refresh the champion: mlflow is not importable ({exc})") from exc

    uri = register.tracking_uri_for(h)
    try:
        info = register.champion_info(h)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"cannot reach the MLflow registry at {uri}: {exc}; {_fallback_note(h)}"
        ) from exc
    version, digest = info["version"], info["digest"]
    if not digest:
        raise ModelError(
            f"champion version {version} has no {register.TAG_DIGEST} tag, so its files "
            "cannot be verified; refusing to cache it"
        )

    dest = cache / str(version)
    if not _verifies(dest, digest):
        cache.mkdir(parents=True, exist_ok=True)
        with h.scratch("download") as tmp:  # same file system: the install is a rename
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=info["source"],
                    dst_path=str(tmp),
                    tracking_uri=info["tracking_uri"],
                    registry_uri=info["registry_uri"],
                )
            except Exception as exc:
                raise ModelError(
                    f"cannot download champion version {version} from {info['source']}: {exc}; "
                    f"{_fallback_note(h)}"
                ) from exc
            try:
                load_model_dir(local, expected_digest=digest)
            except ModelError as exc:
                raise ModelError(
                    f"downloaded champion version {version} from {info['source']} "
                    f"failed verification, not cached: {exc}"
                ) from exc
            _install(Path(local), dest, digest)

    _write_pointer(
        cache,
        {
            "version": version,
            "digest": digest,
            "path": str(version),
            "source": info["source"],
            "refreshed_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        },
    )
    return dest


def champion_pointer(home: Home | str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """Return the parsed ``champion.json``, or None when nothing is cached.

    Cheap (no hashing); for status displays. Use :func:`load_champion` to score.

    Raises
    ------
    detector.errors.ModelError
        ``champion.json`` exists but is unreadable or malformed.
    """
    pointer = _home(home).model_cache_dir / POINTER_NAME
    if not pointer.exists():
        return None
    return _read_pointer(pointer)


def load_champion(home: Home | str | os.PathLike[str] | None) -> tuple[LoadedModel, int]:
    """Load the cached champion after re-checking every file; never imports mlflow.

    Parameters
    ----------
    home : Home or path-like or None

    Returns
    -------
    model : detector.modelfile.LoadedModel
    version : int
        The registry version number of the champion.

    Raises
    ------
    detector.errors.ModelError
        No champion is cached, ``champion.json`` is malformed or points outside the
        cache, or the local copy is missing, corrupt or tampered with (the message
        names the file).
    """
    cache = _home(home).model_cache_dir
    pointer = cache / POINTER_NAME
    if not pointer.exists():
        raise ModelError(
            f"no champion model in {cache} ({POINTER_NAME} is missing); train one with "
            "`syncguard train`, or refresh the cache from the MLflow registry"
        )
    record = _read_pointer(pointer)
    model_dir = (cache / record["path"]).resolve()
    if model_dir.parent != cache.resolve():
        raise ModelError(f"{pointer} points outside {cache}: {record['path']!r}")
    return load_model_dir(model_dir, expected_digest=record["digest"]), record["version"]


# --- helpers ---------------------------------------------------------------------------


def _read_pointer(pointer: Path) -> dict[str, Any]:
    try:
        record = json.loads(pointer.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{pointer} cannot be read: {exc}") from exc
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("version"), int)
        or not isinstance(record.get("digest"), str)
        or not isinstance(record.get("path"), str)
    ):
        raise ModelError(f"{pointer} must hold an object with version, digest and path")
    return record


def _fallback_note(h: Home) -> str:
    """Say what scoring will use meanwhile, for refresh error messages."""
    try:
        record = champion_pointer(h)
    except ModelError:
        record = None
    if record is None:
        return "no usable champion is cached either"
    return f"the cached champion (version {record['version']}) stays in use"


def _verifies(model_dir: Path, digest: str) -> bool:
    if not model_dir.exists():
        return False
    try:
        load_model_dir(model_dir, expected_digest=digest)
    except ModelError:
        return False
    return True


def _install(local: Path, dest: Path, digest: str) -> None:
    """Move a verified download to ``dest``, replacing a bad copy if one is there."""
    if dest.exists():
        # A corrupt or foreign copy (it failed _verifies): move it aside, then delete.
        aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.bad-", dir=dest.parent))
        os.rmdir(aside)
        # Another refresh may have removed it first.
        with contextlib.suppress(FileNotFoundError):
            os.rename(dest, aside)
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.rename(local, dest)
    except OSError:
        # Another process installed the same version in the meantime; keep theirs
        # if it verifies.
        if not _verifies(dest, digest):
            raise


def _write_pointer(cache: Path, record: dict[str, Any]) -> None:
    # Write then rename: readers see the old pointer or the new one, never half.
    fd, tmp = tempfile.mkstemp(prefix=f".{POINTER_NAME}.", dir=cache)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, cache / POINTER_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
