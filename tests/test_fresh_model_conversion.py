"""A Keras 3 model built in Python from a class that is not Keras's own (a keras-hub backbone, a
user's ``keras.Model`` subclass) converts to an artifact that computes what Keras computes.

The bug: ``is_keras3_model`` looked only at the model's own class's module, so a keras-hub
``ResNetBackbone`` (module ``keras_hub.src...``) was taken for tf_keras and handed to the converter
as its trackable object; the converter then kept every weight as an uninitialised resource
variable (VAR_HANDLE / READ_VARIABLE) and the ``.tflite`` gave NaN. ``convert`` now also refuses
any artifact whose outputs are NaN/Inf on a probe input, in one line that says whether the Keras
model is finite (the converter's fault) or not (the model's own).

Real keras-hub models, real converter and interpreter; tiny models.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers_models import invoke_cli, tiny_keras3_cnn

import edgeprune.base.env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from edgeprune.base.env import is_keras3_model, tf, tf_keras
from edgeprune.base.errors import InputError, VerificationError
from edgeprune.device.api import evaluate_tflite
from edgeprune.quantize.convert import check_finite, convert, input_specs, read_graph

keras_hub = pytest.importorskip("keras_hub")
import hub_models  # noqa: E402  (its builders import keras_hub)


def _sample(model, n=2):
    return np.random.default_rng(1).uniform(0, 1, (n, *model.inputs[0].shape[1:])).astype("float32")


def _as_list(outputs) -> list:
    if isinstance(outputs, dict):
        return [np.asarray(v) for v in outputs.values()]
    return [np.asarray(v) for v in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


def _assert_artifact_agrees(model, tflite, x):
    """Every Keras output has an artifact output of its shape with the same values."""
    assert "VAR_HANDLE" not in {op for op, _, _ in read_graph(tflite)["ops"]}  # weights frozen as constants
    keras_outs = _as_list(model.predict(x, verbose=0))
    artifact_outs = _as_list(evaluate_tflite(tflite, x, trusted=True)["outputs"])
    assert len(keras_outs) == len(artifact_outs)
    for want in keras_outs:
        assert np.isfinite(want).all()
        same_shape = [got for got in artifact_outs if got.shape == want.shape]
        assert same_shape, (want.shape, [a.shape for a in artifact_outs])
        assert any(np.allclose(got, want, atol=1e-4) for got in same_shape), want.shape


@pytest.mark.parametrize("builder", [hub_models.resnet, hub_models.hgnetv2], ids=["ResNet", "HGNetV2"])
def test_fresh_hub_backbone_converts_to_what_keras_computes(builder):
    model = builder()  # built in Python, never saved: the case that gave NaN
    _assert_artifact_agrees(model, convert(model, "float32"), _sample(model))


def test_models_of_keras3_subclasses_are_keras3():
    """The flavour test behind every Keras-specific path (conversion included) asks the class
    hierarchy: keras-hub models and a user's ``keras.Model`` subclass are Keras 3, tf_keras ones
    (subclassed too) are not."""
    assert is_keras3_model(hub_models.resnet())
    assert is_keras3_model(hub_models.functional_subclass())
    K = tf_keras()

    class UserModel(K.Model):
        pass

    x = K.Input((4,))
    assert not is_keras3_model(UserModel(x, K.layers.Dense(2)(x)))
    assert not is_keras3_model(K.layers.Dense(2))


def test_pruned_fresh_resnet_converts_to_what_keras_computes():
    """The in-memory Python API: ``edgeprune.prune_model`` on the fresh backbone, then convert."""
    from edgeprune import prune_model

    model = hub_models.resnet()
    pruned = prune_model(model, ratio=0.5).model
    assert pruned.count_params() < model.count_params()
    _assert_artifact_agrees(pruned, convert(pruned, "float32"), _sample(pruned))


def _nan_cnn():
    """The tiny Keras 3 CNN with one NaN in its head's bias, so one class score is NaN (a NaN
    before the ReLU would not survive it)."""
    model = tiny_keras3_cnn()
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    bias[0] = np.nan
    head.set_weights([kernel, bias])
    return model


def test_nan_artifact_of_a_finite_model_is_refused():
    """An artifact that gives NaN where Keras does not (what the bug produced) fails in one line."""
    broken = tf().lite.TFLiteConverter.from_keras_model(_nan_cnn()).convert()  # real converter, NaN weights
    finite = tiny_keras3_cnn()
    with pytest.raises(VerificationError) as err:
        check_finite(broken, finite, input_specs(finite), what="TFLite conversion (float32)")
    assert str(err.value) == ("TFLite conversion (float32): the converted model gives NaN/Inf on a probe input "
                              "(uniform [0, 1), seed 0); the Keras model gives finite outputs")
    check_finite(convert(finite, "float32"), finite, input_specs(finite))  # a good artifact passes


def test_model_that_gives_nan_is_refused_naming_the_model(tmp_path):
    """A model whose own outputs are NaN is the model's fault: compile says so, exit 2, no DIR."""
    model = _nan_cnn()
    assert np.isnan(model.predict(np.zeros((1, 8, 8, 1), "float32"), verbose=0)).any()
    path = tmp_path / "nan.keras"
    model.save(path)
    code, result = invoke_cli(["compile", path, "-o", tmp_path / "out"])
    assert code == 2, result.output
    message = str(result.exception)
    assert "\n" not in message
    assert message.startswith("TFLite conversion (float32): the Keras model itself gives NaN/Inf on "), message
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="the first calibration sample"):
        convert(model, "float32", representative=np.zeros((2, 8, 8, 1), "float32"))

