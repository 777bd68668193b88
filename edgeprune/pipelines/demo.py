"""``edgeprune demo``: the main job on real data in under a minute, no input needed.

Trains a small CNN on scikit-learn's handwritten digits (8x8 grayscale, offline) and saves it
as a Keras 3 ``.keras`` file (the common case). Compiles it for the default profile four ways:
dense and pruned to half its MACs (fine-tuned with distillation from the dense model, gated on
held-out validation images), each as float32 and int8. Then benches and verifies all four
with the bench harness on test digits that no step saw, and returns one side-by-side table:
accuracy with its 95 % interval, the drop against the Keras model with its paired interval,
size, MACs and latency.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeprune.base.console import Output, default_output

DEFAULT_OUTPUT = Path("edgeprune-out")
MODES = ("float32", "int8")
PRUNE_MACS = 0.5       # keep half the MACs
FINETUNE_EPOCHS = 20   # with distillation; early stopping on the selection half of the validation data
MAX_DROP = 2.0         # accuracy gate of the pruned compiles, in points
VAL_SPLIT = 0.3        # of the training digits: half selects (early stopping), half gates (~200 images)


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
    """A ~60k-parameter Keras 3 CNN trained for a few seconds (seeded); wide enough that the
    x86-64 profile's channel rounding (16, the XNNPACK tile) leaves room to halve its MACs."""
    from edgeprune.base.env import keras3
    keras = keras3()

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1), name="digits")
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(64, 3, activation="relu", name="conv2")(h)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(64, activation="relu", name="fc1")(h)
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


def _compile(model_path: Path, dest: Path, mode: str, *, target: str, seed: int, calib: Path,
             train: Path | None, out: Output):
    from edgeprune.pipelines.compile import CompileOptions, run_compile
    from edgeprune.training.options import TrainingOptions

    options = CompileOptions(target=target, quantize=mode, calibration=str(calib), seed=seed, force=True)
    if train is not None:  # prune to half the MACs, recover with fine-tuning + distillation, gate
        options.target_macs = PRUNE_MACS
        options.training = TrainingOptions(train_data=str(train), val_split=VAL_SPLIT, finetune_epochs=FINETUNE_EPOCHS,
                                           distill=True, max_accuracy_drop=MAX_DROP, seed=seed)
    return run_compile(model_path, dest, options, output=out)


def _bench_row(result, label: str, mode: str, *, target: str, eval_path: Path, model_path: Path, y_test) -> dict:
    """Bench + verify one artifact with the harness (latency, accuracy, drop vs the Keras model)."""
    from edgeprune.device.api import bench
    from edgeprune.device.metrics import accuracy_interval, correct
    from edgeprune.device.verify import best_latency

    run = bench(result.tflite_path, target=target, threads=(1,), runs=50, warmup=5, eval_data=str(eval_path),
                reference_model=str(model_path), keep_outputs=True)
    device = run["devices"][0]
    best = best_latency(device)
    ev = device["eval"]
    pruning = result.report.get("pruning")
    gate = result.report.get("accuracy_gate")
    return {
        "model": label,
        "quantization": mode,
        "artifact": str(result.tflite_path),
        "tflite_bytes": result.manifest["artifact"]["bytes"],
        "macs": None if pruning is None else pruning["macs_after"],
        "_macs_before": None if pruning is None else pruning["macs_before"],
        "params": result.report["sizes"].get("pruned_params", result.report["sizes"]["source_params"]),
        "accuracy": ev["accuracy"],
        "accuracy_ci95": list(accuracy_interval(correct(device["outputs"], y_test))),
        "drop_vs_keras_points": ev["accuracy_drop_points"],
        "drop_ci95": ev["drop_ci95"],
        "agreement": (device.get("agreement") or {}).get("top1_agreement"),
        "latency_median_ms": None if best is None else float(best[1]),
        "gate": None if gate is None else {k: gate.get(k) for k in ("drop_points", "drop_ci95", "samples",
                                                                       "max_drop_points", "passed", "data")},
    }


def run_demo(output_dir: str | Path = DEFAULT_OUTPUT, *, target: str = "x86-64", seed: int = 0,
             output: Output | None = None) -> dict:
    """Train, save, compile dense and pruned (float32 + int8), bench and verify; returns the summary."""
    out = output or default_output()
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with out.progress("Training a small CNN on scikit-learn digits"):
        x_tr, y_tr, x_te, y_te = digits_data(seed)
        model = train_digits_model(x_tr, y_tr, seed=seed)
        keras_out = model.predict(x_te, verbose=0)
    from edgeprune.device.metrics import accuracy

    keras_acc = accuracy(keras_out, y_te)
    model_path = root / "digits.keras"
    _save_keras3(model, model_path)
    calib, train, eval_path = root / "calibration.npz", root / "train.npz", root / "eval.npz"
    np.savez(calib, x=x_tr[:200], y=y_tr[:200])
    np.savez(train, x=x_tr, y=y_tr)  # compile splits it: training, selection, gate
    np.savez(eval_path, x=x_te, y=y_te)  # test digits: no compile step sees them

    rows = []
    for label, prune in (("dense", False), ("pruned", True)):
        for mode in MODES:
            dest = root / f"digits-{label}-{target}-{mode}"
            result = _compile(model_path, dest, mode, target=target, seed=seed, calib=calib,
                              train=train if prune else None, out=out)
            with out.progress(f"Benchmarking and verifying {label} {mode}"):
                rows.append(_bench_row(result, label, mode, target=target, eval_path=eval_path,
                                       model_path=model_path, y_test=y_te))
    dense_macs = next(r.pop("_macs_before") for r in rows if r["model"] == "pruned")
    for row in rows:
        row.pop("_macs_before", None)
        if row["macs"] is None:  # the dense model: the MACs the pruning started from
            row["macs"] = dense_macs
    return {
        "model": str(model_path),
        "params": int(model.count_params()),
        "keras_bytes": model_path.stat().st_size,
        "keras_accuracy": keras_acc,
        "target": target,
        "train_samples": int(len(x_tr)),
        "test_samples": int(len(x_te)),
        "prune_macs": PRUNE_MACS,
        "dense_macs": dense_macs,
        "results": rows,
        "seconds": round(time.perf_counter() - start, 2),
    }
