"""Keras 3 stays Keras 3 through pruning, BatchNorm re-estimation, fine-tuning, distillation,
conversion and saving; tf_keras appears only at tfmot's door (QAT here)."""
from __future__ import annotations

import numpy as np
import pytest
from test_training_fixtures import digits, quiet

import edgeprune
from edgeprune.base.env import is_keras3_model, keras3
from edgeprune.load.model_io import load_model
from edgeprune.pruning import prune_model
from edgeprune.quantize.convert import convert
from edgeprune.training.api import recover


def _keras3_cnn(seed=0):
    keras = keras3()
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", name="c1")(inp)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn1")(x)  # 0.99 lags 12 short epochs
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(24, 1, name="pw")(x)
    gate = keras.layers.Conv2D(24, 1, activation="sigmoid", name="gate")(x)
    x = x * gate  # a Keras 3 operation node, as keras.applications write them
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(10, activation="softmax", name="head")(x)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def trained():
    x, y, xv, yv = digits()
    model = _keras3_cnn()
    model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    return model


def _acc(model, x, y):
    return float(np.mean(np.asarray(model(x, training=False)).argmax(-1) == y))


def test_prune_recover_convert_stay_keras3(trained, tmp_path):
    x, y, xv, yv = digits()
    dense_acc = _acc(trained, xv, yv)
    assert dense_acc > 0.85
    pruned = prune_model(trained, target_macs=0.5, criterion="l1").model
    assert is_keras3_model(pruned)
    tuned = recover(pruned, teacher=trained, train=(x, y), val=(xv, yv), epochs=6, distill=True,
                    output=quiet())
    assert is_keras3_model(tuned), "distillation must hand back a Keras 3 model"
    assert _acc(tuned, xv, yv) >= _acc(pruned, xv, yv) - 0.01
    assert _acc(tuned, xv, yv) > 0.8
    tuned2 = recover(pruned, train=(x, y), val=(xv, yv), epochs=3, output=quiet())
    assert is_keras3_model(tuned2)
    blob = convert(tuned, "float32")
    assert blob[4:8] == b"TFL3"
    path = edgeprune.save_model(tuned, tmp_path / "pruned.keras")
    back = keras3().saving.load_model(path, compile=False)
    np.testing.assert_allclose(np.asarray(back(xv[:4])), np.asarray(tuned(xv[:4])), atol=1e-5)


def test_prune_file_keeps_keras3_and_qat_crosses_to_tf_keras(trained, tmp_path):
    from edgeprune.load.model_io import to_tf_keras

    trained.save(tmp_path / "m.keras")
    result = edgeprune.prune(tmp_path / "m.keras", tmp_path / "p.keras", ratio=0.5)
    assert result.report["flavour"] == "keras3"
    loaded = load_model(tmp_path / "p.keras")
    assert loaded.flavour == "keras3" and is_keras3_model(loaded.model)
    assert loaded.model.get_layer("c1").filters == 8
    tk = to_tf_keras(loaded.model)  # tfmot's door: same outputs in tf_keras
    assert not is_keras3_model(tk)
    _, _, xv, _ = digits()
    np.testing.assert_allclose(np.asarray(tk(xv[:4], training=False)),
                               np.asarray(loaded.model(xv[:4], training=False)), atol=1e-5)
