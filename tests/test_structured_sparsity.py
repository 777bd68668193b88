"""Pruning during training: unit parameters, the group-norm criterion, the sparsity phase and
its flags, on both Keras flavours."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_models import invoke_cli

import edgeprune.base.env as _env
from edgeprune.load.graph import trace
from edgeprune.pruning.group_params import unit_norms, unit_parameters
from edgeprune.pruning.groups import build_groups


def _conv_bn_net(keras, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.9, name="bn1")(h)
    h = keras.layers.ReLU(name="r1")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.Conv2D(12, 1, name="c2")(h)
    h = keras.layers.BatchNormalization(momentum=0.9, name="bn2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(keras.layers.ReLU(name="r2")(h))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(h))


@pytest.fixture(params=["keras3", "tf_keras"])
def keras(request):
    if request.param == "keras3":
        import keras as k3

        return k3
    return _env.tf_keras()


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype("float32")[..., None], d.target.astype("int64")


def test_unit_parameters_are_what_removing_the_unit_removes(keras):
    """Each unit owns exactly the elements surgery drops when that one unit goes."""
    from edgeprune.pruning.surgery import rebuild

    model = _conv_bn_net(keras)
    gs = build_groups(trace(model))
    params = unit_parameters(gs)
    owned = np.zeros(int(gs.labels.max()) + 1, dtype=np.int64)
    for p in params:
        np.add.at(owned, p.unit_of[p.unit_of >= 0], 1)
    assert {p.layer for p in params} >= {"c1", "bn1", "dw", "c2", "bn2", "head"}
    assert any(p.batchnorm_scale for p in params) and any(not p.trainable for p in params)
    for group in gs.prunable:
        unit = int(group.units[0])
        keep = np.ones(len(owned), dtype=bool)
        keep[unit] = False
        smaller = rebuild(gs, keep)
        assert model.count_params() - smaller.count_params() == owned[unit], group.name


def test_group_norm_criterion_removes_the_units_that_were_zeroed(keras):
    from edgeprune.pruning.api import prune_model

    model = _conv_bn_net(keras)
    gs = build_groups(trace(model))
    params = [p for p in unit_parameters(gs) if p.trainable]
    c1_group = next(g for g in gs.prunable if "c1" in g.producers)
    zeroed = c1_group.units[:3]
    layers = {layer.name: layer for layer in model.layers}
    for p in params:
        weights = layers[p.layer].get_weights()
        weights[p.index][np.isin(p.unit_of, zeroed)] = 0.0
        layers[p.layer].set_weights(weights)
    norms = unit_norms(build_groups(trace(model)))
    assert np.all(norms[zeroed] == 0) and np.all(norms[c1_group.units[3:]] > 0)
    result = prune_model(model, ratio=3 / 20, criterion="group_norm", global_ranking=True)
    rows = {row["name"]: row for row in result.report["layers"]}
    assert rows["c1"]["channels_after"] == 5 and rows["c2"]["channels_after"] == 12
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(result.model(x)), np.asarray(model(x)), atol=1e-5)


def test_sparsity_phase_shrinks_units_and_keeps_the_model_working(keras):
    from edgeprune.training.data import Split
    from edgeprune.training.finetune import FitSettings
    from edgeprune.training.structured_sparsity import penalty_targets, train_structured_sparsity

    x, y = _digits()
    model = _conv_bn_net(keras)
    settings = FitSettings(epochs=3, batch_size=64, learning_rate=3e-3)
    for method in ("group-norm", "bn-l1"):
        trained, report = train_structured_sparsity(model, Split(x[:1200], y[:1200], "train"), None, task="sparse",
                                                    method=method, strength=1.0, growth="constant",
                                                    settings=settings)
        assert report["units_penalized"] == 20 and report["median_norm_kept"] < 0.95, report
        _, before = penalty_targets(model, method)
        _, after = penalty_targets(trained, method)
        assert after.sum() < before.sum()
        assert report["final"]["accuracy"] > 0.2  # the data term still trains it (chance: 0.1)


def test_prune_with_sparsity_epochs_from_the_command_line(tmp_path):
    import keras as k3

    x, y = _digits()
    model = _conv_bn_net(k3)
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "train.npz", x=x[:800], y=y[:800])
    out = tmp_path / "p.keras"
    code, result = invoke_cli(["prune", tmp_path / "m.keras", "--target-macs", "0.5", "-o", out, "--train-data",
                               tmp_path / "train.npz", "--sparsity-epochs", "2", "--sparsity-strength", "5",
                               "--finetune-epochs", "1", "--batch-size", "64", "--json"])
    assert code == 0, result.output
    report = json.loads(result.stdout)
    assert report["criterion"] == "group_norm"
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    phase = report["training"]["structured_sparsity"]
    assert phase["method"] == "group-norm" and phase["epochs"] == 2 and phase["units_penalized"] > 0
    (tmp_path / "recipe.yaml").write_text("sparsity_epochs: 1\nsparsity_method: bn-l1\nfinetune_epochs: 0\n")
    code, result = invoke_cli(["prune", tmp_path / "m.keras", "--ratio", "0.25", "-o", tmp_path / "q.keras",
                               "--train-data", tmp_path / "train.npz", "--recipe", tmp_path / "recipe.yaml",
                               "--json"])
    assert code == 0, result.output
    assert json.loads(result.stdout)["training"]["structured_sparsity"]["method"] == "bn-l1"


def test_sparsity_epochs_needs_labelled_data(tmp_path):
    import keras as k3

    _conv_bn_net(k3).save(tmp_path / "m.keras")
    code, result = invoke_cli(["prune", tmp_path / "m.keras", "--ratio", "0.5", "-o", tmp_path / "p.keras",
                               "--sparsity-epochs", "2"])
    assert code == 2 and "--sparsity-epochs needs labelled training data" in str(result.exception)
