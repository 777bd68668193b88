"""keras-hub transformer layers: TransformerEncoder, TransformerDecoder (with or without
cross-attention), TokenAndPositionEmbedding, PositionEmbedding and ViT's patch embedding and
encoder.

These layers hold whole sub-networks (attention, LayerNorms, an MLP) behind one config, so what
prunes is what that config can express:

- the **residual width** (the layer's input = output width, read by every projection and
  normalized by every LayerNorm inside): an ordinary channel group of the graph, shared with the
  embedding that produces it and everything the stream passes through;
- the **MLP width** (``intermediate_dim`` / ``mlp_dim``): an internal width
  (:meth:`LayerRule.internal_widths`), allocated and scored like any group;
- **not** the heads nor the head size on their own: keras-hub derives the head size as
  ``key_dim = hidden_dim // num_heads`` and has no field to set it, so removing heads with the
  residual width kept would *grow* each head, and shrinking the head alone is not expressible.
  The head size follows the residual width instead: with ``H'`` residual channels kept each head
  keeps ``H' // num_heads`` query/key and value dimensions, the ones whose weights are largest
  (the same dimensions in every head, as :class:`MultiHeadAttentionRule` removes them).

Keras 3 only (keras-hub is Keras 3). Nothing here imports keras_hub: the registry refers to
these layers by class name.
"""
from __future__ import annotations

import numpy as np

from edgeprune.base.errors import InputError
from edgeprune.load.graph import spatial_size
from edgeprune.pruning.rules.attention import _internal_key, _norms, _ref
from edgeprune.pruning.rules.base import LayerRule, take

_MHA_PARTS = ("query/kernel", "query/bias", "key/kernel", "key/bias", "value/kernel", "value/bias",
              "attention_output/kernel", "attention_output/bias")


def weight_index(node) -> dict:
    """Path inside the layer (``self_attention_layer/query/kernel``) -> position in its weights:
    sub-layers are found by name, not by the order Keras happens to track them in."""
    return {w.path.split("/", 1)[1] if "/" in w.path else w.path: i for i, w in enumerate(node.layer.weights)}


def top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values, in ascending index order (kept channels keep their order)."""
    return np.sort(np.argsort(-np.asarray(values), kind="stable")[:k])


SAME_STREAM = object()  # _Attention.slice: the keys and values read the queries' stream


class _Attention:
    """One keras-hub self-attention (a MultiHeadAttention whose head size is ``width // heads``)
    seen through its parent's weight list: ``prefix`` is its path inside the parent."""

    def __init__(self, index: dict, prefix: str, heads: int):
        self.at = {part: index.get(f"{prefix}/{part}") for part in _MHA_PARTS}
        self.heads = heads

    def kept_dims(self, real: list, width: int | None):
        """(query/key dims, value dims) kept when the residual keeps ``width`` channels (None: all)."""
        q = real[self.at["query/kernel"]]
        if width is None or width // self.heads >= q.shape[2]:
            return None, None
        keep = max(1, width // self.heads)
        qk = [(real[self.at["query/kernel"]], 2), (real[self.at["key/kernel"]], 2)]
        vd = [(real[self.at["value/kernel"]], 2), (real[self.at["attention_output/kernel"]], 1)]
        return top(_norms(qk, 2), keep), top(_norms(vd, 2), keep)

    def slice(self, w: list, real: list, residual, source=SAME_STREAM) -> None:
        """Rows of the query (and, unless ``source`` says otherwise, key/value) projections and
        columns of the output projection to the kept ``residual`` channels; ``source``: the kept
        channels of another stream the keys and values read (a decoder's cross-attention)."""
        dq, dv = self.kept_dims(real, None if residual is None else len(residual))
        rows = residual if source is SAME_STREAM else source
        for role, dims, kept in (("query", dq, residual), ("key", dq, rows), ("value", dv, rows)):
            w[self.at[f"{role}/kernel"]] = take(take(w[self.at[f"{role}/kernel"]], kept, 0), dims, 2)
            if self.at[f"{role}/bias"] is not None:
                w[self.at[f"{role}/bias"]] = take(w[self.at[f"{role}/bias"]], dims, 1)
        o = self.at["attention_output/kernel"]
        w[o] = take(take(w[o], dv, 1), residual, 2)
        if self.at["attention_output/bias"] is not None:
            w[self.at["attention_output/bias"]] = take(w[self.at["attention_output/bias"]], residual, 0)

    def compensate(self, w: list, full_dim: int) -> None:
        """Keras scales the queries by 1/sqrt(head size): scale the query projection by
        sqrt(kept/full) so the kept dimensions score as they did (MultiHeadAttentionRule.compensate)."""
        kept = w[self.at["query/kernel"]].shape[2]
        if kept == full_dim:
            return
        factor = np.sqrt(kept / full_dim)
        for part in ("query/kernel", "query/bias"):
            if self.at[part] is not None:
                w[self.at[part]] = (w[self.at[part]] * factor).astype(w[self.at[part]].dtype)

    def macs(self, tokens: int, width: int, source_tokens: int | None = None,
             source_width: int | None = None) -> int:
        """Q/K/V projections, QK^T, scores x V and the output projection at residual ``width``;
        keys and values read ``source_tokens`` x ``source_width`` (cross-attention) or the
        queries' own sequence."""
        inner = self.heads * (width // self.heads)
        src_tokens, src_width = source_tokens or tokens, source_width or width
        return (2 * tokens * width * inner  # queries and output projection
                + 2 * src_tokens * src_width * inner  # keys and values
                + 2 * inner * tokens * src_tokens)  # QK^T and scores x V

    def norms(self, real: list, p: int, axis_in: bool) -> list:
        """(array, axis) pairs reading (``axis_in``) or writing the residual channels."""
        if axis_in:
            return [(real[self.at[f"{r}/kernel"]], 0) for r in ("query", "key", "value")]
        return [(real[self.at["attention_output/kernel"]], 2)]


def _residual(node, kept_in, kept_out):
    """Kept residual channels of a width-preserving block (input and output are one group)."""
    return kept_in[0] if kept_in and kept_in[0] is not None else (kept_out[0] if kept_out else None)


def check_head_size(node, residual) -> None:
    """keras-hub refuses a head size of 0: the residual width must keep one channel per head."""
    heads = int(node.config["num_heads"])
    if residual is not None and len(residual) < heads:
        raise InputError(f"{node.name}: keras-hub {node.class_name} derives its head size as width // num_heads "
                         f"({heads} heads) and pruning would leave {len(residual)} channels; lower --ratio, "
                         f"or --protect {node.name}")


class TransformerEncoderRule(LayerRule):
    """``keras_hub.layers.TransformerEncoder``: residual width (input = output), with the head
    size following it, and ``intermediate_dim`` as the internal width ``"intermediate"``."""

    producer = True  # its MLP produces the internal width (and its output projection the residual)
    self_attention = "self_attention_layer"  # the self-attention's path inside the layer

    def _lock_reason(self, node) -> str | None:
        if len(node.outputs) != 1:
            return "TransformerEncoder returning its attention scores"
        if len(node.layer.weights) != 16:
            return "TransformerEncoder with an unexpected set of weights"
        return None

    def _parts(self, node):
        index = weight_index(node)
        attention = _Attention(index, self.self_attention, int(node.config["num_heads"]))
        return index, attention

    def internal_widths(self, node):
        return {} if self._lock_reason(node) else {"intermediate": int(node.config["intermediate_dim"])}

    def couple(self, node, g, c):
        reason = self._lock_reason(node)
        if reason:
            c.lock_layer(node, f"{node.name}: {reason}")
            return
        for k in node.inputs[1:]:  # padding / attention masks: positions, not channels
            c.lock(k, f"{node.name}: attention mask")
        c.same(node.inputs[0], node.outputs[0])

    def new_config(self, node, cfg, kept_in, kept_out, g, internal=None):
        check_head_size(node, _residual(node, kept_in, kept_out))
        kept = (internal or {}).get("intermediate")
        return cfg if kept is None else dict(cfg, intermediate_dim=int(len(kept)))

    def slice_weights(self, node, weights, kept_in, kept_out, g, internal=None):
        index, attention = self._parts(node)
        residual, hidden = _residual(node, kept_in, kept_out), (internal or {}).get("intermediate")
        w = list(weights)
        attention.slice(w, node.weights(), residual)
        for norm in ("self_attention_layer_norm", "feedforward_layer_norm"):
            for part in ("gamma", "beta"):
                w[index[f"{norm}/{part}"]] = take(w[index[f"{norm}/{part}"]], residual, 0)
        up, down = "feedforward_intermediate_dense", "feedforward_output_dense"
        w[index[f"{up}/kernel"]] = take(take(w[index[f"{up}/kernel"]], residual, 0), hidden, 1)
        w[index[f"{up}/bias"]] = take(w[index[f"{up}/bias"]], hidden, 0)
        w[index[f"{down}/kernel"]] = take(take(w[index[f"{down}/kernel"]], hidden, 0), residual, 1)
        w[index[f"{down}/bias"]] = take(w[index[f"{down}/bias"]], residual, 0)
        return w

    def compensate(self, node, weights, internal=None):
        _, attention = self._parts(node)
        w = list(weights)
        attention.compensate(w, node.weights()[attention.at["query/kernel"]].shape[2])
        return w

    def macs(self, node, g, counts):
        if self._lock_reason(node):
            return 0
        _, attention = self._parts(node)
        tin = g.tensors[node.inputs[0]]
        width = counts.get(tin.key, tin.channels)
        hidden = counts.get(_internal_key(node.name, "intermediate"), int(node.config["intermediate_dim"]))
        tokens = spatial_size(tin.shape)
        return attention.macs(tokens, width) + 2 * tokens * width * hidden

    def filter_norms(self, node, weights, p):
        index, attention = self._parts(node)
        return _norms(attention.norms(weights, p, False)
                      + [(weights[index["feedforward_output_dense/kernel"]], 1)], p)

    def input_norms(self, node, weights, p, g):
        index, attention = self._parts(node)
        return _norms(attention.norms(weights, p, True)
                      + [(weights[index["feedforward_intermediate_dense/kernel"]], 0)], p)

    def internal_norms(self, node, weights, p):
        index = weight_index(node)
        up, down = "feedforward_intermediate_dense", "feedforward_output_dense"
        parts = [(weights[index[f"{up}/kernel"]], 1), (weights[index[f"{up}/bias"]], 0),
                 (weights[index[f"{down}/kernel"]], 0)]
        return {"intermediate": _norms(parts, p)}


class TransformerDecoderRule(TransformerEncoderRule):
    """``keras_hub.layers.TransformerDecoder``: the encoder's rule (residual width = input =
    output width, the head size following it, ``intermediate_dim`` as ``"intermediate"``) plus
    the optional cross-attention of ``layer(decoder_sequence, encoder_sequence)``.

    The cross-attention's queries read, and its output writes, the decoder's residual stream;
    its keys and values read the encoder's stream (the second sequence), which is another channel
    group: whatever prunes that stream (the encoder and its embedding) slices their rows here.
    keras-hub sizes its heads from the decoder's width too (``key_dim = value_dim = width //
    num_heads``), so they follow the decoder's width. The causal mask is built inside the layer
    from the sequence length: channels do not change it. Masks passed to the call are locked."""

    self_attention = "self_attention"
    cross_attention = "cross_attention"

    def _sequences(self, node) -> tuple:
        """(decoder sequence, encoder sequence or None) tensor keys of the call, positional or
        by keyword (any other input tensor is a mask)."""
        args, kw = list(node.args), node.kwargs
        found = [(_ref(args[i]) if len(args) > i else None) or _ref(kw.get(role))
                 for i, role in enumerate(("decoder_sequence", "encoder_sequence"))]
        return found[0] or (node.inputs[0] if node.inputs else None), found[1]

    def _has_cross(self, node) -> bool:
        return f"{self.cross_attention}/query/kernel" in weight_index(node)

    def _lock_reason(self, node) -> str | None:
        if len(node.outputs) != 1:
            return "TransformerDecoder returning its attention caches"
        expected = {f"{self.self_attention}/{part}" for part in _MHA_PARTS} | _FEEDFORWARD | _norm_paths(
            "self_attention_layer_norm", "feedforward_layer_norm")
        if self._has_cross(node):
            expected |= {f"{self.cross_attention}/{part}" for part in _MHA_PARTS} | _norm_paths(
                "cross_attention_layer_norm")
        if set(weight_index(node)) != expected:
            return "TransformerDecoder with an unexpected set of weights"
        decoder, encoder = self._sequences(node)
        if decoder != node.inputs[0] or (self._has_cross(node) and encoder is None):
            return "TransformerDecoder whose sequences cannot be told apart from its masks"
        return None

    def _cross(self, node) -> _Attention | None:
        if not self._has_cross(node):
            return None
        return _Attention(weight_index(node), self.cross_attention, int(node.config["num_heads"]))

    def _source(self, node, kept_in):
        """Kept channels of the encoder's stream (None: all, or no cross-attention)."""
        _, encoder = self._sequences(node)
        if encoder is None or not kept_in:
            return None
        return kept_in[node.inputs.index(encoder)]

    def couple(self, node, g, c):
        reason = self._lock_reason(node)
        if reason:
            c.lock_layer(node, f"{node.name}: {reason}")
            return
        decoder, encoder = self._sequences(node)
        for k in node.inputs:
            if k not in (decoder, encoder):  # padding / attention masks: positions, not channels
                c.lock(k, f"{node.name}: attention mask")
        c.same(decoder, node.outputs[0])  # the encoder's stream keeps its own group

    def new_config(self, node, cfg, kept_in, kept_out, g, internal=None):
        """keras-hub records the shapes it was built for and builds from them on load: their last
        axis becomes the kept widths of the two streams."""
        cfg = dict(super().new_config(node, cfg, kept_in, kept_out, g, internal))
        for field, kept in (("decoder_sequence_shape", _residual(node, kept_in, kept_out)),
                            ("encoder_sequence_shape", self._source(node, kept_in))):
            if kept is not None and cfg.get(field) is not None:
                cfg[field] = [*cfg[field][:-1], int(len(kept))]
        return cfg

    def slice_weights(self, node, weights, kept_in, kept_out, g, internal=None):
        w = super().slice_weights(node, weights, kept_in, kept_out, g, internal)
        cross = self._cross(node)
        if cross is not None:
            residual = _residual(node, kept_in, kept_out)
            cross.slice(w, node.weights(), residual, self._source(node, kept_in))
            index = weight_index(node)
            for part in ("gamma", "beta"):
                w[index[f"cross_attention_layer_norm/{part}"]] = take(
                    w[index[f"cross_attention_layer_norm/{part}"]], residual, 0)
        return w

    def compensate(self, node, weights, internal=None):
        w = super().compensate(node, weights, internal)
        cross = self._cross(node)
        if cross is not None:
            cross.compensate(w, node.weights()[cross.at["query/kernel"]].shape[2])
        return w

    def macs(self, node, g, counts):
        total = super().macs(node, g, counts)
        cross = None if self._lock_reason(node) else self._cross(node)
        if cross is None:
            return total
        tin, src = g.tensors[node.inputs[0]], g.tensors[self._sequences(node)[1]]
        return total + cross.macs(spatial_size(tin.shape), counts.get(tin.key, tin.channels),
                                  spatial_size(src.shape), counts.get(src.key, src.channels))

    def filter_norms(self, node, weights, p):
        index, attention = self._parts(node)
        cross = self._cross(node)
        parts = attention.norms(weights, p, False) + (cross.norms(weights, p, False) if cross else [])
        return _norms(parts + [(weights[index["feedforward_output_dense/kernel"]], 1)], p)

    def input_norms(self, node, weights, p, g):
        """The kernels reading the decoder's stream: self-attention's Q/K/V, cross-attention's
        queries (its keys and values read the encoder's) and the MLP's first projection."""
        index, attention = self._parts(node)
        cross = self._cross(node)
        parts = attention.norms(weights, p, True) + ([(weights[cross.at["query/kernel"]], 0)] if cross else [])
        return _norms(parts + [(weights[index["feedforward_intermediate_dense/kernel"]], 0)], p)


_FEEDFORWARD = {f"feedforward_{d}_dense/{part}" for d in ("intermediate", "output") for part in ("kernel", "bias")}


def _norm_paths(*norms: str) -> set:
    return {f"{norm}/{part}" for norm in norms for part in ("gamma", "beta")}


class TokenAndPositionEmbeddingRule(LayerRule):
    """``keras_hub.layers.TokenAndPositionEmbedding``: produces the residual stream
    (``embedding_dim``); token, reverse (untied) and position tables are sliced together."""

    producer = True

    def new_config(self, node, cfg, kept_in, kept_out, g):
        ko = kept_out[0] if kept_out else None
        return cfg if ko is None else dict(cfg, embedding_dim=int(len(ko)))

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        ko = kept_out[0] if kept_out else None
        w = list(weights)
        for path, i in weight_index(node).items():
            w[i] = take(w[i], ko, 0 if path.endswith("reverse_embeddings") else w[i].ndim - 1)
        return w

    def filter_norms(self, node, weights, p):
        index = weight_index(node)
        return _norms([(weights[i], 0 if path.endswith("reverse_embeddings") else weights[i].ndim - 1)
                       for path, i in index.items()], p)


class PositionEmbeddingRule(LayerRule):
    """``keras_hub.layers.PositionEmbedding``: returns position vectors as wide as its input
    (input and output channels are one group); its table is sliced with them."""

    def couple(self, node, g, c):
        c.same(node.inputs[0], node.outputs[0])

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        return [take(weights[0], _residual(node, kept_in, kept_out), 1)]


class ViTPatchingAndEmbeddingRule(LayerRule):
    """keras-hub ViT's patch convolution, class token and position table: produces the residual
    stream (``hidden_dim``). Its image input keeps its channels."""

    producer = True

    def couple(self, node, g, c):
        c.lock(node.inputs[0], f"{node.name}: image channels of ViTPatchingAndEmbedding")

    def new_config(self, node, cfg, kept_in, kept_out, g):
        """keras-hub 0.32's get_config writes ``num_patches``/``num_positions``, which its
        ``__init__`` rejects (it derives them): left out, the layer rebuilds from its config."""
        cfg = {k: v for k, v in cfg.items() if k not in ("num_patches", "num_positions")}
        ko = kept_out[0] if kept_out else None
        return cfg if ko is None else dict(cfg, hidden_dim=int(len(ko)))

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        ko = kept_out[0] if kept_out else None
        return [take(w, ko, w.ndim - 1) for w in weights]  # every table ends in hidden_dim

    def macs(self, node, g, counts):
        tout = g.tensors[node.outputs[0]]
        patch = _pair(node.config["patch_size"])
        per_patch = int(np.prod(patch)) * int(node.config.get("num_channels", 3))
        image = _pair(node.config["image_size"])
        patches = (image[0] // patch[0]) * (image[1] // patch[1])  # keras-hub derives num_patches so
        return patches * per_patch * counts.get(tout.key, tout.channels)

    def filter_norms(self, node, weights, p):
        return _norms([(w, w.ndim - 1) for w in weights], p)


def _pair(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value, value]


class DeiTEmbeddingsRule(ViTPatchingAndEmbeddingRule):
    """keras-hub DeiT's patch convolution, class and distillation tokens and position table: as
    ViT's, every table ends in ``hidden_dim``."""


class ViTEncoderRule(LayerRule):
    """keras-hub ViT's encoder (every block and the final LayerNorm in one layer): the residual
    width (``hidden_dim``, input = output) with each block's head size following it, and
    ``mlp_dim`` as the internal width ``"mlp"``.

    ``mlp_dim`` is one number for all blocks, so it prunes uniformly: the engine decides how many
    MLP units remain, scored as the k-th strongest unit of every block taken together, and each
    block keeps its own strongest ones (unit j of one block has nothing to do with unit j of the
    next).

    DeiT's encoder (:class:`DeiTEncoderRule`) and DINOv2's
    (:class:`~edgeprune.pruning.rules.keras_hub_dinov2.DINOV2EncoderRule`) are the same stack
    under other names: the class attributes below name the MLP field, the paths of its two
    projections, of the attention and of the norms inside a block."""

    producer = True
    mlp_field, mlp, up, down = "mlp_dim", "mlp", "mlp/dense_1", "mlp/dense_2"
    block_name, first_block = "transformer_block_{}", 1  # the blocks' sub-layer names
    mha = "mha"  # the block's MultiHeadAttention, inside the block
    norms, final_norm = ("ln_1", "ln_2"), "ln"  # the block's LayerNorms; the encoder's last one (or None)
    # residual-wide scales each block multiplies its attention and MLP outputs by (DINOv2's
    # layer scales), or None: sliced with the residual and weighing what each channel is written
    scales = (None, None)
    several_outputs = False  # DeiTEncoder also returns (empty) hidden states and scores

    def _blocks(self, node) -> list[str]:
        return [self.block_name.format(i + self.first_block) for i in range(int(node.config["num_layers"]))]

    def _lock_reason(self, node) -> str | None:
        index = weight_index(node)
        if any(f"{b}/{self.up}/kernel" not in index for b in self._blocks(node)):
            return f"{node.class_name} with an unexpected set of weights"
        return None

    def internal_widths(self, node):
        return {} if self._lock_reason(node) else {self.mlp: int(node.config[self.mlp_field])}

    def couple(self, node, g, c):
        reason = self._lock_reason(node)
        if reason:
            c.lock_layer(node, f"{node.name}: {reason}")
            return
        for k in node.outputs[1:]:
            c.lock(k, f"{node.name}: hidden states / attention scores output (empty unless asked for)")
        c.same(node.inputs[0], node.outputs[0])

    def new_config(self, node, cfg, kept_in, kept_out, g, internal=None):
        residual, mlp = _residual(node, kept_in, kept_out), (internal or {}).get(self.mlp)
        check_head_size(node, residual)
        cfg = dict(cfg)
        if residual is not None:
            cfg["hidden_dim"] = int(len(residual))
        if mlp is not None:
            cfg[self.mlp_field] = int(len(mlp))
        return cfg

    def _mlp_norms(self, node, real: list, p: int, block: str) -> np.ndarray:
        index = weight_index(node)
        parts = [(real[index[f"{block}/{self.up}/kernel"]], 1), (real[index[f"{block}/{self.down}/kernel"]], 0)]
        if f"{block}/{self.up}/bias" in index:
            parts.append((real[index[f"{block}/{self.up}/bias"]], 0))
        return _norms(parts, p)

    def slice_weights(self, node, weights, kept_in, kept_out, g, internal=None):
        index, real = weight_index(node), node.weights()
        residual, mlp = _residual(node, kept_in, kept_out), (internal or {}).get(self.mlp)
        heads = int(node.config["num_heads"])
        w = list(weights)

        def cut(path, idx, axis):
            if path in index:
                w[index[path]] = take(w[index[path]], idx, axis)

        for block in self._blocks(node):
            _Attention(index, f"{block}/{self.mha}", heads).slice(w, real, residual)
            own = None if mlp is None else top(self._mlp_norms(node, real, 2, block), len(mlp))
            for norm in self.norms:
                cut(f"{block}/{norm}/gamma", residual, 0)
                cut(f"{block}/{norm}/beta", residual, 0)
            for scale in self.scales:
                if scale is not None:
                    cut(f"{block}/{scale}", residual, 0)
            cut(f"{block}/{self.up}/kernel", residual, 0)
            cut(f"{block}/{self.up}/kernel", own, 1)
            cut(f"{block}/{self.up}/bias", own, 0)
            cut(f"{block}/{self.down}/kernel", own, 0)
            cut(f"{block}/{self.down}/kernel", residual, 1)
            cut(f"{block}/{self.down}/bias", residual, 0)
        if self.final_norm:
            cut(f"{self.final_norm}/gamma", residual, 0)
            cut(f"{self.final_norm}/beta", residual, 0)
        return w

    def compensate(self, node, weights, internal=None):
        index, w = weight_index(node), list(weights)
        full = int(node.config["hidden_dim"]) // int(node.config["num_heads"])
        for block in self._blocks(node):
            _Attention(index, f"{block}/{self.mha}", int(node.config["num_heads"])).compensate(w, full)
        return w

    def macs(self, node, g, counts):
        if self._lock_reason(node):
            return 0
        tin = g.tensors[node.inputs[0]]
        width = counts.get(tin.key, tin.channels)
        mlp = counts.get(_internal_key(node.name, self.mlp), int(node.config[self.mlp_field]))
        tokens = spatial_size(tin.shape)
        attention = _Attention({}, "", int(node.config["num_heads"]))
        return len(self._blocks(node)) * (attention.macs(tokens, width) + 2 * tokens * width * mlp)

    def _residual_norms(self, node, weights, p, reading: bool):
        index, parts = weight_index(node), []
        for block in self._blocks(node):
            attention = _Attention(index, f"{block}/{self.mha}", int(node.config["num_heads"])).norms(weights, p, reading)
            mlp = [(weights[index[f"{block}/{self.up}/kernel"]], 0) if reading
                   else (weights[index[f"{block}/{self.down}/kernel"]], 1)]
            if not reading:  # what a channel is written with: the projection times its layer scale
                attention, mlp = (self._scaled(index, weights, block, scale, writers)
                                  for scale, writers in zip(self.scales, (attention, mlp)))
            parts += attention + mlp
        return _norms(parts, p)

    @staticmethod
    def _scaled(index, weights, block, scale, writers):
        """(array, axis) writers of the residual multiplied by the block's scale along that axis."""
        if scale is None or f"{block}/{scale}" not in index:
            return writers
        factor = np.asarray(weights[index[f"{block}/{scale}"]])
        return [(a * factor.reshape([-1 if i == axis else 1 for i in range(a.ndim)]), axis) for a, axis in writers]

    def filter_norms(self, node, weights, p):
        return self._residual_norms(node, weights, p, False)

    def input_norms(self, node, weights, p, g):
        return self._residual_norms(node, weights, p, True)

    def internal_norms(self, node, weights, p):
        ranked = [np.sort(self._mlp_norms(node, weights, p, b))[::-1] for b in self._blocks(node)]
        return {self.mlp: np.sum(ranked, axis=0)}


class DeiTEncoderRule(ViTEncoderRule):
    """keras-hub DeiT's encoder: ViT's stack, its MLP width named ``intermediate_dim`` (dense
    ``mlp/dense`` up, ``output_layer/output`` down). It returns three tensors; the last two
    (hidden states and attention scores) are empty unless asked for, and are locked."""

    mlp_field, mlp, up, down = "intermediate_dim", "intermediate", "mlp/dense", "output_layer/output"
    several_outputs = True
