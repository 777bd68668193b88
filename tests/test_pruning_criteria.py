"""Importance criteria: each one measures what its published definition says."""
import numpy as np
import pytest

import edgeprune.base.env  # noqa: F401
from edgeprune.base.env import tf_keras
from edgeprune.load.graph import trace
from edgeprune.pruning import prune_model
from edgeprune.pruning.groups import build_groups
from edgeprune.pruning.importance import get_criterion


@pytest.fixture(autouse=True)
def _fresh_session():
    tf_keras().backend.clear_session()
    yield


def _conv_bn_relu(width=4, seed=0):
    K = tf_keras()
    L = K.layers
    K.utils.set_random_seed(seed)
    i = K.Input((8, 8, 3))
    x = L.Conv2D(width, 3, padding="same", use_bias=False, name="a")(i)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="ra")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return K.Model(i, L.Dense(3, activation="softmax", name="out")(x))


def _inputs(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 3)).astype(np.float32), rng.integers(0, 3, n)


def test_taylor_measures_the_feature_map_not_the_kernel():
    """Channel 0 has an all-zero kernel, but BN's beta makes it a large constant that the
    classifier reads heavily: removing it changes the output a lot. A weight-based score
    (|grad x weight| on the kernel) calls it worthless; the feature-map Taylor score keeps it."""
    m = _conv_bn_relu()
    k = m.get_layer("a").get_weights()
    k[0][..., 0] = 0.0
    m.get_layer("a").set_weights(k)
    gamma, beta, mean, var = m.get_layer("bn").get_weights()
    beta[0] = 3.0
    m.get_layer("bn").set_weights([gamma, beta, mean, var])
    w, b = m.get_layer("out").get_weights()
    w[1:] = 0.01 * np.sign(w[1:])
    w[0] = [2.0, -2.0, 0.5]
    m.get_layer("out").set_weights([w, b])
    x, y = _inputs()
    for labels in (y, None):  # labels, then pseudo-labels
        pruned = prune_model(m, ratio=0.25, criterion="taylor", data=x, labels=labels).model
        kept = pruned.get_layer("bn").beta.numpy()
        assert 3.0 in kept, "the zero-kernel, high-output channel must be kept"


def test_taylor_equals_the_per_sample_first_order_loss_change():
    """score_c = mean over samples of |sum over positions of a * dL/da| / positions; checked
    against a finite difference: scaling BN gamma/beta of channel c by (1 + e) scales the
    post-ReLU channel by (1 + e), so dL_n/de = sum over positions of a * dL_n/da."""
    m = _conv_bn_relu(width=4, seed=1)
    x, y = _inputs(24, seed=1)
    gs = build_groups(trace(m))
    members = dict(get_criterion("taylor").members(gs, x, y))
    (key, scores), = members.items()
    assert key[0] == "ra"  # the tensor the consumers read: post-BN, post-activation
    K = tf_keras()
    loss = K.losses.SparseCategoricalCrossentropy(reduction="none")
    bn = m.get_layer("bn")
    base = bn.get_weights()
    eps, positions = 1e-3, 64
    expected = []
    for c in range(4):
        per_sample = []
        for sign in (1, -1):
            w = [v.copy() for v in base]
            w[0][c] *= 1 + sign * eps
            w[1][c] *= 1 + sign * eps
            bn.set_weights(w)
            per_sample.append(loss(y, m(x, training=False)).numpy().astype(np.float64))
        bn.set_weights(base)
        expected.append(np.mean(np.abs((per_sample[0] - per_sample[1]) / (2 * eps))) / positions)
    np.testing.assert_allclose(scores, expected, rtol=0.05, atol=1e-6)


def test_activation_statistics_read_the_post_activation_tensor():
    """APoZ: fewer zeros after ReLU = more important; mean activation: larger = more important."""
    m = _conv_bn_relu(width=4, seed=2)
    gamma, beta, mean, var = m.get_layer("bn").get_weights()
    gamma[:] = 1.0
    mean[:] = 0.0
    var[:] = 1.0
    beta[:] = [0.0, -5.0, 5.0, 0.0]  # channel 1 is almost always 0 after ReLU, channel 2 large
    m.get_layer("bn").set_weights([gamma, beta, mean, var])
    x, _ = _inputs()
    gs = build_groups(trace(m))
    apoz = dict(get_criterion("apoz").members(gs, x))
    mact = dict(get_criterion("mean_activation").members(gs, x))
    (key, a), = apoz.items()
    assert key[0] == "ra" and int(np.argmin(a)) == 1 and int(np.argmax(a)) == 2
    assert int(np.argmin(mact[key])) == 1 and int(np.argmax(mact[key])) == 2


def test_caller_scores_with_negative_values_keep_their_order():
    """Group normalisation used to turn a group whose mean score was <= 0 into all ones,
    silently discarding the ranking (e.g. loss deltas from a sensitivity analysis)."""
    from edgeprune.pruning.importance import FixedScores

    m = _conv_bn_relu(width=8, seed=3)
    gs = build_groups(trace(m))
    (g,) = gs.prunable
    raw = np.zeros(len(gs.unit_group))
    order = np.array([-5.0, 3.0, -1.0, 0.5, -4.0, 2.0, -0.5, 1.0])
    raw[g.units] = order
    scores = FixedScores(raw).score(gs)
    assert np.all(np.isfinite(scores[g.units]))
    np.testing.assert_array_equal(np.argsort(scores[g.units]), np.argsort(order))
    pruned = prune_model(m, ratio=0.5, criterion=FixedScores(raw)).model
    kernel_old, kernel_new = m.get_layer("a").kernel.numpy(), pruned.get_layer("a").kernel.numpy()
    kept = {int(np.flatnonzero([np.allclose(kernel_old[..., j], kernel_new[..., i]) for j in range(8)])[0])
            for i in range(kernel_new.shape[-1])}
    assert kept == set(np.argsort(order)[4:].tolist())
