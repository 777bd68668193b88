"""MAC and parameter counts per layer, from the graph and per-tensor channel counts.

Analytic (no rebuild), so the MAC-target bisection can call it many times; the parameter
counts of a real model come from the layers themselves and are cross-checked in tests
against ``model.count_params()``.

What a MAC is, for the pruner (each layer rule's ``macs()``) and for ``edgeprune inspect`` of
an artifact (:data:`ARTIFACT_MAC_OPS`, counted by ``edgeprune.quantize.inspection.op_macs``)
alike: one multiply-accumulate of a *contraction*, i.e. for each output element, one per input
element it sums over, at batch 1. That covers convolutions (plain, grouped, depthwise,
separable, transposed, 1-3D), Dense on any rank (tokens x in x out), products of two
activations (attention's QK^T and AV, matmul, einsum, Dot: BATCH_MATMUL in the artifact) and
the gate products of recurrent cells. Bias adds are not counted (they seed the accumulator),
nor are element-wise ops (ADD, MUL, activations, normalization), reductions (MEAN, pooling),
SOFTMAX or data movement (RESHAPE, TRANSPOSE, GATHER, CONCATENATION): each costs one operation
per element with no axis summed over, pruning barely changes their share, and every tool that
quotes MACs (Keras-flops, fvcore, the papers' tables) leaves them out, so the two sides agree
with each other and with what people compare against. tests/test_macs_agreement.py checks
the two sides within 2 % on every family of the coverage table.
"""
from __future__ import annotations

import weakref

import numpy as np

from edgeprune.load.graph import LayerGraph
from edgeprune.pruning import rules

# The TFLite ops that carry MACs in the sense above (everything else counts 0).
ARTIFACT_MAC_OPS = (
    "CONV_2D", "CONV_3D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D_TRANSPOSE",
    "FULLY_CONNECTED", "BATCH_MATMUL",
    "UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN",
)


def layer_macs(node, g: LayerGraph, counts: dict) -> int:
    """Multiply-accumulates of one layer given the channel count of every tensor: its rule's, or
    for a layer no rule describes (a keras-hub block, a user's subclassed layer) the MACs its
    TensorFlow graph carries (:func:`graph_macs`): such a layer is locked, so its count never
    changes and is read once."""
    if node.inputs and node.outputs and not rules.has_rule(node) and node.class_name != "InputLayer":
        return _opaque_macs(node, g)
    return rules.layer_macs(node, g, counts)


_OPAQUE: dict = {}  # id(layer object) -> (weak reference to it, input shapes, MACs)


def _opaque_macs(node, g: LayerGraph) -> int:
    shapes = tuple(g.tensors[k].shape for k in node.inputs)
    hit = _OPAQUE.get(id(node.layer))
    if hit is not None and hit[0]() is node.layer and hit[1] == shapes:
        return hit[2]
    value = graph_macs(node, g)
    try:
        _OPAQUE[id(node.layer)] = (weakref.ref(node.layer), shapes, value)
    except TypeError:  # an object without weak references: count again next time
        pass
    return value


def _static(shape) -> list[int]:
    return [1 if d is None else int(d) for d in shape]


def _n(shape) -> int:
    return int(np.prod(_static(shape))) if len(shape) else 1


def _tf_op_macs(op) -> int:
    """MACs of one TensorFlow graph op, by the definition above (0 for ops that do not count)."""
    kind = op.type
    if not op.outputs:
        return 0
    out = op.outputs[0].shape
    if out.rank is None:
        return 0
    shapes = [i.shape if i.shape.rank is not None else None for i in op.inputs]
    if kind in ("Conv2D", "Conv3D") and shapes[1] is not None:  # filter [k..., cin / groups, cout]
        return _n(out) * _n(shapes[1][:-1])
    if kind == "DepthwiseConv2dNative" and shapes[1] is not None:  # [kh, kw, cin, multiplier]
        return _n(out) * _n(shapes[1][:2])
    if kind in ("Conv2DBackpropInput", "Conv3DBackpropInputV2") and shapes[1] is not None:
        return _n(shapes[2]) * _n(shapes[1][:-1])  # input [.., cin] x filter [k..., cout, cin]
    if kind in ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3") and shapes[0] is not None:
        a = _static(shapes[0])
        flip = op.get_attr("transpose_a" if kind == "MatMul" else "adj_x")
        return _n(out) * (a[-2] if flip else a[-1])
    if kind == "Einsum":
        from edgeprune.pruning.rules.matmul import einsum_macs

        equation = op.get_attr("equation")
        equation = equation.decode() if isinstance(equation, bytes) else str(equation)
        return einsum_macs(equation, [None if s is None else _static(s) for s in shapes])
    return 0


def graph_macs(node, g: LayerGraph) -> int:
    """MACs of one layer read from the TensorFlow graph of its call at batch 1 (0 if it cannot
    be traced): convolutions, matmuls and einsums, inside however many nested sub-layers."""
    from edgeprune.base.env import capture_fds, keras_of, tf
    from edgeprune.load.graph import graph_untouched

    tf = tf()
    try:
        keras = keras_of(g.model)
        ins = [g.tensors[k].symbolic for k in node.inputs]
        outs = [g.tensors[k].symbolic for k in node.outputs]
        if any(t is None for t in ins + outs):
            return 0
        # a Model between intermediate tensors records its calls in the live graph: dropped after
        with capture_fds(), graph_untouched(g.model):
            sub = keras.Model(ins if len(ins) > 1 else ins[0], outs if len(outs) > 1 else outs[0])
            specs = [tf.TensorSpec([1, *g.tensors[k].shape], t.dtype) for k, t in zip(node.inputs, ins)]
            fn = tf.function(lambda *xs: sub(list(xs) if len(xs) > 1 else xs[0], training=False))
            graph = fn.get_concrete_function(*specs).graph
    except Exception:  # noqa: BLE001 - a layer we cannot trace alone counts 0, as before
        return 0
    total = 0
    graphs, seen = [graph], set()
    while graphs:  # nested tf.functions live in the graph's function library
        current = graphs.pop()
        for op in current.get_operations():
            total += _tf_op_macs(op)
        for name, fn_def in getattr(current, "_functions", {}).items():
            if name not in seen and hasattr(fn_def, "graph"):
                seen.add(name)
                graphs.append(fn_def.graph)
    return int(total)


def full_counts(g: LayerGraph) -> dict:
    return {k: t.channels for k, t in g.tensors.items()}


def total_macs(g: LayerGraph, counts: dict | None = None) -> int:
    counts = counts if counts is not None else full_counts(g)
    return sum(layer_macs(n, g, counts) for n in g.layers.values())


def summarize(g: LayerGraph) -> dict:
    """name -> {"channels", "macs", "params"} for every layer of a real (traced) model."""
    counts = full_counts(g)
    out = {}
    for name, node in g.layers.items():
        channels = g.tensors[node.outputs[0]].width if node.outputs else 0
        out[name] = {"channels": channels, "macs": layer_macs(node, g, counts),
                     "params": node.params}
    return out


def count(model) -> dict:
    """Totals and per-layer numbers of a Keras model: {"macs", "params", "layers": {...}}."""
    from edgeprune.load.graph import trace

    g = trace(model)
    per = summarize(g)
    return {"macs": sum(v["macs"] for v in per.values()),
            "params": sum(v["params"] for v in per.values()), "layers": per}
