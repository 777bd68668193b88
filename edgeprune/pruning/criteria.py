"""The names of the importance criteria, in one place that costs nothing to import.

The command line lists them (``--criterion``) before any numerical code loads; the scores
themselves live in :mod:`edgeprune.pruning.importance`, which implements every name here.
"""
from __future__ import annotations

CRITERIA = ("l1", "l2", "group_norm", "bn", "taylor", "mean_activation", "apoz", "entropy", "random")
# Criteria that score channels on data (calibration images, and labels for taylor).
DATA_CRITERIA = ("taylor", "mean_activation", "apoz", "entropy")
