"""Budgets and the accuracy gate: one checker for compile, search and bench.

A device profile's ``budgets`` (model bytes, arena bytes, latency, accuracy drop) become
:class:`Limits`, with command-line values overriding the profile's. :func:`check` turns
measured numbers into check rows ``{"budget", "limit", "actual", "ok", "over_by", "unit"}``
and :func:`failures` into one readable line each, so every command reports a broken budget
the same way.

The accuracy drop is judged with its 95 % paired-bootstrap interval
(:func:`edgeprune.device.metrics.compare`): ``point`` mode passes when the measured drop is within
the budget, ``upper`` mode only when the interval's upper end is. When the interval contains
the limit the data cannot tell a pass from a fail; the row says so (``decided`` False) with
the number of images, and ``upper`` mode fails.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgeprune.base.errors import InputError

GATE_MODES = ("point", "upper")
_UNITS = {"max_model_bytes": "bytes", "max_arena_bytes": "bytes", "max_latency_ms": "ms",
          "max_accuracy_drop": "points"}


@dataclass
class Limits:
    max_model_bytes: int | None = None
    max_arena_bytes: int | None = None
    max_latency_ms: float | None = None
    max_accuracy_drop: float | None = None
    gate_mode: str = "point"

    @classmethod
    def of(cls, profile=None, **overrides) -> Limits:
        """The profile's budgets, each replaced by an override that is not None."""
        budgets = getattr(profile, "budgets", None)
        values = {name: getattr(budgets, name, None) for name in _UNITS}
        values.update({k: v for k, v in overrides.items() if v is not None})
        limits = cls(**values)
        if limits.gate_mode not in GATE_MODES:
            raise InputError(f"--gate-mode: expected one of {', '.join(GATE_MODES)}, found '{limits.gate_mode}'")
        if limits.max_accuracy_drop is not None and limits.max_accuracy_drop < 0:
            raise InputError(f"--max-accuracy-drop: expected points >= 0, found {limits.max_accuracy_drop:g}")
        if limits.max_latency_ms is not None and limits.max_latency_ms <= 0:
            raise InputError(f"--max-latency-ms: expected a positive number of ms, found {limits.max_latency_ms:g}")
        return limits


def _row(name: str, limit, actual, ok: bool, **extra) -> dict:
    over = max(actual - limit, 0)
    row = {"budget": name, "limit": limit, "actual": actual, "ok": bool(ok),
           "over_by": int(over) if isinstance(limit, int) else round(float(over), 4), "unit": _UNITS[name]}
    row.update(extra)
    return row


def accuracy_row(limit: float, comparison: dict, mode: str = "point") -> dict:
    """The accuracy-drop row for a :func:`edgeprune.device.metrics.compare` result."""
    drop = comparison["drop_points"]
    lo, hi = comparison["drop_ci95"]
    decided = not (lo <= limit < hi)  # the interval lies on one side of the limit
    actual = hi if mode == "upper" else drop
    ok = actual <= limit + 1e-9
    return _row("max_accuracy_drop", float(limit), float(actual), ok, mode=mode, drop_points=drop,
                drop_ci95=[lo, hi], samples=comparison["samples"], decided=decided,
                reference_accuracy=comparison.get("reference_accuracy"),
                candidate_accuracy=comparison.get("candidate_accuracy"))


def check(limits: Limits, *, model_bytes=None, arena_bytes=None, latency_ms=None, comparison=None) -> list[dict]:
    """One row per budget that has both a limit and a measurement."""
    rows = []
    for name, actual in (("max_model_bytes", model_bytes), ("max_arena_bytes", arena_bytes)):
        limit = getattr(limits, name)
        if limit is not None and actual is not None:
            rows.append(_row(name, int(limit), int(actual), actual <= limit))
    if limits.max_latency_ms is not None and latency_ms is not None:
        rows.append(_row("max_latency_ms", float(limits.max_latency_ms), float(latency_ms),
                         latency_ms <= limits.max_latency_ms))
    if limits.max_accuracy_drop is not None and comparison is not None:
        rows.append(accuracy_row(limits.max_accuracy_drop, comparison, limits.gate_mode))
    return rows


def undecided_note(row: dict) -> str | None:
    """'N images cannot decide ...' for an accuracy row whose interval contains the limit."""
    if row.get("budget") != "max_accuracy_drop" or row.get("decided", True):
        return None
    lo, hi = row["drop_ci95"]
    return (f"{row['samples']} gate images are too few to decide: the drop's 95% CI [{lo:.2f}, {hi:.2f}] "
            f"points contains the limit {row['limit']:g}; give more labelled data (--gate-data)")


def describe(row: dict) -> str:
    """One line for a failed row."""
    name, limit, actual = row["budget"], row["limit"], row["actual"]
    if name == "max_accuracy_drop":
        lo, hi = row["drop_ci95"]
        ref, cand = row.get("reference_accuracy"), row.get("candidate_accuracy")
        line = "" if ref is None or cand is None else f"accuracy {cand * 100:.2f}% vs reference {ref * 100:.2f}%: "
        line += f"drop {row['drop_points']:.2f} points"
        if row.get("samples"):
            line += f" (95% CI [{lo:.2f}, {hi:.2f}] on {row['samples']} images)"
        if row.get("mode") == "upper":
            line += f", upper end {actual:.2f} > --max-accuracy-drop {limit:g} (--gate-mode upper)"
        else:
            line += f" > --max-accuracy-drop {limit:g}"
        note = undecided_note(row)
        return line + (f"; {note}" if note else "")
    if name == "max_latency_ms":
        return f"latency p50 {actual:.4g} ms > budget {limit:g} ms"
    if row.get("estimate"):  # a lower bound computed before TFLM ran: the real need is larger
        return (f"{name} at least {actual} bytes (estimated before TFLM) > limit {limit} "
                f"(over by at least {row['over_by']} bytes, {100.0 * row['over_by'] / max(limit, 1):.1f}%)")
    return (f"{name} {actual} bytes > limit {limit} (over by {row['over_by']} bytes, "
            f"{100.0 * row['over_by'] / max(limit, 1):.1f}%)")


def failures(rows) -> list[str]:
    return [describe(r) for r in rows if not r["ok"]]
