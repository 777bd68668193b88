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


def _graph_nodes_of(g, new) -> list:
    """(rebuilt layer, its graph node) pairs, matched by position, not by name.

    A layer's constructor may rename it: keras-hub's ``DepthwiseConvBlock`` appends ``"_0"`` to
    the name it is given, so the config's ``block_0_0`` comes back as ``block_0_0_0``. The rebuilt
    model has the graph of the traced one, and both flavours order a functional model's layers by
    walking that graph, so the i-th layer of one is the i-th of the other. A Keras 3 layer that
    renamed itself gets its config's name back: the report, ``--protect`` patterns and the saved
    file keep naming it as the original does. (Matching by name is the fallback, for a rebuilt
    model whose layers do not line up.)"""
    from edgeprune.base.env import is_keras3_model

    old, rebuilt = model_layers(g.model), model_layers(new)
    node_of = {id(node.layer): node for node in g.layers.values()}
    if len(old) != len(rebuilt) or any(type(a) is not type(b) or id(a) not in node_of for a, b in zip(old, rebuilt)):
        return [(layer, g.layers[layer.name]) for layer in rebuilt]
    pairs = [(layer, node_of[id(a)]) for a, layer in zip(old, rebuilt)]
    if is_keras3_model(new):  # tf_keras keys a model's nodes by layer name: never renamed there
        for layer, node in pairs:
            if layer.name != node.name:
                layer.name = node.name
    return pairs


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
    for layer, node in _graph_nodes_of(g, new):
        weights = node.weights()
        if not weights:
            continue
        kin, kout, internal = plans[layer.name]
        sliced = rules.compensate(node, rules.slice_weights(node, weights, kin, kout, g, internal), internal)
        if len(sliced) != len(layer.weights):
            # A layer that holds another layer's weights (keras-hub's MaskedLMHead ties its output to
            # the token embedding) comes back from its config with its own copy: the graph cannot say
            # what it shares, so the rebuilt model would not be the user's model.
            from edgeprune.base.errors import InputError

            raise InputError(f"layer '{node.name}' ({type(node.layer).__name__}) shares weights its config "
                             f"cannot describe ({len(weights)} weights in the model, {len(layer.weights)} "
                             "after rebuilding it from its config); edgeprune cannot prune this model yet")
        layer.set_weights(sliced)
    return new
