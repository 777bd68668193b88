"""Score device outputs against labels and the reference model, per output.

The numbers come from :mod:`edgeprune.device.metrics` (accuracy, MSE, agreement, the drop's
paired-bootstrap CI) and the pass/fail from :mod:`edgeprune.device.budgets`, the same definitions the
compile gate uses.
"""
from __future__ import annotations

from edgeprune.device import metrics as M


def as_dict(outputs, names) -> dict:
    """Outputs keyed by output name (a bare array is the first output's)."""
    if isinstance(outputs, dict):
        return outputs
    return {names[0] if names else "output": outputs}


def align(outputs: dict, names) -> dict:
    """``outputs`` keyed by the Keras output ``names``.

    A Keras 3 model converts with signature outputs ``output_0``, ``output_1``, ... in the
    model's output order (tf_keras keeps the layer names); those are renamed. Names that
    already match are kept.
    """
    names = list(names or [])
    if not names or set(outputs) == set(names):
        return outputs
    import re

    index = {k: int(m.group(1)) for k in outputs if (m := re.fullmatch(r"output_(\d+)", k))}
    if len(index) == len(outputs) and all(i < len(names) for i in index.values()):
        return {names[index[k]]: v for k, v in outputs.items()}
    return outputs


def labels_dict(y, names) -> dict:
    if y is None:
        return {}
    if isinstance(y, dict):
        return y
    return {names[0] if names else "output": y}


def score(outputs: dict, y: dict, reference: dict | None = None) -> dict:
    """``{name: {'accuracy', 'mse'[, 'agreement', 'accuracy_drop_points', 'drop_ci95']}}``."""
    scored = {}
    for name, out in outputs.items():
        labels = y.get(name)
        row = M.metrics(out, labels, what=f"eval labels for output '{name}'")
        ref = None if reference is None else reference.get(name)
        if ref is not None:
            row["agreement"] = M.agreement(out, ref)
            if labels is not None and row["accuracy"] is None:  # a regression head: no classes to agree on
                row["agreement"]["top1_agreement"] = None
            if row["accuracy"] is not None:
                cmp = M.compare(ref, out, labels)
                row.update(accuracy_drop_points=cmp["drop_points"], drop_ci95=cmp["drop_ci95"],
                           reference_accuracy=cmp["reference_accuracy"])
        scored[name] = row
    return scored


def gated_output(scored: dict, chosen: str | None) -> str | None:
    """The output an accuracy gate judges: ``chosen``, else the first one with an accuracy."""
    from edgeprune.base.errors import InputError

    if chosen is not None:
        if chosen not in scored:
            raise InputError(f"--gate-output {chosen}: no such output (outputs: {', '.join(scored)})")
        return chosen
    return next((n for n, row in scored.items() if row.get("accuracy") is not None), None)


def best_latency(device: dict) -> tuple[int, float] | None:
    """(threads, p50 ms) of the fastest thread count a device measured."""
    rows = [(r["threads"], r["steady"]["p50_ms"]) for r in device.get("results", []) if r["steady"].get("count")]
    return min(rows, key=lambda t: t[1]) if rows else None


def drop_of(row: dict) -> dict | None:
    """A scored row as a metrics.compare result (for budgets.check), or None without a reference."""
    if row is None or row.get("accuracy_drop_points") is None:
        return None
    return {"drop_points": row["accuracy_drop_points"], "drop_ci95": row["drop_ci95"],
            "reference_accuracy": row["reference_accuracy"], "candidate_accuracy": row["accuracy"],
            "samples": None}
