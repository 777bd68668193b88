"""The input range belongs to the model: --input-range > a leading Rescaling/Normalization layer >
the calibration data > the profile's preprocessing.scale (a default that refuses nothing).

A MobileNet-style model that takes [-1, 1] compiles for rpi4 (an ssh profile; benched here with
--host local) and scores what the Keras model scores; bad --input-range values are one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_models import invoke_cli

import edgeprune.base.env as _env
from edgeprune.base.errors import InputError
from edgeprune.device.profiles import load_profile
from edgeprune.load.datasets import input_range, model_input_range


def _mobilenet_style(keras, *, rescaling=None, seed: int = 0):
    """conv → depthwise → pointwise → pool → softmax, optionally behind a Rescaling layer."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3), name="image")
    h = inputs if rescaling is None else keras.layers.Rescaling(*rescaling, name="rescale")(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(h)
    h = keras.layers.Conv2D(16, 1, activation="relu", name="pw")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    outputs = keras.layers.Dense(5, activation="softmax", name="head")(h)
    return keras.Model(inputs, outputs, name="mobilenet_style")


def _labelled(model, lo: float, hi: float, n: int, seed: int):
    """Inputs in [lo, hi] and the Keras model's own top-1 labels (the float model scores 100 %)."""
    x = np.random.default_rng(seed).uniform(lo, hi, (n, 8, 8, 3)).astype(np.float32)
    return x, np.argmax(np.asarray(model(x, training=False)), axis=-1)


@pytest.fixture(scope="module")
def minus_one_to_one(tmp_path_factory):
    """A Keras 3 model that expects [-1, 1] (no layer says so), its calibration and val data."""
    import keras

    root = tmp_path_factory.mktemp("range")
    model = _mobilenet_style(keras)
    model.save(root / "m.keras")
    x, y = _labelled(model, -1, 1, 96, seed=1)
    np.savez(root / "cal.npz", x=x, y=y)
    xv, yv = _labelled(model, -1, 1, 200, seed=2)
    np.savez(root / "val.npz", x=xv, y=yv)
    np.savez(root / "val_01.npz", x=(xv + 1) / 2, y=yv)  # the same images, scaled the old profile's way
    return root


def _json(args):
    code, result = invoke_cli([*args, "--json"])
    assert code == 0, result.output
    return json.loads(result.stdout)


def test_a_minus_one_to_one_model_compiles_for_rpi4_and_scores_right(minus_one_to_one):
    root = minus_one_to_one
    out = root / "rpi4"
    _json(["compile", root / "m.keras", "--target", "rpi4", "--calibration", root / "cal.npz", "-o", out])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input_range"] == {"range": [-1.0, 1.0], "source": "calibration data", "checked": True}
    assert manifest["quantization"]["mode"] == "int8"  # rpi4's default
    assert json.loads((out / "report.json").read_text())["input_range"]["range"] == [-1.0, 1.0]
    # the TFLite metadata tells apps the same range (not the profile's [0, 1])
    inspected = _json(["inspect", out])
    assert inspected["metadata"]["input_range"] == [-1.0, 1.0]
    # benched here (rpi4 is an ssh device) on [-1, 1] data: what the Keras model scores
    bench = _json(["bench", out, "--host", "local", "--val-data", root / "val.npz", "--reference", root / "m.keras"])
    ev = bench["devices"][0]["eval"]
    assert bench["reference"]["accuracy"] == 1.0  # labels are the Keras model's own
    assert ev["accuracy"] >= 0.9 and abs(ev["accuracy_drop_points"]) <= 10
    assert bench["eval"]["input_range"]["range"] == [-1.0, 1.0]
    # the range recorded in the manifest is checked: [0, 1] data is not what the artifact takes ...
    code, result = invoke_cli(["bench", out, "--host", "local", "--val-data", root / "val_01.npz", "--json"])
    assert code == 0  # [0, 1] lies inside [-1, 1]: not refusable, but it scores worse
    worse = json.loads(result.stdout)["devices"][0]["eval"]["accuracy"]
    assert worse < ev["accuracy"]
    # ... and [0, 255] data is refused, naming the manifest as the source of the range
    np.savez(root / "val_255.npz", x=np.full((4, 8, 8, 3), 200.0, np.float32), y=np.zeros(4, np.int64))
    code, result = invoke_cli(["bench", out, "--host", "local", "--val-data", root / "val_255.npz"])
    assert code == 2 and "[-1, 1]" in str(result.exception) and "manifest" in str(result.exception)
    # --input-range overrides the manifest
    code, result = invoke_cli(["bench", out, "--host", "local", "--val-data", root / "val.npz",
                               "--input-range", "0,1"])
    assert code == 2 and "(from --input-range)" in str(result.exception)


def test_the_flag_states_the_range_and_checks_the_calibration_data(minus_one_to_one, tmp_path):
    root = minus_one_to_one
    code, result = invoke_cli(["compile", root / "m.keras", "--target", "rpi4", "--calibration", root / "cal.npz",
                               "--input-range", "0,1", "-o", tmp_path / "a"])
    assert code == 2
    message = str(result.exception)
    assert "calibration" in message and "[0, 1] (from --input-range)" in message and "--input-range" in message
    summary = _json(["compile", root / "m.keras", "--target", "rpi4", "--calibration", root / "cal.npz",
                     "--input-range=-1,1", "-o", tmp_path / "b"])
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert summary["target"] == "rpi4" and manifest["input_range"]["source"] == "--input-range"


def test_a_leading_rescaling_layer_says_what_its_input_takes(tmp_path):
    import keras

    model = _mobilenet_style(keras, rescaling=(1 / 127.5, -1.0))  # MobileNetV3-style: fed [0, 255]
    model.save(tmp_path / "r.keras")
    x, y = _labelled(model, 0, 255, 64, seed=3)
    np.savez(tmp_path / "cal.npz", x=x, y=y)
    _json(["compile", tmp_path / "r.keras", "--target", "rpi4", "--calibration", tmp_path / "cal.npz",
           "-o", tmp_path / "out"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["input_range"]["range"] == [0.0, 255.0]
    assert manifest["input_range"]["source"] == "model layer 'rescale' (Rescaling)"
    # data already rescaled to [-1, 1] would be rescaled twice: refused, naming the layer
    np.savez(tmp_path / "twice.npz", x=x / 127.5 - 1, y=y)
    code, result = invoke_cli(["compile", tmp_path / "r.keras", "--target", "rpi4", "--calibration",
                               tmp_path / "twice.npz", "-o", tmp_path / "twice"])
    assert code == 2 and "model layer 'rescale' (Rescaling)" in str(result.exception)


@pytest.mark.parametrize(("scale", "offset", "expected"), [
    (1 / 255, 0.0, (0.0, 255.0)),         # [0, 255] -> [0, 1]
    (1 / 127.5, -1.0, (0.0, 255.0)),      # [0, 255] -> [-1, 1] (MobileNetV3, Keras 3)
    (2.0, -1.0, (0.0, 1.0)),              # [0, 1] -> [-1, 1]
    (1 / 255, -0.5, (0.0, 255.0)),        # [0, 255] -> [-0.5, 0.5]
    (1000.0, 0.0, None),                  # maps no standard range onto a normalised one
])
def test_rescaling_input_range_in_both_kerases(scale, offset, expected):
    import keras

    for k in (keras, _env.tf_keras()):
        inputs = k.Input((4, 4, 3))
        model = k.Model(inputs, k.layers.Conv2D(2, 1)(k.layers.Rescaling(scale, offset=offset)(inputs)))
        found = model_input_range(model)
        assert (found and found[0]) == expected


def test_normalization_input_range():
    import keras

    rng = np.random.default_rng(0)
    for k in (keras, _env.tf_keras()):
        for lo, hi in ((0.0, 255.0), (0.0, 1.0)):
            norm = k.layers.Normalization()
            norm.adapt(rng.uniform(lo, hi, (64, 4, 4, 3)).astype(np.float32))
            inputs = k.Input((4, 4, 3))
            model = k.Model(inputs, k.layers.Conv2D(2, 1)(norm(inputs)))
            assert model_input_range(model)[0] == (lo, hi)
    # ImageNet statistics in [0, 1] (EfficientNet-style), given, not adapted
    inputs = keras.Input((4, 4, 3))
    norm = keras.layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.229 ** 2, 0.224 ** 2, 0.225 ** 2])
    assert model_input_range(keras.Model(inputs, norm(inputs)))[0] == (0.0, 1.0)
    # a Normalization of a feature vector is not a pixel range
    inputs = keras.Input((6,))
    norm = keras.layers.Normalization()
    norm.adapt(rng.uniform(0, 255, (32, 6)).astype(np.float32))
    assert model_input_range(keras.Model(inputs, keras.layers.Dense(2)(norm(inputs)))) is None


def test_precedence_flag_model_data_profile():
    import keras

    profile = load_profile("rpi4")
    inputs = keras.Input((4, 4, 3))
    layered = keras.Model(inputs, keras.layers.Rescaling(1 / 255)(inputs))
    plain = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    data = np.linspace(-1, 1, 4 * 4 * 4 * 3, dtype=np.float32).reshape(4, 4, 4, 3)
    assert input_range(profile, flag="-2,2", model=layered, data=data).scale == (-2.0, 2.0)
    assert input_range(profile, model=layered, data=data).scale == (0.0, 255.0)
    assert input_range(profile, model=plain, data=data).scale == (-1.0, 1.0)
    default = input_range(profile, model=plain)
    assert default.scale == (0.0, 1.0) and not default.checked and "rpi4" in default.source
    # data inside the profile's range keeps it; data fitting no standard range is its own span
    assert input_range(profile, data=data * 0.4 + 0.5).scale == (0.0, 1.0)
    assert input_range(profile, data=data * 3).scale == pytest.approx((-3.0, 3.0))


@pytest.mark.parametrize("bad", ["abc", "1", "2,1", "0,nan", "1,2,3", ","])
def test_bad_input_range_is_one_line(bad, tmp_path, capsys):
    from edgeprune.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["compile", str(tmp_path / "missing.keras"), f"--input-range={bad}", "-o", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error: --input-range")
    with pytest.raises(InputError):
        input_range(None, flag=bad)
