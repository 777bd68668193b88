"""Attention: MultiHeadAttention (heads or per-head dimensions) and EinsumDense.

A ``MultiHeadAttention`` layer holds four EinsumDense projections: query/key/value kernels
``(in, heads, dim)`` with biases ``(heads, dim)`` and the output kernel ``(heads, value_dim,
out)`` with a bias ``(out,)``. What pruning removes inside it is no tensor's channel, so the rule
declares *internal widths* (:meth:`LayerRule.internal_widths`), one virtual tensor each:

- ``"dims"`` (default, Torch-Pruning's ``prune_head_dims``): ``qk_dim`` (the same query/key
  dimension of every head: ``key_dim`` falls) and ``v_dim`` (the same value dimension of every
  head and the output kernel rows that read it: ``value_dim`` falls);
- ``"heads"``: ``heads``: whole heads, their q/k/v/output slices together (``num_heads`` falls).

The query input, and the output when ``output_shape`` is unset (it projects back to the query
width), belong to the residual stream's group; the key and value inputs are read by their own
kernels' input axes, like a Dense layer's inputs. ``prune_model(attention_unit="heads")``
(``--attention-unit heads``) removes whole heads for one prune call (:func:`attention_unit`).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from edgeprune.base.errors import InputError
from edgeprune.load.graph import is_entry, spatial_size
from edgeprune.pruning.rules.base import LayerRule, channel_norm, take

ATTENTION_MODES = ("dims", "heads")


def check_attention_unit(unit: str | None) -> str | None:
    """``unit`` when it is None or one of :data:`ATTENTION_MODES`, else the flag's one-line error
    (the pipelines call it before loading a model)."""
    if unit is not None and unit not in ATTENTION_MODES:
        raise InputError(f"--attention-unit: expected one of {', '.join(ATTENTION_MODES)}, got {unit!r}")
    return unit


@contextmanager
def attention_unit(unit: str | None):
    """Prune every MultiHeadAttention by ``unit`` (``"dims"`` or ``"heads"``) inside the block.

    The unit is a property of the layer's rule, which the registry holds for the whole process;
    the block swaps in ``MultiHeadAttentionRule(unit)`` and puts back the rule it found (the
    default, or one a ``--custom-objects`` file registered), so nothing outlives the prune call.
    ``None`` leaves the registered rule alone.
    """
    if check_attention_unit(unit) is None:
        yield
        return
    from edgeprune.pruning import rules  # the registry imports this module

    before = rules.registered().get("MultiHeadAttention")
    rules.register_rule("MultiHeadAttention", MultiHeadAttentionRule(unit))
    try:
        yield
    finally:
        rules.register_rule("MultiHeadAttention", before)


def _internal_key(layer: str, name: str) -> tuple:
    from edgeprune.pruning.rules import internal_key  # the registry owns the key format

    return internal_key(layer, name)


def _ref(value):
    return tuple(value[:3]) if is_entry(value) else None


def attention_inputs(node) -> dict:
    """role -> tensor key of an attention call: ``query``, ``value``, ``key`` (the value when
    not given). Keras 3 records the call's positional arguments, tf_keras passes the first
    tensor positionally and the others by keyword."""
    args, kw = list(node.args), node.kwargs
    found = {}
    for i, role in enumerate(("query", "value", "key")):
        found[role] = (_ref(args[i]) if len(args) > i else None) or _ref(kw.get(role))
    found["query"] = found["query"] or (node.inputs[0] if node.inputs else None)
    found["key"] = found["key"] or found["value"]
    return found


def _norms(parts, p: int) -> np.ndarray:
    """Lp norm per channel of several arrays taken together: ``parts`` is [(array, axis)]."""
    total = sum(np.abs(channel_norm(a, axis, p)) ** p for a, axis in parts)
    return total if p == 1 else np.sqrt(total)


class MultiHeadAttentionRule(LayerRule):
    """MultiHeadAttention (Keras 3 and tf_keras): per-head dimensions or whole heads."""

    producer = True
    unrounded_internal = ("heads",)

    def __init__(self, prune: str = "dims"):
        if prune not in ATTENTION_MODES:
            raise InputError(f"MultiHeadAttentionRule: prune must be one of {', '.join(ATTENTION_MODES)}, "
                             f"got {prune!r}")
        self.prune = prune

    # -- what the layer is ----------------------------------------------------------------
    @staticmethod
    def _dims(node) -> tuple[int, int, int]:
        cfg = node.config
        key_dim = int(cfg["key_dim"])
        return int(cfg["num_heads"]), key_dim, int(cfg.get("value_dim") or key_dim)

    def _lock_reason(self, node) -> str | None:
        if node.config.get("use_gate"):
            return "MultiHeadAttention with use_gate"
        if len(node.outputs) != 1:
            return "MultiHeadAttention returning its attention scores"
        roles = attention_inputs(node)
        if roles["value"] is None or any(roles[r] not in node.inputs for r in ("query", "value", "key")):
            return "MultiHeadAttention call whose query/value inputs cannot be told apart"
        return None

    def internal_widths(self, node):
        if self._lock_reason(node):
            return {}
        heads, key_dim, value_dim = self._dims(node)
        if self.prune == "heads":
            return {"heads": heads}
        return {"qk_dim": key_dim, "v_dim": value_dim}

    # -- coupling -------------------------------------------------------------------------
    def couple(self, node, g, c):
        reason = self._lock_reason(node)
        if reason:
            c.lock_layer(node, f"{node.name}: {reason}")
            return
        roles = attention_inputs(node)
        for k in node.inputs:  # attention masks: positions, not channels
            if k not in (roles["query"], roles["value"], roles["key"]):
                c.lock(k, f"{node.name}: attention mask")
        if node.config.get("output_shape") is None:  # projects back to the query width
            c.same(roles["query"], node.outputs[0])

    # -- surgery --------------------------------------------------------------------------
    def _kept_inputs(self, node, kept_in) -> dict:
        roles = attention_inputs(node)
        return {r: kept_in[node.inputs.index(roles[r])] for r in ("query", "value", "key")}

    def new_config(self, node, cfg, kept_in, kept_out, g, internal=None):
        if self._lock_reason(node):
            return cfg
        cfg = dict(cfg, value_dim=self._dims(node)[2])  # explicit: an unset value_dim follows key_dim
        fields = {"heads": "num_heads", "qk_dim": "key_dim", "v_dim": "value_dim"}
        for name, kept in (internal or {}).items():
            if kept is not None:
                cfg[fields[name]] = int(len(kept))
        ko = kept_out[0] if kept_out else None
        if ko is not None and cfg.get("output_shape") is not None:
            shape = cfg["output_shape"]
            cfg["output_shape"] = int(len(ko)) if isinstance(shape, int) else [*list(shape)[:-1], int(len(ko))]
        kept = self._kept_inputs(node, kept_in)
        for role in ("query", "key", "value"):  # tf_keras builds from the recorded input shapes
            shape = cfg.get(f"{role}_shape")
            if shape is not None and kept[role] is not None:
                cfg[f"{role}_shape"] = [*list(shape)[:-1], int(len(kept[role]))]
        return cfg

    def slice_weights(self, node, weights, kept_in, kept_out, g, internal=None):
        internal = internal or {}
        kept = self._kept_inputs(node, kept_in)
        heads, dq, dv = internal.get("heads"), internal.get("qk_dim"), internal.get("v_dim")
        ko = kept_out[0] if kept_out else None
        bias = bool(node.config.get("use_bias", True))
        step = 2 if bias else 1
        w = list(weights)
        for i, (role, dim) in enumerate((("query", dq), ("key", dq), ("value", dv))):
            w[i * step] = take(take(take(w[i * step], kept[role], 0), heads, 1), dim, 2)
            if bias:
                w[i * step + 1] = take(take(w[i * step + 1], heads, 0), dim, 1)
        o = 3 * step
        w[o] = take(take(take(w[o], heads, 0), dv, 1), ko, 2)
        if bias:
            w[o + 1] = take(w[o + 1], ko, 0)
        return w

    def compensate(self, node, weights, internal=None):
        """Keras scales the queries by 1/sqrt(key_dim): with fewer dims the remaining ones are
        scaled up by sqrt(key_dim/kept) unless the query projection is scaled down as much, so
        that the kept dimensions score exactly as they did."""
        dq = (internal or {}).get("qk_dim")
        if dq is None:
            return weights
        factor = np.sqrt(len(dq) / self._dims(node)[1])
        step = 2 if node.config.get("use_bias", True) else 1
        w = list(weights)
        for i in range(step):
            w[i] = (w[i] * factor).astype(w[i].dtype)
        return w

    # -- cost -----------------------------------------------------------------------------
    def macs(self, node, g, counts):
        if self._lock_reason(node):
            return 0
        roles = attention_inputs(node)
        heads, key_dim, value_dim = self._dims(node)
        h = counts.get(_internal_key(node.name, "heads"), heads)
        dq = counts.get(_internal_key(node.name, "qk_dim"), key_dim)
        dv = counts.get(_internal_key(node.name, "v_dim"), value_dim)
        width = {r: counts.get(roles[r], g.tensors[roles[r]].channels) for r in ("query", "key", "value")}
        out = g.tensors[node.outputs[0]]
        cout = counts.get(out.key, out.channels)
        q_shape, k_shape = g.tensors[roles["query"]].shape, g.tensors[roles["key"]].shape
        tq, tk = spatial_size(q_shape), spatial_size(k_shape)
        projections = tq * width["query"] * h * dq + tk * (width["key"] * h * dq + width["value"] * h * dv)
        # each query position meets the key positions along the attention axes only
        axes = node.config.get("attention_axes")
        axes = [int(a) for a in ([axes] if isinstance(axes, int) else (axes or []))]
        pairs = tq * tk
        if axes and len(k_shape) == len(q_shape) and all(0 < a < len(q_shape) for a in axes):
            pairs = tq * spatial_size(tuple(k_shape[a - 1] for a in axes) + (1,))
        attention = h * (dq + dv) * pairs  # Q K^T, then the scores times V
        return projections + attention + tq * h * dv * cout

    # -- importance -----------------------------------------------------------------------
    def _arrays(self, node, weights):
        step = 2 if node.config.get("use_bias", True) else 1
        q, k, v, o = (weights[i * step] for i in range(4))
        biases = [weights[i * step + 1] for i in range(3)] if step == 2 else []
        return q, k, v, o, biases

    def filter_norms(self, node, weights, p):
        return channel_norm(self._arrays(node, weights)[3], 2, p)

    def input_norms(self, node, weights, p, g):
        if node.inputs[0] != attention_inputs(node)["query"]:
            return None
        return channel_norm(self._arrays(node, weights)[0], 0, p)

    def internal_norms(self, node, weights, p):
        q, k, v, o, biases = self._arrays(node, weights)
        qb, kb, vb = biases if biases else (None, None, None)
        if self.prune == "heads":
            parts = [(q, 1), (k, 1), (v, 1), (o, 0)] + [(b, 0) for b in biases]
            return {"heads": _norms(parts, p)}
        qk = [(q, 2), (k, 2)] + ([(qb, 1), (kb, 1)] if biases else [])
        vd = [(v, 2), (o, 1)] + ([(vb, 1)] if biases else [])
        return {"qk_dim": _norms(qk, p), "v_dim": _norms(vd, p)}


def _einsum_parts(equation: str) -> tuple[str, str, str] | None:
    """(input, kernel, output) letter strings of an EinsumDense equation, ellipses dropped."""
    try:
        lhs, out = equation.replace(" ", "").split("->")
        inp, ker = lhs.split(",")
    except ValueError:
        return None
    return tuple(s.replace("...", "") for s in (inp, ker, out))


class EinsumDenseRule(LayerRule):
    """EinsumDense: output channels where the equation's last output axis comes from the kernel
    alone (``...b,bc->...c``), input channels where the input's last axis is contracted."""

    @staticmethod
    def _axes(node) -> tuple[int | None, int | None]:
        """(kernel axis read by the input's channels, kernel axis making the output's channels)."""
        parts = _einsum_parts(str(node.config.get("equation", "")))
        if parts is None or not parts[0] or not parts[2]:
            return None, None
        inp, ker, out = parts
        a, b = inp[-1], out[-1]
        read = ker.index(a) if a in ker and a not in out else None
        made = ker.index(b) if b in ker and b not in inp else None
        return read, made

    def is_producer(self, node):
        return self._axes(node)[1] is not None

    def couple(self, node, g, c):
        read, made = self._axes(node)
        eq = node.config.get("equation")
        if read is None or g.tensors[node.inputs[0]].spatial != 1:
            c.lock(node.inputs[0], f"{node.name}: EinsumDense '{eq}' does not contract its input's last axis")
        for k in node.inputs[1:]:
            c.lock(k, f"{node.name}: EinsumDense extra input")
        if made is None:
            c.lock(node.outputs[0], f"{node.name}: EinsumDense '{eq}' output's last axis is not the kernel's own")

    def new_config(self, node, cfg, kept_in, kept_out, g):
        ko = kept_out[0] if kept_out else None
        if ko is None:
            return cfg
        shape = cfg.get("output_shape")
        new = int(len(ko)) if isinstance(shape, int) or shape is None else [*list(shape)[:-1], int(len(ko))]
        return dict(cfg, output_shape=new)

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        read, made = self._axes(node)
        w = list(weights)
        if read is not None:
            w[0] = take(w[0], kept_in[0], read)
        if made is not None:
            w[0] = take(w[0], kept_out[0], made)
            out_letter = _einsum_parts(node.config["equation"])[2][-1]
            if len(w) > 1 and out_letter in str(node.config.get("bias_axes") or ""):
                w[1] = take(w[1], kept_out[0], w[1].ndim - 1)
        return w

    def macs(self, node, g, counts):
        """One multiply-accumulate per (output element, summed-over index): the product of
        every letter's size, the batch (and unknown sizes) as 1, channels as currently kept."""
        parts = _einsum_parts(str(node.config.get("equation", "")))
        kernel = getattr(node.layer, "kernel", None)
        if parts is None or kernel is None:
            return 0
        inp, ker, out = parts
        tin, tout = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        raw_inp = str(node.config["equation"]).replace(" ", "").split(",")[0]
        full = (None, *tin.shape)
        sizes = {}
        if "..." in raw_inp:  # letters after the ellipsis sit at the end of the shape
            before, after = raw_inp.split("...")
            sizes.update(zip(before, full[:len(before)]))
            sizes.update(zip(after, full[len(full) - len(after):]))
            covered = full[len(before):len(full) - len(after)]
        else:
            sizes.update(zip(inp, full))
            covered = ()
        sizes.update(zip(ker, [int(d) for d in kernel.shape]))
        if inp:
            sizes[inp[-1]] = counts.get(tin.key, tin.channels)
        sizes[out[-1]] = counts.get(tout.key, tout.channels)
        macs = 1
        for letter in set(inp) | set(ker) | set(out):
            macs *= int(sizes.get(letter) or 1)
        for d in covered:
            macs *= int(d or 1)
        return int(macs)

    def filter_norms(self, node, weights, p):
        made = self._axes(node)[1]
        return None if made is None else channel_norm(weights[0], made, p)

    def input_norms(self, node, weights, p, g):
        read = self._axes(node)[0]
        if read is None or g.tensors[node.inputs[0]].spatial != 1:
            return None
        return channel_norm(weights[0], read, p)
