"""keras-hub DINOv2: ``DINOV2Embedding`` and ``DINOV2Encoder``.

DINOv2's blocks are ViT's (:class:`~edgeprune.pruning.rules.keras_hub.ViTEncoderRule`) under
other names, with two differences the rules here handle:

- each block multiplies its attention and MLP outputs by a per-channel **layer scale**
  (``layer_scale1/lambda1``, ``layer_scale2/lambda1``), residual-wide: it is sliced with the
  residual stream, and it weighs the magnitude a channel is written with (pretrained DINOv2
  scales are ~1e-5 to 1, so the unscaled projections would rank channels wrongly);
- the encoder returns the stream **and** every block's output (``{"stage1": ..., ...}``, the
  feature pyramid): all of them are the residual stream, one channel group with the input, so a
  model that reads the pyramid prunes it consistently.

What prunes: the residual width (``hidden_dim``: the patch embedding, its class/mask/register
tokens and position tables, every block's norms, projections and scales, the final LayerNorm),
each block's head size following it (``hidden_dim // num_heads``, as ViT), and the MLP width
(``intermediate_dim``, uniform over blocks). Not the SwiGLU MLP (``use_swiglu_ffn=True``):
keras-hub derives its width (``intermediate_dim * 2 / 3`` rounded up to a multiple of 8), so
the encoder is locked with that reason.

Nothing here imports keras_hub: the registry refers to these layers by class name.
"""
from __future__ import annotations

from edgeprune.load.graph import spatial_size
from edgeprune.pruning.rules.keras_hub import (
    ViTEncoderRule,
    ViTPatchingAndEmbeddingRule,
    _Attention,
    _pair,
)


class DINOV2EmbeddingRule(ViTPatchingAndEmbeddingRule):
    """DINOv2's patch convolution, class (mask, register) tokens and position tables (the
    trained one and its interpolation to the image size): produces the residual stream
    (``hidden_dim``); every table ends in it. Interpolation acts per channel, so slicing both
    position tables by the same channels keeps them consistent."""

    def macs(self, node, g, counts):
        tin, tout = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        patch = _pair(node.config["patch_size"])
        image = _pair(node.config["image_shape"])
        patches = (int(image[0]) // patch[0]) * (int(image[1]) // patch[1])
        return patches * patch[0] * patch[1] * tin.channels * counts.get(tout.key, tout.channels)


class DINOV2EncoderRule(ViTEncoderRule):
    """DINOv2's encoder: ViT's stack (blocks ``layers_0``..., attention ``attention/attention``,
    norms ``norm1``/``norm2``, MLP ``mlp/fc1``/``mlp/fc2`` of width ``intermediate_dim``) with
    layer scales and the feature pyramid outputs (see the module docs)."""

    mlp_field, mlp, up, down = "intermediate_dim", "intermediate", "mlp/fc1", "mlp/fc2"
    block_name, first_block = "layers_{}", 0
    mha = "attention/attention"
    norms, final_norm = ("norm1", "norm2"), None
    scales = ("layer_scale1/lambda1", "layer_scale2/lambda1")
    several_outputs = True

    def _lock_reason(self, node) -> str | None:
        if node.config.get("use_swiglu_ffn"):
            return ("DINOV2Encoder with use_swiglu_ffn=True (keras-hub derives the SwiGLU width from "
                    "intermediate_dim; no rule)")
        return super()._lock_reason(node)

    def couple(self, node, g, c):
        reason = self._lock_reason(node)
        if reason:
            c.lock_layer(node, f"{node.name}: {reason}")
            return
        for k in node.outputs:  # the stream and each block's output (the pyramid): one width
            c.same(node.inputs[0], k)

    def macs(self, node, g, counts):
        """A SwiGLU encoder is locked but still counted: per block the attention, ``weights_in``
        (width -> 2 x the derived SwiGLU width) and ``weights_out`` (back to width)."""
        if not node.config.get("use_swiglu_ffn"):
            return super().macs(node, g, counts)
        tin = g.tensors[node.inputs[0]]
        width, tokens = tin.channels, spatial_size(tin.shape)
        swiglu = (int(int(node.config["intermediate_dim"]) * 2 / 3) + 7) // 8 * 8  # keras-hub's DINOV2SwiGLUFFN
        attention = _Attention({}, "", int(node.config["num_heads"]))
        return int(node.config["num_layers"]) * (attention.macs(tokens, width) + 3 * tokens * width * swiglu)
