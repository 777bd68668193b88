"""BatchNorm folding is exact, and BNs that cannot be folded stay (with a reason)."""
from __future__ import annotations

import numpy as np
import pytest

import edgeprune.base.env  # noqa: F401
from edgeprune.training.bn_fold import fold_batchnorm


def _randomize_bn(model, seed=0):
    from edgeprune.base.env import tf_keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, tf_keras().layers.BatchNormalization):
            layer.set_weights([rng.random(w.shape).astype(np.float32) + (0.3 if "variance" in w.name or "gamma" in w.name else -0.5)
                               for w in layer.weights])
    return model


def _build(kind):
    from edgeprune.base.env import tf_keras

    k = tf_keras()
    inp = k.Input((8, 8, 3))
    if kind == "conv":
        x = k.layers.BatchNormalization()(k.layers.Conv2D(6, 3, use_bias=False)(inp))
    elif kind == "conv_bias":
        x = k.layers.BatchNormalization()(k.layers.Conv2D(6, 3, bias_initializer="random_normal")(inp))
    elif kind == "depthwise":
        x = k.layers.BatchNormalization()(k.layers.DepthwiseConv2D(3, depth_multiplier=2)(inp))
    elif kind == "dense":
        x = k.layers.Dense(7)(k.layers.Flatten()(inp))
        x = k.layers.BatchNormalization(center=False)(x)
    elif kind == "not_after_conv":
        x = k.layers.BatchNormalization(name="bn_in")(inp)
        x = k.layers.Conv2D(4, 3, activation="relu")(x)
        x = k.layers.BatchNormalization(name="bn_after_relu")(x)
    elif kind == "branch":
        c = k.layers.Conv2D(3, 1, name="c")(inp)
        x = k.layers.Add()([k.layers.BatchNormalization(name="bn_branch")(c), c])
    x = k.layers.ReLU()(x)
    out = k.layers.Dense(3, activation="softmax")(k.layers.Flatten()(x))
    return _randomize_bn(k.Model(inp, out))


@pytest.mark.parametrize("kind", ["conv", "conv_bias", "depthwise", "dense"])
def test_fold_is_exact(kind):
    model = _build(kind)
    folded, report = fold_batchnorm(model)
    assert len(report["folded"]) == 1 and not report["kept"]
    assert not any(type(l).__name__ == "BatchNormalization" for l in folded.layers)
    x = np.random.default_rng(1).random((16, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)
    # pre-softmax check too: compare the layer before the final Dense
    assert folded.count_params() < model.count_params()


@pytest.mark.parametrize("kind, kept", [("not_after_conv", {"bn_in", "bn_after_relu"}), ("branch", {"bn_branch"})])
def test_unfoldable_bn_left_in_place(kind, kept):
    model = _build(kind)
    folded, report = fold_batchnorm(model)
    assert {item["layer"] for item in report["kept"]} == kept
    assert all(item["reason"] for item in report["kept"])
    x = np.random.default_rng(2).random((4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_fold_logits_exact_on_trained_digits():
    from test_training_fixtures import digits, trained_cnn

    model = _randomize_bn(trained_cnn(bn=True))
    folded, report = fold_batchnorm(model)
    assert report["folded"] == [{"bn": "bn1", "into": "conv1"}]
    _, _, xv, _ = digits()
    from edgeprune.training._models import logits_model

    np.testing.assert_allclose(logits_model(folded).predict(xv, verbose=0), logits_model(model).predict(xv, verbose=0),
                               rtol=1e-4, atol=1e-4)


def test_bn_recalibration_rescues_one_shot_pruning():
    from test_training_fixtures import acc, digits, small_cnn, train

    from edgeprune.base.env import tf_keras
    from edgeprune.pruning.api import prune_model
    from edgeprune.training.bn_recal import recalibrate_batchnorm

    x, _, xv, yv = digits()
    model = train(small_cnn(bn=True), epochs=15)
    pruned = prune_model(model, target_macs=0.5, criterion="l1").model
    before = acc(pruned, xv, yv)
    info = recalibrate_batchnorm(pruned, x[:512])
    assert info["layers"] == ["bn1"] and info["samples"] == 512
    bn = next(l for l in pruned.layers if l.name == "bn1")
    feats = tf_keras().Model(pruned.inputs, bn.input).predict(x[:512], verbose=0)
    np.testing.assert_allclose(bn.moving_mean.numpy(), feats.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    # Exact statistics never make a pruned model meaningfully worse; when the cut left the
    # old statistics nearly right (high `before`), accuracy may move by a sample or two.
    assert acc(pruned, xv, yv) >= before - 0.01


def test_stage_recalibrates_with_calibration_only():
    from test_training_fixtures import digits, trained_cnn

    from edgeprune.pruning.api import prune_model
    from edgeprune.training.api import run_training_stage
    from edgeprune.training.options import TrainingOptions

    x, _, _, _ = digits()
    original = trained_cnn(bn=True)
    pruned = prune_model(original, ratio=0.5).model
    stage = run_training_stage(pruned, TrainingOptions(), original=original, calibration=x[:256])
    assert stage.report["recovery"]["method"] == "bn-recalibration"
    assert stage.report["recovery"]["bn_recalibrated"] == ["bn1"]
    off = run_training_stage(pruned, TrainingOptions(bn_recalibrate=False), original=original, calibration=x[:256])
    assert off.model is pruned
