"""Models and data shared by the report / inspect / verify / pack tests."""
from __future__ import annotations

import numpy as np

import edgeprune.base.env as _env


def prunable_cnn(seed: int = 0):
    """8x8x1 → conv(8) → conv(8) → dense(10): prunes on the small-cpu profile (round_to 4)."""
    tk = _env.tf_keras()
    tk.utils.set_random_seed(seed)
    inputs = tk.Input((8, 8, 1), name="image")
    h = tk.layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
    h = tk.layers.Conv2D(8, 3, activation="relu", name="conv2")(h)
    h = tk.layers.Flatten(name="flat")(h)
    outputs = tk.layers.Dense(10, activation="softmax", name="head")(h)
    return tk.Model(inputs, outputs, name="prunable")


def outlier_model(seed: int = 0):
    """A model int8 cannot quantize well: one hidden unit carries a huge constant, so the per-tensor
    activation scale of ``wide`` is ~1000x too coarse for the units that carry the signal."""
    tk = _env.tf_keras()
    tk.utils.set_random_seed(seed)
    inputs = tk.Input((8, 8, 1), name="image")
    h = tk.layers.Flatten(name="flat")(inputs)
    wide = tk.layers.Dense(16, name="wide")
    h = wide(h)
    head = tk.layers.Dense(10, activation="softmax", name="head")
    outputs = head(h)
    model = tk.Model(inputs, outputs, name="outlier")
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, (64, 16)).astype(np.float32)
    b = np.zeros(16, np.float32)
    b[15] = 4000.0  # the outlier unit
    wide.set_weights([w, b])
    hw = rng.normal(0, 3.0, (16, 10)).astype(np.float32)
    hw[15] = 0.0  # the head ignores it
    head.set_weights([hw, np.zeros(10, np.float32)])
    return model


def labelled_by(model, n: int = 64, seed: int = 0):
    """Inputs and the model's own top-1 labels (so the float model scores 100%)."""
    x = np.random.default_rng(seed).random((n, 8, 8, 1), dtype=np.float32)
    y = np.argmax(np.asarray(model(x, training=False)), axis=-1)
    return x, y


def degenerate_model(seed: int = 0):
    """A model with one degenerate tensor: ``tiny``'s outputs are ~1e-8, below the smallest range
    the converter calibrates to (its int8 scale comes out ~1e-8, coarser than the values), so its
    SQNR is about 0 dB although it changes nothing downstream; and ``dead`` is a ReLU that is
    zero on every input (a constant tensor)."""
    tk = _env.tf_keras()
    tk.utils.set_random_seed(seed)
    inputs = tk.Input((8, 8, 1), name="image")
    h = tk.layers.Flatten(name="flat")(inputs)
    live = tk.layers.Dense(10, name="live")
    tiny = tk.layers.Dense(10, name="tiny")
    dead = tk.layers.Dense(10, activation="relu", name="dead")
    s = tk.layers.Add(name="sum")([live(h), tiny(h), dead(h)])
    outputs = tk.layers.Softmax(name="head")(s)
    model = tk.Model(inputs, outputs, name="degenerate")
    rng = np.random.default_rng(seed)
    live.set_weights([rng.normal(0, 0.3, (64, 10)).astype(np.float32), np.zeros(10, np.float32)])
    tiny.set_weights([rng.normal(0, 1e-8, (64, 10)).astype(np.float32), np.zeros(10, np.float32)])
    dead.set_weights([np.zeros((64, 10), np.float32), -np.ones(10, np.float32)])
    return model
