"""Property: pruning channels that carry no signal leaves the outputs unchanged.

Random architectures (conv, depthwise, separable, BN, ReLU, pooling, residual adds, concat,
squeeze-and-excitation, flatten/dense heads, operation nodes such as ``x + 3.0`` and
``x * gate``) in both Keras flavours, and random multi-input/multi-output recurrent models
(LSTM/GRU/SimpleRNN units, Bidirectional, Embedding, dilated Conv1D), get some channels of
every group zeroed; the pruned model must match the original within float tolerance and
really be smaller.
"""
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pruning_helpers import kill_units, max_abs_diff, randomize_bn

import edgeprune.base.env  # noqa: F401
from edgeprune.base.env import keras3, tf_keras
from edgeprune.pruning import prune_model
from edgeprune.pruning.importance import FixedScores

BLOCKS = ["conv", "conv_nobias", "depthwise", "depthwise_m2", "separable", "bn", "relu", "relu6",
          "maxpool", "avgpool", "residual", "concat", "se", "dropout", "pad", "dense_pointwise",
          "upsample", "leaky", "prelu", "grouped", "hard_swish_op", "gate_op"]


def _build(blocks, head, widths, seed, K=None):
    K = K or tf_keras()
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
        elif b == "hard_swish_op":  # operation nodes: Keras 3 ops / tf_keras TFOpLambda
            x = L.Multiply()([x, L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
        elif b == "gate_op":  # tensor x tensor through an operator, not a layer
            x = x * L.Conv2D(c, 1, activation="sigmoid")(x)
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
@given(flavour=st.sampled_from(["tf_keras", "keras3"]),
       blocks=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=7),
       head=st.sampled_from(["flatten", "gap", "gmp"]),
       widths=st.lists(st.sampled_from([4, 6, 8, 12]), min_size=1, max_size=3),
       ratio=st.sampled_from([0.25, 0.5, 0.7]),
       seed=st.integers(0, 1000))
def test_dead_channels_prune_exactly(flavour, blocks, head, widths, ratio, seed):
    K = keras3() if flavour == "keras3" else tf_keras()
    K.backend.clear_session()
    model = _build(blocks, head, widths, seed, K)
    scores, dead = kill_units(model, ratio, seed)
    result = prune_model(model, ratio=ratio, criterion=FixedScores(scores))
    pruned = result.model
    x = np.random.default_rng(seed).normal(size=(3, 8, 8, 3)).astype(np.float32)
    diff, scale = max_abs_diff(model, pruned, x)
    assert diff <= 1e-4 * max(1.0, scale), (blocks, head, diff)
    assert type(pruned).__module__.split(".")[0] == type(model).__module__.split(".")[0]  # same flavour
    assert [l.name for l in pruned.layers] == [l.name for l in model.layers]
    assert [tuple(t.shape) for t in pruned.outputs] == [tuple(t.shape) for t in model.outputs]
    if dead.any():
        assert result.report["params_after"] < result.report["params_before"]
        assert result.report["macs_after"] <= result.report["macs_before"]
    assert pruned.count_params() == result.report["params_after"]


def _build_sequence(cell, bidirectional, embed, seed, K):
    """Two inputs (a token sequence or a feature sequence, and a metadata vector), two heads."""
    L = K.layers
    rng = np.random.default_rng(seed)
    if embed:
        tokens = K.Input((10,), dtype="int32", name="tokens")
        x = L.Embedding(20, 8)(tokens)
    else:
        tokens = K.Input((10, 5), name="tokens")
        x = L.Conv1D(8, 3, dilation_rate=2, padding="causal", activation="relu")(tokens)
    x = L.Conv1D(6, 3, padding="same")(x)
    x = L.BatchNormalization()(x)
    layer = getattr(L, cell)(int(rng.integers(4, 9)), return_sequences=bool(rng.integers(2)))
    x = (L.Bidirectional(layer) if bidirectional else layer)(x)
    if len(x.shape) == 3:
        x = L.TimeDistributed(L.Dense(7, activation="relu"))(x)
        x = L.GlobalAveragePooling1D()(x)
    meta = K.Input((3,), name="meta")
    m = L.Dense(5, activation="relu")(meta)
    h = L.Concatenate()([x, m])
    h = L.Dense(9, activation="relu")(h)
    cls = L.Dense(4, activation="softmax", name="class_head")(h)
    reg = L.Dense(1, name="value_head")(h)
    model = K.Model([tokens, meta], [cls, reg])
    randomize_bn(model, seed)
    return model


@settings(max_examples=int(os.environ.get("EDGEPRUNE_PROPERTY_EXAMPLES", "25")) // 2, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(flavour=st.sampled_from(["tf_keras", "keras3"]),
       cell=st.sampled_from(["LSTM", "GRU", "SimpleRNN"]),
       bidirectional=st.booleans(), embed=st.booleans(),
       ratio=st.sampled_from([0.25, 0.5]), seed=st.integers(0, 1000))
def test_dead_recurrent_units_prune_exactly_multi_io(flavour, cell, bidirectional, embed, ratio, seed):
    K = keras3() if flavour == "keras3" else tf_keras()
    K.backend.clear_session()
    model = _build_sequence(cell, bidirectional, embed, seed, K)
    scores, dead = kill_units(model, ratio, seed)
    result = prune_model(model, ratio=ratio, criterion=FixedScores(scores))
    pruned = result.model
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 20, (3, 10)).astype(np.int32) if embed else rng.normal(size=(3, 10, 5)).astype(np.float32)
    x = [tokens, rng.normal(size=(3, 3)).astype(np.float32)]
    before, after = model(x, training=False), pruned(x, training=False)
    for a, b in zip(before, after):  # both heads, locked, unchanged
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape
        assert np.max(np.abs(a - b)) <= 1e-4 * max(1.0, float(np.max(np.abs(a)))), (cell, bidirectional)
    rnn = next(l for l in pruned.layers if type(l).__name__ in (cell, "Bidirectional"))
    original = next(l for l in model.layers if l.name == rnn.name)
    units = lambda l: (l.forward_layer if hasattr(l, "forward_layer") else l).units  # noqa: E731
    if dead.any():
        assert result.report["params_after"] < result.report["params_before"]
        assert units(rnn) <= units(original)
    assert pruned.count_params() == result.report["params_after"]
