"""Turn device outputs into accuracy, agreement with the reference, and pass/fail gates."""
from __future__ import annotations

import numpy as np

from edgeprune.harness import runner


def metrics(outputs: np.ndarray, y: np.ndarray | None) -> dict:
    """{'accuracy': 0..1 or None, 'mse': float or None} of outputs against labels/targets."""
    if y is None:
        return {"accuracy": None, "mse": None}
    try:
        return runner.metrics(outputs, y, np)
    except runner.RunnerFailure as exc:
        from edgeprune.errors import InputError

        raise InputError(f"eval labels: {exc.message}") from None


def agreement(outputs: np.ndarray, reference: np.ndarray) -> dict:
    """Top-1 agreement (classifiers) and max/mean abs error between two output arrays."""
    a = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    b = np.asarray(reference, np.float64).reshape(len(reference), -1)
    if a.shape != b.shape:
        return {"top1_agreement": None, "max_abs_error": None, "mean_abs_error": None,
                "note": f"output shapes differ: {list(a.shape)} vs reference {list(b.shape)}"}
    diff = np.abs(a - b)
    top1 = float(np.mean(runner.predicted_classes(a, np) == runner.predicted_classes(b, np)))
    return {"top1_agreement": top1, "max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean())}


def best_latency(device: dict) -> tuple[int, float] | None:
    """(threads, p50 ms) of the fastest thread count a device measured."""
    rows = [(r["threads"], r["steady"]["p50_ms"]) for r in device.get("results", []) if r["steady"].get("count")]
    return min(rows, key=lambda t: t[1]) if rows else None


def gate_failures(device: dict, *, reference: dict | None, max_accuracy_drop: float | None,
                  max_latency_ms: float | None) -> list[str]:
    """Human-readable reasons one device fails the gates (empty list: it passes)."""
    failures = []
    name = device["host"]
    if max_latency_ms is not None:
        best = best_latency(device)
        if best is not None and best[1] > max_latency_ms:
            failures.append(f"{name}: latency p50 {best[1]:.4g} ms (best, {best[0]} thread(s)) "
                            f"> budget {max_latency_ms:g} ms")
    if max_accuracy_drop is not None and reference is not None:
        ref_acc = reference.get("accuracy")
        acc = (device.get("eval") or {}).get("accuracy")
        if ref_acc is not None and acc is not None:
            drop = (ref_acc - acc) * 100.0
            if drop > max_accuracy_drop:
                failures.append(f"{name}: accuracy {acc * 100:.2f}% vs reference {ref_acc * 100:.2f}% "
                                f"= drop {drop:.2f} points > allowed {max_accuracy_drop:g}")
    return failures
