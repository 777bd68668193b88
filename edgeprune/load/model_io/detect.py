"""Work out what kind of model file we were given before any loader touches it.

Loaders fail with long, confusing tracebacks on the wrong kind of file; sniffing magic bytes and
metadata first lets every refusal be one line that names the file and the reason.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgeprune.base.errors import InputError

_ZIP_MAGIC = b"PK\x03\x04"
_H5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class ModelFormat:
    """What is on disk: ``kind`` is "keras_zip", "h5", "h5_legacy" (Keras 1.x-2.3, config already
    translated by :mod:`legacy_h5`), "savedmodel" or "savedmodel_bare" (no Keras metadata:
    compile only); flavour "keras3" | "tf_keras" | "savedmodel"."""

    kind: str
    flavour: str
    keras_version: str | None
    config: dict | None  # the model config (for the safety scan); None for SavedModel


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (models can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# What a SavedModel's identity covers: the graph, the Keras config tf_keras rebuilds the model
# from, and the weights (variables/ holds the checkpoint shards and their index).
_SAVEDMODEL_IDENTITY = ("saved_model.pb", "keras_metadata.pb")


def model_sha256(path: Path) -> str:
    """The one identity of a model on disk, wherever a model's hash is recorded or compared
    (manifest ``source``, a study's ``model_sha256``, ``--from-study``'s model check, the kept
    pruned model of ``inspect --quant-error``).

    A file: the sha256 of its bytes. A SavedModel directory: a sha256 over the sorted relative
    paths and the contents of ``saved_model.pb``, ``keras_metadata.pb`` and every file under
    ``variables/``; the graph alone stays the same when the weights are retrained, so hashing
    only ``saved_model.pb`` let retrained weights pass for the searched model.
    """
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    files = [path / name for name in _SAVEDMODEL_IDENTITY if (path / name).is_file()]
    if (path / "variables").is_dir():
        files += [f for f in (path / "variables").rglob("*") if f.is_file()]
    digest = hashlib.sha256()
    for rel, f in sorted((f.relative_to(path).as_posix(), f) for f in files):
        digest.update(f"{rel}\0{sha256_file(f)}\n".encode())
    return digest.hexdigest()


def _flavour_of(version: str | None) -> str:
    major = (version or "2").split(".", 1)[0]
    return "keras3" if major.isdigit() and int(major) >= 3 else "tf_keras"


def _check_keras_members(path: Path, zf: zipfile.ZipFile) -> None:
    """Declared sizes from the zip directory, before anything is inflated: each member (and its
    compression ratio), all members together, and the JSON files we read in full."""
    from edgeprune.base import limits

    limit = limits.current()
    total = 0
    for info in zf.infolist():
        if info.filename in ("config.json", "metadata.json"):
            limits.check("config_bytes", info.file_size, f"{path}: member '{info.filename}'", limits=limit)
        limits.check_zip_member(info, str(path), limits=limit)
        total += info.file_size
    limits.check("archive_bytes", total, f"{path}: members together", limits=limit)


def _read_json_member(path: Path, zf: zipfile.ZipFile, name: str):
    """A JSON member, read no further than the config limit whatever its header claims."""
    from edgeprune.base import limits

    cap = limits.current().config_bytes
    with zf.open(name) as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        limits.check("config_bytes", len(data), f"{path}: member '{name}'", what="holds at least")
    return json.loads(data)


def _sniff_keras_zip(path: Path) -> ModelFormat:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "config.json" not in names:
                raise InputError(f"{path}: not a Keras model (zip archive without config.json)")
            _check_keras_members(path, zf)
            meta = _read_json_member(path, zf, "metadata.json") if "metadata.json" in names else {}
            config = _read_json_member(path, zf, "config.json")
            bad = zf.testzip()
            if bad is not None:
                raise InputError(f"{path}: corrupt .keras archive (bad CRC in {bad})")
    except InputError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise InputError(f"{path}: unreadable .keras archive ({_short(exc)})") from None
    version = meta.get("keras_version") if isinstance(meta, dict) else None
    return ModelFormat("keras_zip", _flavour_of(version), version, config)


def _sniff_h5(path: Path) -> ModelFormat:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            version = f.attrs.get("keras_version")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable HDF5 file ({_short(exc)})") from None
    if raw is None:
        raise InputError(
            f"{path}: HDF5 file holds no model config (weights-only file?); save the whole model"
        )
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if isinstance(version, bytes):
        version = version.decode("utf-8")
    try:
        config = json.loads(raw)
    except ValueError:
        raise InputError(f"{path}: HDF5 model_config is not valid JSON") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise InputError(f"{path}: HDF5 model_config is not a Keras model config")
    from edgeprune.load.model_io import legacy_h5

    if legacy_h5.is_legacy(config, version):
        return ModelFormat("h5_legacy", "tf_keras", version, legacy_h5.modernize(config, path, version))
    return ModelFormat("h5", _flavour_of(version), version, config)


def detect(path: Path) -> ModelFormat:
    """Classify ``path`` or raise InputError naming the file and what is wrong with it."""
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file() and (path / "saved_model.pbtxt").is_file():
            raise InputError(f"{path}: a text SavedModel (saved_model.pbtxt); save it in binary form")
        if not (path / "saved_model.pb").is_file():
            raise InputError(
                f"{path}: a directory but not a SavedModel (no saved_model.pb); "
                "expected a .keras file, an .h5 file or a SavedModel directory"
            )
        if not (path / "keras_metadata.pb").is_file():
            return ModelFormat("savedmodel_bare", "savedmodel", None, None)
        return ModelFormat("savedmodel", "tf_keras", None, None)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_ZIP_MAGIC):
        return _sniff_keras_zip(path)
    if head.startswith(_H5_MAGIC):
        return _sniff_h5(path)
    if not head:
        raise InputError(f"{path}: empty file, not a Keras model")
    raise InputError(
        f"{path}: not a Keras model (expected a .keras zip, an .h5 file or a SavedModel directory)"
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
