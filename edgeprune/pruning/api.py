"""Public entry points: ``prune_model`` (in-memory tf_keras model) and ``prune`` (file to file)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.base.errors import InputError
from edgeprune.load.graph import trace
from edgeprune.pruning import macs as macs_mod
from edgeprune.pruning.allocation import Allocator, check_ratio, solve_target_macs
from edgeprune.pruning.criteria import DEFAULT_WITHOUT_DATA, default_criterion
from edgeprune.pruning.groups import build_groups
from edgeprune.pruning.importance import get_criterion
from edgeprune.pruning.latency_allocation import LatencyAllocator
from edgeprune.pruning.rules.attention import attention_unit as attention_unit_rule
from edgeprune.pruning.surgery import rebuild


@dataclass
class PruneResult:
    model: Any
    report: dict
    latency_table: Any = None  # the LatencyTable a latency target was met with


def _check_fraction(value, what: str) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < t <= 1.0:
        raise InputError(f"{what} must be in (0, 1], got {value}")
    return t


def _check_options(ratio, target_macs, round_to, min_channels, max_ratio, target_latency=None):
    if sum(x is not None for x in (ratio, target_macs, target_latency)) != 1:
        raise InputError("give exactly one of ratio (--ratio), target_macs (--target-macs) "
                         "or target_latency (--target-latency)")
    if ratio is not None:
        check_ratio(ratio, "ratio (--ratio)")
    if target_macs is not None:
        _check_fraction(target_macs, "target_macs (--target-macs)")
    if target_latency is not None:
        _check_fraction(target_latency, "target_latency (--target-latency)")
    if int(round_to) < 1:
        raise InputError(f"round_to (--round-to) must be >= 1, got {round_to}")
    if int(min_channels) < 1:
        raise InputError(f"min_channels (--min-channels) must be >= 1, got {min_channels}")
    if not 0.0 < float(max_ratio) < 1.0:
        raise InputError(f"max_ratio must be in (0, 1), got {max_ratio}")


def prune_model(model, *, ratio=None, target_macs=None, criterion=None, protect=(), per_layer=None,
                global_ranking=False, round_to=1, min_channels=1, data=None, labels=None, seed=0,
                max_ratio=0.9, target_latency=None, latency_table=None, threads=1,
                latency_quantization="float32", progress=None, latency_objective="macs",
                attention_unit=None) -> PruneResult:
    """Structurally prune a tf_keras model: remove whole filters/neurons and rewire consumers.

    ``ratio`` removes that fraction of the channels of every prunable group (before rounding);
    ``target_macs`` leaves at most that fraction of the original MACs; ``target_latency``
    leaves at most that fraction of the latency predicted by a per-layer table measured with
    the interpreter (``threads``, ``latency_quantization``); ``latency_table`` is a
    :class:`~edgeprune.pruning.latency.LatencyTable` or a JSON path reused and extended.
    ``attention_unit`` (``--attention-unit``): what pruning removes inside a MultiHeadAttention,
    ``"dims"`` (the same query/key and value dimensions of every head) or ``"heads"`` (whole
    heads); None keeps the registered rule (dims unless a --custom-objects file says otherwise).
    See the module docs of :mod:`edgeprune.pruning` for the options.
    """
    _check_options(ratio, target_macs, round_to, min_channels, max_ratio, target_latency)
    with attention_unit_rule(attention_unit):  # the rule decides surgery too: one block
        chosen = criterion is not None
        criterion = criterion or default_criterion(data is not None)
        if isinstance(protect, str):
            protect = (protect,)
        crit = get_criterion(criterion, seed)
        if crit.needs_data and data is None:
            raise InputError(f"criterion '{criterion}' needs calibration data (--data)")
        t0 = time.perf_counter()
        graph = trace(model)
        gs = build_groups(graph, protect)
        t_graph = time.perf_counter() - t0
        fallback = None
        try:
            scores = crit.score(gs, None if data is None else np.asarray(data), labels)
        except Exception as exc:  # noqa: BLE001  a default (not a user's choice) must not cost the compile
            if chosen:
                raise
            fallback = f"the default criterion '{criterion}' could not score this model ({type(exc).__name__}: " \
                       f"{str(exc).splitlines()[0] if str(exc) else ''}); ranked by l1 instead"
            criterion = DEFAULT_WITHOUT_DATA
            crit = get_criterion(criterion, seed)
            scores = crit.score(gs, None, None)
        alloc = Allocator(gs, scores, per_layer=per_layer, global_ranking=global_ranking,
                          max_ratio=max_ratio, round_to=round_to, min_channels=min_channels)
        latency = table = None
        if target_macs is not None:
            used_ratio, keep, _, _ = solve_target_macs(alloc, float(target_macs))
        elif target_latency is not None:
            table, latency = table_for_graph(graph, gs, latency_table, round_to, min_channels, threads,
                                            latency_quantization, progress)
            plan = LatencyAllocator(alloc, table, objective=latency_objective, max_ratio=max_ratio).solve(
                float(target_latency))
            used_ratio, keep = plan.removed_fraction, plan.keep
            latency.update(target_latency=float(target_latency), predicted_us_before=round(plan.us_before, 1),
                           predicted_us_after=round(plan.us_after, 1), objective=latency_objective,
                           objective_kept=round(plan.objective_kept, 4), allocation=plan.method)
        else:
            used_ratio, keep = float(ratio), alloc.plan(float(ratio))
        t1 = time.perf_counter()
        new = rebuild(gs, keep)
        t_surgery = time.perf_counter() - t1
        report = _report(graph, new, gs, keep, criterion, ratio, target_macs, used_ratio, crit.notes)
        if fallback:
            report["notes"].append(fallback)
        if attention_unit is not None:
            report["attention_unit"] = attention_unit
            if attention_unit == "heads" and not any(n.class_name == "MultiHeadAttention" for n in graph.layers.values()):
                report["notes"].append("--attention-unit heads: no MultiHeadAttention layer to remove heads from "
                                       "(keras-hub encoders prune head dimensions only)")
        report["timing_s"] = {"analysis": round(t_graph, 3), "surgery": round(t_surgery, 3),
                              "total": round(time.perf_counter() - t0, 3)}
        if latency is not None:
            report["latency_table"] = latency
            for item in latency.get("untimed_layers", []):
                report["notes"].append(f"not in the latency table (cannot be timed alone): {item}")
        if target_macs is not None and report["macs_after"] > float(target_macs) * report["macs_before"]:
            raise AssertionError("MAC target check failed after surgery")  # analytic count disagrees
        return PruneResult(model=new, report=report, latency_table=table)


def table_for_graph(graph, gs, source, round_to, min_channels, threads, quant, progress, timer=None):
    """The table for ``graph``: given, loaded from a path and completed, or measured now
    (by ``timer``: default this process; ``edgeprune.pruning.device_timer`` for a device)."""
    from edgeprune.pruning.latency import (
        LatencyTable,
        check_compatible,
        measure_table,
        runtime_meta,
    )

    path = None
    table = source if isinstance(source, LatencyTable) else None
    if source is not None and table is None:
        path = Path(source)
        if path.exists():
            table = LatencyTable.load(path)
            check_compatible(table, timer.meta() if timer else runtime_meta(threads, quant), path)
    points_before = table.meta.get("points", 0) if table else 0
    table = measure_table(graph, gs, round_to=round_to, min_channels=min_channels, threads=threads,
                          quant=quant, table=table, progress=progress, timer=timer)
    measured = table.meta.get("points", 0) - points_before
    if path is not None and measured:
        table.save(path)
    info = {"threads": table.meta["threads"], "quantization": table.meta["quantization"],
            "runtime": table.meta["runtime"], "cpu": table.meta.get("cpu"), "points_measured": measured,
            "device": table.meta.get("device", "local"), "machine": table.meta.get("machine"),
            "emulated": bool(table.meta.get("emulated")),
            "signatures": len(table.entries)}
    if table.meta.get("skipped"):
        info["untimed_layers"] = table.meta["skipped"]
    if path is not None:
        info["path"] = str(path)
    return table, info


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
    elif ratio is not None:
        report["ratio"] = float(ratio)
    return report


def latency_table(model_path, output_path=None, *, threads=1, quantization="float32", round_to=1,
                  min_channels=1, custom_objects=None, safe_mode=True, progress=None, input_shape=None,
                  timer=None) -> dict:
    """Measure the per-layer latency table of a model file (``edgeprune latency-table``).

    The table is written (atomically) to ``output_path`` when given, extending a table from
    an earlier run on this machine. Returns a summary: layers timed, points measured, seconds,
    and the summed latency of the unpruned layers.
    ``timer``: where the layers are timed (default: this process); see
    :func:`edgeprune.pruning.device_timer.device_timer` for a device over SSH.
    """
    from edgeprune.load import model_io
    from edgeprune.pruning.latency import layer_channels, signature

    if int(round_to) < 1 or int(min_channels) < 1:
        raise InputError("round_to and min_channels must be >= 1")
    from edgeprune.load.model_io.savedmodel import require_keras
    from edgeprune.load.shapes import with_input_shape

    loaded = model_io.load_model(Path(model_path), custom_objects=custom_objects, safe_mode=safe_mode)
    require_keras(loaded.model, "a latency table", model_path)
    graph = trace(with_input_shape(loaded.model, input_shape))
    table, info = table_for_graph(graph, build_groups(graph), output_path, round_to, min_channels, threads,
                                  quantization, progress, timer)
    layers = []
    for node in graph.layers.values():
        us = table.node_us(signature(node, graph), node, graph, {})
        if us is not None:
            cin, cout = layer_channels(node, graph, {})
            layers.append({"name": node.name, "class_name": node.class_name, "cin": cin, "cout": cout,
                           "us": round(us, 2)})
    info.update(model=str(model_path), layers=layers, predicted_us=round(sum(r["us"] for r in layers), 1),
                measure_s=table.meta.get("measure_s"))
    return info
