"""Gradual magnitude pruning during training (tfmot): unstructured or M:N (e.g. 2:4).

tfmot only zeroes weights (masks); the layers keep their shapes. Zeros make the .tflite
compress better and can be stored sparse (EXPERIMENTAL_SPARSITY), but the dense CPU kernels
run just as long, so :func:`sparsity_report` measures size and latency instead of assuming.
"""
from __future__ import annotations

import gzip
import time

import numpy as np

from edgeprune.base.console import Output, default_output
from edgeprune.base.errors import InputError
from edgeprune.training.finetune import (
    FitSettings,
    fit_compiled,
    loss_for,
    make_optimizer,
    output_is_logits,
    strategy,
)

PRUNABLE = ("Conv2D", "Dense")  # tfmot never prunes depthwise kernels


def _schedule(kind: str, sparsity: float, end_step: int):
    import tensorflow_model_optimization as tfmot

    sched = tfmot.sparsity.keras
    if kind == "constant":
        return sched.ConstantSparsity(sparsity, begin_step=0, frequency=max(1, end_step // 20))
    return sched.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0, end_step=end_step,
        frequency=max(1, end_step // 20),
    )


def wrap_for_pruning(model, *, sparsity: float | None, schedule: str = "polynomial", per_layer: dict | None = None,
                     m_by_n: tuple[int, int] | None = None, end_step: int = 1000):
    """Wrap prunable layers with ``prune_low_magnitude``; per-layer sparsities override the global one.

    Returns ``(wrapped_model, plan)`` where plan maps layer name -> target sparsity (or "M:N").
    """
    import tensorflow_model_optimization as tfmot

    from edgeprune.base.env import tf_keras
    from edgeprune.load.model_io import to_tf_keras
    from edgeprune.training._models import as_functional

    keras = tf_keras()
    model = as_functional(to_tf_keras(model, source="gradual/M:N sparsity (tfmot needs tf_keras)"))
    per_layer = dict(per_layer or {})
    names = {layer.name for layer in model.layers}
    unknown = sorted(set(per_layer) - names)
    if unknown:
        prunable = [layer.name for layer in model.layers if type(layer).__name__ in PRUNABLE]
        raise InputError(f"--per-layer-sparsity: no layer named {', '.join(unknown)} (prunable layers: {', '.join(prunable)})")
    plan: dict[str, object] = {}

    def clone_fn(layer):
        kind = type(layer).__name__
        if kind not in PRUNABLE:
            if layer.name in per_layer:
                raise InputError(f"--per-layer-sparsity {layer.name}: {kind} layers cannot be pruned by tfmot (only Conv2D, Dense)")
            return layer.__class__.from_config(layer.get_config())
        target = per_layer.get(layer.name, sparsity)
        if m_by_n is not None and layer.name not in per_layer:
            if not _m_by_n_applicable(layer, m_by_n):
                return layer.__class__.from_config(layer.get_config())
            plan[layer.name] = f"{m_by_n[0]}:{m_by_n[1]}"
            return tfmot.sparsity.keras.prune_low_magnitude(
                layer.__class__.from_config(layer.get_config()), sparsity_m_by_n=m_by_n
            )
        if not target:
            return layer.__class__.from_config(layer.get_config())
        plan[layer.name] = float(target)
        return tfmot.sparsity.keras.prune_low_magnitude(
            layer.__class__.from_config(layer.get_config()), pruning_schedule=_schedule(schedule, float(target), end_step)
        )

    wrapped = keras.models.clone_model(model, clone_function=clone_fn)
    _copy_into_wrapped(model, wrapped)
    if not plan:
        raise InputError("gradual pruning: no prunable Conv2D/Dense layer matched the requested sparsity")
    return wrapped, plan


def _m_by_n_applicable(layer, m_by_n) -> bool:
    """tfmot's M:N groups N consecutive input-channel weights; need at least N inputs."""
    kernel_shape = layer.kernel.shape
    return int(kernel_shape[-2]) >= m_by_n[1]


def _copy_into_wrapped(model, wrapped) -> None:
    for src, dst in zip(model.layers, wrapped.layers):
        if src.get_weights():
            inner = getattr(dst, "layer", dst)
            inner.set_weights(src.get_weights())


def train_gradual(model, train, val, *, task: str, options, settings: FitSettings | None = None,
                  output: Output | None = None):
    """Prune ``model`` gradually while training; returns ``(stripped_model, report)``."""
    import tensorflow_model_optimization as tfmot

    output = output or default_output()
    settings = settings or FitSettings.from_options(options, label="gradual pruning")
    if train.y is None:
        raise InputError("gradual pruning needs labelled --train-data")
    epochs = max(settings.epochs, 2)
    steps = int(np.ceil(len(train) / settings.batch_size))
    # reach the target by ~2/3 of training, then train at the final sparsity
    end_step = max(1, int(steps * epochs * 2 / 3))
    settings = FitSettings(**{**settings.__dict__, "epochs": epochs, "early_stopping": False,
                              "extra_callbacks": [tfmot.sparsity.keras.UpdatePruningStep()]})
    strat = strategy()
    with strat.scope():
        wrapped, plan = wrap_for_pruning(
            model, sparsity=options.gradual_sparsity, schedule=options.sparsity_schedule,
            per_layer=options.per_layer_sparsity, m_by_n=options.sparsity_m_by_n, end_step=end_step,
        )
        loss, metrics = loss_for(task, output_is_logits(model))
        wrapped.compile(optimizer=make_optimizer(settings, steps), loss=loss, metrics=metrics)
    # no early stopping: restoring an earlier epoch's weights would undo the sparsity schedule
    history = fit_compiled(wrapped, train, val, settings, monitor_acc=bool(metrics), output=output)
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    from edgeprune.training._models import copy_model

    stripped = copy_model(stripped)
    report = {"plan": plan, "measured": measure_sparsity(stripped, plan), "history": history}
    if options.sparsity_m_by_n:
        report["m_by_n_holds"] = check_m_by_n(stripped, options.sparsity_m_by_n, [n for n, p in plan.items() if isinstance(p, str)])
    return stripped, report


def measure_sparsity(model, layers=None) -> dict:
    """Fraction of exactly-zero kernel weights per layer and over the listed layers."""
    per_layer, zeros, total = {}, 0, 0
    for layer in model.layers:
        if layers is not None and layer.name not in layers:
            continue
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        k = kernel.numpy()
        z = int(np.sum(k == 0))
        per_layer[layer.name] = z / k.size
        zeros, total = zeros + z, total + k.size
    return {"layers": per_layer, "overall": zeros / total if total else 0.0}


def check_m_by_n(model, m_by_n, layers) -> bool:
    """True when every listed layer has at most N-M non-zeros in each group of N input weights."""
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_utils

    by_name = {layer.name: layer for layer in model.layers}
    return all(pruning_utils.is_pruned_m_by_n(by_name[name].kernel, m_by_n) for name in layers)


def sparsity_report(dense_model, sparse_model, x_sample: np.ndarray, *, runs: int = 30) -> dict:
    """What sparsity buys on the target: .tflite size raw / gzipped / with EXPERIMENTAL_SPARSITY,
    and interpreter latency, for the dense and the sparse model (float32)."""
    from edgeprune.training._tflite import to_tflite

    rows = {}
    for label, model in (("dense", dense_model), ("sparse", sparse_model)):
        raw = to_tflite(model, "float32")
        row = {"tflite_bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, 9)), "latency_ms": _latency(raw, x_sample, runs)}
        try:
            sparse_bytes = to_tflite(model, "float32", sparsity=True)
            row["sparsity_encoded_bytes"] = len(sparse_bytes)
            row["sparsity_encoded_latency_ms"] = _latency(sparse_bytes, x_sample, runs)
        except Exception as exc:  # noqa: BLE001 - the converter refuses some graphs; report it
            row["sparsity_encoded_error"] = str(exc).splitlines()[0][:200]
        rows[label] = row
    rows["note"] = (
        "zeroed weights shrink the compressed/sparse-encoded file; the dense CPU kernels do the "
        "same work, so latency only changes where a sparse kernel (XNNPACK sparse, ARM) is used"
    )
    return rows


def _latency(tflite_bytes: bytes, x_sample: np.ndarray, runs: int) -> float:
    from edgeprune.training._tflite import interpreter

    interp = interpreter(tflite_bytes)
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    sample = np.asarray(x_sample[:1], dtype=np.float32).reshape(detail["shape"]).astype(detail["dtype"])
    interp.set_tensor(detail["index"], sample)
    interp.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interp.invoke()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))
