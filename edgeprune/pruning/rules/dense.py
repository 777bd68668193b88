"""Dense, Embedding and TimeDistributed wrappers of a rule-bearing layer."""
from __future__ import annotations

import numpy as np

from edgeprune.load.graph import spatial_size
from edgeprune.pruning.rules.base import LayerRule, channel_norm, flatten_rows, in_out, take


class DenseRule(LayerRule):
    """Dense: units are its output channels; after a Flatten its rows are (position, channel)."""

    producer = True
    timed = True

    def new_config(self, node, cfg, kept_in, kept_out, g):
        ko = kept_out[0] if kept_out else None
        return cfg if ko is None else dict(cfg, units=len(ko))

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        inp = g.tensors[node.inputs[0]]
        ki = kept_in[0]
        rows = flatten_rows(ki, inp.channels, inp.spatial) if inp.spatial > 1 else ki
        w = list(weights)
        w[0] = take(take(w[0], rows, 0), kept_out[0], 1)
        if len(w) > 1:
            w[1] = take(w[1], kept_out[0], 0)
        return w

    def macs(self, node, g, counts):
        _, tout, cin, cout, _ = in_out(node, g, counts)
        return cin * cout * spatial_size(tout.shape)

    def filter_norms(self, node, weights, p):
        return channel_norm(weights[0], weights[0].ndim - 1, p)

    def input_norms(self, node, weights, p, g):
        w = weights[0]
        tin = g.tensors[node.inputs[0]]
        rows = np.abs(w).sum(1) if p == 1 else (w ** 2).sum(1)
        values = rows.reshape(tin.spatial, tin.channels).sum(0) if tin.spatial > 1 else rows
        return np.sqrt(values) if p == 2 else values

    def latency_config(self, cfg, cin, cout):
        return dict(cfg, units=int(cout))


class EmbeddingRule(LayerRule):
    """Embedding: a lookup table whose columns are the output channels (no input channels)."""

    producer = True

    def couple(self, node, g, c):
        for k in node.inputs:  # token ids, not channels
            c.lock(k, f"{node.name}: Embedding input holds token ids")

    def new_config(self, node, cfg, kept_in, kept_out, g):
        ko = kept_out[0] if kept_out else None
        return cfg if ko is None else dict(cfg, output_dim=len(ko))

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        return [take(weights[0], kept_out[0], 1)] + list(weights[1:])

    def filter_norms(self, node, weights, p):
        return channel_norm(weights[0], 1, p)


class TimeDistributedRule(LayerRule):
    """TimeDistributed(inner): the inner layer's rule, applied at every time step."""

    def __init__(self, inner_rule_for):
        self._inner_rule_for = inner_rule_for  # class name -> rule (the registry's lookup)

    def _inner(self, node):
        inner = node.config.get("layer") or {}
        return self._inner_rule_for(inner.get("class_name", "?"))

    def is_producer(self, node) -> bool:
        return bool(getattr(self._inner(node), "producer", False))

    def couple(self, node, g, c):
        rule = self._inner(node)
        if not isinstance(rule, DenseRule):
            c.lock_layer(node, f"{node.name}: TimeDistributed({(node.config.get('layer') or {}).get('class_name')}) "
                               "has no pruning rule")

    def new_config(self, node, cfg, kept_in, kept_out, g):
        inner = dict(cfg["layer"])
        inner["config"] = self._inner(node).new_config(node, dict(inner["config"]), kept_in, kept_out, g)
        return dict(cfg, layer=inner)

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        return self._inner(node).slice_weights(node, weights, kept_in, kept_out, g)

    def macs(self, node, g, counts):
        tin, tout = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        steps = tout.shape[0] if tout.shape and tout.shape[0] else 1
        cin = counts.get(tin.key, tin.channels)
        cout = counts.get(tout.key, tout.channels)
        inner = (node.config.get("layer") or {}).get("class_name")
        if inner == "Dense":
            return int(steps) * cin * cout * spatial_size(tout.shape[1:])
        return 0

    def filter_norms(self, node, weights, p):
        return self._inner(node).filter_norms(node, weights, p)
