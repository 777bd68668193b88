"""Channel dependency groups: which channels of which tensors must go together.

Every channel of every tensor is an element; the layer rules couple elements; the connected
components are *units* (one removable channel, seen in every tensor it reaches). Units that
reach exactly the same tensors form a *group*: one producer's filters plus everything that
reads or passes them on (BN, activations, residual adds, SE branches, concat slices, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeprune.base.errors import InputError
from edgeprune.load.graph import LayerGraph
from edgeprune.pruning import rules


@dataclass
class Group:
    """Channels removed together. ``units`` are unit ids; ``tensors`` the tensors they reach."""

    id: int
    units: np.ndarray
    tensors: tuple
    producers: list  # layers with weights whose *output* channels are this group
    layers: list  # every layer touching the group (producers, consumers, pass-through)
    locked: str | None = None  # reason, or None when prunable
    multiplicity: dict = field(default_factory=dict)  # tensor -> channels per unit

    @property
    def size(self) -> int:
        return int(len(self.units))

    @property
    def name(self) -> str:
        return self.producers[0] if self.producers else (self.layers[0] if self.layers else f"group{self.id}")


@dataclass
class GroupSet:
    """All groups of a graph plus the element bookkeeping that maps units back to channels."""

    graph: LayerGraph
    offsets: dict  # tensor key -> first element id
    labels: np.ndarray  # element id -> unit id
    groups: list
    unit_group: np.ndarray  # unit id -> group id

    def elements(self, key) -> np.ndarray:
        t = self.graph.tensors[key]
        start = self.offsets[key]
        return np.arange(start, start + t.channels)

    def units_of(self, key) -> np.ndarray:
        """Unit id of each channel of a tensor."""
        return self.labels[self.elements(key)]

    def kept_channels(self, keep_unit: np.ndarray) -> dict:
        """tensor key -> kept channel indices (None when all are kept)."""
        out = {}
        for key in self.graph.tensors:
            units = self.units_of(key)
            mask = keep_unit[units]
            out[key] = None if mask.all() else np.nonzero(mask)[0]
        return out

    def channel_counts(self, keep_unit: np.ndarray) -> dict:
        """tensor key -> channel count after pruning (fast path for the MAC bisection)."""
        kept = keep_unit[self.labels]
        counts = {}
        for key, start in self.offsets.items():
            n = self.graph.tensors[key].channels
            counts[key] = int(kept[start:start + n].sum())
        return counts

    @property
    def prunable(self) -> list:
        return [g for g in self.groups if g.locked is None]


def build_groups(graph: LayerGraph, protect=()) -> GroupSet:
    """Run every layer rule, lock outputs/inputs/protected layers, and form the groups."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rules.add_internal_tensors(graph)  # attention heads etc.: channels of no real tensor
    coupler = rules.Coupler(graph)
    for node in graph.layers.values():
        rules.couple_layer(node, graph, coupler)
    for key in graph.outputs:
        coupler.lock(key, f"{key[0]}: model output")
    for key in graph.inputs:
        coupler.lock(key, f"{key[0]}: model input")
    for pattern in protect:
        hit = [n for n in graph.layers if rules.matches(pattern, n)]
        if not hit:
            raise InputError(f"--protect '{pattern}' matches no layer of the model")
        for name in hit:
            node = graph.layers[name]
            for key in [*node.outputs, *rules.internal_keys(node).values()]:
                coupler.lock(key, f"{name}: protected")

    offsets, total = {}, 0
    for key, t in graph.tensors.items():
        offsets[key] = total
        total += t.channels
    rows, cols = [np.arange(total)], [np.arange(total)]
    for a, ia, b, ib in coupler.pairs:
        rows.append(offsets[a] + ia)
        cols.append(offsets[b] + ib)
    r, cidx = np.concatenate(rows), np.concatenate(cols)
    adj = coo_matrix((np.ones(len(r), dtype=np.int8), (r, cidx)), shape=(total, total))
    n_units, labels = connected_components(adj, directed=False)

    # signature of each unit: the tensors it reaches (and how many channels in each)
    tensor_index = {key: i for i, key in enumerate(graph.tensors)}
    keys = list(graph.tensors)
    elem_tensor = np.zeros(total, dtype=np.int64)
    for key, start in offsets.items():
        elem_tensor[start:start + graph.tensors[key].channels] = tensor_index[key]
    order = np.lexsort((elem_tensor, labels))
    sorted_labels, sorted_tensors = labels[order], elem_tensor[order]
    boundaries = np.flatnonzero(np.diff(sorted_labels)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [total]])
    signatures: dict = {}
    for s, e in zip(starts, ends):
        unit = int(sorted_labels[s])
        ts, counts = np.unique(sorted_tensors[s:e], return_counts=True)
        sig = (tuple(ts.tolist()), tuple(counts.tolist()))
        signatures.setdefault(sig, []).append(unit)

    locked_tensors = {tensor_index[k]: reason for k, reason in coupler.locks.items()}
    groups, unit_group = [], np.zeros(n_units, dtype=np.int64)
    for gid, ((ts, counts), units) in enumerate(signatures.items()):
        tkeys = tuple(keys[i] for i in ts)
        reason = next((locked_tensors[i] for i in ts if i in locked_tensors), None)
        producers, layers = [], []
        for k in tkeys:
            p = graph.tensors[k].producer
            if rules.is_producer(graph.layers[p]) and p not in producers:
                producers.append(p)
            for name in [p] + graph.tensors[k].consumers:
                if name not in layers:
                    layers.append(name)
        units_arr = np.asarray(sorted(units))
        unit_group[units_arr] = gid
        groups.append(Group(id=gid, units=units_arr, tensors=tkeys, producers=producers, layers=layers,
                            locked=reason, multiplicity=dict(zip(tkeys, counts))))
    for g in groups:  # a unit nobody produces (no conv/dense behind it) cannot be removed
        if g.locked is None and not g.producers:
            g.locked = f"{g.name}: no producing layer"
    return GroupSet(graph=graph, offsets=offsets, labels=labels, groups=groups, unit_group=unit_group)
