"""Convolutions: plain and grouped, transposed, depthwise and depthwise-separable."""
from __future__ import annotations

import numpy as np

from edgeprune.load.graph import spatial_size
from edgeprune.pruning.rules.base import (
    LayerRule,
    channel_norm,
    channels_last,
    in_out,
    kernel_size,
    take,
)


def _groups(cfg: dict) -> int:
    return int(cfg.get("groups", 1) or 1)


class ConvRule(LayerRule):
    """Conv1D/2D/3D: output channels are its filters; a grouped conv loses whole groups."""

    producer = True
    timed = True

    def couple(self, node, g, c):
        if not channels_last(node.config):
            c.lock_layer(node, f"{node.name}: {node.class_name} with channels_first")
            return
        groups = _groups(node.config)
        if groups > 1:
            # whole groups go: group k owns inputs [k*gi, (k+1)*gi) and outputs [k*go, (k+1)*go)
            inp, out = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
            gi, go = inp.channels // groups, out.channels // groups
            a, b = np.arange(inp.channels), np.arange(out.channels)
            c.couple(inp.key, a, inp.key, (a // gi) * gi)
            c.couple(out.key, b, inp.key, (b // go) * gi)

    def new_config(self, node, cfg, kept_in, kept_out, g):
        ko = kept_out[0] if kept_out else None
        if ko is None:
            return cfg
        cfg = dict(cfg, filters=len(ko))
        if _groups(node.config) > 1:
            per_group = g.tensors[node.outputs[0]].channels // _groups(node.config)
            cfg["groups"] = len(ko) // per_group
        return cfg

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        ki, ko = kept_in[0], kept_out[0]
        w = list(weights)
        if _groups(node.config) > 1:  # whole groups removed: the per-group input slice is unchanged
            w[0] = take(w[0], ko, -1)
        else:
            w[0] = take(take(w[0], ki, -2), ko, -1)
        if len(w) > 1:
            w[1] = take(w[1], ko, 0)
        return w

    def macs(self, node, g, counts):
        tin, _, cin, cout, out_sp = in_out(node, g, counts)
        groups = _groups(node.config)
        if groups > 1:  # whole groups are pruned: inputs per group stay as built
            return kernel_size(node.config) * (tin.width // groups) * cout * out_sp
        return kernel_size(node.config) * cin * cout * out_sp

    def filter_norms(self, node, weights, p):
        return channel_norm(weights[0], weights[0].ndim - 1, p)

    def input_norms(self, node, weights, p, g):
        if _groups(node.config) > 1:
            return None
        return channel_norm(weights[0], weights[0].ndim - 2, p)

    def latency_config(self, cfg, cin, cout):
        return dict(cfg, filters=int(cout))

    def latency_signature(self, node):
        return _groups(node.config) == 1  # grouped convs prune whole groups; cost follows MACs


class FiltersRule(LayerRule):
    """A channels-last layer whose ``filters`` are its output channels (the config to change)."""

    producer = True
    timed = True

    def couple(self, node, g, c):
        if not channels_last(node.config):
            c.lock_layer(node, f"{node.name}: {node.class_name} with channels_first")

    def new_config(self, node, cfg, kept_in, kept_out, g):
        ko = kept_out[0] if kept_out else None
        return cfg if ko is None else dict(cfg, filters=len(ko))

    def latency_config(self, cfg, cin, cout):
        return dict(cfg, filters=int(cout))


class ConvTransposeRule(FiltersRule):
    """Conv1D/2D/3DTranspose: kernel is (..., out, in)."""

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        w = list(weights)
        w[0] = take(take(w[0], kept_in[0], -1), kept_out[0], -2)
        if len(w) > 1:
            w[1] = take(w[1], kept_out[0], 0)
        return w

    def macs(self, node, g, counts):
        tin, _, cin, cout, _ = in_out(node, g, counts)
        return kernel_size(node.config) * cin * cout * spatial_size(tin.shape)

    def filter_norms(self, node, weights, p):
        return channel_norm(weights[0], weights[0].ndim - 2, p)


class DepthwiseRule(LayerRule):
    """DepthwiseConv1D/2D: output channel j reads input channel j // depth_multiplier."""

    timed = True
    output_follows_input = True

    def couple(self, node, g, c):
        if not channels_last(node.config):
            c.lock_layer(node, f"{node.name}: {node.class_name} with channels_first")
            return
        inp, out = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        m = int(node.config.get("depth_multiplier", 1))
        c.couple(inp.key, np.repeat(np.arange(inp.channels), m), out.key, np.arange(inp.channels * m))

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        w = list(weights)
        w[0] = take(w[0], kept_in[0], -2)
        if len(w) > 1:
            w[1] = take(w[1], kept_out[0], 0)
        return w

    def macs(self, node, g, counts):
        _, _, _, cout, out_sp = in_out(node, g, counts)
        return kernel_size(node.config) * cout * out_sp

    def filter_norms(self, node, weights, p):
        k = weights[0]
        return channel_norm(k.reshape(-1, k.shape[-2] * k.shape[-1]), 1, p)

    def latency_channels(self, node, g, counts):
        tin = g.tensors[node.inputs[0]]
        cin = counts.get(tin.key, tin.channels)
        return cin, cin  # output follows input (times the multiplier, fixed by the config)


class SeparableRule(FiltersRule):
    """SeparableConv1D/2D: a depthwise kernel on the inputs, a pointwise kernel to the filters."""

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        ki, ko = kept_in[0], kept_out[0]
        m = int(node.config.get("depth_multiplier", 1))
        mid = None if ki is None else (np.asarray(ki)[:, None] * m + np.arange(m)[None, :]).ravel()
        w = list(weights)
        w[0] = take(w[0], ki, -2)
        w[1] = take(take(w[1], mid, -2), ko, -1)
        if len(w) > 2:
            w[2] = take(w[2], ko, 0)
        return w

    def macs(self, node, g, counts):
        _, _, cin, cout, out_sp = in_out(node, g, counts)
        m = int(node.config.get("depth_multiplier", 1))
        return kernel_size(node.config) * cin * m * out_sp + cin * m * cout * out_sp

    def filter_norms(self, node, weights, p):
        return channel_norm(weights[1], weights[1].ndim - 1, p)
