"""The accuracy gate: the final .tflite, run by the interpreter, against the original model.

The reference is the unpruned, unquantized Keras model on the same labelled images; the drop
is in percentage points, with its 95 % paired-bootstrap interval (``drop_ci95``,
:func:`edgeprune.device.metrics.compare`). The images must be ones that neither early stopping nor
distillation selected on (compile holds them out: ``--gate-data`` or ``--gate-split``),
otherwise the gate measures the selection's luck as well as the artifact.

``mode`` 'point' judges the measured drop, 'upper' the interval's upper end
(:func:`edgeprune.device.budgets.accuracy_row`); when the interval contains the limit the result says
the data are too few to decide. Over budget -> VerificationError (exit 1) and the compile ships
nothing: compile keeps the candidate as ``OUT.rejected`` (edgeprune.base.artifacts.ArtifactDir.reject).
"""
from __future__ import annotations

import os
from pathlib import Path

from edgeprune.base.errors import InputError, VerificationError


def _gated(reference: dict, y: dict, chosen: str | None) -> str:
    from edgeprune.device.metrics import CLASSIFICATION, _flat, label_kind

    names = list(reference)
    if chosen is not None:
        if chosen not in names:
            raise InputError(f"--gate-output {chosen}: no such output (outputs: {', '.join(names)})")
        if chosen not in y:
            raise InputError(f"--gate-output {chosen}: the gate data has no labels for it (y_{chosen})")
        return chosen
    for name in names:
        if name in y and label_kind(y[name], _flat(reference[name]).shape[1]) in CLASSIFICATION:
            return name
    labelled = [n for n in names if n in y]
    if not labelled:
        raise InputError(f"the gate data has no labels for any output ({', '.join(names)})")
    return labelled[0]


def check_accuracy_gate(tflite_bytes, reference_model, x_val, y_val, max_drop: float | None, *,
                        mode: str = "point", output: str | None = None, source: str | None = None) -> dict:
    """Measure both accuracies on the gate images; raise VerificationError when the gate fails.

    Returns ``{"reference_accuracy", "candidate_accuracy", "drop_points", "drop_ci95",
    "max_drop_points", "mode", "samples", "decided", "passed", "output", "data"}`` (accuracies
    in [0, 1], drop and interval in points). ``x_val``/``y_val`` may be dicts keyed by input /
    output name; ``output`` picks the gated output of a model with several (default: the first
    classification output). With ``max_drop`` None it only measures (``passed`` True).
    The raised error carries the result as ``.result``.
    """
    from edgeprune.device import budgets, metrics
    from edgeprune.device.api import evaluate_tflite
    from edgeprune.device.reference import keras_outputs
    from edgeprune.device.tflite_check import check_untrusted_tflite, verify_flatbuffer
    from edgeprune.device.verify import align, as_dict, labels_dict

    if y_val is None:
        raise InputError("the accuracy gate needs labelled data (--gate-data, --val-data or --train-data with labels)")
    if isinstance(tflite_bytes, (str, os.PathLike)):  # a file from outside: the full check
        check_untrusted_tflite(tflite_bytes, str(tflite_bytes))
        tflite_bytes = Path(tflite_bytes).read_bytes()
    else:  # compile's own converter output: the cheap structural check, no child per candidate
        verify_flatbuffer(tflite_bytes, "the converted model")
    reference = keras_outputs(reference_model, x_val, batch_size=256)
    names = list(reference)
    candidate = align(as_dict(evaluate_tflite(tflite_bytes, x_val, trusted=True)["outputs"], names), names)
    y = labels_dict(y_val, names)
    name = _gated(reference, y, output)
    kind = metrics.label_kind(y[name], metrics._flat(reference[name]).shape[1], f"gate labels of output '{name}'")
    if kind not in metrics.CLASSIFICATION:
        raise InputError(f"output '{name}' is a regression head (scored by MSE); the accuracy gate needs a "
                         "classification output: choose one with --gate-output")
    comparison = metrics.compare(reference[name], candidate[name], y[name])
    result = dict(comparison, max_drop_points=max_drop, mode=mode, output=name if len(names) > 1 else None,
                  data=source, decided=True, passed=True)
    if max_drop is not None:
        row = budgets.accuracy_row(max_drop, comparison, mode)
        note = budgets.undecided_note(row)
        result.update(passed=row["ok"], decided=row["decided"], note=note)
        if not row["ok"]:
            err = VerificationError(f"accuracy gate: {budgets.describe(row)}")
            err.result = result
            raise err
    return result
