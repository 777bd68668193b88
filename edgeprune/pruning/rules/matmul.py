"""Products of two activations: ``keras.ops.matmul``/``einsum``, ``tf.linalg.matmul``/``tf.einsum``
and the ``Dot`` layer.

Hand-written attention (``softmax(q @ k^T) @ v``) is made of these, and the converter lowers
each to BATCH_MATMUL (or FULLY_CONNECTED when one side is a constant): they carry MACs the
artifact counts, so their rules count them too (the definition is in
:mod:`edgeprune.pruning.macs`). Their channels stay: a product contracts the channel axis of one
operand with an axis of the other, so no channel of it can go without the other operand's
matching axis going too, which no rule describes yet.

Shapes in the graph have no batch axis; the artifact is built at batch 1, so a symbolic
operand counts with a batch of 1 and a constant operand with its own shape.
"""
from __future__ import annotations

import numpy as np

from edgeprune.load.graph import is_entry
from edgeprune.pruning.rules.base import LayerRule


def _dims(shape) -> list[int]:
    """A shape with unknown sizes as 1 (the artifact runs them at 1, like the batch)."""
    return [1 if d is None else int(d) for d in shape]


def _prod(values) -> int:
    return int(np.prod(values)) if len(values) else 1


class _ProductRule(LayerRule):
    """Locks its operands and result (see the module docs); subclasses count the MACs."""

    def couple(self, node, g, c):
        c.lock_layer(node, f"{node.name}: {node.class_name} contracts one operand's channels "
                           "with another's axis")

    @staticmethod
    def operands(node, g, counts) -> list:
        """Full shapes (batch 1 first) of the positional operands, symbolic or constant, in call
        order; ``counts`` narrows a tensor's last axis to its kept channels."""
        def shape_of(value):
            if is_entry(value):
                t = g.tensors.get(tuple(value[:3]))
                if t is None:
                    return None
                dims = [1] + _dims(t.shape)
                if dims[1:]:
                    dims[-1] = counts.get(t.key, t.channels) * t.spatial
                return dims
            if isinstance(value, dict):  # a serialized constant: {"class_name", "config": {"value"}}
                value = (value.get("config") or {}).get("value")
            return list(np.shape(value)) if value is not None and np.ndim(value) else None

        if node.class_name == "TFOpLambda":  # the first tensor positionally, the second by keyword
            args = [list(node.inputs[0]) if node.inputs else None, node.kwargs.get("b")]
        else:
            args = [a for a in node.args if not isinstance(a, str)]
        return [shape_of(a) for a in args]


class MatmulRule(_ProductRule):
    """``ops.Matmul`` / ``tf.linalg.matmul``: MACs = result elements x contracted length."""

    def macs(self, node, g, counts):
        shapes = [s for s in self.operands(node, g, counts)[:2]]
        out = g.tensors[node.outputs[0]]
        out_dims = [1] + _dims(out.shape)
        if out_dims[1:]:
            out_dims[-1] = counts.get(out.key, out.channels) * out.spatial
        kw = node.kwargs
        a = shapes[0] if shapes else None
        b = shapes[1] if len(shapes) > 1 else None
        if a is not None and len(a) >= 1:
            flip = kw.get("transpose_a") or kw.get("adjoint_a")
            k = a[-2] if flip and len(a) >= 2 else a[-1]
        elif b is not None and len(b) >= 2:
            flip = kw.get("transpose_b") or kw.get("adjoint_b")
            k = b[-1] if flip else b[-2]
        else:
            return 0
        return _prod(out_dims) * int(k)


def einsum_macs(equation: str, shapes: list) -> int:
    """MACs of an einsum evaluated operand by operand, left to right: each pairwise product
    costs the product of the sizes of every index either side holds (one multiply-add per
    combination); a one-operand einsum (a transpose, a sum) multiplies nothing."""
    eq = equation.replace(" ", "")
    if "->" not in eq or len(shapes) < 2 or any(s is None for s in shapes):
        return 0
    lhs, out = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        return 0
    spare = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    ell = None
    sizes: dict = {}
    letters = []
    for term, shape in zip(terms, shapes):
        if "..." in term:
            n = len(shape) - (len(term) - 3)
            ell = ell or "".join(next(spare) for _ in range(max(n, 0)))
            term = term.replace("...", ell[len(ell) - n:] if n > 0 else "")
        if len(term) != len(shape):
            return 0
        for ch, d in zip(term, shape):
            sizes[ch] = max(sizes.get(ch, 1), int(d))
        letters.append(term)
    out = out.replace("...", ell or "")
    total, current = 0, letters[0]
    for i, term in enumerate(letters[1:], start=1):
        union = set(current) | set(term)
        total += _prod([sizes[ch] for ch in union])
        later = set(out).union(*[set(t) for t in letters[i + 1:]])
        current = "".join(ch for ch in union if ch in later)
    return total


class EinsumRule(_ProductRule):
    """``ops.Einsum`` / ``tf.einsum``: see :func:`einsum_macs`."""

    def macs(self, node, g, counts):
        equation = node.config.get("subscripts") or next(
            (a for a in node.args if isinstance(a, str)), None)
        if equation is None:
            return 0
        return einsum_macs(str(equation), self.operands(node, g, counts))


class DotRule(_ProductRule):
    """``keras.layers.Dot``: a batched dot product along ``axes`` (BATCH_MATMUL in the artifact)."""

    def macs(self, node, g, counts):
        if len(node.inputs) != 2:
            return 0
        a = g.tensors[node.inputs[0]]
        out = g.tensors[node.outputs[0]]
        axes = node.config.get("axes", -1)
        axis = int(axes[0] if isinstance(axes, (list, tuple)) else axes)
        a_dims = [1] + _dims(a.shape)
        a_dims[-1] = counts.get(a.key, a.channels) * a.spatial
        return _prod([1] + _dims(out.shape)) * a_dims[axis]
