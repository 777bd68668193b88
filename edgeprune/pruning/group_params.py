"""Which weights belong to which removable channel: the parameters of every prunable unit.

Structured sparsity training (network slimming's BN-scale L1, DepGraph's group norm) shrinks
all the weights that go when one channel goes (the producer's filter, the BatchNorm scale and
shift, every consumer's input slice, a depthwise filter passed through) as one unit, so that a
unit whose weights reach zero can be removed without changing the model. Which elements of
which weight array those are is the layer rules' knowledge (:meth:`LayerRule.slice_weights`):
here each weight array is filled with its own element indices and sliced as surgery would
slice it with one unit removed; the indices that disappear are that unit's parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeprune.pruning import rules
from edgeprune.pruning.groups import GroupSet

BN_CLASSES = {"BatchNormalization", "SyncBatchNormalization"}


@dataclass
class UnitParameters:
    """One weight array's elements that belong to prunable units.

    ``layer``/``index``: the layer name and the position in ``layer.weights``; ``unit_of``: an
    int32 array of the weight's shape, the unit id of each element or -1 when no prunable unit
    owns it (locked groups, elements every channel shares). A kernel entry belongs to its input
    channel's unit and to its output channel's: such a weight comes as two entries, one owner
    per element in each."""

    layer: str
    index: int
    unit_of: np.ndarray
    batchnorm_scale: bool  # a BatchNorm gamma: what network slimming's L1 acts on
    trainable: bool  # False for BatchNorm moving statistics: never penalised nor counted


def _bn_gamma_index(node) -> int | None:
    """Position of ``gamma`` in a BatchNormalization's weights (None when ``scale=False``)."""
    if node.class_name not in BN_CLASSES or not node.config.get("scale", True):
        return None
    return 0


def unit_parameters(gs: GroupSet) -> list[UnitParameters]:
    """Every weight element owned by a prunable unit, per weight array (see module doc)."""
    g = gs.graph
    prunable = np.zeros(len(gs.unit_group), dtype=bool)
    for group in gs.prunable:
        prunable[group.units] = True
    found: list[UnitParameters] = []
    for node in g.layers.values():
        weights = node.weights()
        if not weights or node.calls != 1:
            continue
        internal = rules.internal_keys(node)
        keys = list(node.inputs) + list(node.outputs) + list(internal.values())
        units = sorted({int(u) for k in keys for u in gs.units_of(k) if prunable[u]})
        if not units:
            continue
        indexed = [np.arange(w.size, dtype=np.float64).reshape(w.shape) for w in weights]
        # An element can belong to two units (a kernel entry: its input and its output
        # channel); each level holds at most one owner per element.
        levels: list[list[np.ndarray]] = [[] for _ in weights]
        for unit in units:
            kin = [_without(gs, k, unit) for k in node.inputs]
            kout = [_without(gs, k, unit) for k in node.outputs]
            kint = {name: _without(gs, k, unit) for name, k in internal.items()}
            sliced = rules.slice_weights(node, [a.copy() for a in indexed], kin, kout, g, kint)
            for i, (whole, kept) in enumerate(zip(indexed, sliced)):
                if kept.size == whole.size:
                    continue
                gone = np.setdiff1d(whole.ravel(), np.asarray(kept).ravel(), assume_unique=True).astype(np.int64)
                _assign(levels[i], gone, unit, whole.shape)
        gamma = _bn_gamma_index(node)
        variables = list(node.layer.weights)
        for i, owners in enumerate(levels):
            for unit_of in owners:
                found.append(UnitParameters(node.name, i, unit_of, batchnorm_scale=(i == gamma),
                                            trainable=bool(getattr(variables[i], "trainable", True))))
    return found


def _assign(levels: list[np.ndarray], elements: np.ndarray, unit: int, shape) -> None:
    """Record ``unit`` as an owner of flat ``elements``, on the first level where each is free."""
    for level in levels:
        flat = level.reshape(-1)
        free = flat[elements] < 0
        flat[elements[free]] = unit
        elements = elements[~free]
        if not elements.size:
            return
    level = np.full(shape, -1, dtype=np.int32)
    level.reshape(-1)[elements] = unit
    levels.append(level)


def _without(gs: GroupSet, key, unit: int):
    """Kept channel indices of tensor ``key`` when only ``unit`` is removed (None: all kept)."""
    units = gs.units_of(key)
    mask = units != unit
    return None if mask.all() else np.nonzero(mask)[0]


def unit_norms(gs: GroupSet, params: list[UnitParameters] | None = None) -> np.ndarray:
    """L2 norm of each unit's trainable parameters taken together (0 for units owning none).

    ``params`` defaults to every trainable array of :func:`unit_parameters`; pass a subset
    (only BatchNorm scales, say) to measure what a narrower penalty acts on."""
    params = [p for p in unit_parameters(gs) if p.trainable] if params is None else params
    n_units = int(gs.labels.max()) + 1 if len(gs.labels) else 0
    total = np.zeros(n_units)
    for p in params:
        w = np.asarray(gs.graph.layers[p.layer].weights()[p.index], dtype=np.float64)
        mask = p.unit_of >= 0
        np.add.at(total, p.unit_of[mask], w[mask] ** 2)
    return np.sqrt(total)
