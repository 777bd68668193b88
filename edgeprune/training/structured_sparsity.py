"""Pruning during training: a structured-sparsity phase before the channels are cut.

One-shot pruning removes channels that still carry signal, so recovery starts from a broken
model (the project's own benchmark: a depthwise net at chance after a 2x cut). Here the model
first trains with a penalty that drives whole removable units towards zero, so that the cut
that follows removes channels the model has learnt to do without, and the learnt norms also
decide *how many* channels each group keeps (global ranking), which uniform width cannot.

Two penalties, added to the training loss:

- ``group-norm`` (DepGraph's group sparsity): the L2 norm of every unit's parameters taken
  together (the producer's filter, BatchNorm scale and shift, each consumer's input slice,
  pass-through depthwise filters), a group lasso;
- ``bn-l1`` (network slimming): the L1 norm of the BatchNorm scales.

Why a loss term and not a proximal step: edgeprune trains with Adam, which scales every
parameter's step to about the learning rate whatever its gradient; a proximal shrink then acts
the same on important and unimportant units (measured: every unit shrank alike, none reached
zero). As a loss term the penalty's gradient is normalised *together with* the data gradient,
so a unit the data needs resists it and one it does not drifts to zero.

Each unit's term is divided by its starting norm, and the sum by the number of units, so
``strength`` means the same on any model: at strength S the penalty starts at S. With
``growth="linear"`` it ramps from 0 to S over the phase (learn first, then sparsify).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeprune.base.console import Output, default_output

METHODS = ("group-norm", "bn-l1")
GROWTHS = ("linear", "constant")


@dataclass
class _Target:
    """One trainable weight array the penalty acts on, with its elements' unit ids."""

    layer: str
    index: int
    unit_of: np.ndarray  # int32, -1: not owned by a prunable unit


def _penalized(gs, method: str) -> list:
    """The unit parameters ``method`` acts on: all trainable ones, or only BatchNorm scales."""
    from edgeprune.pruning.group_params import unit_parameters

    return [p for p in unit_parameters(gs) if p.trainable and (method == "group-norm" or p.batchnorm_scale)]


def _groups(model, protect):
    from edgeprune.load.graph import trace
    from edgeprune.pruning.groups import build_groups

    return build_groups(trace(model), protect)


def penalty_targets(model, method: str, protect=()) -> tuple[list[_Target], np.ndarray]:
    """(weight arrays the penalty reads, starting norm of each unit over them)."""
    from edgeprune.pruning.group_params import unit_norms

    gs = _groups(model, protect)
    params = _penalized(gs, method)
    return [_Target(p.layer, p.index, p.unit_of) for p in params], unit_norms(gs, params)


class SparsityPenalty:
    """The penalty as a function of a training model's live variables (TensorFlow ops).

    ``bind(model)`` finds each target's variable in the model that trains (a clone of the
    traced one: same layer names); calling the object returns the scalar penalty; ``scale``
    is a variable the ramp callback updates every step.
    """

    def __init__(self, targets: list[_Target], start_norms: np.ndarray, *, method: str, strength: float,
                 growth: str, total_steps: int):
        from edgeprune.base.env import tf

        tf_ = tf()
        self.method = method
        self.strength = float(strength)
        self.growth = growth
        self.total_steps = max(1, int(total_steps))
        self.targets = targets
        owned = start_norms > 0
        self.n_units = len(start_norms)
        count = max(1, int(owned.sum()))
        # weight of each unit's term: 1 / (starting norm x number of units); 0 for the rest
        weight = np.where(owned, 1.0 / (np.maximum(start_norms, 1e-12) * count), 0.0)
        self._weight = tf_.constant(np.append(weight, 0.0), tf_.float32)  # last bucket: unowned
        self._ids = [tf_.constant(np.where(t.unit_of >= 0, t.unit_of, self.n_units).ravel(), tf_.int32)
                     for t in targets]
        self.scale = tf_.Variable(0.0 if growth == "linear" else self.strength, trainable=False,
                                  dtype=tf_.float32)
        self.variables: list = []

    def bind(self, model) -> None:
        from edgeprune.load.graph import model_layers

        layers = {}
        stack = list(model_layers(model))
        while stack:
            layer = stack.pop()
            layers.setdefault(layer.name, layer)
            stack.extend(getattr(layer, "layers", []) or [])
        self.variables = [layers[t.layer].weights[t.index] for t in self.targets]

    def __call__(self):
        from edgeprune.base.env import tf

        tf_ = tf()
        buckets = self.n_units + 1
        if self.method == "bn-l1":
            total = tf_.zeros([buckets])
            for var, ids in zip(self.variables, self._ids):
                w = tf_.reshape(tf_.convert_to_tensor(var), [-1])
                total += tf_.math.unsorted_segment_sum(tf_.abs(w), ids, buckets)
        else:
            squares = tf_.zeros([buckets])
            for var, ids in zip(self.variables, self._ids):
                w = tf_.reshape(tf_.convert_to_tensor(var), [-1])
                squares += tf_.math.unsorted_segment_sum(tf_.square(w), ids, buckets)
            total = tf_.sqrt(squares + 1e-12)
        return self.scale * tf_.reduce_sum(total * self._weight)

    def advance(self, step: int) -> None:
        if self.growth == "linear":
            self.scale.assign(self.strength * min(1.0, step / self.total_steps))


def _ramp(penalty: SparsityPenalty, keras):
    class SparsityRamp(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step = 0

        def on_train_batch_begin(self, batch, logs=None):
            self.step += 1
            penalty.advance(self.step)

    return SparsityRamp()


def train_structured_sparsity(model, train, val=None, *, task, method: str = "group-norm",
                              strength: float = 1.0, growth: str = "linear", settings=None,
                              protect=(), output: Output | None = None):
    """Train a copy of ``model`` with the structured-sparsity penalty; returns (model, report).

    ``settings`` (:class:`~edgeprune.training.finetune.FitSettings`) sets epochs, batch size,
    learning rate and schedule; early stopping is off (earlier weights would undo the penalty).
    The report says how far the units went: the median share of its starting norm a unit
    kept, and how many ended under 1 % of it.
    """
    from dataclasses import replace

    from edgeprune.base.env import keras_of
    from edgeprune.base.errors import InputError
    from edgeprune.training.finetune import FitSettings, finetune

    output = output or default_output()
    if method not in METHODS:
        raise InputError(f"--sparsity-method: expected one of {', '.join(METHODS)}, found '{method}'")
    if growth not in GROWTHS:
        raise InputError(f"--sparsity-growth: expected one of {', '.join(GROWTHS)}, found '{growth}'")
    settings = settings or FitSettings()
    targets, before = penalty_targets(model, method, protect)
    if not targets:
        raise InputError("--sparsity-epochs: the model has no prunable channel group to make sparse")
    steps = settings.epochs * int(np.ceil(len(train) / settings.batch_size))
    penalty = SparsityPenalty(targets, before, method=method, strength=strength, growth=growth, total_steps=steps)
    run = replace(settings, early_stopping=False, label=f"sparsity ({method})", regularizer=penalty,
                  extra_callbacks=list(settings.extra_callbacks) + [_ramp(penalty, keras_of(model))])
    trained, history = finetune(model, train, val, task=task, settings=run, output=output)
    report = {"method": method, "strength": float(strength), "growth": growth, "epochs": settings.epochs,
              "steps": steps, "units_penalized": int((before > 0).sum()),
              **_shrinkage(trained, before, method, protect)}
    if history:
        report["final"] = {k: round(v[-1], 4) for k, v in history.items()}
    return trained, report


def _shrinkage(model, before: np.ndarray, method: str, protect) -> dict:
    """How far the penalty took the units: the median share of its starting norm a unit kept,
    and how many units ended under 1 % of it (in effect already removed)."""
    from edgeprune.pruning.group_params import unit_norms

    gs = _groups(model, protect)
    owned = before > 0
    kept = unit_norms(gs, _penalized(gs, method))[owned] / before[owned]
    return {"units_near_zero": int((kept < 0.01).sum()),
            "median_norm_kept": round(float(np.median(kept)), 4) if kept.size else None}
