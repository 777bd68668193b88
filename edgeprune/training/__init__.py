"""Training-aware compression: recover accuracy after pruning, prune and quantize during
training (tfmot), fold BatchNorm, and gate the final artifact on accuracy.

Nothing here imports TensorFlow at import time; use :mod:`edgeprune.training.api`.
"""
from __future__ import annotations

__all__ = ["api", "options"]
