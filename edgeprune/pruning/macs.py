"""MAC and parameter counts per layer, from the graph and per-tensor channel counts.

Analytic (no rebuild), so the MAC-target bisection can call it many times; the parameter
counts of a real model come from the layers themselves and are cross-checked in tests
against ``model.count_params()``.
"""
from __future__ import annotations

import numpy as np

from edgeprune.pruning import rules
from edgeprune.pruning.graph import LayerGraph, spatial_size


def _kernel_size(cfg: dict) -> int:
    k = cfg.get("kernel_size", 1)
    return int(np.prod(k)) if isinstance(k, (list, tuple)) else int(k)


def layer_macs(node, g: LayerGraph, counts: dict) -> int:
    """Multiply-accumulates of one layer given the channel count of every tensor."""
    cls = node.class_name
    if cls not in rules.PRODUCERS | rules.DEPTHWISE or not node.inputs or not node.outputs:
        return 0
    tin, tout = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
    cin = counts.get(tin.key, tin.channels) * tin.spatial
    cout = counts.get(tout.key, tout.channels) * tout.spatial
    out_sp = spatial_size(tout.shape)
    k = _kernel_size(node.config)
    if cls in rules.CONVS:
        groups = int(node.config.get("groups", 1) or 1)
        if groups > 1:  # whole groups are pruned: inputs per group stay as built
            return k * (tin.width // groups) * cout * out_sp
        return k * cin * cout * out_sp
    if cls in rules.CONV_T:
        return k * cin * cout * spatial_size(tin.shape)
    if cls in rules.DEPTHWISE:
        return k * cout * out_sp
    if cls in rules.SEPARABLE:
        m = int(node.config.get("depth_multiplier", 1))
        return k * cin * m * out_sp + cin * m * cout * out_sp
    if cls == "Dense":
        return cin * cout * spatial_size(tout.shape)
    return 0


def full_counts(g: LayerGraph) -> dict:
    return {k: t.channels for k, t in g.tensors.items()}


def total_macs(g: LayerGraph, counts: dict | None = None) -> int:
    counts = counts if counts is not None else full_counts(g)
    return sum(layer_macs(n, g, counts) for n in g.layers.values())


def summarize(g: LayerGraph) -> dict:
    """name -> {"channels", "macs", "params"} for every layer of a real (traced) model."""
    counts = full_counts(g)
    out = {}
    for name, node in g.layers.items():
        channels = g.tensors[node.outputs[0]].width if node.outputs else 0
        out[name] = {"channels": channels, "macs": layer_macs(node, g, counts),
                     "params": int(node.layer.count_params()) if node.layer.built else 0}
    return out


def count(model) -> dict:
    """Totals and per-layer numbers of a tf_keras model: {"macs", "params", "layers": {...}}."""
    from edgeprune.pruning.graph import trace

    g = trace(model)
    per = summarize(g)
    return {"macs": sum(v["macs"] for v in per.values()),
            "params": sum(v["params"] for v in per.values()), "layers": per}
