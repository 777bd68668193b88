"""keras-hub MobileNet (V1-V3 ``MobileNetBackbone``): ``DepthwiseConvBlock``,
``InvertedResidualBlock`` and ``ConvBnActBlock``.

Each block is one layer of the graph holding its convolutions, BatchNormalizations and
squeeze-excite, so the rule does what the separate Keras layers' rules would do together:

- **ConvBnActBlock** (1x1 conv, BN, activation): its ``filter`` prunes, like a Conv2D's.
- **DepthwiseConvBlock** (depthwise conv on the input, BN, ReLU, optional squeeze-excite,
  pointwise conv, BN): the pointwise ``filters`` prune; the depthwise channels are the input's
  (``infilters`` = the input width, its ``groups``), so they go with the group that produces the
  input; ``residual=True`` ties input and output into one group.
- **InvertedResidualBlock** (1x1 expand conv, BN, act, depthwise conv, BN, act, optional
  squeeze-excite, 1x1 project conv, BN): the **expanded width** is an internal width (no tensor of
  the graph shows it: expand filters, depthwise channels, both BNs, the squeeze-excite's outer
  channels and the project conv's inputs), as Keras' MobileNetV2 expansion prunes; the output
  ``filters`` prune on their own, or, where keras-hub adds the input back (``stride == 1`` and
  ``infilters == filters``), with the residual group.

What keras-hub derives rather than reads from the config:

- the expanded width is ``adjust_channels(expansion)``: a multiple of 8, at least 8. So it moves
  in steps of 8 channels: its channels are bundled in eights of like weight norm (the eight
  strongest, the next eight, ...), each bundle one unit for the engine; an expanded width of 8 is
  locked (keras-hub's least). The config's ``expansion`` is rewritten to the kept width, which
  ``adjust_channels`` returns unchanged.
- a squeeze-excite's bottleneck is ``adjust_channels(channels * squeeze_excite_ratio)``, no
  field of its own: it keeps that many of its strongest units (reduce columns and expand rows
  taken together) for the channels kept around it.
- keras-hub reads an InvertedResidualBlock's ``infilters`` only to decide the residual add; its
  convolutions take their input width from the tensor. It is rewritten to the kept input width,
  except where a block without a residual would then look like one (stride 1, kept input width =
  kept ``filters``): there it is written as 0, which no block's input has, so no add appears.

Weights are found through the block's attributes (``layer.conv1.kernel``), not by path.
Nothing here imports keras_hub: the registry refers to these blocks by class name.
"""
from __future__ import annotations

import numpy as np

from edgeprune.load.graph import spatial_size
from edgeprune.pruning.rules.attention import _internal_key, _norms
from edgeprune.pruning.rules.base import LayerRule, channels_last, take
from edgeprune.pruning.rules.keras_hub import top

DIVISOR = 8  # keras-hub's adjust_channels rounds every derived width to multiples of 8
EXPANDED = "expanded"  # the internal width of an InvertedResidualBlock
_ATTRS = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")


def adjust_channels(x: float, divisor: int = DIVISOR) -> int:
    """keras-hub 0.32's ``keras_hub/src/models/mobilenet/util.py:adjust_channels``, the width a
    block derives from its config: rounded to a multiple of ``divisor``, at least ``divisor``,
    never more than 10 % below ``x``. Mirrored (keras-hub is an optional extra)."""
    new_x = max(divisor, int(x + divisor / 2) // divisor * divisor)
    return new_x + divisor if new_x < 0.9 * x else new_x


def _kernel_area(cfg: dict) -> int:
    """k*k of a block's depthwise kernel: keras-hub configs give ``kernel_size`` as one int for
    both sides (base.kernel_size reads an int as a 1D kernel)."""
    k = cfg.get("kernel_size", 3)
    return int(np.prod(k)) if isinstance(k, (list, tuple)) else int(k) ** 2


def _positions(layer, parts: dict) -> dict:
    """``role/attr`` -> position in ``layer.get_weights()`` for the sub-layers ``parts``."""
    at = {id(v): i for i, v in enumerate(layer.weights)}
    found = {}
    for role, sub in parts.items():
        for attr in _ATTRS:
            var = getattr(sub, attr, None)
            if var is not None and id(var) in at:
                found[f"{role}/{attr}"] = at[id(var)]
    return found


class _Block(LayerRule):
    """What the three blocks share: weights by role, locks for unexpected structure, slicing."""

    producer = True
    kind = ""

    def parts(self, layer) -> dict:
        """role -> sub-layer, for every sub-layer holding weights."""
        raise NotImplementedError

    def _at(self, node) -> dict:
        return _positions(node.layer, self.parts(node.layer))

    def _lock_reason(self, node) -> str | None:
        try:
            parts, at = self.parts(node.layer), self._at(node)
        except AttributeError:
            return f"{node.class_name} with unexpected sub-layers"
        if len(at) != len(node.layer.weights):
            return f"{node.class_name} with an unexpected set of weights"
        if not all(channels_last({"data_format": getattr(sub, "data_format", None)}) for sub in parts.values()):
            return f"{node.class_name} with channels_first"
        return None

    @staticmethod
    def _cut(w: list, at: dict, role: str, idx, axis: int) -> None:
        if role in at:
            w[at[role]] = take(w[at[role]], idx, axis)

    def _cut_bn(self, w, at, bn: str, idx) -> None:
        for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
            self._cut(w, at, f"{bn}/{attr}", idx, 0)

    def _cut_se(self, w, at, real, outer, ratio) -> None:
        """Slice a squeeze-excite to its ``outer`` kept channels and the bottleneck keras-hub
        derives for them (its strongest units)."""
        if "se_reduce/kernel" not in at or outer is None:
            return
        full = real[at["se_reduce/kernel"]].shape[-1]
        width = min(full, adjust_channels(len(outer) * float(ratio)))
        mid = top(_norms([(real[at["se_reduce/kernel"]], 3), (real[at["se_expand/kernel"]], 2)], 2), width)
        self._cut(w, at, "se_reduce/kernel", outer, 2)
        self._cut(w, at, "se_reduce/kernel", mid, 3)
        self._cut(w, at, "se_reduce/bias", mid, 0)
        self._cut(w, at, "se_expand/kernel", mid, 2)
        self._cut(w, at, "se_expand/kernel", outer, 3)
        self._cut(w, at, "se_expand/bias", outer, 0)

    @staticmethod
    def _se_macs(channels: int, ratio) -> int:
        """The squeeze-excite's two 1x1 convolutions on the pooled (1x1) map."""
        return 2 * channels * adjust_channels(channels * float(ratio)) if ratio else 0

    def couple(self, node, g, c):
        reason = self._lock_reason(node)
        if reason:
            c.lock_layer(node, f"{node.name}: {reason}")


class ConvBnActBlockRule(_Block):
    """``ConvBnActBlock``: a 1x1 conv (no bias), BN and an activation; ``filter`` prunes."""

    def parts(self, layer):
        return {"conv": layer.conv, "bn": layer.batch_normalization}

    def new_config(self, node, cfg, kept_in, kept_out, g):
        ko = kept_out[0] if kept_out else None
        return cfg if ko is None else dict(cfg, filter=int(len(ko)))

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        at, w = self._at(node), list(weights)
        self._cut(w, at, "conv/kernel", kept_in[0], 2)
        self._cut(w, at, "conv/kernel", kept_out[0], 3)
        self._cut_bn(w, at, "bn", kept_out[0])
        return w

    def macs(self, node, g, counts):
        tin, tout = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        return spatial_size(tout.shape) * counts.get(tin.key, tin.channels) * counts.get(tout.key, tout.channels)

    def filter_norms(self, node, weights, p):
        return _norms([(weights[self._at(node)["conv/kernel"]], 3)], p)

    def input_norms(self, node, weights, p, g):
        return _norms([(weights[self._at(node)["conv/kernel"]], 2)], p)


class DepthwiseConvBlockRule(_Block):
    """``DepthwiseConvBlock``: depthwise conv on the input's channels, optional squeeze-excite on
    them, pointwise conv to ``filters`` (see the module docs)."""

    def parts(self, layer):
        found = {"dw": layer.conv1, "bn1": layer.batch_normalization1, "pw": layer.conv2,
                 "bn2": layer.batch_normalization2}
        se = getattr(layer, "se_layer", None)  # built only with a squeeze_excite_ratio
        if se is not None:
            found.update(se_reduce=se.conv_reduce, se_expand=se.conv_expand)
        return found

    def couple(self, node, g, c):
        reason = self._lock_reason(node)
        if reason:
            c.lock_layer(node, f"{node.name}: {reason}")
        elif node.config.get("residual"):  # x + inputs
            c.same(node.inputs[0], node.outputs[0])

    def new_config(self, node, cfg, kept_in, kept_out, g):
        ki, ko = kept_in[0] if kept_in else None, kept_out[0] if kept_out else None
        cfg = dict(cfg)
        if ki is not None:
            cfg["infilters"] = int(len(ki))  # the depthwise conv's groups: the input width
        if ko is not None:
            cfg["filters"] = int(len(ko))
        return cfg

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        at, w, real = self._at(node), list(weights), node.weights()
        ki, ko = kept_in[0], kept_out[0]
        self._cut(w, at, "dw/kernel", ki, 3)  # a Conv2D with groups = channels: (k, k, 1, channels)
        self._cut_bn(w, at, "bn1", ki)
        self._cut_se(w, at, real, ki, node.config.get("squeeze_excite_ratio"))
        self._cut(w, at, "pw/kernel", ki, 2)
        self._cut(w, at, "pw/kernel", ko, 3)
        self._cut_bn(w, at, "bn2", ko)
        return w

    def macs(self, node, g, counts):
        tin, tout = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        cin, cout = counts.get(tin.key, tin.channels), counts.get(tout.key, tout.channels)
        out_sp = spatial_size(tout.shape)
        return (out_sp * _kernel_area(node.config) * cin + self._se_macs(cin, node.config.get("squeeze_excite_ratio"))
                + out_sp * cin * cout)

    def filter_norms(self, node, weights, p):
        return _norms([(weights[self._at(node)["pw/kernel"]], 3)], p)

    def input_norms(self, node, weights, p, g):
        at = self._at(node)
        return _norms([(weights[at["dw/kernel"]], 3), (weights[at["pw/kernel"]], 2)], p)


class InvertedResidualBlockRule(_Block):
    """``InvertedResidualBlock``: expanded width internal (in steps of 8), output ``filters``
    alone or with the residual group (see the module docs)."""

    def parts(self, layer):
        found = {"expand": layer.conv1, "bn1": layer.batch_normalization1, "dw": layer.conv2,
                 "bn2": layer.batch_normalization2, "project": layer.conv3, "bn3": layer.batch_normalization3}
        if layer.squeeze_excite is not None:
            found.update(se_reduce=layer.squeeze_excite.conv_reduce, se_expand=layer.squeeze_excite.conv_expand)
        return found

    @staticmethod
    def _has_residual(cfg: dict) -> bool:
        """keras-hub's own test (InvertedResidualBlock.call)."""
        return cfg.get("stride") == 1 and cfg.get("infilters") == cfg.get("filters")

    @staticmethod
    def _expanded(node) -> int:
        return adjust_channels(node.config["expansion"])

    def internal_widths(self, node):
        return {EXPANDED: self._expanded(node)}

    def internal_norms(self, node, weights, p):
        if self._lock_reason(node):
            return {}
        at = self._at(node)
        return {EXPANDED: _norms([(weights[at["expand/kernel"]], 3), (weights[at["dw/kernel"]], 3),
                                  (weights[at["project/kernel"]], 2)], p)}

    def couple(self, node, g, c):
        reason = self._lock_reason(node)
        key = _internal_key(node.name, EXPANDED)
        if reason:
            c.lock_layer(node, f"{node.name}: {reason}")
            c.lock(key, f"{node.name}: {reason}")
            return
        if self._has_residual(node.config):
            c.same(node.inputs[0], node.outputs[0])
        width = self._expanded(node)
        if width <= DIVISOR or width % DIVISOR:
            c.lock(key, f"{node.name}: expanded width {width} is keras-hub's least (adjust_channels)")
            return
        # bundles of eight channels of like weight norm, each one unit (see the module docs)
        ranked = np.argsort(-self.internal_norms(node, node.weights(), 2)[EXPANDED], kind="stable")
        ranked = ranked.reshape(-1, DIVISOR)
        c.couple(key, np.repeat(ranked[:, 0], DIVISOR - 1), key, ranked[:, 1:].ravel())

    def new_config(self, node, cfg, kept_in, kept_out, g, internal=None):
        ki, ko = kept_in[0] if kept_in else None, kept_out[0] if kept_out else None
        expanded = (internal or {}).get(EXPANDED)
        residual = self._has_residual(cfg)
        cfg = dict(cfg)
        if expanded is not None:
            cfg["expansion"] = int(len(expanded))  # adjust_channels returns a multiple of 8 unchanged
        if ko is not None:
            cfg["filters"] = int(len(ko))
        if ki is not None:
            cfg["infilters"] = int(len(ki))
        if not residual and self._has_residual(cfg):
            cfg["infilters"] = 0  # keep keras-hub from adding a residual the model never had
        return cfg

    def slice_weights(self, node, weights, kept_in, kept_out, g, internal=None):
        at, w, real = self._at(node), list(weights), node.weights()
        ki, ko = kept_in[0] if kept_in else None, kept_out[0] if kept_out else None
        mid = (internal or {}).get(EXPANDED)
        self._cut(w, at, "expand/kernel", ki, 2)
        self._cut(w, at, "expand/kernel", mid, 3)
        self._cut_bn(w, at, "bn1", mid)
        self._cut(w, at, "dw/kernel", mid, 3)
        self._cut_bn(w, at, "bn2", mid)
        self._cut_se(w, at, real, mid, node.config.get("squeeze_excite_ratio"))
        self._cut(w, at, "project/kernel", mid, 2)
        self._cut(w, at, "project/kernel", ko, 3)
        self._cut_bn(w, at, "bn3", ko)
        return w

    def macs(self, node, g, counts):
        tin, tout = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        cin, cout = counts.get(tin.key, tin.channels), counts.get(tout.key, tout.channels)
        mid = counts.get(_internal_key(node.name, EXPANDED), self._expanded(node))
        out_sp = spatial_size(tout.shape)
        return (spatial_size(tin.shape) * cin * mid  # expand (1x1, at the input's resolution)
                + out_sp * _kernel_area(node.config) * mid  # depthwise (strided)
                + self._se_macs(mid, node.config.get("squeeze_excite_ratio"))
                + out_sp * mid * cout)  # project

    def filter_norms(self, node, weights, p):
        return _norms([(weights[self._at(node)["project/kernel"]], 3)], p)

    def input_norms(self, node, weights, p, g):
        return _norms([(weights[self._at(node)["expand/kernel"]], 2)], p)
