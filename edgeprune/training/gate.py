"""The accuracy gate: the final .tflite, run by the interpreter, against the original model.

The reference is the unpruned, unquantized Keras model on the same validation data; the
drop is in percentage points. Over budget -> VerificationError (exit 1) and the compile
ships nothing: compile keeps the candidate as ``OUT.rejected`` (edgeprune.artifacts.ArtifactDir.reject).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeprune.errors import InputError, VerificationError


def check_accuracy_gate(tflite_bytes, reference_model, x_val, y_val, max_drop: float | None) -> dict:
    """Measure both accuracies; raise VerificationError when the drop exceeds ``max_drop`` points.

    Returns ``{"reference_accuracy", "candidate_accuracy", "drop_points", "max_drop_points",
    "samples", "passed"}`` (accuracies in [0, 1]). The raised error carries it as ``.result``.
    With ``max_drop`` None it only measures (``passed`` True).
    """
    from edgeprune.training._tflite import accuracy, run_tflite

    if y_val is None:
        raise InputError("the accuracy gate needs labelled validation data (--val-data or --train-data with labels)")
    if isinstance(tflite_bytes, (str, os.PathLike)):
        tflite_bytes = Path(tflite_bytes).read_bytes()
    x_val = np.asarray(x_val, dtype=np.float32)
    ref_out = reference_model.predict(x_val, batch_size=256, verbose=0)
    ref_acc = accuracy(ref_out, y_val)
    cand_acc = accuracy(run_tflite(tflite_bytes, x_val), y_val)
    drop = (ref_acc - cand_acc) * 100.0
    result = {
        "reference_accuracy": ref_acc,
        "candidate_accuracy": cand_acc,
        "drop_points": round(drop, 4),
        "max_drop_points": max_drop,
        "samples": int(len(x_val)),
        "passed": max_drop is None or drop <= max_drop + 1e-9,
    }
    if not result["passed"]:
        err = VerificationError(
            f"accuracy gate: {cand_acc * 100:.2f}% on {len(x_val)} validation samples vs "
            f"{ref_acc * 100:.2f}% for the original model, a drop of {drop:.2f} points "
            f"> --max-accuracy-drop {max_drop:g}"
        )
        err.result = result
        raise err
    return result
