"""keras.Model subclasses built functionally (keras-hub Backbones, a user's class) through the CLI:
loaded as their graph, pruned, saved as a functional Model that loads again; keras-hub's own
classes load in safe mode; a subclass with its own call() and a missing keras-hub are one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers_models import invoke_cli

SAVED_AS = "saved as a functional Model: {}'s config cannot describe the pruned widths"


def _resnet():
    keras_hub = pytest.importorskip("keras_hub")
    # keras-hub's basic block adds the stem to the first stage: both 64 wide
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(32, 32, 3))


def _cspnet():
    keras_hub = pytest.importorskip("keras_hub")
    return keras_hub.models.CSPNetBackbone(
        stem_filters=8, stem_kernel_size=3, stem_strides=2, stackwise_depth=[1, 1], stackwise_strides=[2, 2],
        stackwise_num_filters=[16, 32], block_type="dark_block", stage_type="dark", image_shape=(32, 32, 3))


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    model = _resnet()
    path = tmp_path_factory.mktemp("hub") / "resnet.keras"
    model.save(path)
    return path, model


def _prune_json(src, dst, *extra) -> dict:
    code, result = invoke_cli(["prune", src, "--ratio", "0.5", "-o", dst, "--json", *extra])
    assert code == 0, (result.output, result.exception)
    return _json(result.output)


def _json(output: str) -> dict:
    """The --json document of a CliRunner output (its warnings follow on the same stream)."""
    return json.JSONDecoder().raw_decode(output[output.index("{"):])[0]


def _x(seed=0):
    return np.random.default_rng(seed).random((2, 32, 32, 3), dtype=np.float32)


@pytest.mark.parametrize("build", [_resnet, _cspnet], ids=["ResNetBackbone", "CSPNetBackbone"])
def test_hub_backbone_prunes_and_loads_again_without_keras_hub_code(tmp_path, build):
    import keras

    model = build()
    src, dst = tmp_path / "m.keras", tmp_path / "pruned.keras"
    model.save(src)
    name = type(model).__name__
    report = _prune_json(src, dst)  # no --custom-objects: keras-hub's own class, safe mode
    assert report["macs_after"] < report["macs_before"]
    assert report["saved_as"] == {"class": "Functional", "from": name}
    assert any(n.startswith(SAVED_AS.format(name)) for n in report["notes"])
    pruned = keras.saving.load_model(dst, compile=False)  # Keras alone, safe mode: a plain graph
    assert type(pruned).__name__ == "Functional" and pruned.name == model.name
    assert pruned.count_params() < model.count_params()
    assert np.asarray(pruned(_x())).shape == np.asarray(model(_x())).shape
    code, result = invoke_cli(["inspect", dst, "--json"])
    assert code == 0, result.output
    facts = _json(result.output)
    assert facts["model_class"].startswith(SAVED_AS.format(name))
    assert facts["macs"] == report["macs_after"]


def test_unpruned_subclass_resaved_computes_what_the_original_did(tmp_path, resnet_file):
    import keras

    from edgeprune.load.model_io import load_model, save_model

    path, original = resnet_file
    loaded = load_model(path)
    assert loaded.subclass == "ResNetBackbone" and type(loaded.model).__name__ == "Functional"
    assert loaded.translation["functional_view"]["class"] == "ResNetBackbone"
    out = save_model(loaded.model, tmp_path / "again.keras", origin_class=loaded.origin_class)
    again = keras.saving.load_model(out, compile=False)
    np.testing.assert_array_equal(np.asarray(again(_x(1))), np.asarray(original(_x(1))))
    assert load_model(out).saved_from == "ResNetBackbone"


def test_compile_prunes_a_hub_backbone_and_keeps_the_functional_model(tmp_path, resnet_file):
    path, _ = resnet_file
    art = tmp_path / "art"
    code, result = invoke_cli(["compile", path, "-o", art, "--ratio", "0.5"])
    assert code == 0, (result.output, result.exception)
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["pruned_model"]["saved_as"].startswith(SAVED_AS.format("ResNetBackbone"))
    load = [s for s in json.loads((art / "report.json").read_text())["stages"] if s["name"] == "load"][0]
    assert load["translation"]["functional_view"]["class"] == "ResNetBackbone"
    code, result = invoke_cli(["inspect", art / "pruned.keras", "--json"])
    assert code == 0 and SAVED_AS.format("ResNetBackbone") in result.output


USER_CLASSES = '''
import keras


class Net(keras.Model):
    """A user's functional subclass: layers built in __init__, no call()."""

    def __init__(self, width=16, **kwargs):
        inputs = keras.Input((12, 12, 3))
        x = keras.layers.Conv2D(width, 3, activation="relu", name="c1")(inputs)
        x = keras.layers.Conv2D(width, 3, activation="relu", name="c2")(x)
        outputs = keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(x))
        super().__init__(inputs, outputs, **kwargs)
        self.width = width

    def get_config(self):
        return {"width": self.width, "name": self.name}


class Doubled(Net):
    """Functional inside, but its own call(): the graph is not what runs."""

    def call(self, inputs, training=None):
        return super().call(inputs, training=training) * 2.0


class Imperative(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


custom_objects = {"Net": Net, "Doubled": Doubled, "Imperative": Imperative}
'''


@pytest.fixture(scope="module")
def user_classes(tmp_path_factory):
    from edgeprune.load.model_io import load_custom_objects

    path = tmp_path_factory.mktemp("user") / "classes.py"
    path.write_text(USER_CLASSES)
    return path, load_custom_objects(path)


def test_user_functional_subclass_prunes_with_custom_objects(tmp_path, user_classes):
    import keras

    co_path, objects = user_classes
    model = objects["Net"](width=16, name="net")
    model.save(tmp_path / "net.keras")
    code, result = invoke_cli(["prune", tmp_path / "net.keras", "--ratio", "0.5", "-o", tmp_path / "p.keras"])
    assert code == 2 and "unknown custom class 'Net'" in str(result.exception)  # its code is the user's
    report = _prune_json(tmp_path / "net.keras", tmp_path / "p.keras", "--custom-objects", co_path)
    assert report["macs_after"] < report["macs_before"] and report["saved_as"]["from"] == "Net"
    pruned = keras.saving.load_model(tmp_path / "p.keras", compile=False)  # no Net code needed
    assert pruned.get_layer("c1").filters == 8
    x = np.random.default_rng(0).random((1, 12, 12, 3), dtype=np.float32)
    assert np.asarray(pruned(x)).shape == (1, 4)


def test_subclass_with_its_own_call_is_refused_in_one_line(tmp_path, user_classes):
    co_path, objects = user_classes
    objects["Doubled"](name="doubled").save(tmp_path / "doubled.keras")
    code, result = invoke_cli(["prune", tmp_path / "doubled.keras", "--ratio", "0.5", "-o", tmp_path / "p.keras",
                               "--custom-objects", co_path])
    message = str(result.exception)
    assert code == 2 and "\n" not in message
    assert "Doubled is a subclassed model with its own call() (Doubled.call)" in message
    assert "rebuild it with the functional API" in message
    imperative = objects["Imperative"](name="imp")
    imperative(np.ones((1, 3), np.float32))
    imperative.save(tmp_path / "imp.keras")
    code, result = invoke_cli(["inspect", tmp_path / "imp.keras", "--custom-objects", co_path])
    assert code == 2 and "no functional graph to prune" in str(result.exception)


def _edit_config(src, dst, edit) -> None:
    from hostile_models import edit_keras_config

    edit_keras_config(src, dst, edit)


def test_only_keras_hub_classes_get_the_pass(tmp_path, resnet_file):
    """Importing keras-hub also registers tensorflow-text's classes and keras_nlp aliases, and
    keras-hub registers functions: none of them loads from a file without --custom-objects."""
    import keras

    path, _ = resnet_file
    _edit_config(path, tmp_path / "text.keras", lambda c: c.update(registered_name="Text>WhitespaceTokenizer"))
    code, result = invoke_cli(["inspect", tmp_path / "text.keras"])
    assert code == 2 and "unknown custom class 'ResNetBackbone'" in str(result.exception)

    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs))
    plain.save(tmp_path / "plain.keras")
    upload = {"module": "keras_hub.src.utils.preset_utils", "class_name": "function",
              "config": "upload_preset", "registered_name": "keras_hub>upload_preset"}

    def name_a_hub_function(config):
        for layer in config["config"]["layers"]:
            if layer["config"]["name"] == "d":
                layer["config"]["activation"] = upload

    _edit_config(tmp_path / "plain.keras", tmp_path / "fn.keras", name_a_hub_function)
    code, result = invoke_cli(["inspect", tmp_path / "fn.keras"])
    assert code == 2 and "refers to the function 'keras_hub.src.utils.preset_utils.upload_preset'" in str(
        result.exception)


def test_without_keras_hub_the_error_names_the_extra(tmp_path, resnet_file):
    """A real CLI process in which `import keras_hub` fails, as on an install without the extra."""
    path, _ = resnet_file
    shim = tmp_path / "shim" / "keras_hub"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("No module named \'keras_hub\' (hidden by the test)")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim.parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "prune", str(path), "--ratio", "0.5",
                           "-o", str(tmp_path / "p.keras")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("edgeprune:")]
    assert lines == [f"edgeprune: error: {path}: this model uses keras-hub classes (ResNetBackbone); "
                     "install them with pip install 'edgeprune[hub]'"]
    assert "Traceback" not in proc.stderr


def test_hub_task_with_a_nested_backbone_prunes_through_the_backbone(tmp_path):
    """A keras-hub Task (ImageClassifier) holds its Backbone as a nested subclass whose input is
    the Task's own input tensor: the backbone's convolutions must prune, not lock as one layer."""
    import keras
    keras_hub = pytest.importorskip("keras_hub")

    model = keras_hub.models.ImageClassifier(backbone=_resnet(), num_classes=10)
    src, dst = tmp_path / "clf.keras", tmp_path / "pruned.keras"
    model.save(src)
    report = _prune_json(src, dst)
    assert report["macs_after"] < 0.5 * report["macs_before"]
    pruned = keras.saving.load_model(dst, compile=False)
    assert np.asarray(pruned(_x())).shape == (2, 10)


def test_a_subclass_built_in_python_prunes_through_the_api():
    """The Python API takes the model object itself (no file, so no loader): the tracer turns
    the subclass into its graph too."""
    import edgeprune
    keras_hub = pytest.importorskip("keras_hub")

    model = keras_hub.models.ImageClassifier(backbone=_resnet(), num_classes=10)
    result = edgeprune.prune_model(model, ratio=0.5)
    assert result.model.count_params() < 0.5 * model.count_params()
    assert np.asarray(result.model(_x())).shape == (2, 10)
