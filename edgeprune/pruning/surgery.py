"""Rebuild a smaller model: new config (fewer filters/units) plus sliced weight arrays.

The result is an ordinary functional model of the input's flavour (Keras 3 stays Keras 3,
tf_keras stays tf_keras) with the same layer names and the same input/output signature; it
saves and loads without any custom object of ours. What changes per layer type is the rule's
business (:mod:`edgeprune.pruning.rules`).
"""
from __future__ import annotations

import copy

import numpy as np

from edgeprune.load.graph import model_from_neutral, model_layers
from edgeprune.pruning import rules
from edgeprune.pruning.groups import GroupSet


def _without_build_configs(value):
    """Drop recorded build shapes (also of wrapped layers: TimeDistributed, Bidirectional):
    they describe the unpruned widths; layers build from the tensors they are called on."""
    if isinstance(value, dict):
        return {k: _without_build_configs(v) for k, v in value.items() if k != "build_config"}
    if isinstance(value, list):
        return [_without_build_configs(v) for v in value]
    return value


def rebuild(gs: GroupSet, keep_unit: np.ndarray):
    """The pruned model for a boolean keep-mask over units."""
    g = gs.graph
    kept = gs.kept_channels(keep_unit)
    cfg = copy.deepcopy(g.config)
    plans = {}
    for lc in cfg["layers"]:
        node = g.layers[lc["name"]]
        kin = [kept[k] for k in node.inputs]
        kout = [kept[k] for k in node.outputs]
        internal = {name: kept.get(key) for name, key in rules.internal_keys(node).items()}
        plans[node.name] = (kin, kout, internal)
        lc["config"] = _without_build_configs(rules.new_config(node, lc["config"], kin, kout, g, internal))
        lc.pop("build_config", None)
    new = model_from_neutral(cfg, g.model)
    for layer in model_layers(new):
        node = g.layers[layer.name]
        weights = node.weights()
        if not weights:
            continue
        kin, kout, internal = plans[layer.name]
        sliced = rules.slice_weights(node, weights, kin, kout, g, internal)
        layer.set_weights(rules.compensate(node, sliced, internal))
    return new
