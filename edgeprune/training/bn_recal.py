"""Re-estimate BatchNorm statistics after pruning, from unlabelled data.

Removing channels changes what every later BN sees, but its moving mean/variance still
describe the unpruned network; that mismatch, not the lost channels, causes much of the
one-shot accuracy collapse. Recomputing the exact statistics on a few hundred inputs
(calibration images are enough; no labels, no gradient steps) fixes it.
"""
from __future__ import annotations

import numpy as np


def recalibrate_batchnorm(model, x: np.ndarray, *, batch_size: int = 128) -> dict:
    """Set each BN's moving mean/variance to the statistics of its input on ``x``, in graph order.

    Modifies ``model`` in place; returns ``{"layers": [names], "samples": n}``.
    """
    from edgeprune.base.env import keras_of
    from edgeprune.training._models import as_functional

    model = as_functional(model)
    keras = keras_of(model)
    from edgeprune.load.datasets import count

    x = {k: np.asarray(v, np.float32) for k, v in x.items()} if isinstance(x, dict) else np.asarray(x, np.float32)
    done = []
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization" or len(layer._inbound_nodes) != 1:
            continue
        probe = keras.Model(model.inputs, layer.input)
        feats = probe.predict(x, batch_size=batch_size, verbose=0)
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        axis = [a % feats.ndim for a in axis]
        reduce = tuple(i for i in range(feats.ndim) if i not in axis)
        layer.moving_mean.assign(feats.mean(axis=reduce).astype(np.float32))
        layer.moving_variance.assign(feats.var(axis=reduce).astype(np.float32))
        done.append(layer.name)
    return {"layers": done, "samples": count(x)}
