"""Regressions of issue #23 (keras-hub backbones through edgeprune), each with the real model:

- a layer whose constructor renames itself (keras-hub MobileNet's ``DepthwiseConvBlock`` appends
  ``_0``) ended surgery in an internal KeyError: rebuilt layers are matched to the graph by
  position and keep their config's name (edgeprune/pruning/surgery.py);
- a functional model returning a dict whose outputs all come from one layer (keras-hub HGNetV2)
  names every output after that layer, and conversion looked the dict up by those names
  (edgeprune/quantize/convert.py);
- DINOv2 prunes its residual width (layer scales included), head size and MLP width, feature
  pyramid outputs included (edgeprune/pruning/rules/keras_hub_dinov2.py); its SwiGLU variant
  stays locked with the reason in ``inspect``, its MACs still counted.

Real converter and interpreter; tiny models.
"""
from __future__ import annotations

import numpy as np
import pytest

import edgeprune.base.env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from edgeprune import prune_model
from edgeprune.base.env import keras3
from edgeprune.device.api import evaluate_tflite
from edgeprune.load.graph import trace
from edgeprune.pruning.macs import total_macs
from edgeprune.quantize.convert import convert
from edgeprune.quantize.inspection import inspect_tflite

TOLERANCE = 0.02  # pruner MACs vs the artifact's (edgeprune/pruning/macs.py)


def _sample(model, n=2):
    return np.random.default_rng(0).uniform(0, 1, (n, *model.inputs[0].shape[1:])).astype("float32")


def _artifact_outputs(model, x) -> list:
    outs = evaluate_tflite(convert(model, "float32"), x, trusted=True)["outputs"]
    return list(outs.values()) if isinstance(outs, dict) else [outs]


def _assert_artifact_agrees(model, x):
    keras_out = model.predict(x, verbose=0)
    (out,) = _artifact_outputs(model, x)
    np.testing.assert_allclose(np.asarray(out).reshape(keras_out.shape), keras_out, atol=1e-4)


def _assert_macs_agree(model):
    pruner, artifact = total_macs(trace(model)), inspect_tflite(convert(model, "float32"))["macs"]
    assert artifact > 0 and abs(pruner - artifact) / artifact <= TOLERANCE, (pruner, artifact)


# ------------------------------------------------------------------ a layer that renames itself

_RENAMING = []


def _renaming_dense():
    """A Dense whose constructor appends "_0" to its name, as keras-hub's DepthwiseConvBlock
    does: built from its own config it comes back under another name."""
    if not _RENAMING:
        keras = keras3()

        @keras.saving.register_keras_serializable(package="edgeprune_regressions")
        class RenamingDense(keras.layers.Dense):
            def __init__(self, units, name=None, **kwargs):
                super().__init__(units, name=None if name is None else f"{name}_0", **kwargs)

        from edgeprune.pruning.rules import DenseRule, register_rule

        register_rule("RenamingDense", DenseRule())
        _RENAMING.append(RenamingDense)
    return _RENAMING[0]


def test_a_layer_that_renames_itself_prunes_and_keeps_its_name():
    keras, RenamingDense = keras3(), _renaming_dense()
    x_in = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu", name="first")(x_in)
    h = RenamingDense(16, activation="relu", name="mid")(h)
    model = keras.Model(x_in, keras.layers.Dense(3, name="last")(h))
    assert model.get_layer("mid_0")  # the name its config carries

    for name in ("first", "mid_0"):  # half the units dead (zero weights, zero bias): l1 removes them
        kernel, bias = model.get_layer(name).get_weights()
        kernel[:, 8:], bias[8:] = 0.0, 0.0
        model.get_layer(name).set_weights([kernel, bias])

    result = prune_model(model, ratio=0.5, criterion="l1")
    pruned = result.model
    names = [layer.name for layer in pruned.layers]
    assert "mid_0" in names and "mid_0_0" not in names  # its config's name, not a second "_0"
    assert pruned.get_layer("mid_0").kernel.shape == (8, 8)
    reported = {row["name"]: row for row in result.report["layers"]}
    assert reported["mid_0"]["channels_after"] == 8  # the report finds it under its name
    x = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    # the dead units went, and each kept layer got its own weights: the same function
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_keras_hub_mobilenet_prunes_without_internal_error():
    pytest.importorskip("keras_hub")
    import hub_models

    model = hub_models.mobilenet()
    result = prune_model(model, ratio=0.5)
    names = {layer.name for layer in result.model.layers}
    assert "block_0_0" in names and "block_0_0_0" not in names
    # its blocks prune now (tests/test_rules_keras_hub_mobilenet.py)
    assert result.report["macs_after"] < result.report["macs_before"]
    assert not any("no pruning rule" in why for why in result.report["locked"])
    x = _sample(model)
    assert result.model.predict(x, verbose=0).shape[:-1] == model.predict(x, verbose=0).shape[:-1]


# ------------------------------------------------------------------ dict outputs named after one layer

def test_hgnetv2_dict_outputs_convert_in_keras_order(tmp_path):
    pytest.importorskip("keras_hub")
    import hub_models

    from edgeprune.load.model_io import load_model

    path = tmp_path / "hgnetv2.keras"
    hub_models.hgnetv2().save(path)
    model = load_model(path).model  # as a user's file arrives
    assert len(set(model.output_names)) < len(model.output_names)  # the case: names repeat
    x = _sample(model, 1)
    keras_out = model.predict(x, verbose=0)
    outs = evaluate_tflite(convert(model, "float32"), x, trusted=True)["outputs"]
    # the artifact's output_i is the i-th output of the order Keras flattens the dict in
    # (model.outputs: keys sorted)
    assert [tuple(t.shape[1:]) for t in model.outputs] == [keras_out[k].shape[1:] for k in sorted(keras_out)]
    assert sorted(outs) == ["output_0", "output_1", "output_2"]
    for i, key in enumerate(sorted(keras_out)):
        out = np.asarray(outs[f"output_{i}"])
        assert out.shape == keras_out[key].shape, key
        np.testing.assert_allclose(out, keras_out[key], atol=1e-4)


# ------------------------------------------------------------------ DINOv2

def _dinov2(**kwargs):
    keras_hub = pytest.importorskip("keras_hub")
    return keras_hub.models.DINOV2Backbone(
        patch_size=8, num_layers=2, hidden_dim=32, num_heads=2, intermediate_dim=64, image_shape=(32, 32, 3),
        position_embedding_shape=(32, 32, 3), **kwargs)


def _dinov2_classifier(pyramid=False):
    """DINOv2 with a pooled 10-class head (its residual stream is then no model output); with
    ``pyramid`` the head also reads the first block's output (the encoder's second output)."""
    K = keras3()
    backbone = _dinov2()
    x = K.layers.GlobalAveragePooling1D()(backbone.outputs[0])
    if pyramid:
        stage = K.layers.GlobalAveragePooling1D()(backbone.pyramid_outputs["stage1"])
        x = K.layers.Concatenate()([x, stage])
    return K.Model(backbone.inputs, K.layers.Dense(10, name="head")(x))


@pytest.mark.parametrize("pyramid", [False, True])
def test_dinov2_prunes_hidden_heads_and_mlp(pyramid):
    model = _dinov2_classifier(pyramid)
    result = prune_model(model, ratio=0.5)
    pruned, report = result.model, result.report
    assert not [why for why in report["locked"] if "DINOV2" in why or "no pruning rule" in why], report["locked"]
    encoder = pruned.get_layer("encoder")
    assert (encoder.hidden_dim, encoder.intermediate_dim) == (16, 32)
    block = encoder.layers[0]
    assert block.attention.attention.get_config()["key_dim"] == 16 // 2  # head size follows hidden_dim
    assert block.layer_scale1.lambda1.shape == (16,)
    assert pruned.get_layer("embeddings").hidden_dim == 16
    x = _sample(model)
    assert pruned.predict(x, verbose=0).shape == (2, 10)
    assert report["macs_after"] < report["macs_before"]
    assert report["macs_after"] == total_macs(trace(pruned))
    _assert_artifact_agrees(pruned, x)
    _assert_macs_agree(model)
    _assert_macs_agree(pruned)
    zero = prune_model(model, ratio=0.0).model
    np.testing.assert_array_equal(zero.predict(x, verbose=0), model.predict(x, verbose=0))


def test_dinov2_residual_channels_are_ranked_with_their_layer_scales():
    """A channel that every block writes with a large layer scale outranks one whose scale is
    tiny, whatever the unscaled projections say (pretrained DINOv2 scales span 1e-5..1)."""
    model = _dinov2_classifier()
    encoder = model.get_layer("encoder")
    weights, index = encoder.get_weights(), {w.path.split("/", 1)[1]: i for i, w in enumerate(encoder.weights)}
    strong = np.arange(16, 32)
    for block in ("layers_0", "layers_1"):
        for scale in ("layer_scale1", "layer_scale2"):
            lam = np.full(32, 1e-4, "float32")
            lam[strong] = 1.0
            weights[index[f"{block}/{scale}/lambda1"]] = lam
    encoder.set_weights(weights)
    pruned = prune_model(model, ratio=0.5, criterion="l1").model
    kept_lambda = pruned.get_layer("encoder").layers[0].layer_scale1.lambda1.numpy()
    np.testing.assert_array_equal(kept_lambda, np.ones(16, "float32"))


def test_dinov2_swiglu_stays_locked_with_its_reason_and_counted(tmp_path):
    from helpers_models import invoke_cli

    model = _dinov2(use_swiglu_ffn=True)
    _assert_macs_agree(model)  # locked, yet its attention and SwiGLU MLP are counted
    path = tmp_path / "swiglu.keras"
    model.save(path)
    code, result = invoke_cli(["inspect", str(path)])
    assert code == 0, result.output
    assert "use_swiglu_ffn=True" in " ".join(result.output.split())
