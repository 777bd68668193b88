"""keras-hub MiT (the SegFormer encoder): ``OverlappingPatchingAndEmbedding`` and
``HierarchicalTransformerEncoder``.

What prunes is each stage's **hidden width** (``project_dim``): the residual stream the stage's
patch embedding produces, every block of the stage reads and writes, and the next stage's patch
convolution reads. Inside a block everything else follows it, because keras-hub derives it:

- the **head size** is ``project_dim // num_heads`` (the block reshapes its ``project_dim`` wide
  queries into ``num_heads`` heads), so the width must stay a multiple of ``num_heads``: channel
  ``d`` of the first head's slice of the stream is removed together with channel ``d`` of every
  other head's (a unit of ``num_heads`` channels), and each head keeps its strongest query/key
  and value dimensions, the same ones in every head, queries rescaled for the new
  ``1/sqrt(head size)``;
- the **MixFFN width** is ``4 * project_dim`` with no field to set it, so it is not a width of its
  own: it keeps ``4 *`` the kept hidden width, its strongest units (fc1 columns, depthwise
  filters and fc2 rows taken together);
- the **sequence-reduction convolution** (``sr_ratio > 1``) writes ``project_dim`` channels that
  key and value read: it keeps its strongest filters, as many as the hidden width.

Whole heads do not prune (``num_heads`` is a field, but removing heads with the width kept
would only grow each head). The block's own config misses ``sr_ratio`` and writes keys its
constructor rejects: :mod:`edgeprune.load.model_io.hub_configs` describes it from the live layer.
Weights are found through the layer's attributes (``attn.q.kernel``), not by path: keras-hub
names the block's sub-layers with global counters (``dense_3``), which differ between builds.
"""
from __future__ import annotations

import math

import numpy as np

from edgeprune.load.graph import spatial_size
from edgeprune.pruning.rules.attention import _norms
from edgeprune.pruning.rules.base import LayerRule, take
from edgeprune.pruning.rules.keras_hub import _residual, top

MLP_RATIO = 4  # keras-hub's MixFFN: mid_channels = int(project_dim * 4)


def _positions(layer) -> dict:
    """id(variable) -> its position in ``layer.weights`` (and so in ``get_weights()``)."""
    return {id(v): i for i, v in enumerate(layer.weights)}


class OverlappingPatchingAndEmbeddingRule(LayerRule):
    """MiT's patch embedding: a strided Conv2D to ``project_dim`` channels, flattened to tokens and
    layer-normalized. It produces its stage's stream and reads the previous stage's (or the image)."""

    producer = True

    def _at(self, node) -> dict:
        at, layer = _positions(node.layer), node.layer
        return {"kernel": at[id(layer.proj.kernel)], "bias": at[id(layer.proj.bias)],
                "gamma": at[id(layer.norm.gamma)], "beta": at[id(layer.norm.beta)]}

    def new_config(self, node, cfg, kept_in, kept_out, g):
        ko = kept_out[0] if kept_out else None
        return cfg if ko is None else dict(cfg, project_dim=int(len(ko)))

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        at, w = self._at(node), list(weights)
        ki, ko = kept_in[0] if kept_in else None, kept_out[0] if kept_out else None
        w[at["kernel"]] = take(take(w[at["kernel"]], ki, 2), ko, 3)
        for part in ("bias", "gamma", "beta"):
            w[at[part]] = take(w[at[part]], ko, 0)
        return w

    def macs(self, node, g, counts):
        tin, tout = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        k = int(node.config["patch_size"])
        return (spatial_size(tout.shape) * k * k * counts.get(tin.key, tin.channels)
                * counts.get(tout.key, tout.channels))

    def filter_norms(self, node, weights, p):
        return _norms([(weights[self._at(node)["kernel"]], 3)], p)

    def input_norms(self, node, weights, p, g):
        return _norms([(weights[self._at(node)["kernel"]], 2)], p)


class HierarchicalTransformerEncoderRule(LayerRule):
    """One MiT block: efficient (sequence-reduced) self-attention and a MixFFN around the stage's
    stream; input and output are one group (see the module docs for what follows it)."""

    producer = True  # its attention and MLP projections write the stream

    @staticmethod
    def _heads(node) -> int:
        return int(node.config["num_heads"])

    @staticmethod
    def _sr(node) -> int:
        return int(node.layer.attn.sr_ratio)

    def _at(self, node) -> dict:
        """Weight positions by role: ``q/kernel``, ``sr/kernel``, ``fc1/bias``, ``norm1/gamma``..."""
        layer = node.layer
        at, attn, mlp = _positions(layer), layer.attn, layer.mlp
        parts = {"q": attn.q, "k": attn.k, "v": attn.v, "proj": attn.proj, "fc1": mlp.fc1,
                 "dw": mlp.dwconv, "fc2": mlp.fc2, "norm1": layer.norm1, "norm2": layer.norm2}
        if self._sr(node) > 1:
            parts.update(sr=attn.sr, sr_norm=attn.norm)
        found = {}
        for role, sub in parts.items():
            for attr in ("kernel", "bias", "gamma", "beta"):
                var = getattr(sub, attr, None)
                if var is not None and id(var) in at:
                    found[f"{role}/{attr}"] = at[id(var)]
        return found

    def _lock_reason(self, node) -> str | None:
        layer = node.layer
        if not all(hasattr(layer, a) for a in ("attn", "mlp", "norm1", "norm2")):
            return "HierarchicalTransformerEncoder with unexpected sub-layers"
        try:
            at = self._at(node)
        except (AttributeError, KeyError):
            return "HierarchicalTransformerEncoder with an unexpected set of weights"
        if len(at) != len(layer.weights):
            return "HierarchicalTransformerEncoder with an unexpected set of weights"
        return None

    def couple(self, node, g, c):
        reason = self._lock_reason(node)
        if reason:
            c.lock_layer(node, f"{node.name}: {reason}")
            return
        x, heads = node.inputs[0], self._heads(node)
        c.same(x, node.outputs[0])
        size = g.tensors[x].channels // heads
        for h in range(1, heads):  # one unit = the same channel of every head's slice
            c.couple(x, np.arange(size), x, np.arange(size) + h * size)

    def new_config(self, node, cfg, kept_in, kept_out, g):
        residual = _residual(node, kept_in, kept_out)
        return cfg if residual is None else dict(cfg, project_dim=int(len(residual)))

    def _head_dims(self, real, at, heads, kept_width):
        """Columns of q/k and of v (and rows of proj) kept: per head the same strongest dims."""
        full = real[at["q/kernel"]].shape[1]
        size, keep = full // heads, kept_width // heads

        def per_head(parts):
            dims = top(_norms([(a.reshape(*a.shape[:axis], heads, size, *a.shape[axis + 1:]), axis + 1)
                               for a, axis in parts], 2), keep)
            return (np.arange(heads)[:, None] * size + dims[None, :]).ravel()

        qk = per_head([(real[at["q/kernel"]], 1), (real[at["k/kernel"]], 1)])
        v = per_head([(real[at["v/kernel"]], 1), (real[at["proj/kernel"]], 0)])
        return qk, v

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        residual = _residual(node, kept_in, kept_out)
        if residual is None:
            return weights
        at, real, w, width = self._at(node), node.weights(), list(weights), len(residual)
        qk, v = self._head_dims(real, at, self._heads(node), width)

        def cut(role, idx, axis):
            if role in at:
                w[at[role]] = take(w[at[role]], idx, axis)

        reduced = residual  # what key and value read: the stream, or the reduction's output
        if self._sr(node) > 1:
            reduced = top(_norms([(real[at["sr/kernel"]], 3), (real[at["k/kernel"]], 0),
                                  (real[at["v/kernel"]], 0)], 2), width)
            cut("sr/kernel", residual, 2)
            cut("sr/kernel", reduced, 3)
            for part in ("sr/bias", "sr_norm/gamma", "sr_norm/beta"):
                cut(part, reduced, 0)
        for role, rows, cols in (("q", residual, qk), ("k", reduced, qk), ("v", reduced, v)):
            cut(f"{role}/kernel", rows, 0)
            cut(f"{role}/kernel", cols, 1)
            cut(f"{role}/bias", cols, 0)
        cut("proj/kernel", v, 0)
        cut("proj/kernel", residual, 1)
        cut("proj/bias", residual, 0)
        for part in ("norm1/gamma", "norm1/beta", "norm2/gamma", "norm2/beta"):
            cut(part, residual, 0)
        mid = top(_norms([(real[at["fc1/kernel"]], 1), (real[at["dw/kernel"]], 2),
                          (real[at["fc2/kernel"]], 0)], 2), MLP_RATIO * width)
        cut("fc1/kernel", residual, 0)
        cut("fc1/kernel", mid, 1)
        cut("fc1/bias", mid, 0)
        cut("dw/kernel", mid, 2)
        cut("dw/bias", mid, 0)
        cut("fc2/kernel", mid, 0)
        cut("fc2/kernel", residual, 1)
        cut("fc2/bias", residual, 0)
        return w

    def compensate(self, node, weights, internal=None):
        """keras-hub scales the scores by ``(project_dim // num_heads) ** -0.5``: scale the queries
        by sqrt(kept/full) so the kept dimensions score as they did."""
        at, w = self._at(node), list(weights)
        full = node.weights()[at["q/kernel"]].shape[1]
        kept = w[at["q/kernel"]].shape[1]
        if kept != full:
            factor = math.sqrt((kept // self._heads(node)) / (full // self._heads(node)))
            for part in ("q/kernel", "q/bias"):
                if part in at:
                    w[at[part]] = (w[at[part]] * factor).astype(w[at[part]].dtype)
        return w

    def macs(self, node, g, counts):
        tin = g.tensors[node.inputs[0]]
        width, tokens, sr = counts.get(tin.key, tin.channels), spatial_size(tin.shape), self._sr(node)
        side = math.isqrt(tokens)
        keys = (side // sr) ** 2 if sr > 1 else tokens
        attention = (2 * tokens * width * width  # q and the output projection
                     + 2 * keys * width * width  # k and v
                     + (keys * sr * sr * width * width if sr > 1 else 0)  # the reduction conv
                     + 2 * tokens * keys * width)  # QK^T and scores x V over all heads
        mid = MLP_RATIO * width
        return attention + 2 * tokens * width * mid + tokens * mid * 9  # fc1, fc2, 3x3 depthwise

    def filter_norms(self, node, weights, p):
        at = self._at(node)
        return _norms([(weights[at["proj/kernel"]], 1), (weights[at["fc2/kernel"]], 1)], p)

    def input_norms(self, node, weights, p, g):
        at = self._at(node)
        parts = [(weights[at["q/kernel"]], 0), (weights[at["fc1/kernel"]], 0)]
        parts += [(weights[at["sr/kernel"]], 2)] if self._sr(node) > 1 else [
            (weights[at["k/kernel"]], 0), (weights[at["v/kernel"]], 0)]
        return _norms(parts, p)
