"""keras-hub MobileNet's blocks prune (issue #23): DepthwiseConvBlock, InvertedResidualBlock and
ConvBnActBlock (edgeprune/pruning/rules/keras_hub_mobilenet.py).

The model holds each case the rule tells apart: a DepthwiseConvBlock with a residual and a
squeeze-excite, an InvertedResidualBlock with squeeze-excite and stride 2, one with stride 1 and
no residual (16 -> 24 channels), one with a residual, and the ConvBnActBlock read by a head.
Real keras-hub blocks, converter and interpreter.
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

IMAGE = (32, 32, 3)


def _mobilenet_classifier():
    keras_hub = pytest.importorskip("keras_hub")
    K = keras3()
    backbone = keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[32], [48, 72]], stackwise_num_blocks=[1, 2],
        stackwise_num_filters=[[16], [24, 24]], stackwise_kernel_size=[[3], [3, 5]],
        stackwise_num_strides=[[2], [1, 1]], stackwise_se_ratio=[[0.25], [None, 0.25]],
        stackwise_activation=[["relu"], ["hard_swish", "hard_swish"]], stackwise_padding=[[1], [1, 2]],
        output_num_filters=32, depthwise_filters=16, depthwise_stride=1, depthwise_residual=True,
        squeeze_and_excite=0.5, last_layer_filter=32, image_shape=IMAGE)
    x = K.layers.GlobalAveragePooling2D()(backbone.outputs[0])
    return K.Model(backbone.inputs, K.layers.Dense(10, name="head")(x))


def _sample(n=4):
    return np.random.default_rng(0).uniform(0, 1, (n, *IMAGE)).astype("float32")


def _artifact_macs(model) -> int:
    return int(inspect_tflite(convert(model, "float32"))["macs"])


def _assert_artifact_agrees(model, x):
    keras_out = model.predict(x, verbose=0)
    outs = evaluate_tflite(convert(model, "float32"), x, trusted=True)["outputs"]
    (out,) = list(outs.values()) if isinstance(outs, dict) else [outs]
    scale = max(1.0, float(np.abs(keras_out).max()))
    np.testing.assert_allclose(np.asarray(out).reshape(keras_out.shape), keras_out, atol=1e-4 * scale)


@pytest.fixture(scope="module")
def model():
    return _mobilenet_classifier()


@pytest.fixture(scope="module")
def pruned(model):
    return prune_model(model, ratio=0.5)


def test_every_block_prunes_and_macs_fall(pruned):
    report, new = pruned.report, pruned.model
    assert not [why for why in report["locked"] if "Block" in why or "no pruning rule" in why], report["locked"]
    assert report["pruned_groups"] >= 7  # stem, 3 expanded widths, 2 block outputs, the last block
    assert report["macs_after"] < 0.5 * report["macs_before"]
    assert report["macs_after"] == total_macs(trace(new))

    dw = new.get_layer("block_0_0")  # residual: its output is the stem's group
    assert (dw.infilters, dw.filters) == (8, 8) and dw.conv1.kernel.shape == (3, 3, 1, 8)
    assert dw.se_layer.conv_reduce.kernel.shape == (1, 1, 8, 8)  # adjust_channels(8 * 0.5) = 8
    first = new.get_layer("block_1_0")
    assert first.expansion == 16 and first.conv2.kernel.shape[-1] == 16  # 32 -> 16, a multiple of 8
    assert first.squeeze_excite.conv_expand.kernel.shape == (1, 1, 8, 16)
    for name in ("block_1_0", "block_2_0", "block_2_1"):  # expanded widths move in steps of 8
        assert new.get_layer(name).expansion % 8 == 0
    assert new.get_layer("block_2_0").filters == new.get_layer("block_2_1").filters == 12  # residual group
    assert new.get_layer("block_3_0").filter == 16


def test_macs_agree_with_the_artifact_exactly(model, pruned):
    for m in (model, pruned.model):
        assert total_macs(trace(m)) == _artifact_macs(m)


def test_pruned_artifact_agrees_and_the_file_reloads_in_safe_mode(pruned, tmp_path):
    from edgeprune.load.model_io import load_model

    x = _sample()
    _assert_artifact_agrees(pruned.model, x)
    path = tmp_path / "pruned.keras"
    pruned.model.save(path)
    again = load_model(path).model  # safe mode, no custom objects
    np.testing.assert_allclose(again.predict(x, verbose=0), pruned.model.predict(x, verbose=0), atol=1e-5)


def test_ratio_zero_is_the_same_function(model):
    x = _sample()
    result = prune_model(model, ratio=0.0)
    assert result.report["macs_after"] == result.report["macs_before"]
    np.testing.assert_array_equal(result.model.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_block_without_residual_gets_none_when_its_widths_meet(model):
    """block_2_0 (stride 1, 16 -> 24, no residual) pruned to 8 -> 8: keras-hub would add its input
    back (stride 1 and infilters == filters) unless the rule keeps them apart."""
    result = prune_model(model, ratio=0.0, per_layer={"block_1_0": 0.5, "block_2_0": 0.67})
    block = result.model.get_layer("block_2_0")
    assert block.filters == 8 and block.conv1.kernel.shape[2] == 8  # the widths met
    assert not (block.stride == 1 and block.infilters == block.filters)  # keras-hub's residual test
    _assert_artifact_agrees(result.model, _sample(2))


def test_an_expanded_width_of_eight_is_locked_with_its_reason():
    pytest.importorskip("keras_hub")
    import hub_models

    result = prune_model(hub_models.mobilenet(), ratio=0.5)  # block_2_0: expansion 4 -> 8 channels
    assert any("block_2_0: expanded width 8 is keras-hub's least" in why for why in result.report["locked"])
    assert result.report["macs_after"] < result.report["macs_before"]
