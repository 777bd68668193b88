"""Device: the target (profiles, budgets, metrics, the accuracy gate) and the harness that runs
.tflite artifacts with the real LiteRT interpreter on this machine, on devices over SSH or on
the emulated rpi4 (``runner.py`` is the self-contained device side)."""
from __future__ import annotations


def __getattr__(name: str):
    # Lazy: the CLI imports this package at start-up and must stay fast.
    if name in ("bench", "evaluate_tflite"):
        from edgeprune.device import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgeprune.device' has no attribute {name!r}")


__all__ = ["bench", "evaluate_tflite"]
