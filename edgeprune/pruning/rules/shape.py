"""Layers that pass channels through: activations, pooling, padding, normalization, reshapes."""
from __future__ import annotations

from edgeprune.load.graph import spatial_size
from edgeprune.pruning.rules.base import (
    LayerRule,
    activation_name,
    axis_is_last,
    channels_last,
    take,
)

CHANNEL_MIXING_ACTIVATIONS = {"softmax", "log_softmax"}


class PassRule(LayerRule):
    """Channel i in is channel i out (activations, dropout, pooling, padding, upsampling)."""

    def lock_reason(self, node, g) -> str | None:
        if not channels_last(node.config):
            return f"{node.class_name} with channels_first"
        return None

    def couple(self, node, g, c):
        reason = self.lock_reason(node, g)
        if reason:
            c.lock_layer(node, f"{node.name}: {reason}")
            return
        inp, out = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        out.spatial = inp.spatial if out.width == inp.width else 1
        if out.channels != inp.channels or out.width % max(out.spatial, 1):
            c.lock_layer(node, f"{node.name}: {node.class_name} changes the channel count")
            return
        c.same(inp.key, out.key)


class ActivationRule(PassRule):
    """Activation: element-wise unless it is a softmax over the channels."""

    def lock_reason(self, node, g):
        name = activation_name(node.config.get("activation"))
        if name in CHANNEL_MIXING_ACTIVATIONS:
            return f"Activation '{name}' mixes channels"
        return None


class RescalingRule(PassRule):
    def lock_reason(self, node, g):
        scale, offset = node.config.get("scale"), node.config.get("offset", 0.0)
        if isinstance(scale, (list, tuple, dict)) or isinstance(offset, (list, tuple, dict)):
            return "Rescaling with per-channel values"
        return None


class ChannelWeightsRule(PassRule):
    """Per-channel weights on the last axis: BatchNormalization, LayerNormalization, LayerScale."""

    def lock_reason(self, node, g):
        if "axis" in node.config:
            rank = len(g.tensors[node.outputs[0]].shape) + 1
            if not axis_is_last(node.config.get("axis", -1), rank):
                return f"{node.class_name} over axis {node.config.get('axis')} (not channels)"
        return None

    def new_config(self, node, cfg, kept_in, kept_out, g):
        ko = kept_out[0] if kept_out else None
        if ko is not None and "projection_dim" in cfg:  # LayerScale (ConvNeXt)
            return dict(cfg, projection_dim=len(ko))
        return cfg

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        return [take(a, kept_out[0], a.ndim - 1) if a.ndim else a for a in weights]


class PReLURule(PassRule):
    def slice_weights(self, node, weights, kept_in, kept_out, g):
        return [a if a.shape[-1] == 1 else take(a, kept_out[0], a.ndim - 1) for a in weights]


class LockRule(LayerRule):
    """A layer that always keeps all channels, with a reason."""

    def __init__(self, reason: str):
        self.reason = reason

    def couple(self, node, g, c):
        c.lock_layer(node, f"{node.name}: {self.reason}")


class FlattenRule(LayerRule):
    """Flatten (NHWC): channel c lands at c, c+C, c+2C, ... of the flat vector."""

    def couple(self, node, g, c):
        inp, out = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        if any(d is None for d in inp.shape):
            c.lock_layer(node, f"{node.name}: Flatten of a tensor with unknown size")
            return
        out.spatial = inp.spatial * spatial_size(inp.shape)
        if out.channels != inp.channels:
            c.lock_layer(node, f"{node.name}: Flatten factor mismatch")
            return
        c.same(inp.key, out.key)


class ReshapeRule(LayerRule):
    """Reshape that keeps the channel axis last (or flattens): the target shape follows."""

    def couple(self, node, g, c):
        inp, out = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        if inp.spatial == 1 and out.shape and inp.shape and out.shape[-1] == inp.shape[-1]:
            PassRule().couple(node, g, c)  # NHWC row-major keeps (p, c) -> (p', c)
        elif len(out.shape) == 1 and len(inp.shape) >= 2:
            FlattenRule().couple(node, g, c)
        else:
            c.lock_layer(node, f"{node.name}: Reshape {inp.shape}->{out.shape} mixes channels")

    def new_config(self, node, cfg, kept_in, kept_out, g):
        ko = kept_out[0] if kept_out else None
        if ko is None:
            return cfg
        out = g.tensors[node.outputs[0]]
        target = list(cfg["target_shape"])
        if target[-1] != -1:
            target[-1] = len(ko) if out.spatial == 1 else len(ko) * out.spatial
        return dict(cfg, target_shape=tuple(target))


class PermuteRule(PassRule):
    def lock_reason(self, node, g):
        dims = list(node.config.get("dims", []))
        if dims and dims[-1] == len(dims):
            return None
        return f"Permute {tuple(dims)} moves the channel axis"


def _full_slice(item) -> bool:
    return (isinstance(item, dict) and item.get("class_name") == "__slice__"
            and all(item.get("config", {}).get(k) is None for k in ("start", "stop", "step")))


class GetItemRule(PassRule):
    """Keras 3 ``x[...]`` (``ops.GetItem``): channels pass through when the key leaves the last
    axis whole, e.g. a ViT's class token ``x[:, 0]`` or ``x[:, 1:]`` (the residual stream
    carries on); a key that indexes the last axis, or uses ``...``/``None``, locks."""

    def lock_reason(self, node, g) -> str | None:
        key = node.args[1] if len(node.args) > 1 else node.kwargs.get("key")
        items = key if isinstance(key, list) else [key]
        rank = len(g.tensors[node.inputs[0]].shape) + 1  # the graph's shapes leave out the batch
        if any(item is None or (isinstance(item, dict) and item.get("class_name") == "__ellipsis__")
               or isinstance(item, str) for item in items):
            return "GetItem with ... or a new axis"
        if len(items) >= rank and not _full_slice(items[rank - 1]):
            return "GetItem indexes the channel axis"
        return None
