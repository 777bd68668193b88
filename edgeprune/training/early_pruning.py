"""Pruning early in training (``--prune-at-epoch K``): train K epochs, cut, train on.

A user who trains the network anyway (a new model, or a width search) need not train it dense to
the end and then recover: the cut can come early, once the important channels show, and the pruned
network gets the rest of the same training (Early-Bird tickets, You et al., ICLR 2020). Both phases
run on one cosine schedule from the peak learning rate over all K + N epochs, so the cut does not
restart the schedule; Adam's moments restart (the layer shapes change).

Measured (``benchmarks/pruning_recipes.py``, the depthwise-separable Fashion-MNIST CNN at 4x fewer
MACs): see the "Which recipe" section of the README for the figures and when it pays.
"""
from __future__ import annotations

from dataclasses import replace

from edgeprune.base.console import Output, default_output


def before_cut_settings(settings, prune_at_epoch: int, epochs_after: int):
    """Settings of the training before the cut: epochs 0..K of the K + N-epoch cosine, no early
    stopping (the cut needs the weights of epoch K, not the best earlier ones)."""
    return replace(settings, epochs=prune_at_epoch, early_stopping=False, label="training before the cut",
                   schedule_window=(0, prune_at_epoch + epochs_after))


def after_cut_settings(settings, prune_at_epoch: int):
    """Settings of the training after the cut: epochs K..K + N of the same cosine."""
    return replace(settings, schedule_window=(prune_at_epoch, prune_at_epoch + settings.epochs))


def train_before_cut(model, train, val, *, task, settings, prune_at_epoch: int, output: Output | None = None):
    """Train a copy of ``model`` for ``prune_at_epoch`` epochs of the shared schedule (``settings``
    are the recovery's: their ``epochs`` are the N after the cut). Returns ``(model, report)``."""
    from edgeprune.training.finetune import finetune

    output = output or default_output()
    run = before_cut_settings(settings, prune_at_epoch, settings.epochs)
    trained, history = finetune(model, train, val, task=task, settings=run, output=output)
    report = {"epochs": prune_at_epoch, "epochs_after": settings.epochs,
              "schedule": f"cosine over {prune_at_epoch + settings.epochs} epochs, cut after {prune_at_epoch}"}
    if history.get("val_accuracy"):
        report["val_accuracy_at_cut"] = round(float(history["val_accuracy"][-1]), 4)
    return trained, report
