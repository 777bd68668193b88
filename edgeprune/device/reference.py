"""Outputs of the source Keras model on the eval data, computed on the compile machine."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeprune.base.errors import InputError


def load_reference(path: str | Path):
    """A Keras model, via edgeprune.load.model_io when present, else tf_keras/Keras 3 in safe mode."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: reference model not found")
    try:
        from edgeprune.load.model_io import load_model
    except ModuleNotFoundError as exc:
        if exc.name not in ("edgeprune.load.model_io",):
            raise
        return _load_fallback(p)
    return load_model(p).model


def _load_fallback(p: Path):
    from edgeprune.base.env import tf_keras

    K = tf_keras()
    try:
        if p.suffix == ".keras":
            return K.models.load_model(p, compile=False, safe_mode=True)
        return K.models.load_model(p, compile=False)
    except Exception as first:  # a Keras 3 file: tf_keras cannot read it
        if p.suffix != ".keras":
            raise InputError(f"{p}: cannot load the reference model ({first})") from None
        try:
            from edgeprune.base.env import keras3
            keras = keras3()

            return keras.saving.load_model(p, compile=False, safe_mode=True)
        except Exception as exc:
            raise InputError(f"{p}: cannot load the reference model ({exc})") from None


def keras_outputs(model, x, batch_size: int = 64) -> dict:
    """Every output of a Keras model on x (an array, or a dict keyed by input name), keyed by
    output name, as float32."""
    out = model.predict(x, batch_size=batch_size, verbose=0)
    names = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])
    if isinstance(out, dict):
        return {k: np.asarray(v, np.float32) for k, v in out.items()}
    if not isinstance(out, (list, tuple)):
        out = [out]
    return {name: np.asarray(v, np.float32) for name, v in zip(names, out)}


def reference_outputs(model_path: str | Path, x, names=None, batch_size: int = 64) -> dict:
    """The reference model's outputs on x, keyed by output name (``names``: the artifact's)."""
    model = load_reference(model_path)
    try:
        outputs = keras_outputs(model, x, batch_size)
    except Exception as exc:
        raise InputError(f"{model_path}: the reference model cannot run on the eval data ({exc})") from None
    if names and len(names) == 1 and len(outputs) == 1:
        return {names[0]: next(iter(outputs.values()))}
    return outputs
