"""Shared tiny models and data for the training tests (sklearn digits, 8x8x1 in [0, 1]).

Imported by the other test_training_* modules; results are cached for the session so the
baseline model is trained once.
"""
from __future__ import annotations

import functools

import numpy as np

import edgeprune.base.env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)


@functools.cache
def digits():
    """(x_train, y_train, x_val, y_val): a fixed 80/20 split of the 1797 digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    n = int(len(x) * 0.8)
    return x[:n], y[:n], x[n:], y[n:]


def small_cnn(seed: int = 0, bn: bool = False):
    """conv8 -> conv16/2 -> dense10 softmax (~3.8k params); optionally with BatchNorm."""
    from edgeprune.base.env import tf, tf_keras

    tf().random.set_seed(seed)
    k = tf_keras()
    inp = k.Input((8, 8, 1))
    x = k.layers.Conv2D(8, 3, padding="same", use_bias=not bn, name="conv1")(inp)
    if bn:
        x = k.layers.BatchNormalization(name="bn1")(x)
    x = k.layers.ReLU(name="relu1")(x)
    x = k.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = k.layers.Flatten(name="flat")(x)
    out = k.layers.Dense(10, activation="softmax", name="dense")(x)
    return k.Model(inp, out)


def train(model, epochs: int = 12, seed: int = 0):
    from edgeprune.base.env import tf

    tf().random.set_seed(seed)
    x, y, _, _ = digits()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


@functools.cache
def _trained_weights(bn: bool):
    return train(small_cnn(bn=bn)).get_weights()


def trained_cnn(bn: bool = False):
    """A fresh copy of the trained baseline (each caller may modify it)."""
    model = small_cnn(bn=bn)
    model.set_weights(_trained_weights(bn))
    return model


def write_search_inputs(folder):
    """``digits.h5`` (the trained baseline) and ``val.npz`` (the digits validation split) in
    ``folder``: what the search CLI tests pass to ``edgeprune search``."""
    trained_cnn().save(folder / "digits.h5")
    _, _, x_val, y_val = digits()
    np.savez(folder / "val.npz", x=x_val, y=y_val)
    return folder


def acc(model, x, y) -> float:
    return float(np.mean(model.predict(x, verbose=0).argmax(axis=1) == y))


def damaged(model, fraction: float = 0.6, seed: int = 1):
    """Zero a random ``fraction`` of every kernel: a stand-in for an unrecovered pruning cut."""
    rng = np.random.default_rng(seed)
    weights = [w * (rng.random(w.shape) > fraction) if w.ndim > 1 else w for w in model.get_weights()]
    model.set_weights(weights)
    return model


def quiet():
    from edgeprune.base.console import Output

    return Output(quiet=True)


def test_baseline_is_accurate():
    _, _, xv, yv = digits()
    assert acc(trained_cnn(), xv, yv) > 0.9
