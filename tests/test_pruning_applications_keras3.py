"""Every family of Keras 3 ``keras.applications`` (what TensorFlow 2.16+ users have) compiles and
prunes natively in Keras 3.

One member per family goes the whole way: prune 30 % in Keras 3 → save as ``.keras`` → reload
in plain Keras 3 with no custom objects (same input/output signature, same outputs as the pruned
model) → TFLite float32 and int8 → LiteRT runs both. The other members of each family share its
layer types; ``scripts/application_coverage.py`` runs every member and writes the README table.
A family that cannot be handled must be listed in FAILS with the clear error it raises.
Fast subset (unmarked): MobileNetV3Small (Keras 3 operation nodes) and ResNet50.
"""
import numpy as np
import pytest

import edgeprune.base.env  # noqa: F401
from edgeprune.base.env import keras3
from edgeprune.base.errors import InputError
from edgeprune.device.api import evaluate_tflite
from edgeprune.load.model_io import load_model, save_model
from edgeprune.pruning import prune_model
from edgeprune.quantize.convert import convert

FAST = ["MobileNetV3Small", "ResNet50"]
# one member per family (Keras 3 has no RegNet)
FAMILIES = ["VGG16", "ResNet50V2", "InceptionV3", "InceptionResNetV2", "Xception", "MobileNet",
            "MobileNetV2", "MobileNetV3Large", "DenseNet121", "NASNetMobile", "EfficientNetB0",
            "EfficientNetV2B0", "ConvNeXtTiny"]
FAILS: dict = {}  # family -> regex of the InputError it raises (none today)
MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}


def _run(tflite: bytes, x: np.ndarray) -> np.ndarray:
    return np.asarray(evaluate_tflite(tflite, x)["outputs"])  # int8 inputs quantized as on a device


def _family_round_trip(name, tmp_path):
    keras = keras3()
    keras.backend.clear_session()
    size = MIN_SIZE.get(name, 32)
    model = getattr(keras.applications, name)(input_shape=(size, size, 3), weights=None, classes=10)
    if name in FAILS:
        with pytest.raises(InputError, match=FAILS[name]):
            prune_model(model, ratio=0.3)
        return
    result = prune_model(model, ratio=0.3)
    pruned = result.model
    assert type(pruned).__module__.startswith("keras."), "a Keras 3 model must stay Keras 3"
    rep = result.report
    assert rep["macs_after"] < 0.75 * rep["macs_before"], rep["macs_after"] / rep["macs_before"]
    assert rep["params_after"] < rep["params_before"]
    path = save_model(pruned, tmp_path / f"{name}.keras")
    back = keras.saving.load_model(path, compile=False)  # plain Keras 3, no custom objects
    assert [tuple(t.shape) for t in back.inputs] == [tuple(t.shape) for t in model.inputs]
    assert [tuple(t.shape) for t in back.outputs] == [tuple(t.shape) for t in model.outputs]
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(pruned(x)), atol=1e-5)
    loaded = load_model(path)  # edgeprune's own loader takes it in safe mode
    assert loaded.flavour == "keras3"
    out32 = _run(convert(loaded.model, "float32"), x[:1])
    assert out32.shape == (1, 10) and np.isfinite(out32).all()
    np.testing.assert_allclose(out32, np.asarray(pruned(x[:1])), atol=1e-3)
    out8 = _run(convert(loaded.model, "int8", representative=x), x[:1])
    assert out8.shape == (1, 10)


@pytest.mark.parametrize("name", FAST)
def test_fast_keras3_families(name, tmp_path):
    _family_round_trip(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_keras3_family_compiles_prunes_reloads(name, tmp_path):
    _family_round_trip(name, tmp_path)
