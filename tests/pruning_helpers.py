"""Helpers shared by the pruning tests: make chosen channels carry no signal, compare models."""
from __future__ import annotations

import numpy as np

import edgeprune.base.env  # noqa: F401
from edgeprune.load.graph import trace
from edgeprune.pruning import rules
from edgeprune.pruning.groups import build_groups
from edgeprune.pruning.rules.conv import ConvRule, ConvTransposeRule, DepthwiseRule, SeparableRule
from edgeprune.pruning.rules.dense import DenseRule, EmbeddingRule, TimeDistributedRule
from edgeprune.pruning.rules.recurrent import GATES, BidirectionalRule, RecurrentRule, gate_columns


def randomize_bn(model, seed=0):
    """Give BatchNormalization layers non-trivial statistics so BN really does something."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            w = layer.get_weights()
            w = [rng.uniform(0.5, 1.5, a.shape).astype(np.float32) if i in (0, 3) else
                 rng.normal(0, 0.2, a.shape).astype(np.float32) for i, a in enumerate(w)]
            layer.set_weights(w)


def kill_units(model, ratio, seed=0):
    """Zero floor(n*ratio) channels of every prunable group so they carry no signal.

    Producers get zero filters and biases, BatchNormalization gets beta = mean = 0 on them,
    depthwise layers zero bias. Returns per-unit scores (0 for dead units) for FixedScores.
    """
    rng = np.random.default_rng(seed)
    g = trace(model)
    gs = build_groups(g)
    n_units = int(gs.labels.max()) + 1
    scores = rng.uniform(1.0, 2.0, n_units)
    dead = np.zeros(n_units, dtype=bool)
    for grp in gs.prunable:
        k = int(np.floor(grp.size * ratio + 1e-9))
        if k:
            dead[rng.choice(grp.units, size=k, replace=False)] = True
    scores[dead] = 0.0
    for grp in gs.prunable:
        for key in grp.tensors:
            chans = np.flatnonzero(dead[gs.units_of(key)])
            if not chans.size:
                continue
            node = g.layers[g.tensors[key].producer]
            w = node.weights()
            if not w:
                continue
            cls = node.class_name
            rule = rules.rule_for(node)
            if isinstance(rule, (ConvRule, DenseRule, TimeDistributedRule)):  # TimeDistributed(Dense)
                w[0][..., chans] = 0
                if len(w) > 1:
                    w[1][chans] = 0
            elif isinstance(rule, SeparableRule):
                w[1][..., chans] = 0
                if len(w) > 2:
                    w[2][chans] = 0
            elif isinstance(rule, ConvTransposeRule):
                w[0][..., chans, :] = 0
                if len(w) > 1:
                    w[1][chans] = 0
            elif isinstance(rule, EmbeddingRule):
                w[0][:, chans] = 0
            elif isinstance(rule, DepthwiseRule):
                if len(w) > 1:
                    w[1][chans] = 0
            elif isinstance(rule, RecurrentRule):
                # every gate of a dead unit reads nothing and has no bias: its state stays 0
                cols = gate_columns(chans, int(node.config["units"]), rule.gates)
                w[0][:, cols] = 0
                w[1][:, cols] = 0
                if len(w) > 2:
                    w[2][..., cols] = 0
            elif isinstance(rule, BidirectionalRule):
                inner = node.config["layer"]["config"]
                units = int(inner["units"])
                cols = gate_columns(np.unique(chans % units), units, GATES[node.config["layer"]["class_name"]])
                half = len(w) // 2
                for part in (w[:half], w[half:]):
                    part[0][:, cols] = 0
                    part[1][:, cols] = 0
                    if len(part) > 2:
                        part[2][..., cols] = 0
            elif cls == "BatchNormalization":
                names = [v.name.split("/")[-1].split(":")[0] for v in node.layer.weights]
                for i, n in enumerate(names):
                    if n in ("beta", "moving_mean"):
                        w[i][chans] = 0
            else:
                continue
            node.layer.set_weights(w)
            if g.model is not model:  # nested/Sequential input: trace worked on a flat copy
                _find(model, node.name).set_weights(w)
    return scores, dead


def _find(model, name):
    for layer in model.layers:
        if layer.name == name:
            return layer
        if hasattr(layer, "layers"):
            found = _find(layer, name)
            if found is not None:
                return found
    return None


def max_abs_diff(a, b, x):
    ya = np.asarray(a(x, training=False))
    yb = np.asarray(b(x, training=False))
    assert ya.shape == yb.shape
    return float(np.max(np.abs(ya - yb))), float(np.max(np.abs(ya)))
