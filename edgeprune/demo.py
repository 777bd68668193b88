"""``edgeprune demo``: the whole path on real data in well under a minute, no input needed.

Trains a small CNN on scikit-learn's handwritten digits (8x8 grayscale, offline), saves it as a
Keras 3 ``.keras`` file (the common case), compiles it for the default profile as float32 and
int8, then measures accuracy, agreement with the Keras model and latency with the local
interpreter. Benchmarking goes through :mod:`edgeprune.harness`.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from edgeprune.console import Output, default_output

DEFAULT_OUTPUT = Path("edgeprune-out")
MODES = ("float32", "int8")


def digits_data(seed: int = 0):
    """sklearn digits as (x_train, y_train, x_test, y_test); x float32 (N, 8, 8, 1) in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def train_digits_model(x, y, *, seed: int = 0, epochs: int = 12):
    """A ~3k-parameter Keras 3 CNN trained for a few seconds (seeded)."""
    from edgeprune._env import keras3
    keras = keras3()

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1), name="digits")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(16, 3, activation="relu", name="conv2")(h)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(32, activation="relu", name="fc1")(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="classes")(h)
    model = keras.Model(inputs, outputs, name="digits_cnn")
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    return model


def _save_keras3(model, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.keras", dir=path.parent)
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def evaluate(tflite_path: Path, x, y) -> dict:
    """Accuracy and outputs of a .tflite model with the local interpreter."""
    from edgeprune.harness.api import evaluate_tflite

    return evaluate_tflite(tflite_path, x, y)


def latency_ms(tflite_path: Path, target: str, runs: int = 50) -> float | None:
    """Median single-sample latency measured by the bench harness on this machine."""
    from edgeprune.harness.api import bench
    from edgeprune.harness.verify import best_latency

    result = bench(tflite_path, target=target, threads=(1,), runs=runs, warmup=5)
    best = best_latency(result["devices"][0]) if result.get("devices") else None
    return None if best is None else float(best[1])


def run_demo(output_dir: str | Path = DEFAULT_OUTPUT, *, target: str = "x86-64", seed: int = 0,
             output: Output | None = None) -> dict:
    """Train, save, compile (float32 + int8), verify and bench; returns the summary dict."""
    from edgeprune.compile import CompileOptions, run_compile

    out = output or default_output()
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with out.progress("Training a small CNN on scikit-learn digits"):
        x_tr, y_tr, x_te, y_te = digits_data(seed)
        model = train_digits_model(x_tr, y_tr, seed=seed)
        keras_out = model.predict(x_te, verbose=0)
    keras_acc = float(np.mean(keras_out.argmax(-1) == y_te))
    model_path = root / "digits.keras"
    _save_keras3(model, model_path)
    calib = root / "calibration.npz"
    np.savez(calib, x=x_tr[:200], y=y_tr[:200])
    np.savez(root / "eval.npz", x=x_te, y=y_te)

    rows = []
    for mode in MODES:
        dest = root / f"digits-{target}-{mode}"
        options = CompileOptions(target=target, quantize=mode, calibration=str(calib) if mode == "int8" else None,
                                 seed=seed, force=True)
        result = run_compile(model_path, dest, options, output=out)
        with out.progress(f"Verifying and benchmarking {mode}"):
            ev = evaluate(result.tflite_path, x_te, y_te)
            outputs = np.asarray(ev["outputs"]).reshape(len(x_te), -1)
            agreement = float(np.mean(outputs.argmax(-1) == keras_out.argmax(-1)))
            lat = latency_ms(result.tflite_path, target)
        rows.append({
            "quantization": mode,
            "artifact": str(result.tflite_path),
            "tflite_bytes": result.manifest["artifact"]["bytes"],
            "keras_accuracy": keras_acc,
            "tflite_accuracy": ev["accuracy"],
            "agreement": agreement,
            "latency_median_ms": lat,
        })
    summary = {
        "model": str(model_path),
        "params": int(model.count_params()),
        "keras_bytes": model_path.stat().st_size,
        "target": target,
        "train_samples": int(len(x_tr)),
        "test_samples": int(len(x_te)),
        "results": rows,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return summary


class _CallableModule(types.ModuleType):
    """Keep ``edgeprune.demo(...)`` working after ``import edgeprune.demo`` binds the module."""

    def __call__(self, *args, **kwargs):
        return run_demo(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
