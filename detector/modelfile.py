"""The fleet model on disk: plain arrays plus a manifest of hashes, never pickle.

A fitted fleet model is a directory holding two files:

``arrays.npz``
    Every learned number, as named numpy arrays (``np.savez_compressed``). Only
    fixed-width dtypes are allowed (bool, integers, floats, complex, datetimes,
    fixed-width unicode and bytes), so the file loads with ``allow_pickle=False``.
``manifest.json``
    ``format`` (``"syncguard-fleet/3"``; ``/1`` and ``/2`` files still load), ``created_at``, the
    ``config`` the model was fitted with, its backtest ``metrics``, free ``meta``, an
    index of the arrays (dtype and shape) and the SHA-256 and size of every other file
    in the directory.

The SHA-256 of ``manifest.json`` itself (:func:`model_digest`) therefore fingerprints
the whole model; the registry stores it as a version tag and the local cache checks
it before scoring. This module must not import mlflow: the scoring path loads models
through it and stays usable when the MLflow store is down.

Examples
--------
>>> import tempfile, numpy as np
>>> from pathlib import Path
>>> d = Path(tempfile.mkdtemp()) / "model"
>>> _ = save_model_dir(d, arrays={"mu": np.arange(3.0)}, config={"seed": 7})
>>> m = load_model_dir(d)
>>> m.arrays["mu"].tolist(), m.config["seed"], len(m.digest)
([0.0, 1.0, 2.0], 7, 64)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from detector.errors import ModelError

__all__ = [
    "FORMAT",
    "READABLE_FORMATS",
    "MANIFEST_NAME",
    "ARRAYS_NAME",
    "ALLOWED_DTYPE_KINDS",
    "LoadedModel",
    "save_model_dir",
    "load_model_dir",
    "model_digest",
]

FORMAT = "syncguard-fleet/3"
#: Formats this syncguard reads. /2 stores text columns as distinct values and codes,
#: which a reader of /1 cannot rebuild; /3 adds the baselines' hour offsets, which a
#: reader of /2 would ignore: older readers refuse newer files by their format.
READABLE_FORMATS = ("syncguard-fleet/1", "syncguard-fleet/2", FORMAT)
MANIFEST_NAME = "manifest.json"
ARRAYS_NAME = "arrays.npz"

#: numpy dtype kinds that round-trip through ``.npy`` without pickle: bool, signed and
#: unsigned integers, floats, complex, timedelta, datetime, fixed-width bytes and unicode.
#: Object (``O``) and structured/void (``V``) arrays are refused: the first needs pickle,
#: the second can hide object fields.
ALLOWED_DTYPE_KINDS = frozenset("biufcmMSU")

_CHUNK = 1 << 20
_NOT_A_MODEL = ": not a syncguard model directory"  # why a missing manifest is an error


@dataclass(frozen=True)
class LoadedModel:
    """A model directory that passed every integrity check.

    Attributes
    ----------
    arrays : dict of str to numpy.ndarray
        Every array in ``arrays.npz``, fully read into memory.
    manifest : dict
        The parsed ``manifest.json``.
    path : pathlib.Path
        The directory the model was loaded from.
    digest : str
        Hex SHA-256 of ``manifest.json``: the model's version fingerprint.
    """

    arrays: dict[str, np.ndarray]
    manifest: dict[str, Any]
    path: Path
    digest: str

    @property
    def config(self) -> dict[str, Any]:
        """The configuration the model was fitted with."""
        return self.manifest.get("config", {})

    @property
    def metrics(self) -> dict[str, Any]:
        """Backtest metrics recorded when the model was saved."""
        return self.manifest.get("metrics", {})

    @property
    def meta(self) -> dict[str, Any]:
        """Free-form metadata (connector ids, kinds, training window...)."""
        return self.manifest.get("meta", {})


def save_model_dir(
    path: str | os.PathLike[str],
    *,
    arrays: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model directory atomically.

    The files are written into a temporary sibling directory and renamed into place,
    so a reader sees either no model or a complete one, never half a model.

    Parameters
    ----------
    path : path-like
        Directory to create. Its parent is created if needed.
    arrays : mapping of str to array-like
        The learned numbers. Names must be non-empty strings without control
        characters (``/`` is allowed for namespacing, e.g. ``"okta-1/mean"``).
        Each value is passed through ``numpy.asarray``; its dtype kind must be in
        :data:`ALLOWED_DTYPE_KINDS`.
    config : mapping
        JSON-serialisable fitting configuration (numpy scalars are converted).
        Non-finite floats are refused: they are not JSON.
    metrics : mapping, optional
        JSON-serialisable backtest metrics. Non-finite floats (a recall with no
        episodes to recall) are written as ``null``, meaning "not defined".
    meta : mapping, optional
        JSON-serialisable metadata; non-finite floats are refused.
    overwrite : bool, default False
        Replace an existing directory at ``path``. The old directory is moved aside
        first and deleted only after the new one is in place.

    Returns
    -------
    pathlib.Path
        ``path``, now holding ``manifest.json`` and ``arrays.npz``.

    Raises
    ------
    ValueError
        An array name or dtype is not allowed, or a dict is not JSON-serialisable.
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"model directory {target} already exists (pass overwrite=True)")
    checked = _check_arrays(arrays)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "config": _jsonable(config, "config", nan_to_null=False),
        "metrics": _jsonable(metrics or {}, "metrics", nan_to_null=True),
        "meta": _jsonable(meta or {}, "meta", nan_to_null=False),
        "arrays": {
            name: {"dtype": a.dtype.str, "shape": list(a.shape)} for name, a in checked.items()
        },
        "files": {},
    }

    target.parent.mkdir(parents=True, exist_ok=True)
    # Same parent, so the final rename stays on one filesystem and is atomic.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        arrays_path = tmp / ARRAYS_NAME
        with open(arrays_path, "wb") as fh:
            np.savez_compressed(fh, **checked)
            fh.flush()
            os.fsync(fh.fileno())
        manifest["files"][ARRAYS_NAME] = {
            "sha256": _sha256_file(arrays_path),
            "size": arrays_path.stat().st_size,
        }
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        _move_into_place(tmp, target, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_model_dir(
    path: str | os.PathLike[str], *, expected_digest: str | None = None
) -> LoadedModel:
    """Load a model directory after checking every file against its manifest.

    Parameters
    ----------
    path : path-like
        A directory written by :func:`save_model_dir`.
    expected_digest : str, optional
        If given, the SHA-256 of ``manifest.json`` must equal it (the registry's or
        the cache's record of which model this is).

    Returns
    -------
    LoadedModel

    Raises
    ------
    detector.errors.ModelError
        The directory or a file is missing, a file's size or SHA-256 differs from the
        manifest, the manifest is unreadable or of an unknown format, a file is not in
        the manifest, or ``arrays.npz`` holds anything that would need pickle. The
        message names the file and what is wrong.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelError(f"model directory {root} does not exist")
    manifest_path = root / MANIFEST_NAME
    with _reading(manifest_path, _NOT_A_MODEL):
        raw = manifest_path.read_bytes()
    # Hash the exact bytes we parse, so the digest and the content cannot diverge.
    digest = hashlib.sha256(raw).hexdigest()
    if expected_digest is not None and digest != expected_digest:
        raise ModelError(
            f"{manifest_path} has SHA-256 {digest}, expected {expected_digest}: "
            "the model was changed or replaced after it was registered"
        )
    manifest = _parse_manifest(raw, manifest_path)
    files = manifest["files"]

    present = {p.name for p in root.iterdir()} - {MANIFEST_NAME}
    unlisted = sorted(present - set(files))
    if unlisted:
        raise ModelError(
            f"{root / unlisted[0]} is not listed in {MANIFEST_NAME}: "
            "the model directory was altered after it was saved"
        )

    blobs: dict[str, bytes] = {}
    for name, entry in files.items():
        file_path = root / name
        # Read once and check the same bytes we load: no window for a swap between the
        # hash check and np.load.
        with _reading(file_path, f" (listed in {MANIFEST_NAME})"):
            data = file_path.read_bytes()
        if len(data) != entry["size"]:
            raise ModelError(
                f"{file_path} is {len(data)} bytes, {MANIFEST_NAME} says {entry['size']}: "
                "the file is truncated or was changed after the model was saved"
            )
        actual = hashlib.sha256(data).hexdigest()
        if actual != entry["sha256"]:
            raise ModelError(
                f"{file_path} failed its integrity check: SHA-256 {actual}, "
                f"{MANIFEST_NAME} says {entry['sha256']} (tampered or corrupt; "
                "refresh the model or retrain)"
            )
        blobs[name] = data

    arrays_path = root / ARRAYS_NAME
    arrays = _load_npz(blobs[ARRAYS_NAME], arrays_path)
    _check_index(arrays, manifest.get("arrays"), arrays_path)
    return LoadedModel(arrays=arrays, manifest=manifest, path=root, digest=digest)


def model_digest(path: str | os.PathLike[str]) -> str:
    """Return the model's version fingerprint: hex SHA-256 of its ``manifest.json``.

    The manifest records the SHA-256 of every other file, so equal digests mean
    byte-identical models. This does not verify the other files; use
    :func:`load_model_dir` for that.

    Raises
    ------
    detector.errors.ModelError
        ``manifest.json`` is missing or unreadable.
    """
    manifest_path = Path(path) / MANIFEST_NAME
    with _reading(manifest_path, _NOT_A_MODEL):
        return _sha256_file(manifest_path)


# --- helpers ---------------------------------------------------------------------------


def _check_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not arrays:
        raise ValueError("a model needs at least one array")
    checked: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or not name.isprintable():
            raise ValueError(f"array name {name!r} must be a non-empty printable string")
        try:
            a = np.asarray(value)
        except ValueError as exc:  # ragged nested lists
            raise ValueError(
                f"array {name!r} is not rectangular ({exc}); as an object array it "
                "would need pickle to load"
            ) from exc
        if a.dtype.kind not in ALLOWED_DTYPE_KINDS:
            raise ValueError(
                f"array {name!r} has dtype {a.dtype}, which would need pickle to load; "
                "store numbers, booleans or fixed-width strings (e.g. np.array(xs, dtype=str))"
            )
        checked[name] = a
    return checked


def _jsonable(value: Mapping[str, Any], what: str, *, nan_to_null: bool) -> dict[str, Any]:
    def convert(v: Any, where: str) -> Any:
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bool | int | str) or v is None:
            return v
        if isinstance(v, float):
            if math.isfinite(v):
                return v
            if nan_to_null:
                return None
            raise ValueError(f"{where} is {v}, which JSON cannot hold")
        if isinstance(v, Mapping):
            out = {}
            for k, item in v.items():
                if not isinstance(k, str):
                    raise ValueError(f"{where} has a non-string key {k!r}")
                out[k] = convert(item, f"{where}.{k}")
            return out
        if isinstance(v, list | tuple):
            return [convert(item, f"{where}[{i}]") for i, item in enumerate(v)]
        raise ValueError(
            f"{where} is a {type(v).__name__}; manifests hold JSON values only "
            "(put arrays in `arrays`)"
        )

    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a dict, got {type(value).__name__}")
    return convert(value, what)


def _parse_manifest(raw: bytes, manifest_path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ModelError(f"{manifest_path} must hold a JSON object")
    fmt = manifest.get("format")
    if fmt not in READABLE_FORMATS:
        readable = " and ".join(repr(f) for f in READABLE_FORMATS)
        raise ModelError(
            f"{manifest_path} has format {fmt!r}; this syncguard reads {readable} only "
            "(retrain, or use the syncguard version that wrote it)"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or ARRAYS_NAME not in files:
        raise ModelError(f"{manifest_path} does not list {ARRAYS_NAME} under 'files'")
    for name, entry in files.items():
        # Plain names only: a manifest must not point outside its own directory.
        if not isinstance(name, str) or name in {"", ".", ".."} or "/" in name or "\\" in name:
            raise ModelError(f"{manifest_path} lists an invalid file name {name!r}")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("size"), int)
        ):
            raise ModelError(f"{manifest_path} entry for {name!r} needs 'sha256' and 'size'")
    return manifest


def _load_npz(data: bytes, arrays_path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except ValueError as exc:
        # numpy raises ValueError("Object arrays cannot be loaded when allow_pickle=False").
        if "allow_pickle" in str(exc):
            raise ModelError(
                f"{arrays_path} holds an object array that only pickle could load; refused"
            ) from exc
        raise ModelError(f"{arrays_path} is not a readable .npz file: {exc}") from exc
    except Exception as exc:  # zipfile.BadZipFile, OSError, EOFError...
        raise ModelError(f"{arrays_path} is not a readable .npz file: {exc}") from exc


def _check_index(arrays: dict[str, np.ndarray], index: Any, arrays_path: Path) -> None:
    for name, a in arrays.items():
        if a.dtype.kind not in ALLOWED_DTYPE_KINDS:
            raise ModelError(f"{arrays_path} array {name!r} has disallowed dtype {a.dtype}")
    if not isinstance(index, dict):
        return
    if set(index) != set(arrays):
        missing = sorted(set(index) - set(arrays))
        extra = sorted(set(arrays) - set(index))
        raise ModelError(
            f"{arrays_path} does not match {MANIFEST_NAME}: missing arrays {missing}, "
            f"unlisted arrays {extra}"
        )
    for name, a in arrays.items():
        want = index[name] if isinstance(index[name], dict) else {}
        if want.get("dtype") != a.dtype.str or list(want.get("shape", [])) != list(a.shape):
            raise ModelError(
                f"{arrays_path} array {name!r} is {a.dtype.str}{list(a.shape)}, "
                f"{MANIFEST_NAME} says {want.get('dtype')}{want.get('shape')}"
            )


@contextlib.contextmanager
def _reading(path: Path, missing: str) -> Iterator[None]:
    """A file of the model read in the block: a ModelError naming it when it is missing
    (``missing`` says why it should be there) or cannot be read."""
    try:
        yield
    except FileNotFoundError:
        raise ModelError(f"{path} is missing{missing}") from None
    except OSError as exc:
        raise ModelError(f"{path} cannot be read: {exc}") from exc


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _move_into_place(tmp: Path, target: Path, *, overwrite: bool) -> None:
    if not (overwrite and target.exists()):
        os.rename(tmp, target)
        return
    # A non-empty directory cannot be replaced in one rename: move the old one aside,
    # put the new one in, then delete the old one.
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(aside)
    os.rename(target, aside)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
