"""Public entry points: ``prune_model`` (in-memory tf_keras model) and ``prune`` (file to file)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.errors import InputError
from edgeprune.pruning import macs as macs_mod
from edgeprune.pruning.allocation import Allocator, check_ratio, solve_target_macs
from edgeprune.pruning.graph import trace
from edgeprune.pruning.groups import build_groups
from edgeprune.pruning.importance import get_criterion
from edgeprune.pruning.surgery import rebuild


@dataclass
class PruneResult:
    model: Any
    report: dict


def _check_options(ratio, target_macs, round_to, min_channels, max_ratio):
    if (ratio is None) == (target_macs is None):
        raise InputError("give exactly one of ratio (--ratio) or target_macs (--target-macs)")
    if ratio is not None:
        check_ratio(ratio, "ratio (--ratio)")
    if target_macs is not None:
        try:
            t = float(target_macs)
        except (TypeError, ValueError):
            raise InputError(f"target_macs (--target-macs) must be a number in (0, 1], got {target_macs!r}") from None
        if not 0.0 < t <= 1.0:
            raise InputError(f"target_macs (--target-macs) must be in (0, 1], got {target_macs}")
    if int(round_to) < 1:
        raise InputError(f"round_to (--round-to) must be >= 1, got {round_to}")
    if int(min_channels) < 1:
        raise InputError(f"min_channels (--min-channels) must be >= 1, got {min_channels}")
    if not 0.0 < float(max_ratio) < 1.0:
        raise InputError(f"max_ratio must be in (0, 1), got {max_ratio}")


def prune_model(model, *, ratio=None, target_macs=None, criterion="l1", protect=(), per_layer=None,
                global_ranking=False, round_to=1, min_channels=1, data=None, labels=None, seed=0,
                max_ratio=0.9) -> PruneResult:
    """Structurally prune a tf_keras model: remove whole filters/neurons and rewire consumers.

    ``ratio`` removes that fraction of the channels of every prunable group (before rounding);
    ``target_macs`` leaves at most that fraction of the original MACs. See the module docs of
    :mod:`edgeprune.pruning` for the options.
    """
    _check_options(ratio, target_macs, round_to, min_channels, max_ratio)
    if isinstance(protect, str):
        protect = (protect,)
    crit = get_criterion(criterion, seed)
    if crit.needs_data and data is None:
        raise InputError(f"criterion '{criterion}' needs calibration data (--data)")
    t0 = time.perf_counter()
    graph = trace(model)
    gs = build_groups(graph, protect)
    t_graph = time.perf_counter() - t0
    scores = crit.score(gs, None if data is None else np.asarray(data), labels)
    alloc = Allocator(gs, scores, per_layer=per_layer, global_ranking=global_ranking,
                      max_ratio=max_ratio, round_to=round_to, min_channels=min_channels)
    if target_macs is not None:
        used_ratio, keep, _, _ = solve_target_macs(alloc, float(target_macs))
    else:
        used_ratio, keep = float(ratio), alloc.plan(float(ratio))
    t1 = time.perf_counter()
    new = rebuild(gs, keep)
    t_surgery = time.perf_counter() - t1
    report = _report(graph, new, gs, keep, criterion, ratio, target_macs, used_ratio, crit.notes)
    report["timing_s"] = {"analysis": round(t_graph, 3), "surgery": round(t_surgery, 3),
                          "total": round(time.perf_counter() - t0, 3)}
    if target_macs is not None and report["macs_after"] > float(target_macs) * report["macs_before"]:
        raise AssertionError("MAC target check failed after surgery")  # analytic count disagrees
    return PruneResult(model=new, report=report)


def _report(graph, new, gs, keep, criterion, ratio, target_macs, used_ratio, notes) -> dict:
    before = macs_mod.summarize(graph)
    after = macs_mod.summarize(trace(new))
    layers = []
    for name, b in before.items():
        a = after.get(name, {"channels": 0, "macs": 0, "params": 0})
        if b["macs"] == 0 and b["params"] == 0:
            continue
        layers.append({"name": name, "class_name": graph.layers[name].class_name,
                       "channels_before": b["channels"], "channels_after": a["channels"],
                       "macs_before": b["macs"], "macs_after": a["macs"],
                       "params_before": b["params"], "params_after": a["params"]})
    locked = sorted({g.locked for g in gs.groups if g.locked and "model input" not in g.locked})
    notes = list(notes)
    if any(d is None for k in graph.inputs for d in graph.tensors[k].shape):
        notes.append("the model input has unknown dimensions: MACs are counted per unknown position (1)")
    report = {
        "layers": layers,
        "macs_before": sum(v["macs"] for v in before.values()),
        "macs_after": sum(v["macs"] for v in after.values()),
        "params_before": int(graph.model.count_params()),
        "params_after": int(new.count_params()),
        "criterion": getattr(criterion, "name", criterion),
        "ratio_used": round(float(used_ratio), 4),
        "groups": len(gs.groups),
        "prunable_groups": len(gs.prunable),
        "pruned_groups": int(sum(1 for g in gs.prunable if not keep[g.units].all())),
        "locked": locked,
        "notes": notes,
    }
    if target_macs is not None:
        report["target_macs"] = float(target_macs)
    else:
        report["ratio"] = float(ratio)
    return report


def prune(model_path, output_path, *, custom_objects=None, safe_mode=True, **options) -> PruneResult:
    """Prune a model file and save the result in the same Keras flavour (atomically)."""
    from edgeprune import model_io

    loaded = model_io.load_model(Path(model_path), custom_objects=custom_objects, safe_mode=safe_mode)
    result = prune_model(loaded.model, **options)
    model_io.save_model(result.model, Path(output_path), flavour=loaded.flavour)
    result.report["input"] = str(model_path)
    result.report["output"] = str(output_path)
    result.report["flavour"] = loaded.flavour
    return result
