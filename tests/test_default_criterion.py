"""The criterion a user gets without ``--criterion``: Taylor when there are inputs to score on,
l1 without, and l1 with a note when the default cannot score a model (never a failed compile).

Real parts: the pruning engine, the converter, the training-data loader.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_models import invoke_cli
from report_helpers import labelled_by, prunable_cnn

from edgeprune.pruning.api import prune_model
from edgeprune.pruning.criteria import DEFAULT_WITH_DATA, DEFAULT_WITHOUT_DATA, default_criterion

SMALL_CPU = "tests/data/small-cpu.yaml"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("criterion")
    model = prunable_cnn()
    model.save(root / "m.h5")
    x, y = labelled_by(model, 96)
    np.savez(root / "train.npz", x=x, y=y)
    return root


def test_the_rule():
    assert default_criterion(True) == DEFAULT_WITH_DATA == "taylor"
    assert default_criterion(False) == DEFAULT_WITHOUT_DATA == "l1"


def test_prune_model_scores_on_data_when_it_has_some(files):
    model = prunable_cnn()
    x, y = labelled_by(model, 32)
    assert prune_model(model, ratio=0.5).report["criterion"] == "l1"
    assert prune_model(model, ratio=0.5, data=x, labels=y).report["criterion"] == "taylor"
    assert prune_model(model, ratio=0.5, data=x, criterion="l2").report["criterion"] == "l2"  # named: kept


def test_compile_ranks_on_a_training_sample_without_calibration(files, tmp_path):
    args = ["compile", files / "m.h5", "--target", SMALL_CPU, "--ratio", "0.5", "--train-data",
            files / "train.npz", "--finetune-epochs", "1", "-o", tmp_path / "a"]
    code, result = invoke_cli(args)
    assert code == 0, result.output
    assert json.loads((tmp_path / "a" / "report.json").read_text())["pruning"]["criterion"] == "taylor"
    code, result = invoke_cli(["compile", files / "m.h5", "--target", SMALL_CPU, "--ratio", "0.5", "-o", tmp_path / "b"])
    assert code == 0, result.output
    assert json.loads((tmp_path / "b" / "report.json").read_text())["pruning"]["criterion"] == "l1"


def test_prune_command_uses_the_training_sample_too(files, tmp_path):
    code, result = invoke_cli(["prune", files / "m.h5", "-o", tmp_path / "p.h5", "--ratio", "0.5", "--train-data",
                               files / "train.npz", "--finetune-epochs", "1", "--json"])
    assert code == 0, result.output
    assert json.loads(result.stdout)["criterion"] == "taylor"


def test_a_default_that_cannot_score_falls_back_to_l1_with_a_note(files):
    model = prunable_cnn()
    odd = {"not": "an array"}  # what Taylor cannot score on (a named criterion would fail here)
    result = prune_model(model, ratio=0.5, data=odd)
    assert result.report["criterion"] == "l1"
    assert any("could not score" in note for note in result.report["notes"])
    with pytest.raises(TypeError):
        prune_model(model, ratio=0.5, data=odd, criterion="taylor")
