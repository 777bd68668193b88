"""Pruning early in training (--prune-at-epoch K): K epochs of training, the cut, N more epochs,
all on one cosine schedule; from the CLI, the Python API and a recipe, for Keras 3 and tf_keras;
combinations that cannot work are refused in one line before anything trains."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers_models import invoke_cli, tiny_tf_keras_cnn

import edgeprune.base.env as env
from edgeprune.training.early_pruning import after_cut_settings, before_cut_settings
from edgeprune.training.finetune import COSINE_FLOOR, FitSettings, learning_rate_schedule


def _cosine(peak, done):
    return peak * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * done)))


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_the_two_phases_are_one_cosine(flavour):
    """Epochs 0..K before the cut and K..K+N after it follow the (K+N)-epoch cosine: the cut does
    not restart the learning rate, and the schedule ends at the floor."""
    import keras as k3

    keras = k3 if flavour == "keras3" else env.tf_keras()
    spe, k, n = 10, 3, 5
    recovery = FitSettings(epochs=n, learning_rate=2.0)
    before = learning_rate_schedule(before_cut_settings(recovery, k, n), spe, keras)
    after = learning_rate_schedule(after_cut_settings(recovery, k), spe, keras)
    first = np.asarray(before(np.arange(k * spe, dtype=np.float32)))
    second = np.asarray(after(np.arange(n * spe, dtype=np.float32)))
    joined = np.concatenate([first, second])
    expected = np.array([_cosine(2.0, step / ((k + n) * spe)) for step in range((k + n) * spe)])
    np.testing.assert_allclose(joined, expected, rtol=1e-5)
    assert first[0] == pytest.approx(2.0) and second[0] < first[-1] < first[0]
    assert second[-1] == pytest.approx(_cosine(2.0, ((k + n) * spe - 1) / ((k + n) * spe)), rel=1e-5)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A Keras 3 CNN that has never been trained, and labelled data it can learn (class = which
    quadrant is bright)."""
    root = tmp_path_factory.mktemp("early")
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    outputs = keras.layers.Dense(4, activation="softmax", name="head")(h)
    keras.Model(inputs, outputs, name="fresh").save(root / "fresh.keras")
    rng = np.random.default_rng(0)
    y = np.arange(256) % 4
    x = rng.random((256, 8, 8, 1), dtype=np.float32) * 0.2
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] += 0.8
    np.savez(root / "train.npz", x=x, y=y)
    tiny_tf_keras_cnn().save(root / "tiny.h5")
    np.savez(root / "tiny_train.npz", x=rng.random((64, 8, 8, 1), dtype=np.float32), y=np.arange(64) % 10)
    return root


def test_cli_trains_cuts_and_trains_on(files, tmp_path):
    code, result = invoke_cli(["prune", files / "fresh.keras", "--target-macs", "0.5", "--train-data",
                               files / "train.npz", "--prune-at-epoch", "3", "--finetune-epochs", "5",
                               "--batch-size", "16", "-o", tmp_path / "p.keras", "--json"])
    assert code == 0, result.output
    report = json.loads(result.stdout)
    before = report["training"]["before_cut"]
    assert before["epochs"] == 3 and before["epochs_after"] == 5 and "val_accuracy_at_cut" in before
    assert report["criterion"] == "taylor"  # the default ranks on a training sample at the cut
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    import keras

    pruned = keras.saving.load_model(tmp_path / "p.keras")
    data = np.load(files / "train.npz")
    accuracy = float(np.mean(pruned.predict(data["x"], verbose=0).argmax(1) == data["y"]))
    assert accuracy > 0.5  # four balanced classes: chance is 0.25; the untrained model was at chance


def test_python_api_and_recipe_reach_the_same_option(files, tmp_path):
    import edgeprune

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("prune-at-epoch: 1\nfinetune-epochs: 1\nbatch-size: 64\n")
    code, result = invoke_cli(["prune", files / "tiny.h5", "--ratio", "0.5", "--train-data", files / "tiny_train.npz",
                               "--recipe", recipe, "-o", tmp_path / "r.h5", "--json"])
    assert code == 0, result.output
    assert json.loads(result.stdout)["training"]["before_cut"]["epochs"] == 1
    report = edgeprune.prune(str(files / "tiny.h5"), str(tmp_path / "api.h5"), ratio=0.5,
                             train_data=str(files / "tiny_train.npz"), prune_at_epoch=1, finetune_epochs=1).report
    assert report["training"]["before_cut"]["epochs"] == 1 and (tmp_path / "api.h5").exists()


@pytest.mark.parametrize("args, needle", [
    (["--distill"], "--prune-at-epoch cannot be combined with --distill"),
    (["--sparsity-epochs", "1"], "--prune-at-epoch cannot be combined with --sparsity-epochs"),
    (["--iterative-steps", "2"], "--prune-at-epoch cannot be combined with --iterative-steps"),
    (["--lr-schedule", "one-cycle"], "--lr-schedule one-cycle"),
    (["--finetune-epochs", "0"], "--finetune-epochs 0"),
])
def test_clashing_flags_are_one_line(files, tmp_path, args, needle):
    code, result = invoke_cli(["prune", files / "tiny.h5", "--ratio", "0.5", "-o", tmp_path / "p.h5",
                               "--train-data", files / "tiny_train.npz", "--prune-at-epoch", "1", *args])
    assert code == 2
    message = str(result.exception) if result.exception and not isinstance(result.exception, SystemExit) \
        else result.output.strip().splitlines()[-1]
    assert needle in message and "\n" not in message and "Traceback" not in result.output
    assert not (tmp_path / "p.h5").exists()


def test_without_training_data_is_one_line(files, tmp_path):
    code, result = invoke_cli(["prune", files / "tiny.h5", "--ratio", "0.5", "-o", tmp_path / "p.h5",
                               "--prune-at-epoch", "1"])
    assert code == 2
    assert "--prune-at-epoch needs labelled training data" in str(result.exception)
    assert not (tmp_path / "p.h5").exists()
