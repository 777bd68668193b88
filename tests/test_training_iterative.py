"""Iterative structured pruning reaches the MAC target (engineer C's prune_model) and the stage runs end to end."""
from __future__ import annotations

import numpy as np
import pytest
from test_training_fixtures import acc, digits, quiet, trained_cnn

from edgeprune.pruning.api import prune_model  # noqa: F401  (the stage prunes with it)
from edgeprune.training.iterative import step_targets


def test_step_targets_compound_to_the_goal():
    macs = [t["macs_fraction"] for t in step_targets(3, target_macs=0.25)]
    assert macs[-1] == pytest.approx(0.25) and macs[0] == pytest.approx(0.25 ** (1 / 3))
    ratios = [t["ratio"] for t in step_targets(4, ratio=0.5)]
    assert np.prod([1 - r for r in ratios]) == pytest.approx(0.5)


def test_iterative_reaches_mac_target_and_recovers(tmp_path):
    from edgeprune.training.api import run_training_stage
    from edgeprune.training.options import TrainingOptions

    x, y, xv, yv = digits()
    path = tmp_path / "train.npz"
    np.savez(path, x=np.concatenate([x, xv]), y=np.concatenate([y, yv]))
    original = trained_cnn()
    options = TrainingOptions(train_data=str(path), val_split=0.2, iterative_steps=2, finetune_epochs=2,
                              batch_size=64, distill=True)
    stage = run_training_stage(original, options, prune_kwargs={"target_macs": 0.3, "criterion": "l1"},
                               output=quiet())
    report = stage.pruned_report
    assert len(report["iterative_steps"]) == 2
    assert report["macs_after"] <= 0.3 * report["macs_before"]
    assert report["iterative_steps"][0]["macs_fraction"] > report["iterative_steps"][1]["macs_fraction"]
    assert stage.report["recovery"]["method"] == "distillation"
    assert stage.validation is not None and acc(stage.model, stage.validation.x, stage.validation.y) > 0.85
    assert stage.model.count_params() < original.count_params()


def test_one_shot_stage_with_qat_converts_int8(tmp_path):
    from edgeprune.device.gate import check_accuracy_gate
    from edgeprune.training._tflite import to_tflite
    from edgeprune.training.api import run_training_stage
    from edgeprune.training.options import TrainingOptions

    x, y, xv, yv = digits()
    train, val = tmp_path / "t.npz", tmp_path / "v.npz"
    np.savez(train, x=x, y=y)
    np.savez(val, x=xv, y=yv)
    original = trained_cnn()
    pruned = prune_model(original, ratio=0.5, criterion="l1").model
    options = TrainingOptions(train_data=str(train), val_data=str(val), finetune_epochs=3, qat=True, qat_epochs=1,
                              batch_size=64, max_accuracy_drop=5.0)
    stage = run_training_stage(pruned, options, original=original, output=quiet())
    assert stage.qat and stage.quantization == "int8"
    assert stage.report["recovery"]["method"] == "fine-tuning" and stage.report["qat"]["float_layers"] == []
    tflite = to_tflite(stage.model, stage.quantization, representative=x[:100])
    result = check_accuracy_gate(tflite, original, stage.validation.x, stage.validation.y, options.max_accuracy_drop)
    assert result["passed"]


def test_iterative_latency_target_compounds_over_steps():
    """Each step times the model it starts from; the predicted latencies chain to the target."""
    from test_pruning_latency import two_branch_model

    from edgeprune.training.iterative import iterative_prune

    model, report = iterative_prune(two_branch_model(), steps=2, recover=None, target_latency=0.5,
                                    prune_kwargs={"round_to": 4, "min_channels": 4}, output=quiet())
    assert len(report["iterative_steps"]) == 2
    assert report["target_latency"] == 0.5
    assert report["latency_table"]["predicted_fraction"] <= 0.5 + 1e-6
    assert report["iterative_steps"][1]["macs"] < report["iterative_steps"][0]["macs"]
    assert model.count_params() < two_branch_model().count_params()
