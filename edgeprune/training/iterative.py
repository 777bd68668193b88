"""Iterative structured pruning: prune a step, recover, repeat until the target.

A MAC target f (fraction of the original MACs kept) is spread geometrically: step i aims at
f^(i/N) of the original; a latency target likewise, on the latency the measured per-layer
table predicts (each step times the layers of the model it starts from). A channel ratio p becomes a per-step ratio 1-(1-p)^(1/N), so the
kept fraction compounds to 1-p. Between steps the model is fine-tuned (or distilled from the
original model) so each cut starts from recovered weights.
"""
from __future__ import annotations

from collections.abc import Callable

from edgeprune.base.console import Output, default_output
from edgeprune.base.errors import InputError


def step_targets(steps: int, *, ratio: float | None = None, target_macs: float | None = None,
                 target_latency: float | None = None) -> list[dict]:
    """Per-step targets relative to the ORIGINAL model: [{'ratio': r_i}], [{'macs_fraction': f_i}]
    or [{'latency_fraction': f_i}]."""
    if steps < 1:
        raise InputError(f"--iterative-steps must be >= 1, got {steps}")
    if sum(x is not None for x in (ratio, target_macs, target_latency)) != 1:
        raise InputError("iterative pruning needs exactly one of ratio (--ratio), target_macs (--target-macs) "
                         "or target_latency (--target-latency)")
    if target_macs is not None:
        return [{"macs_fraction": float(target_macs) ** (i / steps)} for i in range(1, steps + 1)]
    if target_latency is not None:
        return [{"latency_fraction": float(target_latency) ** (i / steps)} for i in range(1, steps + 1)]
    step_ratio = 1.0 - (1.0 - float(ratio)) ** (1.0 / steps)
    return [{"ratio": step_ratio} for _ in range(steps)]


def iterative_prune(model, *, steps: int, recover: Callable | None, ratio: float | None = None,
                    target_macs: float | None = None, target_latency: float | None = None,
                    prune_kwargs: dict | None = None,
                    evaluate: Callable | None = None, output: Output | None = None):
    """Prune ``model`` in ``steps`` steps, calling ``recover(model) -> model`` after each.

    ``prune_kwargs`` go to :func:`edgeprune.pruning.api.prune_model` (criterion, round_to,
    min_channels, data, labels, protect, seed...). ``evaluate(model) -> float`` (optional)
    adds the accuracy after each step to the report. Returns ``(model, report)``.
    """
    from edgeprune.pruning.api import prune_model

    output = output or default_output()
    prune_kwargs = dict(prune_kwargs or {})
    for key in ("ratio", "target_macs", "target_latency"):
        prune_kwargs.pop(key, None)
    targets = step_targets(steps, ratio=ratio, target_macs=target_macs, target_latency=target_latency)
    current, macs_original, macs_current = model, None, None
    us_original = us_current = None
    rows = []
    last = None
    first_layers: dict = {}
    for index, target in enumerate(targets, start=1):
        if "macs_fraction" in target:
            if macs_original is None:
                relative = target["macs_fraction"]
            else:
                relative = min(1.0, target["macs_fraction"] * macs_original / macs_current)
            if relative >= 0.999:
                output.debug(f"iterative step {index}: already at the MAC target, skipped")
                continue
            last = prune_model(current, target_macs=relative, **prune_kwargs)
        elif "latency_fraction" in target:
            relative = target["latency_fraction"] if us_original is None else \
                min(1.0, target["latency_fraction"] * us_original / us_current)
            if relative >= 0.999:
                output.debug(f"iterative step {index}: already at the latency target, skipped")
                continue
            last = prune_model(current, target_latency=relative, **prune_kwargs)
            predicted = last.report["latency_table"]
            if us_original is None:
                us_original = us_current = predicted["predicted_us_before"]
            us_current *= predicted["predicted_us_after"] / predicted["predicted_us_before"]
        else:
            last = prune_model(current, ratio=target["ratio"], **prune_kwargs)
        if macs_original is None:
            macs_original = last.report["macs_before"]
            first_layers = {row["name"]: row for row in last.report.get("layers", [])}
        macs_current = last.report["macs_after"]
        current = last.model
        row = {"step": index, "macs": macs_current, "macs_fraction": macs_current / macs_original,
               "params": last.report["params_after"]}
        if evaluate is not None:
            row["accuracy_pruned"] = evaluate(current)
        if recover is not None:
            current = recover(current)
            if evaluate is not None:
                row["accuracy_recovered"] = evaluate(current)
        output.info(
            f"iterative pruning step {index}/{steps}: MACs {macs_current / macs_original:.1%} of original"
            + (f", accuracy {row['accuracy_recovered']:.2%}" if "accuracy_recovered" in row else "")
        )
        rows.append(row)
    if last is None:
        raise InputError("iterative pruning made no step: the target keeps all MACs")
    report = dict(last.report)
    report["macs_before"] = macs_original
    report["layers"] = [_against_original(row, first_layers.get(row["name"])) for row in last.report.get("layers", [])]
    report["iterative_steps"] = rows
    report["params_before"] = int(model.count_params())
    if target_macs is not None:
        report["target_macs"] = float(target_macs)
    if target_latency is not None:
        report["target_latency"] = float(target_latency)
        report["latency_table"] = dict(report["latency_table"], target_latency=float(target_latency),
                                       predicted_fraction=round(us_current / us_original, 4))
    if ratio is not None:
        report["ratio"] = float(ratio)
    return current, report


def _against_original(row: dict, first: dict | None) -> dict:
    """A layer row whose *_before values are the original model's, not the last step's input."""
    row = dict(row)
    if first is not None:
        for key in ("channels_before", "macs_before", "params_before"):
            if key in first:
                row[key] = first[key]
    return row
