"""Per-layer-type channel semantics: how a layer couples channels, and how it is cut.

Each rule answers three questions for one layer class:
``couple``   which channels of its input and output tensors must be removed together;
``config``   how its config changes when channels go (``filters``, ``units``, ...);
``weights``  how its weight arrays are sliced.
Anything without a rule is *locked*: its tensors keep every channel, the rest still prunes.
"""
from __future__ import annotations

import re

import numpy as np

from edgeprune.errors import InputError
from edgeprune.pruning.graph import LayerGraph, LayerNode, _is_entry, spatial_size

_ND = ("1D", "2D", "3D")
PASS_WEIGHTLESS = {
    "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Softplus", "Dropout", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
    *(f"{p}{d}" for p in ("SpatialDropout", "ZeroPadding", "Cropping", "MaxPooling", "AveragePooling",
                          "MaxPool", "AveragePool", "UpSampling", "GlobalAveragePooling",
                          "GlobalMaxPooling", "GlobalAvgPool", "GlobalMaxPool") for d in _ND),
}
PASS_SLICED = {"BatchNormalization", "LayerNormalization", "PReLU", "LayerScale"}
MERGES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "CustomScaleLayer"}
CONVS = {"Conv1D", "Conv2D", "Conv3D"}
CONV_T = {"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}
DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}
SEPARABLE = {"SeparableConv1D", "SeparableConv2D"}
PRODUCERS = CONVS | CONV_T | SEPARABLE | {"Dense"}
# TFOpLambda functions that act element by element (scalars broadcast, tensors merge).
ELEMENTWISE_OPS = {
    "__operators__.add", "math.add", "math.multiply", "math.subtract", "math.truediv",
    "math.divide", "__operators__.sub", "math.maximum", "math.minimum", "nn.relu", "nn.relu6",
    "math.sigmoid", "nn.sigmoid", "nn.silu", "nn.swish", "math.tanh", "nn.gelu", "nn.elu",
    "nn.leaky_relu", "math.abs", "math.square", "math.negative", "__operators__.neg",
    "nn.softplus", "math.exp", "identity", "math.scalar_mul", "math.pow",
}
CHANNEL_MIXING_ACTIVATIONS = {"softmax", "log_softmax"}


class Coupler:
    """Collects channel couplings and locks while the rules walk the graph."""

    def __init__(self, graph: LayerGraph):
        self.g = graph
        self.pairs: list = []  # (key_a, idx_a, key_b, idx_b)
        self.locks: dict = {}  # tensor key -> reason

    def same(self, a, b) -> None:
        ca, cb = self.g.tensors[a].channels, self.g.tensors[b].channels
        if ca != cb:
            raise AssertionError(f"coupling {a} ({ca}) with {b} ({cb})")
        idx = np.arange(ca)
        self.pairs.append((a, idx, b, idx))

    def couple(self, a, ia, b, ib) -> None:
        self.pairs.append((a, np.asarray(ia), b, np.asarray(ib)))

    def lock(self, key, reason: str) -> None:
        self.locks.setdefault(key, reason)

    def lock_layer(self, node: LayerNode, reason: str) -> None:
        for k in node.inputs + node.outputs:
            self.lock(k, reason)


def _axis_is_last(axis, rank: int) -> bool:
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return len(axes) == 1 and axes[0] in (-1, rank - 1)


def _first_in(node, g):
    return g.tensors[node.inputs[0]]


def rule_kind(node: LayerNode, g: LayerGraph) -> tuple[str, str | None]:
    """Classify a layer: (kind, lock reason). Kinds: input, pass, merge, concat, flatten,
    producer, depthwise, locked."""
    cls, cfg = node.class_name, node.config
    if cls == "InputLayer":
        return "input", "model input"
    if node.calls > 1:
        return "locked", f"shared layer called {node.calls} times"
    if not node.inputs:
        return "locked", "layer without inputs"
    if len(node.outputs) != 1:
        return "locked", f"{cls} with several outputs"
    out = g.tensors[node.outputs[0]]
    rank = len(out.shape) + 1
    if cls in CONVS:
        if cfg.get("data_format", "channels_last") != "channels_last":
            return "locked", f"{cls} with channels_first"
        if int(cfg.get("groups", 1) or 1) > 1:
            return "grouped", None
        return "producer", None
    if cls in CONV_T | SEPARABLE | {"Dense"}:
        if cfg.get("data_format", "channels_last") not in (None, "channels_last"):
            return "locked", f"{cls} with channels_first"
        return "producer", None
    if cls in DEPTHWISE:
        if cfg.get("data_format", "channels_last") != "channels_last":
            return "locked", f"{cls} with channels_first"
        return "depthwise", None
    if cls in PASS_WEIGHTLESS:
        if cfg.get("data_format", "channels_last") not in (None, "channels_last"):
            return "locked", f"{cls} with channels_first"
        return "pass", None
    if cls == "Activation":
        if str(cfg.get("activation")) in CHANNEL_MIXING_ACTIVATIONS:
            return "locked", f"Activation '{cfg.get('activation')}' mixes channels"
        return "pass", None
    if cls == "Softmax":
        return "locked", "Softmax mixes channels"
    if cls in ("BatchNormalization", "LayerNormalization"):
        if not _axis_is_last(cfg.get("axis", -1), rank):
            return "locked", f"{cls} over axis {cfg.get('axis')} (not channels)"
        return "pass", None
    if cls == "PReLU":
        return "pass", None
    if cls == "LayerScale":
        return "pass", None
    if cls == "Rescaling":
        scale, offset = cfg.get("scale"), cfg.get("offset", 0.0)
        if isinstance(scale, (list, tuple)) or isinstance(offset, (list, tuple)):
            return "locked", "Rescaling with per-channel values"
        return "pass", None
    if cls in MERGES:
        return "merge", None
    if cls == "Concatenate":
        return "concat", None
    if cls == "Flatten":
        return "flatten", None
    if cls == "Reshape":
        inp = _first_in(node, g)
        if inp.spatial == 1 and out.shape and inp.shape and out.shape[-1] == inp.shape[-1]:
            return "pass", None  # channel stays last: NHWC row-major keeps (p, c) -> (p', c)
        if len(out.shape) == 1 and len(inp.shape) >= 2:
            return "flatten", None
        return "locked", f"Reshape {inp.shape}->{out.shape} mixes channels"
    if cls == "Permute":
        dims = list(cfg.get("dims", []))
        if dims and dims[-1] == len(dims):
            return "pass", None
        return "locked", f"Permute {tuple(dims)} moves the channel axis"
    if cls == "TFOpLambda":
        fn = cfg.get("function")
        if fn in ELEMENTWISE_OPS:
            for key, value in node.kwargs.items():
                if key != "name" and isinstance(value, (list, tuple, dict)) and not _is_entry(value):
                    return "locked", f"TF op '{fn}' with a constant array operand '{key}'"
            return "merge", None
        return "locked", f"TF op '{fn}' has no channel rule"
    return "locked", f"no pruning rule for {cls}"


def couple_layer(node: LayerNode, g: LayerGraph, c: Coupler) -> None:
    """Record the channel couplings of one layer (and set flatten factors on its outputs)."""
    kind, reason = rule_kind(node, g)
    outs = [g.tensors[k] for k in node.outputs]
    if kind == "input":
        for k in node.outputs:
            c.lock(k, reason)
        return
    if kind == "locked":
        c.lock_layer(node, f"{node.name}: {reason}")
        return
    out = outs[0]
    inp = g.tensors[node.inputs[0]]
    if kind == "producer":
        return
    if kind == "grouped":
        # whole groups go: group k owns inputs [k*gi, (k+1)*gi) and outputs [k*go, (k+1)*go)
        groups = int(node.config["groups"])
        gi, go = inp.channels // groups, out.channels // groups
        a, b = np.arange(inp.channels), np.arange(out.channels)
        c.couple(inp.key, a, inp.key, (a // gi) * gi)
        c.couple(out.key, b, inp.key, (b // go) * gi)
        return
    if kind == "depthwise":
        m = int(node.config.get("depth_multiplier", 1))
        cin = inp.channels
        c.couple(inp.key, np.repeat(np.arange(cin), m), out.key, np.arange(cin * m))
        return
    if kind == "pass":
        out.spatial = inp.spatial if out.width == inp.width else 1
        if out.channels != inp.channels or out.width % max(out.spatial, 1):
            c.lock_layer(node, f"{node.name}: {node.class_name} changes the channel count")
            return
        c.same(inp.key, out.key)
        return
    if kind == "flatten":
        if any(d is None for d in inp.shape):
            c.lock_layer(node, f"{node.name}: Flatten of a tensor with unknown size")
            return
        out.spatial = inp.spatial * spatial_size(inp.shape)
        if out.channels != inp.channels:
            c.lock_layer(node, f"{node.name}: Flatten factor mismatch")
            return
        c.same(inp.key, out.key)
        return
    if kind == "merge":
        tensors = [g.tensors[k] for k in node.inputs]
        spatial = {t.spatial for t in tensors if t.width > 1}
        if len(spatial) > 1:
            c.lock_layer(node, f"{node.name}: merges flattened tensors of different layouts")
            return
        out.spatial = spatial.pop() if spatial else 1
        full = [t for t in tensors if t.width == out.width]
        for t in tensors:
            if t.width not in (out.width, 1, 0) and t.shape:
                names = ", ".join(f"'{x.producer}' ({x.width} channels)" for x in tensors)
                raise InputError(f"{node.class_name} layer '{node.name}' merges tensors whose channel "
                                 f"counts differ: {names}")
        for t in full:
            if out.width > 1 or len(full) == len(tensors):
                c.same(t.key, out.key)
        return
    if kind == "concat":
        tensors = [g.tensors[k] for k in node.inputs]
        rank = len(out.shape) + 1
        axis = node.config.get("axis", -1)
        if _axis_is_last(axis, rank):
            if any(t.spatial != 1 for t in tensors):
                c.lock_layer(node, f"{node.name}: concatenates flattened tensors")
                return
            offset = 0
            for t in tensors:
                c.couple(t.key, np.arange(t.channels), out.key, offset + np.arange(t.channels))
                offset += t.channels
            return
        for t in tensors:  # concat along a spatial axis: channels line up like a merge
            c.same(t.key, out.key)
        return
    raise AssertionError(kind)


# ---------------------------------------------------------------------------- surgery


def _take(arr: np.ndarray, idx, axis: int) -> np.ndarray:
    return arr if idx is None else np.take(arr, idx, axis=axis)


def flatten_rows(kept, channels: int, spatial: int):
    """Dense-kernel rows of the kept channels after an NHWC Flatten: c, c+C, c+2C, ..."""
    if kept is None:
        return None
    return (np.arange(spatial)[:, None] * channels + np.asarray(kept)[None, :]).ravel()


def new_config(node: LayerNode, cfg: dict, kept_in: list, kept_out: list, g: LayerGraph) -> dict:
    """The layer's config with channel counts updated (``kept_*``: index arrays or None)."""
    cls = node.class_name
    ko = kept_out[0] if kept_out else None
    if ko is None:
        return cfg
    cfg = dict(cfg)
    n = len(ko)
    if cls in CONVS and int(cfg.get("groups", 1) or 1) > 1:
        per_group = g.tensors[node.outputs[0]].channels // int(cfg["groups"])
        cfg["filters"] = n
        cfg["groups"] = n // per_group
    elif cls in CONVS | CONV_T | SEPARABLE:
        cfg["filters"] = n
    elif cls == "Dense":
        cfg["units"] = n
    elif cls == "LayerScale":
        cfg["projection_dim"] = n
    elif cls == "Reshape":
        out = g.tensors[node.outputs[0]]
        target = list(cfg["target_shape"])
        if target[-1] != -1:
            target[-1] = n if out.spatial == 1 else n * out.spatial
        cfg["target_shape"] = tuple(target)
    return cfg


def slice_weights(node: LayerNode, weights: list, kept_in: list, kept_out: list, g: LayerGraph) -> list:
    """Slice the layer's weight arrays to the kept input/output channels."""
    cls = node.class_name
    ki = kept_in[0] if kept_in else None
    ko = kept_out[0] if kept_out else None
    if (ki is None and ko is None) or not weights:
        return weights
    w = list(weights)
    if cls in CONVS and int(node.config.get("groups", 1) or 1) > 1:
        w[0] = _take(w[0], ko, -1)  # whole groups removed: the per-group input slice is unchanged
        if len(w) > 1:
            w[1] = _take(w[1], ko, 0)
        return w
    if cls in CONVS:
        w[0] = _take(_take(w[0], ki, -2), ko, -1)
        if len(w) > 1:
            w[1] = _take(w[1], ko, 0)
        return w
    if cls in CONV_T:
        w[0] = _take(_take(w[0], ki, -1), ko, -2)
        if len(w) > 1:
            w[1] = _take(w[1], ko, 0)
        return w
    if cls == "Dense":
        inp = g.tensors[node.inputs[0]]
        rows = flatten_rows(ki, inp.channels, inp.spatial) if inp.spatial > 1 else ki
        w[0] = _take(_take(w[0], rows, 0), ko, 1)
        if len(w) > 1:
            w[1] = _take(w[1], ko, 0)
        return w
    if cls in DEPTHWISE:
        w[0] = _take(w[0], ki, -2)
        if len(w) > 1:
            w[1] = _take(w[1], ko, 0)
        return w
    if cls in SEPARABLE:
        m = int(node.config.get("depth_multiplier", 1))
        mid = None if ki is None else (np.asarray(ki)[:, None] * m + np.arange(m)[None, :]).ravel()
        w[0] = _take(w[0], ki, -2)
        w[1] = _take(_take(w[1], mid, -2), ko, -1)
        if len(w) > 2:
            w[2] = _take(w[2], ko, 0)
        return w
    if cls in ("BatchNormalization", "LayerNormalization", "LayerScale"):
        return [_take(a, ko, a.ndim - 1) for a in w]
    if cls == "PReLU":
        return [a if a.shape[-1] == 1 else _take(a, ko, a.ndim - 1) for a in w]
    raise AssertionError(f"no weight rule for {cls} '{node.name}' whose channels changed")


def matches(pattern: str, name: str) -> bool:
    """A protect/per-layer entry matches a layer by exact name or full regex match."""
    if pattern == name:
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error as exc:
        raise InputError(f"invalid layer pattern '{pattern}': {exc}") from None
