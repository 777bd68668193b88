"""The layer-rule registry: one :class:`LayerRule` per layer type, looked up by the engine.

Keys are layer class names (``"Conv2D"``), Keras 3 operations as ``"ops.<Class>"``
(``"ops.Add"`` for ``x + 3.0`` in a functional graph) and tf_keras ``TFOpLambda`` wrappers as
``"tf.<function>"`` (``"tf.math.multiply"``). A layer without a rule is locked: its tensors keep
every channel and the rest of the model still prunes.

Users make their own layers prunable with :func:`register_rule`, from Python or from the
``--custom-objects`` file (a module-level ``pruning_rules = {"MyLayer": rule}`` dict)::

    from edgeprune.pruning.rules import PassRule, register_rule
    register_rule("MyActivation", PassRule())
"""
from __future__ import annotations

import re

from edgeprune.base.errors import InputError
from edgeprune.load.graph import LayerGraph, LayerNode, TensorInfo
from edgeprune.pruning.rules.attention import EinsumDenseRule, MultiHeadAttentionRule
from edgeprune.pruning.rules.base import Coupler, LayerRule, channel_norm, flatten_rows, take
from edgeprune.pruning.rules.conv import ConvRule, ConvTransposeRule, DepthwiseRule, SeparableRule
from edgeprune.pruning.rules.dense import DenseRule, EmbeddingRule, TimeDistributedRule
from edgeprune.pruning.rules.keras_hub import (
    DeiTEmbeddingsRule,
    DeiTEncoderRule,
    PositionEmbeddingRule,
    TokenAndPositionEmbeddingRule,
    TransformerDecoderRule,
    TransformerEncoderRule,
    ViTEncoderRule,
    ViTPatchingAndEmbeddingRule,
)
from edgeprune.pruning.rules.keras_hub_dinov2 import DINOV2EmbeddingRule, DINOV2EncoderRule
from edgeprune.pruning.rules.keras_hub_mit import (
    HierarchicalTransformerEncoderRule,
    OverlappingPatchingAndEmbeddingRule,
)
from edgeprune.pruning.rules.keras_hub_mobilenet import (
    ConvBnActBlockRule,
    DepthwiseConvBlockRule,
    InvertedResidualBlockRule,
)
from edgeprune.pruning.rules.matmul import DotRule, EinsumRule, MatmulRule
from edgeprune.pruning.rules.merge import ConcatRule, ElementwiseOpRule, MergeRule
from edgeprune.pruning.rules.recurrent import GATES, BidirectionalRule, RecurrentRule
from edgeprune.pruning.rules.shape import (
    ActivationRule,
    ChannelWeightsRule,
    FlattenRule,
    GetItemRule,
    LockRule,
    PassRule,
    PermuteRule,
    PReLURule,
    RescalingRule,
    ReshapeRule,
)

__all__ = [
    "LayerRule", "Coupler", "PassRule", "ChannelWeightsRule", "LockRule", "MergeRule",
    "ElementwiseOpRule", "ConvRule", "DenseRule", "register_rule", "rule_for", "rule_key",
    "couple_layer", "new_config", "slice_weights", "layer_macs", "is_producer", "matches",
    "channel_norm", "flatten_rows", "take", "registered", "MultiHeadAttentionRule", "EinsumDenseRule",
    "internal_key", "internal_keys", "add_internal_tensors", "compensate", "unrounded",
]

_ND = ("1D", "2D", "3D")
_PASS_WEIGHTLESS = {
    "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Softplus", "Dropout", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
    *(f"{p}{d}" for p in ("SpatialDropout", "ZeroPadding", "Cropping", "MaxPooling", "AveragePooling",
                          "MaxPool", "AveragePool", "AvgPool", "UpSampling", "GlobalAveragePooling",
                          "GlobalMaxPooling", "GlobalAvgPool", "GlobalMaxPool") for d in _ND),
}
# Keras 3 operations (keras.ops) that act element by element.
_K3_ELEMENTWISE_OPS = {
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power",
    "Negative", "Absolute", "Abs", "Square", "Sqrt", "Exp", "Tanh", "Sign", "Cast", "Clip",
    "Relu", "Relu6", "Sigmoid", "HardSigmoid", "HardSilu", "HardSwish", "Silu", "Swish", "Gelu",
    "Softplus", "Softsign", "LeakyRelu", "Elu", "Selu", "Celu", "Mish", "Log", "Reciprocal",
}
# tf_keras TFOpLambda functions that act element by element (scalars broadcast, tensors merge).
_TF_ELEMENTWISE_OPS = {
    "__operators__.add", "math.add", "math.multiply", "math.subtract", "math.truediv",
    "math.divide", "__operators__.sub", "math.maximum", "math.minimum", "nn.relu", "nn.relu6",
    "math.sigmoid", "nn.sigmoid", "nn.silu", "nn.swish", "math.tanh", "nn.gelu", "nn.elu",
    "nn.leaky_relu", "math.abs", "math.square", "math.negative", "__operators__.neg",
    "nn.softplus", "math.exp", "identity", "math.scalar_mul", "math.pow",
}

_REGISTRY: dict[str, LayerRule] = {}


def register_rule(key: str, rule: LayerRule) -> None:
    """Register (or replace) the rule for a layer class name, ``ops.<Op>`` or ``tf.<function>``."""
    if not isinstance(rule, LayerRule):
        raise InputError(f"pruning rule for '{key}' must be a LayerRule instance, got {type(rule).__name__}")
    _REGISTRY[str(key)] = rule


def registered() -> dict:
    """A copy of the registry (key -> rule), for documentation and tests."""
    return dict(_REGISTRY)


def _defaults() -> None:
    for name in _PASS_WEIGHTLESS:
        register_rule(name, PassRule())
    for d in _ND:
        register_rule(f"Conv{d}", ConvRule())
        register_rule(f"Conv{d}Transpose", ConvTransposeRule())
        register_rule(f"SeparableConv{d}", SeparableRule())
        register_rule(f"DepthwiseConv{d}", DepthwiseRule())
    register_rule("Dense", DenseRule())
    register_rule("Embedding", EmbeddingRule())
    register_rule("EinsumDense", EinsumDenseRule())
    register_rule("MultiHeadAttention", MultiHeadAttentionRule())
    register_rule("TimeDistributed", TimeDistributedRule(lambda name: _REGISTRY.get(name)))
    register_rule("Activation", ActivationRule())
    register_rule("Softmax", LockRule("Softmax mixes channels"))
    register_rule("Rescaling", RescalingRule())
    for name in ("BatchNormalization", "LayerNormalization", "LayerScale"):
        register_rule(name, ChannelWeightsRule())
    register_rule("PReLU", PReLURule())
    for name in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "CustomScaleLayer"):
        register_rule(name, MergeRule())
    register_rule("Concatenate", ConcatRule())
    register_rule("Flatten", FlattenRule())
    register_rule("Reshape", ReshapeRule())
    register_rule("Permute", PermuteRule())
    register_rule("ops.GetItem", GetItemRule())
    for name, gates in GATES.items():
        register_rule(name, RecurrentRule(gates))
    register_rule("Bidirectional", BidirectionalRule())
    for name in _K3_ELEMENTWISE_OPS:
        register_rule(f"ops.{name}", ElementwiseOpRule())
    for name in _TF_ELEMENTWISE_OPS:
        register_rule(f"tf.{name}", ElementwiseOpRule())
    # products of two activations: locked, their MACs counted (rules/matmul.py)
    register_rule("Dot", DotRule())
    for key in ("ops.Matmul", "tf.linalg.matmul", "tf.matmul", "tf.__operators__.matmul"):
        register_rule(key, MatmulRule())
    for key in ("ops.Einsum", "tf.einsum", "tf.linalg.einsum"):
        register_rule(key, EinsumRule())
    # keras-hub layers (rules/keras_hub.py), by their registered names: no keras_hub import, and a
    # user's own class called TransformerEncoder keeps its own (missing) rule
    register_rule("keras_hub>TransformerEncoder", TransformerEncoderRule())
    register_rule("keras_hub>TransformerDecoder", TransformerDecoderRule())
    register_rule("keras_hub>TokenAndPositionEmbedding", TokenAndPositionEmbeddingRule())
    register_rule("keras_hub>PositionEmbedding", PositionEmbeddingRule())
    register_rule("ViTPatchingAndEmbedding", ViTPatchingAndEmbeddingRule())
    register_rule("ViTEncoder", ViTEncoderRule())
    register_rule("DeiTEmbeddings", DeiTEmbeddingsRule())
    register_rule("DeiTEncoder", DeiTEncoderRule())
    register_rule("OverlappingPatchingAndEmbedding", OverlappingPatchingAndEmbeddingRule())
    register_rule("HierarchicalTransformerEncoder", HierarchicalTransformerEncoderRule())
    register_rule("DINOV2Embedding", DINOV2EmbeddingRule())
    register_rule("DINOV2Encoder", DINOV2EncoderRule())
    register_rule("DepthwiseConvBlock", DepthwiseConvBlockRule())
    register_rule("InvertedResidualBlock", InvertedResidualBlockRule())
    register_rule("ConvBnActBlock", ConvBnActBlockRule())


_defaults()


def rule_key(node: LayerNode) -> str:
    """The registry key of a graph node (see the module docs)."""
    if node.is_op:
        return f"ops.{node.class_name}"
    if node.class_name == "TFOpLambda":
        return f"tf.{node.config.get('function')}"
    return node.class_name


def _registered_rule(node: LayerNode) -> LayerRule | None:
    rule = _REGISTRY.get(rule_key(node))
    if rule is None and node.registered_name:
        rule = _REGISTRY.get(node.registered_name) or _REGISTRY.get(node.registered_name.split(">")[-1])
    return rule


def has_rule(node: LayerNode) -> bool:
    """Whether a rule describes ``node`` (else it is locked and its MACs are read from its graph,
    see edgeprune.pruning.macs)."""
    return _registered_rule(node) is not None


def rule_for(node: LayerNode) -> LayerRule:
    """The rule of ``node``: registered under its key (or its registered name), else a lock."""
    rule = _registered_rule(node)
    if rule is None:
        what = f"Keras operation '{node.class_name}'" if node.is_op else (
            f"TF op '{node.config.get('function')}'" if node.class_name == "TFOpLambda" else node.class_name)
        return LockRule(f"no pruning rule for {what}")
    return rule


def couple_layer(node: LayerNode, g: LayerGraph, c: Coupler) -> None:
    """Record the channel couplings of one layer (and set flatten factors on its outputs)."""
    if node.class_name == "InputLayer":
        for k in node.outputs:
            c.lock(k, "model input")
        return
    if node.calls > 1:
        c.lock_layer(node, f"{node.name}: shared layer called {node.calls} times")
        return
    if not node.inputs:
        c.lock_layer(node, f"{node.name}: layer without inputs")
        return
    if len(node.outputs) != 1 and not getattr(rule_for(node), "several_outputs", False):
        c.lock_layer(node, f"{node.name}: {node.class_name} with several outputs")
        return
    rule_for(node).couple(node, g, c)


def is_producer(node: LayerNode) -> bool:
    """Whether ``node``'s weights create its output channels (a group's root)."""
    return node.calls == 1 and bool(node.outputs) and rule_for(node).is_producer(node)


def internal_key(layer: str, name: str) -> tuple:
    """The virtual tensor key of internal width ``name`` of ``layer`` (see
    :meth:`LayerRule.internal_widths`): a tensor key no real tensor can have."""
    return (layer, "internal", name)


def internal_keys(node: LayerNode) -> dict:
    """name -> virtual tensor key of each internal width of ``node`` (empty for most layers)."""
    if node.calls != 1 or not node.outputs:
        return {}
    return {name: internal_key(node.name, name) for name in rule_for(node).internal_widths(node)}


def add_internal_tensors(g: LayerGraph) -> None:
    """Give every internal width of the graph its virtual tensor (idempotent).

    The tensor is produced by its layer and read by nobody: the channel engine then groups,
    scores, allocates and counts it like a real tensor's channels, and surgery hands the
    kept indices back to the layer's rule."""
    for node in g.layers.values():
        widths = rule_for(node).internal_widths(node) if node.calls == 1 and node.outputs else {}
        for name, size in widths.items():
            key = internal_key(node.name, name)
            if key not in g.tensors:
                g.tensors[key] = TensorInfo(key=key, shape=(int(size),), producer=node.name)


def unrounded(g: LayerGraph, key) -> bool:
    """Whether tensor ``key`` is an internal width that channel rounding does not apply to."""
    if len(key) != 3 or key[1] != "internal" or key[0] not in g.layers:
        return False
    return key[2] in rule_for(g.layers[key[0]]).unrounded_internal


def new_config(node: LayerNode, cfg: dict, kept_in: list, kept_out: list, g: LayerGraph,
               internal: dict | None = None) -> dict:
    if internal:
        return rule_for(node).new_config(node, cfg, kept_in, kept_out, g, internal=internal)
    return rule_for(node).new_config(node, cfg, kept_in, kept_out, g)


def slice_weights(node: LayerNode, weights: list, kept_in: list, kept_out: list, g: LayerGraph,
                  internal: dict | None = None) -> list:
    if internal:  # a layer with internal widths reads all its inputs (attention: query, key, value)
        if not weights or all(k is None for k in [*kept_in, *kept_out, *internal.values()]):
            return weights
        return rule_for(node).slice_weights(node, weights, list(kept_in), list(kept_out), g, internal=internal)
    ki = kept_in[0] if kept_in else None
    ko = kept_out[0] if kept_out else None
    if (ki is None and ko is None) or not weights:
        return weights
    return rule_for(node).slice_weights(node, weights, [ki], [ko], g)


def compensate(node: LayerNode, weights: list, internal: dict | None = None) -> list:
    """The sliced weights with the values the rule adjusts (see :meth:`LayerRule.compensate`)."""
    if not weights:  # a rule may compensate for its input channels too (keras-hub head sizes)
        return weights
    return rule_for(node).compensate(node, weights, internal or {})


def layer_macs(node: LayerNode, g: LayerGraph, counts: dict) -> int:
    """Multiply-accumulates of one layer given the channel count of every tensor."""
    if not node.inputs or not node.outputs:
        return 0
    return int(rule_for(node).macs(node, g, counts))


def matches(pattern: str, name: str) -> bool:
    """A protect/per-layer entry matches a layer by exact name or full regex match."""
    if pattern == name:
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error as exc:
        raise InputError(f"invalid layer pattern '{pattern}': {exc}") from None
