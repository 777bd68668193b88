"""The contract every layer rule fulfils, and the coupler the rules write into.

A *rule* knows one layer type's channel semantics, in one place (Torch-Pruning's per-layer
prune functions are the model): how the layer couples the channels of its inputs and outputs,
how its config and weight arrays change when channels go, how many MACs it costs, how the
magnitude criterion reads its filters, and how a latency table builds it alone. The engine
(graph, groups, importance, allocation, surgery, MAC counting, latency tables) asks the rule and
never switches on class names itself, so a user makes a custom layer prunable by registering a
rule (:func:`edgeprune.pruning.rules.register_rule`) instead of editing the engine.
"""
from __future__ import annotations

import numpy as np

from edgeprune.load.graph import LayerGraph, LayerNode, spatial_size


class Coupler:
    """Collects channel couplings and locks while the rules walk the graph."""

    def __init__(self, graph: LayerGraph):
        self.g = graph
        self.pairs: list = []  # (key_a, idx_a, key_b, idx_b)
        self.locks: dict = {}  # tensor key -> reason

    def same(self, a, b) -> None:
        """Channel i of tensor ``a`` is channel i of tensor ``b`` (they go together)."""
        ca, cb = self.g.tensors[a].channels, self.g.tensors[b].channels
        if ca != cb:
            raise AssertionError(f"coupling {a} ({ca}) with {b} ({cb})")
        idx = np.arange(ca)
        self.pairs.append((a, idx, b, idx))

    def couple(self, a, ia, b, ib) -> None:
        """Channels ``ia`` of tensor ``a`` go with channels ``ib`` of tensor ``b``."""
        self.pairs.append((a, np.asarray(ia), b, np.asarray(ib)))

    def lock(self, key, reason: str) -> None:
        self.locks.setdefault(key, reason)

    def lock_layer(self, node: LayerNode, reason: str) -> None:
        for k in node.inputs + node.outputs:
            self.lock(k, reason)


def take(arr: np.ndarray, idx, axis: int) -> np.ndarray:
    """``arr`` restricted to indices ``idx`` along ``axis`` (unchanged for None: all kept)."""
    return arr if idx is None else np.take(arr, idx, axis=axis)


def channel_norm(kernel: np.ndarray, axis: int, p: int) -> np.ndarray:
    """Lp norm of each slice of ``kernel`` along ``axis`` (one value per channel)."""
    k = np.moveaxis(kernel, axis, -1).reshape(-1, kernel.shape[axis])
    return np.abs(k).sum(0) if p == 1 else np.sqrt((k ** 2).sum(0))


def flatten_rows(kept, channels: int, spatial: int):
    """Dense-kernel rows of the kept channels after an NHWC Flatten: c, c+C, c+2C, ..."""
    if kept is None:
        return None
    return (np.arange(spatial)[:, None] * channels + np.asarray(kept)[None, :]).ravel()


def channels_last(cfg: dict) -> bool:
    return cfg.get("data_format", "channels_last") in (None, "channels_last")


def axis_is_last(axis, rank: int) -> bool:
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return len(axes) == 1 and axes[0] in (-1, rank - 1)


def kernel_size(cfg: dict) -> int:
    k = cfg.get("kernel_size", 1)
    return int(np.prod(k)) if isinstance(k, (list, tuple)) else int(k)


def activation_name(value) -> str:
    """An activation given as a string or as a serialized object, by name."""
    if isinstance(value, dict):
        cfg = value.get("config")
        return str(cfg if isinstance(cfg, str) else value.get("class_name", value))
    return str(value)


class LayerRule:
    """Channel semantics of one layer type.

    The defaults describe a layer whose input and output channels are independent (a conv or
    dense layer: its kernel maps any inputs to its own outputs) with no weights to slice;
    override what your layer does differently. :class:`~edgeprune.pruning.rules.LockRule`
    keeps every channel of a layer.

    Attributes
    ----------
    producer: its weights create its output channels (conv, dense): a group's root, whose
        filters the magnitude criterion scores and whose count the config records.
    timed: a latency table builds this layer alone at several widths and times it.
    """

    producer = False
    timed = False
    # internal widths that --round-to/--min-channels do not apply to: their units are not SIMD
    # lanes (a whole attention head; its dimensions are the lanes)
    unrounded_internal: tuple = ()
    output_follows_input = False  # output width = input width x a fixed factor (depthwise)

    def is_producer(self, node: LayerNode) -> bool:
        return self.producer

    # -- internal widths --------------------------------------------------------------------
    def internal_widths(self, node: LayerNode) -> dict:
        """Removable channel spaces inside the layer that no tensor shows: name -> size.

        An attention layer's heads (or each head's dimensions) are channels of no tensor of the
        graph, yet they are what pruning removes from it. The engine gives each one a virtual
        tensor (:func:`edgeprune.pruning.rules.internal_key`) produced by this layer, so
        groups, importance, allocation, MAC counting and surgery treat it like any tensor's
        channels. A rule declaring internal widths receives their kept indices as
        ``internal={name: kept or None}`` in :meth:`new_config` and :meth:`slice_weights`, and
        the current sizes in ``counts`` (under the virtual keys) in :meth:`macs`.
        """
        return {}

    def internal_norms(self, node: LayerNode, weights: list, p: int) -> dict:
        """Lp norm of each internal channel's weights taken together: name -> one value per
        channel (what the magnitude criteria, and criteria that cannot see inside, rank by)."""
        return {}

    # -- coupling ---------------------------------------------------------------------------
    def couple(self, node: LayerNode, g: LayerGraph, c: Coupler) -> None:
        """Record which channels go together (default: none; inputs and outputs independent)."""

    # -- surgery ----------------------------------------------------------------------------
    def new_config(self, node: LayerNode, cfg: dict, kept_in: list, kept_out: list,
                   g: LayerGraph) -> dict:
        """The layer config once only ``kept_out[0]`` output channels remain (None: all)."""
        return cfg

    def slice_weights(self, node: LayerNode, weights: list, kept_in: list, kept_out: list,
                      g: LayerGraph) -> list:
        """The weight arrays restricted to the kept input/output channels."""
        if weights and any(k is not None for k in list(kept_in) + list(kept_out)):
            raise AssertionError(f"no weight rule for {node.class_name} '{node.name}' whose channels changed")
        return weights

    def compensate(self, node: LayerNode, weights: list, internal: dict | None = None) -> list:
        """Values to change once sliced, so the smaller layer computes what the bigger one did
        without the removed channels (attention rescales its queries). Surgery calls it after
        :meth:`slice_weights`; the parameter bookkeeping, which only asks *which* elements go,
        does not."""
        return weights

    # -- cost -------------------------------------------------------------------------------
    def macs(self, node: LayerNode, g: LayerGraph, counts: dict) -> int:
        """Multiply-accumulates of one call, given the channel count of every tensor."""
        return 0

    # -- importance -------------------------------------------------------------------------
    def filter_norms(self, node: LayerNode, weights: list, p: int):
        """Lp norm of each output channel's weights (None: this layer has no filters)."""
        return None

    def input_norms(self, node: LayerNode, weights: list, p: int, g: LayerGraph):
        """Lp norm of the weights reading each input channel (None: not a consumer kernel)."""
        return None

    # -- latency tables ---------------------------------------------------------------------
    def latency_channels(self, node: LayerNode, g: LayerGraph, counts: dict) -> tuple[int, int]:
        """(input channels, output channels) of a timed layer under ``counts``."""
        tin, tout = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        return counts.get(tin.key, tin.channels), counts.get(tout.key, tout.channels)

    def latency_config(self, cfg: dict, cin: int, cout: int) -> dict:
        """The config of this layer built alone with ``cout`` output channels."""
        return cfg

    def latency_signature(self, node: LayerNode) -> bool:
        """Whether this particular layer can be timed (e.g. grouped convs cannot)."""
        return self.timed


def in_out(node: LayerNode, g: LayerGraph, counts: dict):
    """(input TensorInfo, output TensorInfo, input width, output width, output positions)."""
    tin, tout = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
    cin = counts.get(tin.key, tin.channels) * tin.spatial
    cout = counts.get(tout.key, tout.channels) * tout.spatial
    return tin, tout, cin, cout, spatial_size(tout.shape)
