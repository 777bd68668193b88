"""The names of the importance criteria, in one place that costs nothing to import.

The command line lists them (``--criterion``) before any numerical code loads; the scores
themselves live in :mod:`edgeprune.pruning.importance`, which implements every name here.
"""
from __future__ import annotations

CRITERIA = ("l1", "l2", "group_norm", "bn", "taylor", "mean_activation", "apoz", "entropy", "random")
# Criteria that score channels on data (calibration images, and labels for taylor).
DATA_CRITERIA = ("taylor", "mean_activation", "apoz", "entropy")

# The criterion when none is named: Taylor when there are inputs to score on, else l1. On the
# Fashion-MNIST benchmark (benchmarks/pruning_recipes.py, 3 seeds, a depthwise-separable and a
# residual conv-BN CNN, 2x and 4x fewer MACs, the same high-LR recovery) Taylor was ahead of l1
# or tied everywhere: +0.8 / +1.7 points on the depthwise CNN, where BatchNorm makes a kernel's
# norm say little (l1 fell below random ranking there), +0.1 / +0.4 on the residual one.
DEFAULT_WITH_DATA = "taylor"
DEFAULT_WITHOUT_DATA = "l1"
SCORING_SAMPLES = 512  # inputs a data criterion scores on when the training data stands in


def default_criterion(has_data: bool) -> str:
    """The criterion used when the user names none (``--criterion`` unset)."""
    return DEFAULT_WITH_DATA if has_data else DEFAULT_WITHOUT_DATA
