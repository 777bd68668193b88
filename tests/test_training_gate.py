"""The accuracy gate passes and fails on the real interpreter; rejected artifacts are set aside."""
from __future__ import annotations

import pytest
from test_training_fixtures import damaged, digits, trained_cnn

from edgeprune.base.errors import InputError, VerificationError
from edgeprune.device.budgets import Limits
from edgeprune.device.gate import check_accuracy_gate
from edgeprune.training._tflite import to_tflite
from edgeprune.training.options import TrainingOptions


def test_gate_passes_for_faithful_conversion():
    _, _, xv, yv = digits()
    model = trained_cnn()
    result = check_accuracy_gate(to_tflite(model, "float32"), model, xv, yv, max_drop=0.5)
    assert result["passed"] and abs(result["drop_points"]) < 0.5
    assert result["samples"] == len(xv) and result["reference_accuracy"] > 0.9


def test_gate_fails_with_numbers_and_exit_1():
    _, _, xv, yv = digits()
    reference = trained_cnn()
    candidate = to_tflite(damaged(trained_cnn(), fraction=0.8), "float32")
    with pytest.raises(VerificationError) as info:
        check_accuracy_gate(candidate, reference, xv, yv, max_drop=1.0)
    assert info.value.exit_code == 1
    assert "drop" in str(info.value) and "--max-accuracy-drop 1" in str(info.value)
    assert "95% CI" in str(info.value)
    assert info.value.result["drop_points"] > 1.0 and not info.value.result["passed"]
    measured = check_accuracy_gate(candidate, reference, xv, yv, max_drop=None)  # measure only
    assert measured["passed"] and measured["drop_points"] > 1.0


def test_gate_needs_labels():
    _, _, xv, _ = digits()
    with pytest.raises(InputError, match="labelled"):
        check_accuracy_gate(b"", trained_cnn(), xv, None, 1.0)


def test_budget_from_flag_or_profile():
    from edgeprune.device.profiles import load_profile

    profile = load_profile("cortex-m7")
    assert Limits.of(profile, max_accuracy_drop=TrainingOptions(max_accuracy_drop=2.0).max_accuracy_drop) \
        .max_accuracy_drop == 2.0
    assert Limits.of(profile, max_accuracy_drop=TrainingOptions().max_accuracy_drop).max_accuracy_drop \
        == profile.budgets.max_accuracy_drop


def test_stage_with_only_val_data_feeds_the_gate(tmp_path):
    import numpy as np

    from edgeprune.training.api import run_training_stage

    _, _, xv, yv = digits()
    path = tmp_path / "val.npz"
    np.savez(path, x=xv, y=yv)
    model = trained_cnn()
    stage = run_training_stage(model, TrainingOptions(val_data=str(path)), original=model)
    assert stage.model is model and stage.quantization is None and "recovery" not in stage.report
    assert len(stage.validation) == len(xv) and len(stage.gate) == len(xv)  # nothing selects on it
    with pytest.raises(InputError, match="--qat needs labelled training data"):
        run_training_stage(model, TrainingOptions(val_data=str(path), qat=True), original=model)
