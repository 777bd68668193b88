"""Keras 1.x-2.3 .h5 files and SavedModels without Keras metadata, through load and the CLI.

The files are written in the test (tests/legacy_files.py): the model_config JSON and the
weight groups as Keras 2.0 laid them out, and a tf.Module SavedModel.
"""
from __future__ import annotations

import json

import legacy_files as lf
import numpy as np
import pytest
from helpers_models import invoke_cli

from edgeprune.base.errors import InputError
from edgeprune.load.model_io import load_model


def _conv_valid(x, k, b):
    out = np.zeros((x.shape[0], x.shape[1] - 2, x.shape[2] - 2, k.shape[-1]), np.float32)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = np.tensordot(x[:, i:i + 3, j:j + 3, :], k, axes=([1, 2, 3], [0, 1, 2]))
    return out + b


def test_keras20_list_config_sequential_loads_with_its_weights(tmp_path):
    path, w = lf.keras20_sequential_cnn(tmp_path / "cnn.h5")
    loaded = load_model(path)
    assert loaded.kind == "h5_legacy" and loaded.flavour == "tf_keras" and loaded.keras_version == "2.0.8"
    x = np.random.default_rng(1).uniform(0, 1, (3, 8, 8, 1)).astype(np.float32)
    h = np.maximum(_conv_valid(x, *w["conv2d_1"]), 0)
    h = h.reshape(3, 3, 2, 3, 2, 4).max(axis=(2, 4)).reshape(3, -1)
    logits = h @ w["dense_1"][0] + w["dense_1"][1]
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-6)


def test_keras1_argument_names_are_translated(tmp_path):
    path, w = lf.keras1_style_mlp(tmp_path / "mlp.h5")
    model = load_model(path).model
    dense = model.get_layer("dense_1")
    assert dense.units == 8 and dense.kernel_regularizer is not None
    assert model.get_layer("dropout_1").rate == 0.5
    conv = model.get_layer("convolution2d_1")
    assert type(conv).__name__ == "Conv2D" and conv.filters == 3 and conv.padding == "same"
    np.testing.assert_array_equal(conv.get_weights()[0], w["convolution2d_1"][0])


def test_keras20_text_lstm_loads_and_converts(tmp_path):
    from edgeprune.quantize.convert import convert, op_counts

    path, w = lf.keras20_text_lstm(tmp_path / "text.h5")
    model = load_model(path).model
    assert model.inputs[0].dtype.name == "int32"
    np.testing.assert_array_equal(model.get_layer("lstm_1").get_weights()[1], w["lstm_1"][1])
    # hard_sigmoid gates (the Keras 2.0 default) keep the LSTM out of the fused op: a WHILE loop
    ops = op_counts(convert(model, "float32"))
    assert "WHILE" in ops and not [op for op in ops if op.startswith(("CUSTOM", "FLEX"))], ops


def test_unsupported_keras1_layer_is_one_line(tmp_path):
    with pytest.raises(InputError) as err:
        load_model(lf.keras1_merge_model(tmp_path / "merge.h5"))
    assert "merge_1" in str(err.value) and "Merge" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    root = tmp_path_factory.mktemp("bare")
    sm = lf.bare_saved_model(root / "sm")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (40, 8, 8, 1)).astype(np.float32)
    from edgeprune.load.model_io.savedmodel import SavedModelGraph

    y = SavedModelGraph(sm).predict(x).argmax(axis=1)
    np.savez(root / "val.npz", x=x, y=y)
    return sm, root


def test_bare_savedmodel_compiles_int8_with_calibration_and_gate(bare, tmp_path):
    sm, root = bare
    out = tmp_path / "art"
    code, result = invoke_cli(["compile", sm, "-o", out, "--quantize", "int8", "--calibration", root / "val.npz",
                               "--max-accuracy-drop", "20", "--json"])
    assert code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert manifest["source"]["kind"] == "savedmodel_bare" and manifest["quantization"]["mode"] == "int8"
    assert report["sizes"]["source_params"] == 650
    assert report["accuracy_gate"]["passed"] and report["accuracy_gate"]["samples"] == 40


@pytest.mark.parametrize("argv", [["prune", "{sm}", "--ratio", "0.5", "-o", "{tmp}/p.keras"],
                                  ["compile", "{sm}", "--ratio", "0.5", "-o", "{tmp}/art"],
                                  ["compile", "{sm}", "--train-data", "{root}/val.npz", "-o", "{tmp}/art"]])
def test_bare_savedmodel_refuses_pruning_and_training_in_one_line(bare, tmp_path, argv):
    sm, root = bare
    args = [a.format(sm=sm, tmp=tmp_path, root=root) for a in argv]
    code, result = invoke_cli(args)
    assert code == 2
    message = str(result.exception)
    assert "needs a Keras graph" in message and "keras_metadata.pb" in message and "\n" not in message
    assert not (tmp_path / "art").exists() and not (tmp_path / "p.keras").exists()
