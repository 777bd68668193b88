"""The sensitivity file (``edgeprune sensitivity --json``, format ``edgeprune-sensitivity/1``)
as pruning ratios: the AIMET-style greedy allocation of per-stage curves for a MAC target.

The curves are measured by :mod:`edgeprune.search.sensitivity` (one compile per point); this
module only reads them, so ``prune --sensitivity FILE`` and ``search --sensitivity FILE`` use
them without the search package.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgeprune.base.errors import InputError

FORMAT = "edgeprune-sensitivity/1"


def greedy_allocation(curves: list[dict], base_macs: int, target: float) -> dict:
    """Per-stage ratios leaving at most ``target`` of the MACs, the accuracy threshold highest.

    MAC savings of stages are summed (each measured with that stage pruned alone), so the
    estimate is approximate where stages share a consumer; ``prune``/``compile`` count exactly.
    """
    def pick(threshold):
        alloc, saved = {}, 0
        for c in curves:
            ok = [p for p in c["points"] if p["accuracy"] is not None and p["accuracy"] >= threshold]
            best = max(ok, key=lambda p: p["ratio"]) if ok else c["points"][0]
            alloc[c["name"]] = best["ratio"]
            saved += base_macs - best["macs"]
        return alloc, base_macs - saved

    thresholds = sorted({p["accuracy"] for c in curves for p in c["points"] if p["accuracy"] is not None},
                        reverse=True)
    chosen = None
    for t in thresholds:
        alloc, est = pick(t)
        if est <= target * base_macs:
            chosen = (t, alloc, est)
            break
    reached = chosen is not None
    if chosen is None:  # unreachable with these ratios: take the most each stage offers
        t = min(thresholds) if thresholds else 0.0
        alloc, est = pick(-1.0)
        chosen = (t, alloc, est)
    t, alloc, est = chosen
    per_layer = {name: r for c in curves for name in c["producers"] if (r := alloc[c["name"]]) > 0}
    return {"target_macs": target, "reached": reached, "accuracy_threshold": t, "per_stage": alloc,
            "estimated_macs_fraction": round(est / base_macs, 4) if base_macs else None,
            "per_layer": per_layer}


def _read(path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"--sensitivity {path}: cannot read it ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"--sensitivity {path}: not a sensitivity file (expected format '{FORMAT}')")
    return data


def per_layer_from_file(path, target_macs: float) -> dict:
    """The AIMET-style greedy allocation of a sensitivity file for ``target_macs``, as the
    per-layer ratios ``prune``/``compile`` take (``prune --sensitivity FILE --target-macs F``)."""
    data = _read(path)
    return greedy_allocation(data.get("stages", []), int(data["baseline"]["macs"]), float(target_macs))


def allocations_from_file(path, stage_names: list[str]) -> list[dict]:
    """The per-stage allocations of a sensitivity JSON (for the search prior)."""
    data = _read(path)
    names = {c["name"] for c in data.get("stages", [])}
    if names != set(stage_names):
        raise InputError(f"--sensitivity {path}: its stages ({', '.join(sorted(names))}) are not this model's")
    return [a["per_stage"] for a in data.get("allocations", [])]
