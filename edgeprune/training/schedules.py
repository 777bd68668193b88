"""The learning-rate schedules' names and constants, and the checks options need, without numpy.

``training.options`` (imported by every command's ``--help``) validates schedules with these,
so they live apart from ``training.finetune``, which builds the schedules and needs numpy and
Keras; ``finetune.learning_rate_schedule`` is the one place that turns them into learning rates.
"""
from __future__ import annotations

# The learning-rate schedules (--lr-schedule), in the order --help lists them.
LR_SCHEDULES = ("cosine", "plateau", "one-cycle", "constant", "rewind")
# cosine ends at this fraction of the peak: recovery keeps learning until its last epoch.
COSINE_FLOOR = 0.05
# one-cycle (Smith & Topin 2019; Le & Hua 2021 retrain pruned networks with it) warms up over the
# first 10 % of the steps. Recovery starts from trained weights, so the warm-up only has to let
# Adam's moment estimates settle before the peak LR (a few hundred steps); the 25-30 % of
# PyTorch's OneCycleLR and fastai are meant for training from scratch and would spend a short
# recovery budget at a low LR. Le & Hua warm up over the first few epochs of a long retraining.
ONE_CYCLE_WARMUP = 0.1
# ...from 1/25 of the peak (OneCycleLR's div_factor): a start at 0 would waste the first steps.
ONE_CYCLE_START = 1.0 / 25.0


def rewind_problem(original_epochs: int | None, epochs: int, flag: str = "--finetune-epochs") -> str | None:
    """Why ``--lr-schedule rewind`` cannot replay ``epochs`` epochs of an ``original_epochs``-epoch
    training, in one line naming the flags; None when it can."""
    if original_epochs is None:
        return "--lr-schedule rewind needs --original-epochs E (the epochs the dense model was trained)"
    if original_epochs < epochs:
        return (f"--lr-schedule rewind replays the last {flag} ({epochs}) epochs of the original training, "
                f"but --original-epochs is {original_epochs}: it must be at least {epochs}")
    return None
