"""Layers and operations that combine tensors: element-wise merges, concatenation, Keras 3 ops
(``x + 3.0``, ``x * gate``) and tf_keras ``TFOpLambda`` wrappers of TF functions."""
from __future__ import annotations

import numpy as np

from edgeprune.base.errors import InputError
from edgeprune.load.graph import is_entry
from edgeprune.pruning.rules.base import LayerRule, axis_is_last


def couple_elementwise(node, g, c) -> None:
    """Tensors of equal width share channels; width-1 tensors and scalars broadcast."""
    out = g.tensors[node.outputs[0]]
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


class MergeRule(LayerRule):
    """Add, Subtract, Multiply, Average, Maximum, Minimum (layers)."""

    def couple(self, node, g, c):
        couple_elementwise(node, g, c)


def _constant_array(value) -> bool:
    """A non-scalar constant operand (a per-channel array would need slicing we cannot do)."""
    if is_entry(value):
        return False
    if isinstance(value, dict):
        if value.get("class_name") in ("__tensor__", "__numpy__"):
            return np.asarray((value.get("config") or {}).get("value")).size > 1
        return any(_constant_array(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return np.asarray(value, dtype=object).size > 1 and not all(is_entry(v) for v in value)
    return False


class ElementwiseOpRule(LayerRule):
    """A Keras 3 operation or a tf_keras TFOpLambda acting element by element."""

    def couple(self, node, g, c):
        operands = list(node.args) + [v for k, v in node.kwargs.items() if k != "name"]
        for value in operands:
            if _constant_array(value):
                c.lock_layer(node, f"{node.name}: {node.class_name} with a constant array operand")
                return
        couple_elementwise(node, g, c)


class ConcatRule(LayerRule):
    """Concatenate: along channels each input owns an offset range of the output channels."""

    def couple(self, node, g, c):
        out = g.tensors[node.outputs[0]]
        tensors = [g.tensors[k] for k in node.inputs]
        rank = len(out.shape) + 1
        if axis_is_last(node.config.get("axis", -1), rank):
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
