"""Recurrent layers: SimpleRNN, GRU, LSTM and their Bidirectional wrapper.

A recurrent *unit* is one output channel. Removing unit j removes, in every gate block
(4 for LSTM: i, f, c, o; 3 for GRU: z, r, h; 1 for SimpleRNN), column ``block * units + j`` of
the input kernel, of the recurrent kernel and of the bias, and row j of the recurrent kernel,
which is what reads the previous state's channel j. Input channels remove input-kernel rows.
"""
from __future__ import annotations

import numpy as np

from edgeprune.pruning.rules.base import LayerRule, channel_norm, take

GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}


def gate_columns(kept, units: int, gates: int):
    """Kernel columns of the kept units in every gate block."""
    if kept is None:
        return None
    kept = np.asarray(kept)
    return np.concatenate([b * units + kept for b in range(gates)])


def slice_cell(weights: list, ki, ko, units: int, gates: int) -> list:
    """[kernel (in, G*u), recurrent (u, G*u), bias (G*u) or (2, G*u)] for kept in/out."""
    cols = gate_columns(ko, units, gates)
    w = list(weights)
    w[0] = take(take(w[0], ki, 0), cols, 1)
    w[1] = take(take(w[1], ko, 0), cols, 1)
    if len(w) > 2:
        w[2] = take(w[2], cols, w[2].ndim - 1)
    return w


def _units(cfg: dict) -> int:
    return int(cfg["units"])


def _rnn_lock_reason(cfg: dict) -> str | None:
    if cfg.get("return_state"):
        return "returns its states"
    if cfg.get("stateful"):
        return "stateful"
    return None


class RecurrentRule(LayerRule):
    """SimpleRNN, GRU, LSTM: units are output channels, coupled across every gate."""

    producer = True

    def __init__(self, gates: int):
        self.gates = gates

    def couple(self, node, g, c):
        reason = _rnn_lock_reason(node.config)
        if reason:
            c.lock_layer(node, f"{node.name}: {node.class_name} {reason}")

    def new_config(self, node, cfg, kept_in, kept_out, g):
        ko = kept_out[0] if kept_out else None
        return cfg if ko is None else dict(cfg, units=len(ko))

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        return slice_cell(weights, kept_in[0], kept_out[0], _units(node.config), self.gates)

    def macs(self, node, g, counts):
        tin, tout = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        steps = tin.shape[0] if len(tin.shape) > 1 and tin.shape[0] else 1
        cin = counts.get(tin.key, tin.channels)
        u = counts.get(tout.key, tout.channels)
        return int(steps) * self.gates * u * (cin + u)

    def filter_norms(self, node, weights, p):
        u = _units(node.config)
        k = weights[0].reshape(weights[0].shape[0], self.gates, u)
        return channel_norm(k.reshape(-1, u), 1, p)

    def input_norms(self, node, weights, p, g):
        return channel_norm(weights[0], 0, p)


class BidirectionalRule(LayerRule):
    """Bidirectional(RNN): unit j of the forward and of the backward layer go together (their
    configs share ``units``); concat output channels are [forward..., backward...]."""

    producer = True

    def _inner(self, cfg):
        inner = cfg.get("layer") or {}
        return inner.get("class_name"), inner.get("config") or {}

    def couple(self, node, g, c):
        cls, inner = self._inner(node.config)
        back = (node.config.get("backward_layer") or {}).get("class_name", cls)
        if cls not in GATES or back != cls:
            c.lock_layer(node, f"{node.name}: Bidirectional({cls}) has no pruning rule")
            return
        reason = _rnn_lock_reason(inner)
        if reason:
            c.lock_layer(node, f"{node.name}: Bidirectional {cls} {reason}")
            return
        out = g.tensors[node.outputs[0]]
        u = _units(inner)
        if node.config.get("merge_mode", "concat") == "concat":
            if out.channels != 2 * u:
                c.lock_layer(node, f"{node.name}: unexpected Bidirectional output width")
                return
            c.couple(out.key, np.arange(u), out.key, u + np.arange(u))
        elif node.config.get("merge_mode") is None:
            c.lock_layer(node, f"{node.name}: Bidirectional without merge returns two tensors")

    def _kept_units(self, node, ko):
        if ko is None:
            return None
        u = _units(self._inner(node.config)[1])
        ko = np.asarray(ko)
        return ko[ko < u] if node.config.get("merge_mode", "concat") == "concat" else ko

    def new_config(self, node, cfg, kept_in, kept_out, g):
        units = self._kept_units(node, kept_out[0] if kept_out else None)
        if units is None:
            return cfg
        cfg = dict(cfg)
        for key in ("layer", "backward_layer"):
            if cfg.get(key):
                cfg[key] = dict(cfg[key], config=dict(cfg[key]["config"], units=len(units)))
        return cfg

    def slice_weights(self, node, weights, kept_in, kept_out, g):
        cls, inner = self._inner(node.config)
        units = self._kept_units(node, kept_out[0])
        half = len(weights) // 2
        gates, u = GATES[cls], _units(inner)
        return (slice_cell(weights[:half], kept_in[0], units, u, gates)
                + slice_cell(weights[half:], kept_in[0], units, u, gates))

    def macs(self, node, g, counts):
        cls, inner = self._inner(node.config)
        if cls not in GATES:
            return 0
        tin, tout = g.tensors[node.inputs[0]], g.tensors[node.outputs[0]]
        steps = tin.shape[0] if len(tin.shape) > 1 and tin.shape[0] else 1
        cin = counts.get(tin.key, tin.channels)
        width = counts.get(tout.key, tout.channels)
        u = width // 2 if node.config.get("merge_mode", "concat") == "concat" else width
        return 2 * int(steps) * GATES[cls] * u * (cin + u)

    def filter_norms(self, node, weights, p):
        cls, inner = self._inner(node.config)
        if cls not in GATES:
            return None
        u, gates = _units(inner), GATES[cls]
        half = len(weights) // 2
        fwd = weights[0].reshape(-1, gates, u).reshape(-1, u)
        bwd = weights[half].reshape(-1, gates, u).reshape(-1, u)
        norms = channel_norm(np.concatenate([fwd, bwd], 0), 1, p)
        return np.concatenate([norms, norms]) if node.config.get("merge_mode", "concat") == "concat" else norms

    def input_norms(self, node, weights, p, g):
        half = len(weights) // 2
        return channel_norm(np.concatenate([weights[0], weights[half]], 1), 0, p)
