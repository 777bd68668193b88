"""How many channels each group keeps: uniform ratio, per-layer ratios, global ranking,
or a MAC target (bisection on the analytic MAC count), then SIMD-friendly rounding."""
from __future__ import annotations

import math

import numpy as np

from edgeprune.base.errors import InputError
from edgeprune.pruning import macs as macs_mod
from edgeprune.pruning import rules
from edgeprune.pruning.groups import GroupSet


def check_ratio(value, what: str) -> float:
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number in [0, 1), got {value!r}") from None
    if not (0.0 <= r < 1.0) or math.isnan(r):
        raise InputError(f"{what} must be in [0, 1), got {value}")
    return r


def keep_count(n: int, ratio: float, round_to: int = 1, min_channels: int = 1) -> int:
    """Channels a group of ``n`` keeps: remove ``ratio`` of them, round the *remaining* count
    down to a multiple of ``round_to``, never below ``min_channels`` nor to zero."""
    if n <= max(min_channels, 1) or ratio <= 0:
        return n
    keep = max(1, n - int(math.floor(n * ratio + 1e-9)))
    r = max(1, int(round_to))
    rounded = (keep // r) * r
    lower = min(n, max(min_channels, 1))
    if rounded < lower:
        rounded = min(n, -(-lower // r) * r)
    return max(1, min(n, rounded))


def resolve_per_layer(gs: GroupSet, per_layer: dict | None) -> dict:
    """group id -> ratio for groups named by a per-layer entry (first matching entry wins)."""
    if not per_layer:
        return {}
    out = {}
    names = list(gs.graph.layers)
    for pattern, ratio in per_layer.items():
        ratio = check_ratio(ratio, f"per-layer ratio for '{pattern}'")
        if not any(rules.matches(pattern, n) for n in names):
            raise InputError(f"--per-layer '{pattern}' matches no layer of the model")
        for g in gs.prunable:
            if g.id not in out and any(rules.matches(pattern, p) for p in g.producers):
                out[g.id] = ratio
    return out


class Allocator:
    """Turns scores and options into a keep-mask over units."""

    def __init__(self, gs: GroupSet, scores: np.ndarray, *, per_layer=None, global_ranking=False,
                 max_ratio=0.9, round_to=1, min_channels=1):
        self.gs, self.scores = gs, scores
        self.overrides = resolve_per_layer(gs, per_layer)
        self.global_ranking = global_ranking
        self.max_ratio = max_ratio
        self.round_to, self.min_channels = max(1, int(round_to)), max(1, int(min_channels))
        self.n_units = len(scores)
        # units of each group sorted from most to least important
        self.order = {g.id: g.units[np.argsort(-scores[g.units], kind="stable")] for g in gs.prunable}

    def _unit_policy(self, g) -> tuple[int, int]:
        """round_to/min_channels in units: a unit spans several channels for grouped convs and
        depthwise multipliers, and every tensor of the group must stay a multiple of round_to."""
        if g.tensors and all(rules.unrounded(self.gs.graph, k) for k in g.tensors):
            return 1, 1  # whole attention heads: rounding applies to their dimensions instead
        mults = [int(m) for m in g.multiplicity.values()] or [1]
        r = 1
        for m in mults:
            need = self.round_to // math.gcd(self.round_to, m)
            r = r * need // math.gcd(r, need)
        return r, -(-self.min_channels // min(mults))

    def _keep(self, g, ratio: float) -> int:
        r, mn = self._unit_policy(g)
        return keep_count(g.size, ratio, r, mn)

    def _mask(self, keeps: dict) -> np.ndarray:
        keep = np.ones(self.n_units, dtype=bool)
        for gid, k in keeps.items():
            order = self.order[gid]
            keep[order[k:]] = False
        return keep

    def plan(self, ratio: float) -> np.ndarray:
        """Keep-mask for a global ratio (per-layer overrides win for their groups)."""
        keeps = {}
        groups = self.gs.prunable
        if self.global_ranking:
            removed = self._global_removals(ratio, [g for g in groups if g.id not in self.overrides])
        for g in groups:
            if g.id in self.overrides:
                keeps[g.id] = self._keep(g, self.overrides[g.id])
            elif self.global_ranking:
                r = removed.get(g.id, 0) / g.size
                keeps[g.id] = self._keep(g, r)
            else:
                keeps[g.id] = self._keep(g, ratio)
        return self._mask(keeps)

    def _global_removals(self, ratio: float, groups: list) -> dict:
        """Remove the globally least important units, at most ``max_ratio`` of any group."""
        if ratio <= 0 or not groups:
            return {}
        units = np.concatenate([g.units for g in groups])
        gids = np.concatenate([np.full(g.size, g.id) for g in groups])
        budget = int(math.floor(len(units) * ratio + 1e-9))
        caps = {g.id: min(int(math.floor(g.size * self.max_ratio)), g.size - 1) for g in groups}
        removed = {g.id: 0 for g in groups}
        for idx in np.argsort(self.scores[units], kind="stable"):
            if budget <= 0:
                break
            gid = int(gids[idx])
            if removed[gid] < caps[gid]:
                removed[gid] += 1
                budget -= 1
        return removed


def solve_target_macs(alloc: Allocator, target: float, max_ratio: float = 0.95,
                      iterations: int = 30) -> tuple[float, np.ndarray, int, int]:
    """Smallest uniform ratio whose pruned model has at most ``target`` of the original MACs.

    Returns (ratio, keep-mask, macs_before, macs_after). Unreachable targets raise InputError.
    """
    gs = alloc.gs
    g = gs.graph
    before = macs_mod.total_macs(g)
    if before == 0:
        raise InputError("--target-macs: the model has no Conv/Dense MACs to reduce")

    def macs_at(r):
        keep = alloc.plan(r)
        return macs_mod.total_macs(g, gs.channel_counts(keep)), keep

    hi_macs, hi_keep = macs_at(max_ratio)
    if hi_macs > target * before:
        why = ""
        if alloc.round_to > 1 or alloc.min_channels > 1:  # on a small model rounding is what stops it
            why = (f"; channels stay multiples of {alloc.round_to} (round_to) and at least "
                   f"{alloc.min_channels} (min_channels), from the profile or --round-to/--min-channels: "
                   "a smaller multiple (--round-to 1) lets a small model go further")
        raise InputError(f"--target-macs {target}: unreachable, pruning at most {max_ratio:.0%} of "
                         f"every prunable group still leaves {hi_macs / before:.1%} of the MACs{why}")
    lo, hi = 0.0, max_ratio
    best = (max_ratio, hi_keep, hi_macs)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        m, keep = macs_at(mid)
        if m <= target * before:
            hi, best = mid, (mid, keep, m)
        else:
            lo = mid
        if hi - lo < 1e-4:
            break
    ratio, keep, after = best
    return ratio, keep, before, after

