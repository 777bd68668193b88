"""Models with several inputs and outputs: calibration keyed by input name, pruning with the
output heads locked, int8, fine-tuning and distillation with several outputs, a gate on a
chosen output, and bench/verify per output (accuracy for the class head, MSE for the
regression head). Built with Keras 3 (the common case) and tf_keras."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers_models import invoke_cli
from test_training_fixtures import digits

import edgeprune.base.env  # noqa: F401

SMALL_CPU = str(Path(__file__).parent / "data" / "small-cpu.yaml")  # rounds channels to 4


def _data(n=None):
    x, y, xv, yv = digits()
    rng = np.random.default_rng(0)

    def pack(img, labels):
        meta = rng.random((len(img), 4), dtype=np.float32)
        reg = img.reshape(len(img), -1).mean(axis=1, keepdims=True) + meta[:, :1] * 0.1
        return {"image": img, "meta": meta}, {"cls": labels, "reg": reg.astype(np.float32)}

    return pack(x, y), pack(xv, yv)


def _build(keras):
    img = keras.Input((8, 8, 1), name="image")
    meta = keras.Input((4,), name="meta")
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(img)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Flatten(name="flat")(h)
    m = keras.layers.Dense(8, activation="relu", name="meta_fc")(meta)
    z = keras.layers.Concatenate(name="cat")([h, m])
    z = keras.layers.Dense(32, activation="relu", name="trunk")(z)
    cls = keras.layers.Dense(10, activation="softmax", name="cls")(z)
    reg = keras.layers.Dense(1, name="reg")(z)
    model = keras.Model([img, meta], [cls, reg])
    model.compile("adam", {"cls": "sparse_categorical_crossentropy", "reg": "mse"})
    (x, y), _ = _data()
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from edgeprune.base.env import keras3, tf_keras

    tmp = tmp_path_factory.mktemp("mio")
    keras = keras3()
    keras.utils.set_random_seed(0)
    _build(keras).save(tmp / "k3.keras")
    _build(tf_keras()).save(tmp / "tfk.h5")
    (x, y), (xv, yv) = _data()
    np.savez(tmp / "train.npz", **x, **{f"y_{k}": v for k, v in y.items()})
    np.savez(tmp / "val.npz", **xv, **{f"y_{k}": v for k, v in yv.items()})
    np.savez(tmp / "calib.npz", image=x["image"][:100], meta=x["meta"][:100])
    return tmp


def test_engine_prunes_the_trunk_and_locks_both_heads(files):
    from edgeprune.load.model_io import load_model
    from edgeprune.pruning.api import prune_model

    for name in ("k3.keras", "tfk.h5"):
        model = load_model(files / name).model
        result = prune_model(model, target_macs=0.5)
        layers = {row["name"]: row for row in result.report["layers"]}
        assert layers["cls"]["channels_after"] == 10 and layers["reg"]["channels_after"] == 1
        assert layers["trunk"]["channels_after"] < 32 and layers["conv1"]["channels_after"] < 16
        assert result.report["macs_after"] <= 0.5 * result.report["macs_before"]
        assert [t.shape[-1] for t in result.model.outputs] == [10, 1]


def test_calibration_by_input_name_and_from_functions(files, tmp_path, monkeypatch):
    from edgeprune.load.datasets import load_arrays

    inputs = [("image", (None, 8, 8, 1)), ("meta", (None, 4))]
    x, y = load_arrays(str(files / "calib.npz"), inputs=inputs)
    assert set(x) == {"image", "meta"} and x["image"].shape == (100, 8, 8, 1) and y is None
    (tmp_path / "mio_gen.py").write_text(textwrap.dedent("""
        import numpy as np
        def dicts():
            for i in range(3):
                yield {"image": np.zeros((8, 8, 1), "float32"), "meta": np.ones(4, "float32")}
        def tuples():
            for i in range(2):
                yield np.zeros((5, 8, 8, 1), "float32"), np.ones((5, 4), "float32")
        def labelled():
            for i in range(4):
                yield ({"image": np.zeros((8, 8, 1), "float32"), "meta": np.ones(4, "float32")},
                       {"cls": i, "reg": np.float32(0.5)})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    x, _ = load_arrays("mio_gen:dicts", inputs=inputs)
    assert x["image"].shape == (3, 8, 8, 1) and x["meta"].shape == (3, 4)
    x, _ = load_arrays("mio_gen:tuples", inputs=inputs)
    assert x["image"].shape == (10, 8, 8, 1) and x["meta"].shape == (10, 4)
    x, y = load_arrays("mio_gen:labelled", inputs=inputs, outputs=["cls", "reg"])
    assert y["cls"].tolist() == [0, 1, 2, 3] and y["reg"].shape == (4,)
    np.savez(tmp_path / "one.npz", image=np.zeros((3, 8, 8, 1), np.float32))
    from edgeprune.base.errors import InputError

    with pytest.raises(InputError, match="missing meta"):
        load_arrays(str(tmp_path / "one.npz"), inputs=inputs)


@pytest.mark.slow
def test_compile_prune_distill_int8_gate_and_bench_per_output(files, tmp_path):
    out = tmp_path / "art"
    code, result = invoke_cli([
        "compile", files / "k3.keras", "-o", out, "--target-macs", "0.5", "--target", SMALL_CPU, "--quantize", "int8",
        "--calibration", files / "calib.npz", "--train-data", files / "train.npz", "--finetune-epochs", "3",
        "--distill", "--gate-output", "cls", "--max-accuracy-drop", "50", "--json"])
    assert code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["pruning"]["macs_after"] <= 0.5 * report["pruning"]["macs_before"]
    assert report["training"]["recovery"]["method"] == "distillation"
    gate = report["accuracy_gate"]
    assert gate["output"] == "cls" and gate["passed"] and len(gate["drop_ci95"]) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["mode"] == "int8" and len(manifest["inputs"]) == 2
    assert len(manifest["outputs"]) == 2 and manifest["keras_outputs"] == ["cls", "reg"]
    code, result = invoke_cli(["verify", out])  # hashes still checked; no x/y sample for two heads
    assert code == 0, result.output

    np.savez(tmp_path / "eval.npz", **_data()[1][0], **{f"y_{k}": v for k, v in _data()[1][1].items()})
    code, result = invoke_cli(["bench", out, "--runs", "3", "--val-data", tmp_path / "eval.npz",
                               "--reference", files / "k3.keras", "--gate-output", "cls",
                               "--max-accuracy-drop", "50", "--json"])
    assert code == 0, (result.output, result.exception)
    per = json.loads(result.stdout)["devices"][0]["eval"]["per_output"]
    assert 0.3 < per["cls"]["accuracy"] <= 1.0 and per["cls"]["mse"] is None  # chance is 0.1
    assert per["reg"]["accuracy"] is None and per["reg"]["mse"] >= 0.0
    assert "drop_ci95" in per["cls"] and "agreement" in per["reg"]
    # the device runner (subprocess, inputs sent as .npz by name) matches an in-process run
    # that feeds the inputs in the other order
    from edgeprune.device.api import evaluate_tflite

    (xv, yv) = _data()[1]
    direct = evaluate_tflite(out / "model.tflite", {"meta": xv["meta"], "image": xv["image"]}, yv)
    assert direct["per_output"]["cls"]["accuracy"] == pytest.approx(per["cls"]["accuracy"])
    assert direct["per_output"]["reg"]["mse"] == pytest.approx(per["reg"]["mse"], rel=1e-5)

    code, result = invoke_cli(["compile", files / "k3.keras", "-o", tmp_path / "r", "--val-data",
                               files / "val.npz", "--gate-output", "reg", "--max-accuracy-drop", "1"])
    assert code == 2 and "regression head" in str(result.exception)


@pytest.mark.slow
def test_tf_keras_two_heads_fine_tune_float32(files, tmp_path):
    out = tmp_path / "tfk"
    code, result = invoke_cli([
        "compile", files / "tfk.h5", "-o", out, "--target-macs", "0.6", "--target", SMALL_CPU, "--train-data", files / "train.npz",
        "--finetune-epochs", "2", "--max-accuracy-drop", "50", "--json"])
    assert code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["training"]["recovery"]["method"] == "fine-tuning"
    assert report["training"]["data"]["labels"] == {"cls": "sparse", "reg": "regression"}
    assert report["accuracy_gate"]["output"] == "cls"
