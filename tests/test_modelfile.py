"""The safe model-file format: round trip, atomic save, and refusal of anything suspect."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from detector.errors import ModelError
from detector.modelfile import (
    ARRAYS_NAME,
    FORMAT,
    MANIFEST_NAME,
    load_model_dir,
    model_digest,
    save_model_dir,
)


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "okta-1/mean": rng.normal(size=(168, 4)),
        "okta-1/counts": np.arange(10, dtype=np.int64),
        "flags": np.array([True, False, True]),
        "connector_ids": np.array(["okta-1", "workday-2"]),
        "window": np.array(["2024-01-01", "2024-02-01"], dtype="datetime64[D]"),
    }


def _save(path: Path, **kw) -> Path:
    args = {"arrays": _arrays(), "config": {"seed": 7, "kinds": ["okta"]}}
    args.update(kw)
    return save_model_dir(path, **args)


def _resign(model_dir: Path) -> None:
    """Rewrite the manifest hashes as an attacker who can edit the manifest would."""
    manifest = json.loads((model_dir / MANIFEST_NAME).read_text())
    data = (model_dir / ARRAYS_NAME).read_bytes()
    manifest["files"][ARRAYS_NAME] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (model_dir / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_round_trip_keeps_every_array_and_dict(tmp_path: Path) -> None:
    metrics = {"episode_recall": 0.91, "recall.schema_drift": float("nan")}
    path = _save(tmp_path / "m", metrics=metrics, meta={"connectors": 2})
    model = load_model_dir(path)

    for name, want in _arrays().items():
        np.testing.assert_array_equal(model.arrays[name], want)
        assert model.arrays[name].dtype == want.dtype
    assert model.config == {"seed": 7, "kinds": ["okta"]}
    # NaN is not JSON: an undefined metric is stored as null.
    assert model.metrics == {"episode_recall": 0.91, "recall.schema_drift": None}
    assert model.meta == {"connectors": 2}
    assert model.manifest["format"] == FORMAT
    assert model.manifest["created_at"].endswith("Z")
    assert model.manifest["arrays"]["okta-1/mean"] == {"dtype": "<f8", "shape": [168, 4]}
    entry = model.manifest["files"][ARRAYS_NAME]
    data = (path / ARRAYS_NAME).read_bytes()
    assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert model.digest == model_digest(path)
    assert model.digest == hashlib.sha256((path / MANIFEST_NAME).read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp dirs left


def test_numpy_scalars_in_config_are_converted(tmp_path: Path) -> None:
    path = _save(tmp_path / "m", config={"n": np.int64(3), "q": np.float32(0.5)})
    assert load_model_dir(path).config == {"n": 3, "q": 0.5}


@pytest.mark.parametrize(
    "bad",
    [
        np.array([{"a": 1}, None], dtype=object),
        np.array([1, "x"], dtype=object),
        [[1, 2], [3]],  # ragged: numpy would need an object array
    ],
)
def test_save_refuses_object_arrays(tmp_path: Path, bad) -> None:
    with pytest.raises(ValueError, match="would need pickle"):
        save_model_dir(tmp_path / "m", arrays={"x": bad}, config={})
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"w": np.zeros(3)}, "config.w is a ndarray"),
        ({"cut": float("inf")}, "config.cut is inf"),
        ({"f": object()}, "config.f is a object"),
    ],
)
def test_save_refuses_non_json_config(tmp_path: Path, config, message) -> None:
    with pytest.raises(ValueError, match=message):
        save_model_dir(tmp_path / "m", arrays={"x": np.zeros(1)}, config=config)


def test_save_refuses_existing_dir_unless_overwrite(tmp_path: Path) -> None:
    path = _save(tmp_path / "m")
    with pytest.raises(FileExistsError):
        _save(path)
    _save(path, config={"seed": 8}, overwrite=True)
    assert load_model_dir(path).config["seed"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_flipped_byte_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = _save(tmp_path / "m")
    npz = path / ARRAYS_NAME
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0x01
    npz.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"arrays\.npz failed its integrity check: SHA-256"):
        load_model_dir(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "m")
    npz = path / ARRAYS_NAME
    npz.write_bytes(npz.read_bytes()[:-10])
    with pytest.raises(ModelError, match=r"arrays\.npz is \d+ bytes, manifest\.json says"):
        load_model_dir(path)


@pytest.mark.parametrize("name", [ARRAYS_NAME, MANIFEST_NAME])
def test_missing_file_is_refused(tmp_path: Path, name: str) -> None:
    path = _save(tmp_path / "m")
    (path / name).unlink()
    with pytest.raises(ModelError, match=re.escape(name) + " is missing"):
        load_model_dir(path)


@pytest.mark.parametrize("name", [ARRAYS_NAME, MANIFEST_NAME])
def test_unreadable_file_is_refused_with_its_name(tmp_path: Path, name: str) -> None:
    """A file that is there but cannot be read (here a directory in its place) is refused
    naming it and the OS error, by loading and, for the manifest, by the digest."""
    path = _save(tmp_path / "m")
    (path / name).unlink()
    (path / name).mkdir()
    why = re.escape(str(path / name)) + " cannot be read: .*Is a directory"
    with pytest.raises(ModelError, match=why) as raised:
        load_model_dir(path)
    assert isinstance(raised.value.__cause__, IsADirectoryError)
    if name == MANIFEST_NAME:
        with pytest.raises(ModelError, match=why):
            model_digest(path)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_model_dir(tmp_path / "nope")
    with pytest.raises(ModelError, match="manifest.json is missing: not a syncguard model") as e:
        model_digest(tmp_path / "nope")
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "m")
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["format"] = "syncguard-fleet/99"
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="format 'syncguard-fleet/99'"):
        load_model_dir(path)


def test_files_of_the_previous_format_still_load(tmp_path: Path) -> None:
    path = _save(tmp_path / "m")
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    assert manifest["format"] == "syncguard-fleet/3"
    for older in ("syncguard-fleet/1", "syncguard-fleet/2"):
        manifest["format"] = older
        (path / MANIFEST_NAME).write_text(json.dumps(manifest))
        assert load_model_dir(path).manifest["format"] == older


def test_garbled_manifest_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "m")
    (path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ModelError, match="manifest.json is not valid JSON"):
        load_model_dir(path)


def test_unlisted_file_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "m")
    (path / "extra.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="extra.bin is not listed in manifest.json"):
        load_model_dir(path)


def test_manifest_cannot_point_outside_its_directory(tmp_path: Path) -> None:
    path = _save(tmp_path / "m")
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["files"]["../secret"] = {"sha256": "0" * 64, "size": 1}
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="invalid file name '../secret'"):
        load_model_dir(path)


def test_expected_digest_mismatch_is_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "m")
    with pytest.raises(ModelError, match="changed or replaced after it was registered"):
        load_model_dir(path, expected_digest="0" * 64)


def test_pickled_object_array_is_refused_without_running_it(tmp_path: Path) -> None:
    # The payload would create `marker` if it were ever unpickled.
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = _save(tmp_path / "m")
    buf = io.BytesIO()
    np.savez(buf, **{"okta-1/mean": np.array([Payload()], dtype=object)}, allow_pickle=True)
    (path / ARRAYS_NAME).write_bytes(buf.getvalue())
    _resign(path)  # hashes match: only the no-pickle rule stands in the way

    with pytest.raises(ModelError, match=r"arrays\.npz holds an object array .* refused"):
        load_model_dir(path)
    assert not marker.exists()


def test_arrays_must_match_the_manifest_index(tmp_path: Path) -> None:
    path = _save(tmp_path / "m")
    buf = io.BytesIO()
    np.savez_compressed(buf, other=np.zeros(2))
    (path / ARRAYS_NAME).write_bytes(buf.getvalue())
    _resign(path)
    with pytest.raises(ModelError, match="does not match manifest.json"):
        load_model_dir(path)
