"""Accuracy, MSE, agreement and the paired-bootstrap interval: the one definition of each.

bench/verify, the compile accuracy gate, training (iterative steps) and search all score
outputs here, so a model cannot pass one and fail another for a different reading of the same
numbers. (The device runner, ``harness/runner.py``, only returns raw outputs: scoring happens
on the controller with this module.)

A head's labels decide how it is scored (:func:`label_kind`):

- ``sparse``: class indices (integers, or integral floats in one column) for a head of several
  units -> top-1 accuracy, prediction = argmax (softmax probabilities and logits agree);
- ``onehot``: one-hot rows as wide as the head -> top-1 accuracy;
- ``binary``: 0/1 labels for a one-unit head -> accuracy with ONE threshold rule: positive iff
  the probability is >= 0.5, which for a logits head (no sigmoid) is logit >= 0 (the same
  decision, since sigmoid(z) >= 0.5 iff z >= 0);
- ``regression``: anything else -> mean squared error.

Models with several outputs are scored per output: ``outputs`` and ``y`` are dicts keyed by
output name (:func:`per_output`).
"""
from __future__ import annotations

import numpy as np

from edgeprune.base.errors import InputError

CLASSIFICATION = ("sparse", "onehot", "binary")


def _flat(a) -> np.ndarray:
    a = np.asarray(a)
    return a.reshape(len(a), -1)


def is_logits(outputs, logits: bool | None = None) -> bool:
    """Whether a one-unit head gives logits: as told, else when any value lies outside [0, 1]."""
    if logits is not None:
        return bool(logits)
    o = np.asarray(outputs, np.float64)
    return bool(o.size and (o.min() < 0.0 or o.max() > 1.0))


def predicted_classes(outputs, *, logits: bool | None = None) -> np.ndarray:
    """Class per row: argmax for several units, the binary threshold rule for one unit."""
    o = _flat(outputs)
    if o.shape[1] == 1:
        threshold = 0.0 if is_logits(o, logits) else 0.5
        return (o[:, 0] >= threshold).astype(np.int64)
    return np.argmax(o, axis=1)


def label_kind(y, width: int, what: str = "labels") -> str:
    """'sparse' | 'onehot' | 'binary' | 'regression' for labels ``y`` of a head ``width`` units wide.

    Refuses (InputError, one line naming ``what``) non-numeric or non-finite labels and class
    indices outside the head's units.
    """
    y = np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise InputError(f"{what}: labels must be numeric, found dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise InputError(f"{what}: labels contain NaN or infinite values")
    column = y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)
    if column:
        flat = y.reshape(-1)
        integral = y.dtype.kind in "iub" or bool(np.all(flat == np.round(flat)))
        if width == 1:
            return "binary" if integral and np.all((flat == 0) | (flat == 1)) else "regression"
        if not integral:
            bad = flat[flat != np.round(flat)][0]
            raise InputError(f"{what}: class labels must be integers, found non-integer values such as {bad}")
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= width:
            raise InputError(f"{what}: labels must be class indices in [0, {width - 1}] for a head with "
                             f"{width} output units, found range [{lo}, {hi}]")
        return "sparse"
    rows = y.reshape(len(y), -1)
    if rows.shape[1] != width:
        raise InputError(f"{what}: labels have shape {tuple(y.shape[1:])}, the output has {width} units")
    if np.all((rows == 0) | (rows == 1)) and np.all(rows.sum(axis=1) == 1):
        return "onehot"
    return "regression"


def correct(outputs, y, *, logits: bool | None = None, what: str = "labels") -> np.ndarray:
    """Per-sample 0/1 correctness of a classification head (for accuracy and the bootstrap)."""
    o = _flat(outputs)
    y = np.asarray(y)
    if len(y) != len(o):
        raise InputError(f"{what}: {len(y)} labels for {len(o)} samples")
    kind = label_kind(y, o.shape[1], what)
    if kind == "regression":
        raise InputError(f"{what}: these are regression targets, not class labels (accuracy needs classes)")
    truth = y.reshape(len(y), -1).argmax(axis=1) if kind == "onehot" else y.reshape(-1).astype(np.int64)
    return (predicted_classes(o, logits=logits) == truth).astype(np.float64)


def metrics(outputs, y, *, logits: bool | None = None, what: str = "labels") -> dict:
    """``{'accuracy': 0..1 or None, 'mse': float or None}`` of one head against its labels."""
    if y is None:
        return {"accuracy": None, "mse": None}
    o = _flat(outputs)
    y = np.asarray(y)
    if len(y) != len(o):
        raise InputError(f"{what}: {len(y)} labels for {len(o)} samples")
    kind = label_kind(y, o.shape[1], what)
    if kind in CLASSIFICATION:
        return {"accuracy": float(correct(o, y, logits=logits, what=what).mean()), "mse": None}
    t = y.reshape(len(y), -1).astype(np.float64)
    if t.shape != o.shape:
        raise InputError(f"{what}: targets of shape {tuple(y.shape)} do not match outputs of shape {tuple(o.shape)}")
    return {"accuracy": None, "mse": float(np.mean((o.astype(np.float64) - t) ** 2))}


def accuracy(outputs, y, *, logits: bool | None = None) -> float:
    """Top-1 accuracy (0..1) of one classification head."""
    return float(correct(outputs, y, logits=logits).mean())


def per_output(outputs, y) -> dict:
    """Metrics of every labelled output: ``{name: {'accuracy', 'mse'}}`` (dicts keyed by name)."""
    if not isinstance(outputs, dict):
        return {"output": metrics(outputs, y)}
    y = y or {}
    return {name: metrics(out, y.get(name), what=f"labels for output '{name}'") for name, out in outputs.items()}


def agreement(outputs, reference, *, logits: bool | None = None) -> dict:
    """Top-1 agreement and max/mean absolute error between two output arrays of one head."""
    a = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    b = np.asarray(reference, np.float64).reshape(len(reference), -1)
    if a.shape != b.shape:
        return {"top1_agreement": None, "max_abs_error": None, "mean_abs_error": None,
                "note": f"output shapes differ: {list(a.shape)} vs reference {list(b.shape)}"}
    diff = np.abs(a - b)
    logits = is_logits(b, logits)
    top1 = float(np.mean(predicted_classes(a, logits=logits) == predicted_classes(b, logits=logits)))
    return {"top1_agreement": top1, "max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean())}


def drop_interval(reference_correct, candidate_correct, *, level: float = 0.95, resamples: int = 10000,
                  seed: int = 0) -> tuple[float, float]:
    """Paired-bootstrap interval of the accuracy drop (reference - candidate), in points.

    Both models are scored on the same images, so the images are resampled together: each
    image contributes d = ref_correct - cand_correct in {-1, 0, 1}. The resampled mean only
    depends on how many of each value are drawn, so the bootstrap draws those counts
    (multinomial) instead of index vectors: exact, and cheap for any number of images.

    When the two models disagree on no image the bootstrap has nothing to resample and would
    claim certainty; the interval is then the rule of three (at most 3/n of images may differ
    at 95 %), so 20 identical answers are not taken as proof of a drop under 1 point.
    """
    d = np.asarray(reference_correct, np.float64) - np.asarray(candidate_correct, np.float64)
    n = len(d)
    if n == 0:
        return (float("nan"), float("nan"))
    if not d.any():
        bound = round(300.0 / n, 4)
        return (-bound, bound)
    p = np.array([np.mean(d == -1), np.mean(d == 0), np.mean(d == 1)])
    counts = np.random.default_rng(seed).multinomial(n, p / p.sum(), size=resamples)
    drops = (counts[:, 2] - counts[:, 0]) / n * 100.0
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(drops, [tail, 100.0 - tail])
    return (round(float(lo), 4), round(float(hi), 4))


def accuracy_interval(correct_flags, *, level: float = 0.95, resamples: int = 10000,
                      seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of an accuracy (0..1) from per-image 0/1 correctness (binomial draws)."""
    c = np.asarray(correct_flags, np.float64)
    n = len(c)
    if n == 0:
        return (float("nan"), float("nan"))
    draws = np.random.default_rng(seed).binomial(n, c.mean(), size=resamples) / n
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(draws, [tail, 100.0 - tail])
    return (round(float(lo), 6), round(float(hi), 6))


def compare(reference_outputs, candidate_outputs, y, *, logits: bool | None = None) -> dict:
    """Reference vs candidate accuracy on the same labelled images, with the drop's 95 % CI."""
    if _flat(reference_outputs).shape[1] == 1:  # one rule for both: decided on the reference
        logits = is_logits(reference_outputs, logits)
    ref = correct(reference_outputs, y, logits=logits)
    cand = correct(candidate_outputs, y, logits=logits)
    return {"reference_accuracy": float(ref.mean()), "candidate_accuracy": float(cand.mean()),
            "drop_points": round(float(ref.mean() - cand.mean()) * 100.0, 4),
            "drop_ci95": list(drop_interval(ref, cand)), "samples": int(len(ref))}
