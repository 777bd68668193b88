"""Every CNN family of tf_keras.applications prunes, converts to TFLite and runs.

One member per family goes all the way (prune 30% -> TFLiteConverter float32 -> LiteRT
interpreter, output shape checked); the other members of each family are pruned and run in
Keras (same layer types, so conversion adds nothing but minutes). A family that cannot be
handled must be listed in FAILS with the clear error it raises, so the list stays honest.
Fast subset (unmarked): MobileNetV2 and ResNet50 (~1 min). The rest is @slow (~8-10 min on
the shared 2-core machine: the TFLite converter dominates, NASNetMobile alone ~60 s).
"""
import numpy as np
import pytest

import edgeprune.base.env  # noqa: F401
from edgeprune.base.env import tf, tf_keras
from edgeprune.base.errors import InputError
from edgeprune.pruning import prune_model

FAST = ["MobileNetV2", "ResNet50"]
# one member per family: full TFLite round trip
FAMILIES = ["VGG16", "ResNet50V2", "InceptionV3", "InceptionResNetV2", "Xception", "MobileNet",
            "MobileNetV3Small", "DenseNet121", "NASNetMobile", "EfficientNetB0", "EfficientNetV2B0", "ConvNeXtTiny",
            "RegNetX002", "RegNetY002"]
# the other members: prune and run in Keras
MEMBERS = ["VGG19", "ResNet101", "ResNet152", "ResNet101V2", "ResNet152V2", "MobileNetV3Large",
           "DenseNet169", "DenseNet201", "EfficientNetB1", "EfficientNetB2", "EfficientNetB3",
           "EfficientNetB4", "EfficientNetB5", "EfficientNetB6", "EfficientNetB7", "EfficientNetV2B1",
           "EfficientNetV2B2", "EfficientNetV2B3", "EfficientNetV2S", "EfficientNetV2M", "EfficientNetV2L",
           "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtXLarge", "RegNetX004", "RegNetY004",
           "RegNetX032", "RegNetY032", "RegNetX320", "RegNetY320", "NASNetLarge"]
FAILS: dict = {}  # family -> regex of the InputError it raises (none today)

MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}


def _build(name):
    K = tf_keras()
    K.backend.clear_session()
    size = MIN_SIZE.get(name, 32)
    model = getattr(K.applications, name)(input_shape=(size, size, 3), weights=None, classes=10)
    return model, size


def _prune(name):
    model, size = _build(name)
    if name in FAILS:
        with pytest.raises(InputError, match=FAILS[name]):
            prune_model(model, ratio=0.3)
        return None, size
    result = prune_model(model, ratio=0.3)
    rep = result.report
    assert rep["macs_after"] < 0.75 * rep["macs_before"], rep["macs_after"] / rep["macs_before"]
    assert rep["params_after"] < rep["params_before"]
    assert {l.name for l in result.model.layers} == _leaf_names(model)  # sub-models get inlined
    return result.model, size


def _leaf_names(model, top=True):
    names = set()
    for layer in model.layers:
        if hasattr(layer, "layers"):
            names |= _leaf_names(layer, top=False)
        elif top or layer.__class__.__name__ != "InputLayer":
            names.add(layer.name)
    return names


def _tflite_roundtrip(name):
    from ai_edge_litert.interpreter import Interpreter

    pruned, size = _prune(name)
    if pruned is None:
        return
    blob = tf().lite.TFLiteConverter.from_keras_model(pruned).convert()
    it = Interpreter(model_content=blob)
    it.allocate_tensors()
    x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    out = it.get_tensor(it.get_output_details()[0]["index"])
    assert out.shape == (1, 10)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", FAST)
def test_fast_families_prune_convert_run(name):
    _tflite_roundtrip(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_family_prunes_converts_runs(name):
    _tflite_roundtrip(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", MEMBERS)
def test_family_member_prunes_and_runs(name):
    pruned, size = _prune(name)
    if pruned is not None:
        x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
        assert pruned(x, training=False).shape == (1, 10)
