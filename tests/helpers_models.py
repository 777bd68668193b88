"""Tiny model builders and a CLI helper shared by the foundation tests (and anyone else)."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner

import edgeprune.base.env as _env
from edgeprune.base.errors import EdgepruneError


def tiny_tf_keras_cnn(seed: int = 0, input_shape=(8, 8, 1), classes: int = 10):
    """A ~1.5k-parameter functional tf_keras CNN with BatchNorm."""
    tk = _env.tf_keras()
    tk.utils.set_random_seed(seed)
    inputs = tk.Input(input_shape, name="image")
    h = tk.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = tk.layers.BatchNormalization(name="bn")(h)
    h = tk.layers.Flatten(name="flat")(h)
    outputs = tk.layers.Dense(classes, activation="softmax", name="head")(h)
    return tk.Model(inputs, outputs, name="tiny")


def tiny_keras3_resnet(seed: int = 0):
    """A Keras 3 functional model with a residual Add, a Concatenate and a nested Sequential."""
    import keras

    keras.utils.set_random_seed(seed)
    inner = keras.Sequential([keras.Input((6, 6, 4)), keras.layers.Conv2D(4, 1, name="inner_conv")],
                             name="inner")
    inputs = keras.Input((8, 8, 1), name="image")
    a = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inputs)
    b = inner(a)
    h = keras.layers.Add(name="add")([a, b])
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Concatenate(name="cat")([h, a])
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(h)
    return keras.Model(inputs, outputs, name="k3net")


def tiny_keras3_cnn(seed: int = 0):
    """A plain Keras 3 CNN (8x8x1 → 10), the common user case."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.Flatten(name="flat")(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(h)
    return keras.Model(inputs, outputs, name="k3cnn")


def digits_like(n: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 8, 8, 1), dtype=np.float32)


def predict(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False))


def invoke_cli(args: list[str]):
    """Run ``edgeprune ARGS`` in-process with CliRunner; return (exit code as main() maps it, result)."""
    from edgeprune.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    exc = result.exception
    if isinstance(exc, EdgepruneError):
        return exc.exit_code, result
    return result.exit_code, result
