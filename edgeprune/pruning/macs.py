"""MAC and parameter counts per layer, from the graph and per-tensor channel counts.

Analytic (no rebuild), so the MAC-target bisection can call it many times; the parameter
counts of a real model come from the layers themselves and are cross-checked in tests
against ``model.count_params()``.
"""
from __future__ import annotations

from edgeprune.load.graph import LayerGraph
from edgeprune.pruning import rules


def layer_macs(node, g: LayerGraph, counts: dict) -> int:
    """Multiply-accumulates of one layer given the channel count of every tensor (its rule's)."""
    return rules.layer_macs(node, g, counts)


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
                     "params": node.params}
    return out


def count(model) -> dict:
    """Totals and per-layer numbers of a Keras model: {"macs", "params", "layers": {...}}."""
    from edgeprune.load.graph import trace

    g = trace(model)
    per = summarize(g)
    return {"macs": sum(v["macs"] for v in per.values()),
            "params": sum(v["params"] for v in per.values()), "layers": per}
