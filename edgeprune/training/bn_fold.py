"""Fold BatchNormalization into the preceding Conv2D / DepthwiseConv2D / Dense, exactly.

For a BN with scale s = gamma / sqrt(var + eps) after a linear layer with kernel k, bias b:
k' = k * s (per output channel) and b' = beta + (b - mean) * s. The BN layer is removed from
the functional config and the model is rebuilt. A BN that cannot be folded (no linear
producer, producer has an activation or other readers, shared layers, non-channel axis) is
left in place and listed with the reason.
"""
from __future__ import annotations

import numpy as np

FOLDABLE = ("Conv2D", "DepthwiseConv2D", "Dense")


def _bn_params(bn) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) such that BN(x) = x * scale + shift (inference mode)."""
    weights = {w.name.split("/")[-1].split(":")[0]: w.numpy() for w in bn.weights}
    mean, var = weights["moving_mean"], weights["moving_variance"]
    gamma = weights.get("gamma", np.ones_like(mean))
    beta = weights.get("beta", np.zeros_like(mean))
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


def _folded_weights(layer, scale, shift) -> list[np.ndarray]:
    kind = type(layer).__name__
    kernel = (layer.depthwise_kernel if kind == "DepthwiseConv2D" else layer.kernel).numpy()
    bias = layer.bias.numpy() if getattr(layer, "use_bias", False) else np.zeros(scale.shape, np.float32)
    if kind == "DepthwiseConv2D":
        in_ch, mult = kernel.shape[2], kernel.shape[3]
        new_kernel = kernel * scale.reshape(in_ch, mult)
    else:
        new_kernel = kernel * scale  # Conv2D (kh, kw, in, out) and Dense (in, out): last axis
    new_bias = bias * scale + shift
    return [new_kernel.astype(np.float32), new_bias.astype(np.float32)]


def _why_not(bn, producer, readers) -> str | None:
    if producer is None:
        return "its input is not a Conv2D, DepthwiseConv2D or Dense layer"
    kind = type(producer).__name__
    if kind not in FOLDABLE:
        return f"its input comes from {kind} '{producer.name}', not a Conv2D, DepthwiseConv2D or Dense"
    act = getattr(getattr(producer, "activation", None), "__name__", "linear")
    if act != "linear":
        return f"'{producer.name}' applies activation '{act}' before the BN"
    if len(producer._inbound_nodes) != 1 or len(bn._inbound_nodes) != 1:
        return "a shared layer (called more than once)"
    if readers != [bn.name]:
        return f"'{producer.name}' output is also read by {', '.join(r for r in readers if r != bn.name)}"
    axis = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    rank = len(bn.input_shape)
    if [a % rank for a in axis] != [rank - 1]:
        return f"BN axis {bn.axis} is not the channel (last) axis"
    if kind == "Dense" and rank != 2:
        return "Dense on a rank-3+ input"
    return None


def fold_batchnorm(model):
    """Return ``(folded_model, report)``; report lists folded pairs and BNs left in place (with why)."""
    from edgeprune.load.graph import neutral_config
    from edgeprune.training._models import as_functional, consumers, rebuild, replace_refs

    model = as_functional(model)
    config = neutral_config(model)
    readers = consumers(config)
    folded: dict[str, list[np.ndarray]] = {}
    mapping = {}
    report = {"folded": [], "kept": []}
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization":
            continue
        inbound = layer._inbound_nodes[0].inbound_layers if layer._inbound_nodes else None
        producer = inbound if inbound is not None and not isinstance(inbound, list) else None
        reason = _why_not(layer, producer, readers.get(producer.name, []) if producer else [])
        if reason:
            report["kept"].append({"layer": layer.name, "reason": reason})
            continue
        scale, shift = _bn_params(layer)
        folded[producer.name] = _folded_weights(producer, scale, shift)
        mapping[(layer.name, 0, 0)] = (producer.name, 0, 0)
        report["folded"].append({"bn": layer.name, "into": producer.name})
    if not folded:
        return model, report
    removed = {bn for bn, _, _ in mapping}
    config["layers"] = [entry for entry in config["layers"] if entry["name"] not in removed]
    for entry in config["layers"]:
        if entry["name"] in folded:
            entry["config"]["use_bias"] = True
        entry["inbound_nodes"] = replace_refs(entry.get("inbound_nodes", []), mapping)
    config["output_layers"] = replace_refs(config["output_layers"], mapping)
    new = rebuild(config, model, weights_for=folded.get)
    return new, report
