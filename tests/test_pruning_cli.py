"""``edgeprune prune`` end to end: files in both Keras flavours, options, errors, --json."""
import json

import numpy as np
import pytest

import edgeprune.base.env  # noqa: F401
from edgeprune.base.env import tf_keras
from edgeprune.cli import main
from edgeprune.device.profiles import load_profile


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


@pytest.fixture
def tfk_model(tmp_path):
    K = tf_keras()
    K.backend.clear_session()
    L = K.layers
    i = K.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same", name="conv1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    x = L.Conv2D(32, 3, strides=2, padding="same", name="block_a")(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(4, name="out")(x)
    m = K.Model(i, x)
    path = tmp_path / "tfk.keras"
    m.save(path)
    return path


@pytest.fixture
def k3_model(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv1")(i)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(24, 3, padding="same", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    m = keras.Model(i, keras.layers.Dense(3, name="out")(x))
    path = tmp_path / "k3.keras"
    m.save(path)
    return path


def test_prune_ratio_json_and_table(tfk_model, tmp_path, capsys):
    out = tmp_path / "small.keras"
    code, stdout, err = run(["prune", str(tfk_model), "--ratio", "0.5", "-o", str(out), "--json"], capsys)
    assert code == 0, err
    rep = json.loads(stdout)
    assert rep["macs_after"] < rep["macs_before"] and rep["flavour"] == "tf_keras"
    row = next(l for l in rep["layers"] if l["name"] == "conv1")
    assert (row["channels_before"], row["channels_after"]) == (16, 8)
    back = tf_keras().models.load_model(out, compile=False)
    assert back.get_layer("block_a").filters == 16
    code, stdout, _ = run(["prune", str(tfk_model), "--ratio", "0.25", "-o", str(tmp_path / "t.keras")], capsys)
    assert code == 0 and "conv1" in stdout and "MACs" in stdout


def test_keras3_file_stays_keras3(k3_model, tmp_path, capsys):
    import keras

    out = tmp_path / "k3_small.keras"
    code, stdout, err = run(["prune", str(k3_model), "--ratio", "0.5", "-o", str(out), "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["flavour"] == "keras3"
    orig, small = keras.saving.load_model(k3_model), keras.saving.load_model(out)
    assert small.get_layer("conv2").filters == 12 and small.get_layer("conv1").filters == 8
    assert small.output_shape == orig.output_shape


def test_target_macs_with_profile_rounding(tfk_model, tmp_path, capsys):
    out = tmp_path / "m.keras"
    code, stdout, err = run(["prune", str(tfk_model), "--target-macs", "0.5", "--target", "rpi5",
                             "-o", str(out), "--json"], capsys)
    assert code == 0, err
    rep = json.loads(stdout)
    assert rep["macs_after"] <= 0.5 * rep["macs_before"] and rep["round_to"] == load_profile("rpi5").pruning.round_to
    assert all(l["channels_after"] % 8 == 0 for l in rep["layers"] if l["name"] != "out")


def test_protect_per_layer_and_data_driven_criterion(tfk_model, tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    out = tmp_path / "p.keras"
    code, stdout, err = run(["prune", str(tfk_model), "--ratio", "0.5", "--protect", "conv.*",
                             "--per-layer", "block_a=0.25", "--criterion", "apoz", "--calibration",
                             str(tmp_path / "cal.npz"), "-o", str(out), "--json"], capsys)
    assert code == 0, err
    back = tf_keras().models.load_model(out, compile=False)
    assert back.get_layer("conv1").filters == 16 and back.get_layer("block_a").filters == 24


@pytest.mark.parametrize("args,message", [
    (["--ratio", "0.5", "--target-macs", "0.5"], "exactly one"),
    ([], "exactly one"),
    (["--ratio", "1.5"], "--ratio must be in"),
    (["--target-macs", "0.0001"], "unreachable"),
    (["--ratio", "0.5", "--protect", "nomatch.*"], "--protect 'nomatch.*' matches no layer"),
    (["--ratio", "0.5", "--criterion", "taylor"], "needs calibration data"),
    (["--ratio", "0.5", "--per-layer", "conv1"], "NAME_OR_REGEX=RATIO"),
])
def test_bad_input_exits_2_and_writes_nothing(tfk_model, tmp_path, capsys, args, message):
    out = tmp_path / "never.keras"
    code, _, err = run(["prune", str(tfk_model), *args, "-o", str(out)], capsys)
    assert code == 2 and message in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tfk.keras"]


def test_unknown_criterion_and_missing_model(tmp_path, capsys):
    code, _, err = run(["prune", str(tmp_path / "none.keras"), "--ratio", "0.5", "-o", str(tmp_path / "o.keras")],
                       capsys)
    assert code == 2 and "no such file" in err
    code, _, err = run(["prune", "x.keras", "--ratio", "0.5", "--criterion", "magic", "-o", "o.keras"], capsys)
    assert code == 2


def test_prune_api_file_to_file_h5(tmp_path):
    from edgeprune import prune

    K = tf_keras()
    L = K.layers
    i = K.Input((8, 8, 3))
    x = L.Conv2D(8, 3, name="c")(i)
    x = L.Flatten()(x)
    m = K.Model(i, L.Dense(2, name="out")(x))
    src = tmp_path / "m.h5"
    m.save(src)
    result = prune(src, tmp_path / "p.h5", ratio=0.5)
    assert result.report["flavour"] == "tf_keras"
    back = tf_keras().models.load_model(tmp_path / "p.h5", compile=False)
    assert back.get_layer("c").filters == 4 and back.get_layer("out").kernel.shape == (36 * 4, 2)
