"""Latency-aware allocation: how many channels each group keeps so that the latency a
measured per-layer table predicts (:mod:`edgeprune.pruning.latency`) meets a target.

NetAdapt/HALP-style greedy: repeatedly remove the block of channels (``round_to``, in
units) that saves the most predicted latency per unit of what the user wants to keep,
either MACs (capacity; the default) or channel importance. Channels are thus taken where
they cost time (high resolution, depthwise, memory-bound layers) and kept where they are
cheap. A refill pass then spends what the last removal overshot, and the result is
compared with the best uniform ratio that meets the same target: the better of the two
under the objective wins, so the greedy never does worse than a plain ratio.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeprune.base.errors import InputError
from edgeprune.pruning import macs as macs_mod
from edgeprune.pruning.allocation import Allocator
from edgeprune.pruning.latency import LatencyTable, signature

OBJECTIVES = ("macs", "importance")


@dataclass
class LatencyPlan:
    keep: np.ndarray  # unit keep-mask
    removed_fraction: float  # of all prunable units
    us_before: float  # predicted, unpruned
    us_after: float  # predicted, pruned
    method: str  # "greedy" or "uniform"
    objective_kept: float  # fraction of the objective (MACs or importance) kept


class LatencyAllocator:
    """Greedy allocation against a latency table; see the module docs."""

    def __init__(self, alloc: Allocator, table: LatencyTable, *, objective: str = "macs", max_ratio: float = 0.9):
        if objective not in OBJECTIVES:
            raise InputError(f"latency objective must be one of {', '.join(OBJECTIVES)}, got '{objective}'")
        self.alloc, self.table, self.objective, self.max_ratio = alloc, table, objective, max_ratio
        self.gs = alloc.gs
        self.graph = self.gs.graph
        self.sigs = {n.name: signature(n, self.graph) for n in self.graph.layers.values()}
        self.by_tensor: dict = {}  # tensor key -> timed layers that read or write it
        for node in self.graph.layers.values():
            if self.sigs[node.name] is not None:
                for key in (node.inputs[0], node.outputs[0]):
                    self.by_tensor.setdefault(key, []).append(node)
        self.groups = {g.id: g for g in self.gs.prunable if g.id not in alloc.overrides}
        self.tensor_groups: dict = {}
        for g in self.groups.values():
            for t in g.tensors:
                self.tensor_groups.setdefault(t, set()).add(g.id)
        self.bounds = {}
        for gid, g in self.groups.items():
            r, mn = alloc._unit_policy(g)
            lowest = max(mn, g.size - math.floor(g.size * max_ratio))
            self.bounds[gid] = (r, min(g.size, -(-lowest // r) * r))

    # -- predictions ------------------------------------------------------------------------
    def node_us(self, node, counts) -> float:
        return self.table.node_us(self.sigs[node.name], node, self.graph, counts) or 0.0

    def predict(self, keep) -> float:
        counts = self.gs.channel_counts(keep)
        return sum(self.node_us(n, counts) for n in self.graph.layers.values())

    def value(self, keep) -> float:
        """What the objective keeps: MACs, or summed unit importance."""
        if self.objective == "macs":
            return float(macs_mod.total_macs(self.graph, self.gs.channel_counts(keep)))
        return float(self.alloc.scores[keep].sum())

    # -- the greedy -------------------------------------------------------------------------
    def _affected(self, g) -> dict:
        nodes = {}
        for t in g.tensors:
            for node in self.by_tensor.get(t, ()):
                nodes[node.name] = node
        return nodes

    def _mac_layers(self, g) -> list:
        names = set()
        for t in g.tensors:
            tensor = self.graph.tensors[t]
            names.update([tensor.producer, *tensor.consumers])
        return [self.graph.layers[n] for n in names if n in self.graph.layers]

    def _tensor_count(self, key, keep) -> int:
        start = self.gs.offsets[key]
        return int(keep[self.gs.labels[start:start + self.graph.tensors[key].channels]].sum())

    def _delta(self, g, keep, counts, current, units) -> tuple[float, float]:
        """(latency change, objective change) of flipping ``units`` of group ``g``."""
        keep[units] = ~keep[units]
        trial = dict(counts)
        for t in g.tensors:
            trial[t] = self._tensor_count(t, keep)
        keep[units] = ~keep[units]
        nodes = self._affected(g)
        d_us = sum(self.node_us(nodes[n], trial) for n in nodes) - sum(current[n] for n in nodes)
        if self.objective == "macs":
            d_val = sum(macs_mod.layer_macs(n, self.graph, trial) - macs_mod.layer_macs(n, self.graph, counts)
                        for n in self._mac_layers(g))
        else:
            d_val = float(self.alloc.scores[units].sum()) * (-1 if keep[units[0]] else 1)
        return d_us, float(d_val)

    def greedy(self, goal: float) -> np.ndarray:
        keep = self.alloc.plan(0.0)  # per-layer overrides applied, every other group intact
        counts = self.gs.channel_counts(keep)
        current = {n.name: self.node_us(n, counts) for n in self.graph.layers.values()}
        kept = {gid: g.size for gid, g in self.groups.items()}
        order = self.alloc.order

        def removal(gid):
            r, lowest = self.bounds[gid]
            k = kept[gid]
            nk = ((k - 1) // r) * r
            if nk < lowest or nk < 1:
                return None
            d_us, d_val = self._delta(self.groups[gid], keep, counts, current, order[gid][nk:k])
            if d_us >= 0:
                return None  # saves no time: leave the group alone
            return -d_us / max(-d_val, 1e-12), nk

        def apply(gid, new_k):
            g = self.groups[gid]
            k = kept[gid]
            lo, hi = sorted((new_k, k))
            keep[order[gid][lo:hi]] = new_k > k
            kept[gid] = new_k
            for t in g.tensors:
                counts[t] = self._tensor_count(t, keep)
            touched = set()
            for name, node in self._affected(g).items():
                current[name] = self.node_us(node, counts)
                touched.update(node.inputs[:1] + node.outputs[:1])
            return {o for t in touched for o in self.tensor_groups.get(t, ())} | {gid}

        steps = {gid: removal(gid) for gid in self.groups}
        while sum(current.values()) > goal:
            live = {gid: s for gid, s in steps.items() if s is not None}
            if not live:
                return None
            gid = max(live, key=lambda i: live[i][0])
            for other in apply(gid, live[gid][1]):
                steps[other] = removal(other)
        # refill: add back the blocks that keep the most objective per microsecond while
        # the prediction stays within the goal (the last removals may have overshot)
        while True:
            best = None
            slack = goal - sum(current.values())
            for gid, g in self.groups.items():
                r, _ = self.bounds[gid]
                k = kept[gid]
                if k >= g.size:
                    continue
                nk = min(g.size, (k // r + 1) * r)
                d_us, d_val = self._delta(g, keep, counts, current, order[gid][k:nk])
                if d_us <= slack and d_val > 0:
                    rate = d_val / max(d_us, 1e-12)
                    if best is None or rate > best[0]:
                        best = (rate, gid, nk)
            if best is None:
                break
            apply(best[1], best[2])
        return keep

    def uniform(self, goal: float, iterations: int = 30):
        """Keep-mask of the smallest uniform ratio predicted to meet ``goal`` (None: none does)."""
        hi_keep = self.alloc.plan(self.max_ratio)
        if self.predict(hi_keep) > goal:
            return None
        lo, hi, best = 0.0, self.max_ratio, hi_keep
        for _ in range(iterations):
            mid = (lo + hi) / 2
            keep = self.alloc.plan(mid)
            if self.predict(keep) <= goal:
                hi, best = mid, keep
            else:
                lo = mid
            if hi - lo < 1e-4:
                break
        return best

    def solve(self, target: float) -> LatencyPlan:
        full = np.ones(self.alloc.n_units, dtype=bool)
        before = self.predict(full)
        if before <= 0:
            raise InputError("--target-latency: the latency table times no layer of this model")
        goal = target * before
        candidates = []
        greedy = self.greedy(goal)
        if greedy is not None:
            candidates.append(("greedy", greedy))
        uniform = self.uniform(goal)
        if uniform is not None:
            candidates.append(("uniform", uniform))
        if not candidates:
            floor = self.predict(self.alloc.plan(self.max_ratio))
            raise InputError(f"--target-latency {target}: unreachable, pruning every group as far as allowed "
                             f"still leaves {floor / before:.1%} of the predicted latency")
        method, keep = max(candidates, key=lambda c: self.value(c[1]))
        units = sum(g.size for g in self.gs.prunable)
        removed = sum(g.size - int(keep[g.units].sum()) for g in self.gs.prunable)
        return LatencyPlan(keep=keep, removed_fraction=removed / max(units, 1), us_before=before,
                           us_after=self.predict(keep), method=method,
                           objective_kept=self.value(keep) / max(self.value(full), 1e-12))
