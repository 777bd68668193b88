"""Quantization-aware training (tfmot, 8-bit) with BatchNorm folded first.

tfmot only fuses BatchNormalization in its Conv2D->BN pattern and refuses or leaves float
the other placements, so foldable BNs are folded exactly beforehand (:mod:`bn_fold`). Only
layers tfmot's 8-bit registry supports are annotated; the rest stay float and are listed with
the reason. After gradual pruning, the prune-preserving scheme keeps the zeros in place.
The trained model converts to int8 with ``Optimize.DEFAULT`` (quantization ``int8``).
"""
from __future__ import annotations

import numpy as np

from edgeprune.base.console import Output, default_output
from edgeprune.training.finetune import (
    FitSettings,
    fit_compiled,
    loss_for,
    make_optimizer,
    output_is_logits,
    strategy,
)

_NO_WEIGHTS_OK = ("InputLayer",)


def annotate_supported(model):
    """Annotate every layer tfmot can quantize; returns ``(annotated_model, float_layers)``."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry_mod,
    )

    from edgeprune.base.env import tf_keras

    keras = tf_keras()
    registry = registry_mod.Default8BitQuantizeRegistry()
    float_layers = []

    def clone_fn(layer):
        fresh = layer.__class__.from_config(layer.get_config())
        kind = type(layer).__name__
        if kind in _NO_WEIGHTS_OK:
            return fresh
        if registry.supports(layer):
            return tfmot.quantization.keras.quantize_annotate_layer(fresh)
        if kind == "BatchNormalization":
            why = "BatchNormalization that does not follow a foldable Conv2D/DepthwiseConv2D/Dense"
        else:
            why = f"tfmot's 8-bit registry has no quantize config for {kind}"
        float_layers.append({"layer": layer.name, "type": kind, "reason": why})
        return fresh

    annotated = keras.models.clone_model(model, clone_function=clone_fn)
    for src, dst in zip(model.layers, annotated.layers):
        if src.get_weights():
            getattr(dst, "layer", dst).set_weights(src.get_weights())
    return annotated, float_layers


def prepare_qat(model, *, prune_preserve: bool = False):
    """Fold BN, annotate supported layers and apply QAT; returns ``(qat_model, report)``."""
    import tensorflow_model_optimization as tfmot

    from edgeprune.load.model_io import to_tf_keras
    from edgeprune.training._models import as_functional
    from edgeprune.training.bn_fold import fold_batchnorm

    model = to_tf_keras(model, source="quantization-aware training (tfmot needs tf_keras)")
    folded, fold_report = fold_batchnorm(as_functional(model))
    annotated, float_layers = annotate_supported(folded)
    with tfmot.quantization.keras.quantize_scope():
        if prune_preserve:
            scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
            qat_model = tfmot.quantization.keras.quantize_apply(annotated, scheme)
        else:
            qat_model = tfmot.quantization.keras.quantize_apply(annotated)
    report = {
        "bn_folded": fold_report["folded"],
        "bn_kept": fold_report["kept"],
        "float_layers": float_layers,
        "scheme": "prune-preserving 8-bit" if prune_preserve else "default 8-bit",
    }
    return qat_model, report


def train_qat(model, train, val, *, task: str, settings: FitSettings | None = None, prune_preserve: bool = False,
              output: Output | None = None):
    """Quantization-aware fine-tuning; returns ``(qat_model, report)`` ready for int8 conversion."""
    output = output or default_output()
    settings = settings or FitSettings(label="QAT")
    strat = strategy()
    with strat.scope():
        qat_model, report = prepare_qat(model, prune_preserve=prune_preserve)
        loss, metrics = loss_for(task, output_is_logits(model))
        steps = int(np.ceil(len(train) / settings.batch_size))
        qat_model.compile(optimizer=make_optimizer(settings, steps), loss=loss, metrics=metrics)
    if train.y is not None and settings.epochs > 0:
        report["history"] = fit_compiled(qat_model, train, val, settings, monitor_acc=bool(metrics), output=output)
    for item in report["float_layers"]:
        output.warn(f"QAT: layer '{item['layer']}' stays float: {item['reason']}")
    return qat_model, report
