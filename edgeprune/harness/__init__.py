"""Target harness: benchmark and verify .tflite artifacts with the real LiteRT interpreter,
on this machine or on devices over SSH (``runner.py`` is the self-contained device side)."""
from __future__ import annotations


def __getattr__(name: str):
    # Lazy: the CLI imports this package at start-up and must stay fast.
    if name in ("bench", "evaluate_tflite"):
        from edgeprune.harness import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgeprune.harness' has no attribute {name!r}")


__all__ = ["bench", "evaluate_tflite"]
