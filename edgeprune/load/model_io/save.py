"""Write a model back to disk in the flavour the user gave us, atomically.

A model of the asked flavour is saved by its own Keras. A tf_keras model that must become a
Keras 3 file (it went through tfmot) is written as a tf_keras HDF5 to a temp file, read with
Keras 3's legacy-HDF5 loader (made for exactly this) and saved as ``.keras``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgeprune.base.errors import InputError

FLAVOURS = ("keras3", "tf_keras")


def _temp_beside(path: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.unlink(name)  # Keras wants to create the file itself
    return Path(name)


def save_model(model, path, *, flavour: str | None = None, origin_class: str | None = None) -> Path:
    """Save ``model`` to ``path`` as ``flavour`` (default: the model's own); whole or not at all.

    ``origin_class``: the keras.Model subclass ``model`` was traced from (``LoadedModel.origin_class``);
    the file records it, since ``model`` is saved as a plain functional Model (model_io.subclass).
    """
    from edgeprune.base.env import is_keras3_model

    path = Path(path)
    own = "keras3" if is_keras3_model(model) else "tf_keras"
    flavour = flavour or own
    if own == "keras3" and flavour == "tf_keras":
        raise InputError(f"{path}: a Keras 3 model cannot be saved as a tf_keras file")
    if flavour not in FLAVOURS:
        raise InputError(f"unknown model flavour '{flavour}' (choose from {', '.join(FLAVOURS)})")
    suffix = path.suffix.lower()
    allowed = (".keras",) if flavour == "keras3" else (".keras", ".h5")
    if suffix not in allowed:
        raise InputError(f"{path}: a {flavour} model must be saved as {' or '.join(allowed)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path, suffix)
    scratch = None
    try:
        if flavour == own:
            model.save(tmp)
            if own == "keras3" and suffix == ".keras":
                from edgeprune.load.model_io.hub import repair_saved_config

                repair_saved_config(tmp, model)  # keras-hub layers whose get_config does not round-trip
        else:
            from edgeprune.base.env import keras3
            keras = keras3()

            scratch = _temp_beside(path, ".h5")
            model.save(scratch, save_format="h5")
            _fix_node_indices_for_keras3(scratch)
            # Our own file, just written: no untrusted code can be in it.
            k3 = keras.saving.load_model(scratch, compile=False, safe_mode=False)
            k3.save(tmp)
        if origin_class:
            from edgeprune.load.model_io.subclass import write_origin

            write_origin(tmp, origin_class)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, scratch):
            if leftover is not None and leftover.exists():
                leftover.unlink()
    return path


def _fix_node_indices_for_keras3(h5_path: Path) -> None:
    """Keras 3's legacy-HDF5 loader counts nested-model nodes from 0; tf_keras from 1."""
    import json

    import h5py

    from edgeprune.load.model_io.keras3_to_tfkeras import to_keras3_node_indices

    with h5py.File(h5_path, "r+") as f:
        raw = f.attrs["model_config"]
        config = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        f.attrs["model_config"] = json.dumps(to_keras3_node_indices(config)).encode("utf-8")
