"""Property: pruning channels that carry no signal leaves the outputs unchanged.

Random architectures (conv, depthwise, separable, BN, ReLU, pooling, residual adds, concat,
squeeze-and-excitation, flatten/dense heads) get some channels of every group zeroed; the
pruned model must match the original within float tolerance and really be smaller.
"""
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgeprune._env  # noqa: F401
from edgeprune._env import tf_keras
from edgeprune.pruning import prune_model
from edgeprune.pruning.importance import FixedScores

from pruning_helpers import kill_units, max_abs_diff, randomize_bn

BLOCKS = ["conv", "conv_nobias", "depthwise", "depthwise_m2", "separable", "bn", "relu", "relu6",
          "maxpool", "avgpool", "residual", "concat", "se", "dropout", "pad", "dense_pointwise",
          "upsample", "leaky", "prelu", "grouped"]


def _build(blocks, head, widths, seed):
    K = tf_keras()
    L = K.layers
    rng = np.random.default_rng(seed)
    inp = K.Input((8, 8, 3))
    x = L.Conv2D(widths[0], 3, padding="same")(inp)
    size = 8
    for i, b in enumerate(blocks):
        w = widths[(i + 1) % len(widths)]
        c = x.shape[-1]
        if b == "conv":
            x = L.Conv2D(w, 3, padding="same")(x)
        elif b == "conv_nobias":
            x = L.Conv2D(w, 1, use_bias=False)(x)
        elif b == "depthwise":
            x = L.DepthwiseConv2D(3, padding="same")(x)
        elif b == "depthwise_m2":
            x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
        elif b == "separable":
            x = L.SeparableConv2D(w, 3, padding="same", depth_multiplier=int(rng.integers(1, 3)))(x)
        elif b == "bn":
            x = L.BatchNormalization()(x)
        elif b == "relu":
            x = L.ReLU()(x)
        elif b == "relu6":
            x = L.Activation("relu6")(x) if rng.random() < 0.5 else L.ReLU(6.0)(x)
        elif b == "leaky":
            x = L.LeakyReLU(0.1)(x)
        elif b == "prelu":
            x = L.PReLU(shared_axes=[1, 2])(x)
        elif b in ("maxpool", "avgpool") and size >= 4:
            x = (L.MaxPooling2D if b == "maxpool" else L.AveragePooling2D)(2)(x)
            size //= 2
        elif b == "upsample" and size <= 4:
            x = L.UpSampling2D(2)(x)
            size *= 2
        elif b == "residual":
            y = L.Conv2D(c, 3, padding="same")(x)
            y = L.ReLU()(y)
            y = L.Conv2D(c, 1)(y)
            x = L.Add()([x, y])
        elif b == "concat":
            a = L.Conv2D(w, 1)(x)
            bb = L.Conv2D(widths[0], 3, padding="same")(x)
            x = L.Concatenate()([a, x, bb])
        elif b == "se":
            s = L.GlobalAveragePooling2D(keepdims=bool(rng.integers(2)))(x)
            if len(s.shape) == 2:
                s = L.Reshape((1, 1, c))(s)
            s = L.Conv2D(max(2, c // 2), 1, activation="relu")(s)
            s = L.Conv2D(c, 1)(s)
            x = L.Multiply()([x, s])
        elif b == "grouped" and c % 2 == 0:
            x = L.Conv2D(c // 2 * 3, 3, groups=c // 2, padding="same")(x)
        elif b == "dropout":
            x = L.Dropout(0.3)(x)
        elif b == "pad":
            x = L.ZeroPadding2D(1)(x)
            x = L.Conv2D(w, 3)(x)
        elif b == "dense_pointwise":
            x = L.Dense(w)(x)
    if head == "flatten":
        x = L.Flatten()(x)
        x = L.Dense(6)(x)
    elif head == "gap":
        x = L.GlobalAveragePooling2D()(x)
        x = L.Dense(12)(x)
        x = L.ReLU()(x)
    else:
        x = L.GlobalMaxPooling2D()(x)
    out = L.Dense(4)(x)
    model = K.Model(inp, out)
    randomize_bn(model, seed)
    return model


@settings(max_examples=int(os.environ.get("EDGEPRUNE_PROPERTY_EXAMPLES", "25")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=7),
       head=st.sampled_from(["flatten", "gap", "gmp"]),
       widths=st.lists(st.sampled_from([4, 6, 8, 12]), min_size=1, max_size=3),
       ratio=st.sampled_from([0.25, 0.5, 0.7]),
       seed=st.integers(0, 1000))
def test_dead_channels_prune_exactly(blocks, head, widths, ratio, seed):
    tf_keras().backend.clear_session()
    model = _build(blocks, head, widths, seed)
    scores, dead = kill_units(model, ratio, seed)
    result = prune_model(model, ratio=ratio, criterion=FixedScores(scores))
    pruned = result.model
    x = np.random.default_rng(seed).normal(size=(3, 8, 8, 3)).astype(np.float32)
    diff, scale = max_abs_diff(model, pruned, x)
    assert diff <= 1e-4 * max(1.0, scale), (blocks, head, diff)
    assert [l.name for l in pruned.layers] == [l.name for l in model.layers]
    assert pruned.output_shape == model.output_shape
    if dead.any():
        assert result.report["params_after"] < result.report["params_before"]
        assert result.report["macs_after"] <= result.report["macs_before"]
    assert pruned.count_params() == result.report["params_after"]
