"""Gradual magnitude pruning (tfmot): sparsity reached on stripped weights, per-layer, 2:4."""
from __future__ import annotations

import numpy as np
import pytest
from test_training_fixtures import acc, digits, quiet, trained_cnn

from edgeprune.base.errors import InputError
from edgeprune.training.data import Split
from edgeprune.training.finetune import FitSettings
from edgeprune.training.gradual import (
    measure_sparsity,
    sparsity_report,
    train_gradual,
    wrap_for_pruning,
)
from edgeprune.training.options import TrainingOptions

SETTINGS = FitSettings(epochs=3, batch_size=64, label="gradual")


def _data():
    x, y, xv, yv = digits()
    return Split(x, y, "t"), Split(xv, yv, "v")


def test_gradual_reaches_sparsity_and_stays_accurate():
    train, val = _data()
    opts = TrainingOptions(gradual_sparsity=0.6, sparsity_schedule="polynomial")
    dense = trained_cnn()
    model, report = train_gradual(dense, train, val, task="sparse", options=opts, settings=SETTINGS, output=quiet())
    assert not any("prune" in type(l).__name__.lower() for l in model.layers)  # stripped
    measured = measure_sparsity(model, ["conv1", "conv2", "dense"])
    for name in ("conv1", "conv2", "dense"):
        assert measured["layers"][name] == pytest.approx(0.6, abs=0.02)
    assert report["measured"]["overall"] == pytest.approx(0.6, abs=0.02)
    assert acc(model, val.x, val.y) > 0.85
    target = sparsity_report(dense, model, val.x, runs=3)
    assert target["sparse"]["gzip_bytes"] < target["dense"]["gzip_bytes"]
    assert target["sparse"]["tflite_bytes"] == pytest.approx(target["dense"]["tflite_bytes"], rel=0.05)
    assert target["dense"]["latency_ms"] > 0 and "note" in target


def test_per_layer_sparsity_constant_schedule():
    train, val = _data()
    opts = TrainingOptions(per_layer_sparsity={"conv2": 0.8, "dense": 0.3}, sparsity_schedule="constant")
    model, report = train_gradual(trained_cnn(), train, val, task="sparse", options=opts, settings=SETTINGS, output=quiet())
    layers = measure_sparsity(model)["layers"]
    assert layers["conv2"] == pytest.approx(0.8, abs=0.02)
    assert layers["dense"] == pytest.approx(0.3, abs=0.02)
    assert layers["conv1"] < 0.05  # not wrapped
    assert report["plan"] == {"conv2": 0.8, "dense": 0.3}


def test_m_by_n_2_4_pattern_holds():
    train, val = _data()
    opts = TrainingOptions(sparsity_m_by_n="2:4")
    model, report = train_gradual(trained_cnn(), train, val, task="sparse", options=opts, settings=SETTINGS, output=quiet())
    assert report["m_by_n_holds"] is True
    assert "conv1" not in report["plan"]  # 1 input channel: no group of 4
    kernel = next(l for l in model.layers if l.name == "conv2").kernel.numpy()  # (3, 3, 8, 16)
    groups = np.moveaxis(kernel, 2, -1).reshape(-1, 4)  # 4 consecutive input channels
    assert np.all(np.count_nonzero(groups, axis=1) <= 2)
    assert measure_sparsity(model, ["conv2", "dense"])["overall"] == pytest.approx(0.5, abs=0.01)


def test_unknown_layer_refused():
    with pytest.raises(InputError, match="no layer named nope"):
        wrap_for_pruning(trained_cnn(), sparsity=0.5, per_layer={"nope": 0.5})
    with pytest.raises(InputError, match="cannot be pruned"):
        wrap_for_pruning(trained_cnn(), sparsity=0.5, per_layer={"relu1": 0.5})
