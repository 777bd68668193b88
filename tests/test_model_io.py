"""Loading every Keras flavour as itself, refusing bad or unsafe input, saving back; the tf_keras
translation at tfmot's door."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
from helpers_models import (
    digits_like,
    predict,
    tiny_keras3_cnn,
    tiny_keras3_resnet,
    tiny_tf_keras_cnn,
)

import edgeprune.base.env as _env
from edgeprune.base.errors import InputError, UnsafeModelError
from edgeprune.load.model_io import load_model, save_model, to_tf_keras


@pytest.fixture(scope="module")
def k3_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("k3") / "net.keras"
    model = tiny_keras3_resnet()
    model.save(path)
    return path, model


def _is_functional_tf_keras(model) -> bool:
    tk = _env.tf_keras()
    return isinstance(model, tk.Model) and model._is_graph_network and not isinstance(model, tk.Sequential)


def _is_functional_keras3(model) -> bool:
    from keras.src.models.functional import Functional

    k = _env.keras3()
    return isinstance(model, Functional) and not isinstance(model, k.Sequential)


def test_keras3_mobilenetv2_translates_bit_identically(tmp_path):
    import keras

    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35)
    path = tmp_path / "mnv2.keras"
    model.save(path)
    loaded = load_model(path)
    assert loaded.flavour == "keras3" and loaded.kind == "keras_zip"
    assert _is_functional_keras3(loaded.model)  # Keras 3 stays Keras 3
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(predict(loaded.model, x), predict(model, x), atol=1e-6)
    translated = to_tf_keras(loaded.model)  # tfmot's door only
    assert _is_functional_tf_keras(translated)
    np.testing.assert_allclose(predict(translated, x), predict(model, x), atol=1e-6)
    assert translated.count_params() == model.count_params()


def test_keras3_residual_concat_nested_sequential(k3_file):
    path, model = k3_file
    loaded = load_model(path)
    assert _is_functional_keras3(loaded.model)
    assert [layer.name for layer in loaded.model.layers][1:4] == ["c1", "inner", "add"]
    x = digits_like(4)
    np.testing.assert_allclose(predict(loaded.model, x), predict(model, x), atol=1e-6)
    assert len(loaded.sha256) == 64


def test_keras3_top_level_sequential_becomes_functional(tmp_path):
    import keras

    seq = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, name="d"), keras.layers.BatchNormalization()])
    seq.save(tmp_path / "seq.keras")
    loaded = load_model(tmp_path / "seq.keras")
    assert _is_functional_keras3(loaded.model)
    x = np.random.default_rng(1).random((3, 5), dtype=np.float32)
    np.testing.assert_allclose(predict(loaded.model, x), predict(seq, x), atol=1e-6)


def test_tf_keras_h5_keras_and_savedmodel(tmp_path):
    tk = _env.tf_keras()
    model = tiny_tf_keras_cnn()
    x = digits_like(3)
    model.save(tmp_path / "m.h5")
    model.save(tmp_path / "m.keras")
    tk.models.save_model(model, tmp_path / "sm", save_format="tf")
    for name, kind in (("m.h5", "h5"), ("m.keras", "keras_zip"), ("sm", "savedmodel")):
        loaded = load_model(tmp_path / name)
        assert (loaded.flavour, loaded.kind) == ("tf_keras", kind)
        assert _is_functional_tf_keras(loaded.model)
        np.testing.assert_allclose(predict(loaded.model, x), predict(model, x), atol=1e-6)


def test_tf_keras_sequential_h5_becomes_functional(tmp_path):
    tk = _env.tf_keras()
    seq = tk.Sequential([tk.Input((4,)), tk.layers.Dense(2)])
    seq.save(tmp_path / "s.h5")
    assert _is_functional_tf_keras(load_model(tmp_path / "s.h5").model)


def test_bare_savedmodel_loads_for_compile_only(tmp_path):
    import numpy as np

    from edgeprune.load.model_io.savedmodel import require_keras

    tf = _env.tf()

    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x):
            return 2 * x

    tf.saved_model.save(Doubler(), str(tmp_path / "bare"))
    loaded = load_model(tmp_path / "bare")
    assert loaded.kind == "savedmodel_bare" and loaded.model.inputs[0].shape == (None, 4)
    np.testing.assert_allclose(loaded.model.predict(np.ones((3, 4), np.float32)), 2 * np.ones((3, 4)))
    with pytest.raises(InputError, match="pruning needs a Keras graph"):
        require_keras(loaded.model, "pruning")


@pytest.mark.parametrize("make, reason", [
    (lambda p: p, "no such file"),
    (lambda p: (p.write_bytes(b""), p)[1], "empty file"),
    (lambda p: (p.write_text("hello, not a model"), p)[1], "not a Keras model"),
    (lambda p: (p.mkdir(), p)[1], "not a SavedModel"),
])
def test_unreadable_inputs(tmp_path, make, reason):
    path = make(tmp_path / "model.keras")
    with pytest.raises(InputError, match=reason) as info:
        load_model(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_keras_zip(tmp_path, k3_file):
    data = k3_file[0].read_bytes()
    bad = tmp_path / "cut.keras"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.keras: unreadable .keras archive"):
        load_model(bad)


def test_zip_without_config_is_not_a_model(tmp_path):
    bad = tmp_path / "other.keras"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(InputError, match="without config.json"):
        load_model(bad)


def test_truncated_h5(tmp_path):
    good = tmp_path / "m.h5"
    tiny_tf_keras_cnn().save(good)
    bad = tmp_path / "cut.h5"
    bad.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(InputError, match="cut.h5"):
        load_model(bad)


def test_weights_only_h5_is_refused(tmp_path):
    path = tmp_path / "w.weights.h5"
    tiny_tf_keras_cnn().save_weights(path)
    with pytest.raises(InputError, match="no model config"):
        load_model(path)


def _lambda_k3(tmp_path):
    import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    path = tmp_path / "lam.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def test_lambda_refused_in_safe_mode(tmp_path):
    path = _lambda_k3(tmp_path)
    with pytest.raises(UnsafeModelError) as info:
        load_model(path)
    msg = str(info.value)
    assert "'double'" in msg and "Lambda" in msg and "--custom-objects" in msg and "--unsafe" in msg


def test_lambda_loads_with_unsafe(tmp_path):
    loaded = load_model(_lambda_k3(tmp_path), safe_mode=False)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(predict(loaded.model, x), 2 * x)


def test_tf_keras_h5_lambda_refused(tmp_path):
    tk = _env.tf_keras()
    inputs = tk.Input((4,))
    outputs = tk.layers.Lambda(lambda t: t + 1.0, name="plus_one")(inputs)
    tk.Model(inputs, outputs).save(tmp_path / "lam.h5")
    with pytest.raises(UnsafeModelError, match="'plus_one'"):
        load_model(tmp_path / "lam.h5")


_CUSTOM_SRC = '''
import tf_keras


class Scale(tf_keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
'''


def test_custom_objects_file(tmp_path):
    tk = _env.tf_keras()
    objects = tmp_path / "objs.py"
    objects.write_text(_CUSTOM_SRC)
    from edgeprune.load.model_io import load_custom_objects

    scale = load_custom_objects(objects)["Scale"]
    inputs = tk.Input((3,))
    tk.Model(inputs, scale(3.0, name="scale")(inputs)).save(tmp_path / "custom.h5")
    with pytest.raises(UnsafeModelError, match="unknown custom class 'Scale'.*--custom-objects"):
        load_model(tmp_path / "custom.h5")
    loaded = load_model(tmp_path / "custom.h5", custom_objects=objects)
    np.testing.assert_allclose(predict(loaded.model, np.ones((1, 3), np.float32)), 3.0)
    (tmp_path / "dict.py").write_text(_CUSTOM_SRC + "\ncustom_objects = {'Scale': Scale}\n")
    assert load_model(tmp_path / "custom.h5", custom_objects=tmp_path / "dict.py").flavour == "tf_keras"


def test_custom_objects_file_errors(tmp_path):
    from edgeprune.load.model_io import load_custom_objects

    with pytest.raises(InputError, match="no such file"):
        load_custom_objects(tmp_path / "missing.py")
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(InputError, match="failed to import.*boom"):
        load_custom_objects(tmp_path / "broken.py")


def test_subclassed_model_refused(tmp_path):
    import keras

    @keras.saving.register_keras_serializable(package="edgeprune_test")
    class Sub(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Sub()
    model(np.ones((1, 3), np.float32))
    model.save(tmp_path / "sub.keras")
    with pytest.raises(InputError, match="subclassed model.*no functional graph"):
        load_model(tmp_path / "sub.keras")  # registered in this process, so Keras can build it
    with pytest.raises(InputError, match="subclassed model.*no functional graph"):
        load_model(tmp_path / "sub.keras", custom_objects={"edgeprune_test>Sub": Sub})


def test_save_keras3_round_trip(tmp_path, k3_file):
    import keras

    path, original = k3_file
    loaded = load_model(path)
    out = save_model(loaded.model, tmp_path / "back.keras", flavour="keras3")
    with zipfile.ZipFile(out) as zf:
        assert b'"keras_version": "3.' in zf.read("metadata.json")
    back = keras.saving.load_model(out)
    x = digits_like(4)
    np.testing.assert_allclose(predict(back, x), predict(original, x), atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.keras"]  # no temp files left


def test_save_tf_keras_h5_and_keras(tmp_path):
    model = tiny_tf_keras_cnn()
    x = digits_like(2)
    for name in ("m.h5", "m.keras"):
        out = save_model(model, tmp_path / name, flavour="tf_keras")
        again = load_model(out)
        assert again.flavour == "tf_keras"
        np.testing.assert_allclose(predict(again.model, x), predict(model, x), atol=1e-6)


def test_save_refuses_bad_flavour_or_suffix(tmp_path):
    model = tiny_tf_keras_cnn()
    with pytest.raises(InputError, match="unknown model flavour"):
        save_model(model, tmp_path / "m.keras", flavour="onnx")
    with pytest.raises(InputError, match="must be saved as .keras"):
        save_model(model, tmp_path / "m.h5", flavour="keras3")


def test_keras3_plain_cnn_loads(tmp_path):
    model = tiny_keras3_cnn()
    model.save(tmp_path / "c.keras")
    loaded = load_model(tmp_path / "c.keras")
    x = digits_like(2)
    np.testing.assert_allclose(predict(loaded.model, x), predict(model, x), atol=1e-6)


def test_keras3_legacy_h5_is_translated(tmp_path):
    model = tiny_keras3_resnet(seed=2)
    model.save(tmp_path / "k3.h5")
    loaded = load_model(tmp_path / "k3.h5")
    assert (loaded.flavour, loaded.kind) == ("keras3", "h5")
    x = digits_like(3)
    np.testing.assert_allclose(predict(loaded.model, x), predict(model, x), atol=1e-6)


_K3_CUSTOM_SRC = '''
import keras
import tf_keras


class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


class ScaleTF(tf_keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


custom_objects = {"Scale": Scale}
tf_keras_objects = {"Scale": ScaleTF}
'''


def test_keras3_custom_layer_with_tf_keras_twin(tmp_path):
    import keras

    from edgeprune.load.model_io import load_custom_objects

    (tmp_path / "objs.py").write_text(_K3_CUSTOM_SRC)
    objects = load_custom_objects(tmp_path / "objs.py")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, objects["Scale"](1.5, name="scale")(keras.layers.Dense(3, name="d")(inputs)))
    model.save(tmp_path / "k3custom.keras")
    with pytest.raises(UnsafeModelError, match="layer 'scale' uses unknown custom class"):
        load_model(tmp_path / "k3custom.keras")
    loaded = load_model(tmp_path / "k3custom.keras", custom_objects=tmp_path / "objs.py")
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(predict(loaded.model, x), predict(model, x), atol=1e-6)
    assert _is_functional_tf_keras(to_tf_keras(loaded.model, custom_objects=objects))
    only_k3 = load_custom_objects(tmp_path / "objs.py")
    only_k3.tf_keras.clear()
    loaded = load_model(tmp_path / "k3custom.keras", custom_objects=only_k3)  # Keras 3 needs no twin
    with pytest.raises(InputError, match="layer 'scale' \\(class Scale\\) has no tf_keras equivalent"):
        to_tf_keras(loaded.model, custom_objects=only_k3)  # tfmot's door does
