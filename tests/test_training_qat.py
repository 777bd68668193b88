"""QAT (tfmot) with BN folded first gives an int8 .tflite close to the float model."""
from __future__ import annotations

import numpy as np
from test_training_fixtures import acc, digits, quiet, trained_cnn

from edgeprune.device.api import evaluate_tflite
from edgeprune.training._tflite import to_tflite
from edgeprune.training.data import Split
from edgeprune.training.finetune import FitSettings
from edgeprune.training.qat import train_qat


def _int8_ops(tflite: bytes):
    from edgeprune.training._tflite import interpreter

    interp = interpreter(tflite)
    interp.allocate_tensors()
    return {d["dtype"] for d in interp.get_tensor_details()}


def test_qat_int8_close_to_float():
    x, y, xv, yv = digits()
    model = trained_cnn(bn=True)
    float_acc = acc(model, xv, yv)
    qat_model, report = train_qat(model, Split(x, y, "t"), Split(xv, yv, "v"), task="sparse",
                                  settings=FitSettings(epochs=2, batch_size=64, label="QAT"), output=quiet())
    assert report["bn_folded"] == [{"bn": "bn1", "into": "conv1"}]
    assert report["float_layers"] == []
    tflite = to_tflite(qat_model, "int8", representative=x[:100])
    assert np.int8 in _int8_ops(tflite)
    int8_acc = evaluate_tflite(tflite, xv, yv)["accuracy"]
    assert int8_acc > float_acc - 0.03


def test_unsupported_layer_stays_float_and_is_reported():
    from edgeprune.base.env import tf_keras

    k = tf_keras()
    inp = k.Input((8, 8, 1))
    h = k.layers.Conv2D(4, 3, activation="relu", name="c")(inp)
    h = k.layers.BatchNormalization(name="bn_after_relu")(h)
    h = k.layers.GaussianNoise(0.1, name="noise")(h)
    out = k.layers.Dense(10, activation="softmax", name="d")(k.layers.Flatten()(h))
    model = k.Model(inp, out)
    x, y, _, _ = digits()
    qat_model, report = train_qat(model, Split(x[:128], y[:128], "t"), None, task="sparse",
                                  settings=FitSettings(epochs=1, batch_size=64), output=quiet())
    kept = {item["layer"]: item["reason"] for item in report["float_layers"]}
    assert set(kept) == {"bn_after_relu", "noise"}
    assert "GaussianNoise" in kept["noise"]
    assert len(to_tflite(qat_model, "int8", representative=x[:50])) > 0


def test_prune_preserving_qat_keeps_zeros():
    from edgeprune.training.gradual import train_gradual
    from edgeprune.training.options import TrainingOptions

    x, y, xv, yv = digits()
    train, val = Split(x, y, "t"), Split(xv, yv, "v")
    sparse, _ = train_gradual(trained_cnn(), train, val, task="sparse", options=TrainingOptions(gradual_sparsity=0.5),
                              settings=FitSettings(epochs=2, batch_size=64), output=quiet())
    qat_model, report = train_qat(sparse, train, val, task="sparse", prune_preserve=True,
                                  settings=FitSettings(epochs=1, batch_size=64), output=quiet())
    assert report["scheme"] == "prune-preserving 8-bit"
    dense_layer = next(l for l in qat_model.layers if l.name.endswith("dense"))
    kernel = next(w for w in dense_layer.weights if "kernel" in w.name).numpy()
    assert np.mean(kernel == 0) > 0.45
    assert evaluate_tflite(to_tflite(qat_model, "int8", representative=x[:100]), xv, yv)["accuracy"] > 0.85
