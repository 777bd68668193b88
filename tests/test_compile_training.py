"""compile wired to the training stage: pruning + recovery + QAT + the accuracy gate, end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_models import invoke_cli

SMALL_CPU = str(Path(__file__).parent / "data" / "small-cpu.yaml")  # rounds channels to 4
from test_training_fixtures import digits, trained_cnn  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ct")
    x, y, xv, yv = digits()
    trained_cnn(bn=True).save(tmp / "m.h5")
    np.savez(tmp / "train.npz", x=x, y=y)
    np.savez(tmp / "val.npz", x=xv, y=yv)
    return tmp


def test_prune_distill_and_gate_pass(files, tmp_path):
    out = tmp_path / "art"
    code, result = invoke_cli([
        "compile", files / "m.h5", "-o", out, "--ratio", "0.5", "--target", SMALL_CPU, "--train-data", files / "train.npz",
        "--val-data", files / "val.npz", "--finetune-epochs", "3", "--distill",
        "--max-accuracy-drop", "20", "--json"])  # the wiring is tested here, not the recovery
    assert code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["pruning"]["macs_after"] < summary["pruning"]["macs_before"]
    assert summary["training"]["recovery"]["method"] == "distillation"
    gate = summary["accuracy_gate"]
    # early stopping and distillation selected on one half of --val-data, the gate measured the other
    n_val = len(digits()[3])
    assert gate["passed"] and gate["samples"] == n_val // 2
    assert summary["training"]["data"]["val_samples"] + gate["samples"] == n_val
    lo, hi = gate["drop_ci95"]
    assert lo <= gate["drop_points"] <= hi and hi - lo > 0
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy_gate"]["drop_ci95"] == [lo, hi]
    assert [s["name"] for s in report["stages"]][:2] == ["load", "prune"]
    assert "training" in [s["name"] for s in report["stages"]]
    assert "gate" in [s["name"] for s in report["stages"]]


def test_gate_failure_ships_nothing_and_keeps_the_candidate(files, tmp_path):
    out = tmp_path / "art"
    code, result = invoke_cli([
        "compile", files / "m.h5", "-o", out, "--ratio", "0.75", "--target", SMALL_CPU, "--val-data", files / "val.npz",
        "--max-accuracy-drop", "0.01"])
    assert code == 1
    assert "accuracy gate" in str(result.exception) and "art.rejected" in str(result.exception)
    assert not out.exists()
    rejected = tmp_path / "art.rejected"
    assert (rejected / "model.tflite").exists()
    assert json.loads((rejected / "GATE_FAILED.json").read_text())["passed"] is False
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".art")]  # no temp dir left


def test_gate_data_upper_mode_and_too_few_images(files, tmp_path):
    """--gate-data is measured whole; --gate-mode upper refuses when the CI reaches past the limit,
    and a gate set on a handful of images says it cannot decide."""
    x, y, xv, yv = digits()
    few = tmp_path / "few.npz"
    np.savez(few, x=xv[:20], y=yv[:20])
    common = ["compile", files / "m.h5", "--ratio", "0.5", "--target", SMALL_CPU, "--train-data",
              files / "train.npz", "--finetune-epochs", "1", "--gate-data", few, "--max-accuracy-drop", "2"]
    code, result = invoke_cli([*common, "-o", tmp_path / "up", "--gate-mode", "upper"])
    assert code == 1, result.output
    message = str(result.exception)
    assert "--gate-mode upper" in message and "20 gate images are too few to decide" in message
    rejected = json.loads((tmp_path / "up.rejected" / "report.json").read_text())["accuracy_gate"]
    assert rejected["samples"] == 20 and rejected["mode"] == "upper" and rejected["decided"] is False
    assert rejected["data"].startswith("--gate-data")


def test_qat_compiles_to_int8_and_passes_a_gate(files, tmp_path):
    out = tmp_path / "qat"
    code, result = invoke_cli([
        "compile", files / "m.h5", "-o", out, "--train-data", files / "train.npz",
        "--finetune-epochs", "1", "--qat", "--max-accuracy-drop", "3", "--json"])
    assert code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["mode"] == "int8"
    assert "qat" in json.loads((out / "report.json").read_text())["training"]


def test_training_refusals(files, tmp_path):
    code, result = invoke_cli(["compile", files / "m.h5", "-o", tmp_path / "a", "--qat",
                               "--quantize", "float16", "--train-data", files / "train.npz"])
    assert code == 2 and "--qat" in str(result.exception)
    code, result = invoke_cli(["compile", files / "m.h5", "-o", tmp_path / "b",
                               "--max-accuracy-drop", "1"])
    assert code == 2 and "labelled" in str(result.exception)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune_epochs: 2\nwarmup_epochs: 3\n")
    code, result = invoke_cli(["compile", files / "m.h5", "-o", tmp_path / "c", "--recipe", recipe])
    assert code == 2 and "warmup_epochs" in str(result.exception)
    assert not any((tmp_path / n).exists() for n in ("a", "b", "c"))


def test_prune_command_fine_tunes_iteratively(files, tmp_path):
    out = tmp_path / "p.h5"
    code, result = invoke_cli([
        "prune", files / "m.h5", "--ratio", "0.5", "-o", out, "--train-data", files / "train.npz",
        "--finetune-epochs", "1", "--iterative-steps", "2", "--json"])
    assert code == 0, result.output
    report = json.loads(result.stdout)
    assert report["macs_after"] < report["macs_before"]
    assert report["training"]["recovery"]["method"] == "fine-tuning"
    assert out.exists()
    code, result = invoke_cli(["prune", files / "m.h5", "--ratio", "0.5", "-o", tmp_path / "q.h5", "--qat"])
    assert code == 2 and "edgeprune compile --qat" in str(result.exception)
    assert not (tmp_path / "q.h5").exists()
