"""Rebuild a smaller model: new config (fewer filters/units) plus sliced weight arrays.

The result is an ordinary tf_keras functional model with the same layer names and the same
input/output signature; it saves and loads without any custom object of ours.
"""
from __future__ import annotations

import copy

import numpy as np

from edgeprune.pruning import rules
from edgeprune.pruning.graph import custom_objects_of
from edgeprune.pruning.groups import GroupSet


def rebuild(gs: GroupSet, keep_unit: np.ndarray):
    """The pruned tf_keras model for a boolean keep-mask over units."""
    from edgeprune._env import tf_keras

    keras = tf_keras()
    g = gs.graph
    kept = gs.kept_channels(keep_unit)
    cfg = copy.deepcopy(g.config)
    plans = {}
    for lc in cfg["layers"]:
        node = g.layers[lc["name"]]
        kin = [kept[k] for k in node.inputs]
        kout = [kept[k] for k in node.outputs]
        plans[node.name] = (kin, kout)
        lc["config"] = rules.new_config(node, lc["config"], kin, kout, g)
        lc.pop("build_config", None)
    with keras.utils.custom_object_scope(custom_objects_of(g.model)):
        new = keras.Model.from_config(cfg)
    for layer in new.layers:
        node = g.layers[layer.name]
        if not node.layer.weights:
            continue
        kin, kout = plans[layer.name]
        weights = rules.slice_weights(node, node.layer.get_weights(), kin, kout, g)
        layer.set_weights(weights)
    return new
