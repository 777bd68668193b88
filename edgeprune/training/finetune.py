"""Fine-tuning: recover accuracy after pruning with Adam, an LR schedule and early stopping.

Training runs under a ``tf.distribute`` strategy (mirrored across GPUs when there are
several), so the same code uses a multi-GPU machine without changes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from edgeprune.base.console import Output, default_output
from edgeprune.training.schedules import (  # noqa: F401  (re-exported: the names training code uses)
    COSINE_FLOOR,
    LR_SCHEDULES,
    ONE_CYCLE_START,
    ONE_CYCLE_WARMUP,
    rewind_problem,
)

# Recovery after pruning (fine-tuning, distillation, the sparsity phase) starts from a large
# learning rate and decays (Le & Hua, ICLR 2021): on benchmarks/pruning_recipes.py (Fashion-MNIST,
# a depthwise and a residual CNN, 2x and 4x) 3e-3 beat 1e-3 in 11 of 12 runs, by +0.8 to +3.7
# points at 4x. QAT and tfmot's gradual sparsity nudge a trained model and keep 1e-3.
RECOVERY_LEARNING_RATE = 3e-3
GENTLE_LEARNING_RATE = 1e-3
_GENTLE = ("QAT", "gradual pruning")

@dataclass
class FitSettings:
    """The knobs of one training run (a subset of TrainingOptions, usable from Python)."""

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"  # one of LR_SCHEDULES (see learning_rate_schedule)
    lr_warmup: float = ONE_CYCLE_WARMUP  # one-cycle: fraction of the steps spent warming up
    original_epochs: int | None = None  # rewind: epochs of the dense model's cosine training
    # (first, total): this run is epochs first..first+epochs of a cosine schedule that spans
    # ``total`` epochs (pruning early in training: the phases before and after the cut share one
    # schedule; see training.early_pruning). None: the schedule spans this run alone.
    schedule_window: tuple[int, int] | None = None
    patience: int = 3
    seed: int = 0
    label: str = "fine-tune"
    early_stopping: bool = True  # off where earlier weights would undo a schedule (pruning)
    extra_callbacks: list = field(default_factory=list)
    # Plain functions ``hook(epoch, logs)`` called after every epoch, whatever the model's Keras:
    # the search reports a trial's intermediate accuracy through one, and an exception raised
    # by a hook (Optuna's TrialPruned) ends the training and propagates to the caller.
    epoch_hooks: list = field(default_factory=list)
    # A penalty on the weights added to the loss: an object with ``bind(model)`` (called on the
    # model that trains) and ``__call__() -> scalar tensor`` (structured sparsity).
    regularizer: object = None

    @classmethod
    def from_options(cls, options, **overrides) -> FitSettings:
        """Settings from TrainingOptions; ``--learning-rate`` unset means the measured default of
        the kind of training (``label``): large for recovery, gentle for QAT and gradual sparsity."""
        gentle = overrides.get("label") in _GENTLE
        values = dict(
            epochs=options.finetune_epochs,
            batch_size=options.batch_size,
            learning_rate=options.learning_rate or (GENTLE_LEARNING_RATE if gentle else RECOVERY_LEARNING_RATE),
            lr_schedule=options.lr_schedule,
            lr_warmup=options.lr_warmup,
            original_epochs=options.original_epochs,
            patience=options.patience,
            seed=options.seed,
        )
        values.update(overrides)
        return cls(**values)


def strategy():
    """MirroredStrategy when more than one GPU is visible, else the default strategy."""
    from edgeprune.base.env import tf

    tf_ = tf()
    if len(tf_.config.list_logical_devices("GPU")) > 1:
        return tf_.distribute.MirroredStrategy()
    return tf_.distribute.get_strategy()


def _keras(keras):
    """The Keras module to build training objects with (the model's own; tf_keras by default)."""
    if keras is not None:
        return keras
    from edgeprune.base.env import tf_keras

    return tf_keras()


def loss_for(task: str, from_logits: bool, keras=None):
    """Keras loss and accuracy metric for a label kind from :func:`data.check_against_model`.

    ``keras`` is the model's Keras module (``edgeprune.base.env.keras_of(model)``): Keras 3 models
    train with Keras 3 losses and optimizers, tf_keras models with tf_keras ones.
    """
    keras = _keras(keras)
    if task == "sparse":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits), [
            keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        ]
    if task == "onehot":
        return keras.losses.CategoricalCrossentropy(from_logits=from_logits), [
            keras.metrics.CategoricalAccuracy(name="accuracy")
        ]
    if task == "binary":
        return keras.losses.BinaryCrossentropy(from_logits=from_logits), [
            keras.metrics.BinaryAccuracy(name="accuracy")
        ]
    return keras.losses.MeanSquaredError(), []


def layer_gives_logits(layer) -> bool:
    """An output layer that does not end in softmax/sigmoid is trained with from_logits=True."""
    name = type(layer).__name__
    act = getattr(getattr(layer, "activation", None), "__name__", "")
    return not (name == "Softmax" or act in ("softmax", "sigmoid"))


def output_is_logits(model) -> bool:
    """Whether the model's only output gives logits (see :func:`layer_gives_logits`)."""
    from edgeprune.training._models import single_output_layer

    return layer_gives_logits(single_output_layer(model))


def compile_args(model, task, keras=None) -> tuple:
    """(loss, metrics, labelled train/val filter) for one output or a dict of per-output tasks.

    Several outputs: one loss per labelled output (class heads cross-entropy, regression heads
    MSE); outputs without labels get no loss. Returns ``(loss, metrics, names)``; ``names`` is
    None for a single output, else the labelled output names.
    """
    if not isinstance(task, dict):
        loss, metrics = loss_for(task, output_is_logits(model), keras)
        return loss, metrics, None
    from edgeprune.training._models import output_layers

    losses, metrics = {}, {}
    for name, layer in output_layers(model):
        if task.get(name, "unlabelled") == "unlabelled":
            continue
        losses[name], metrics[name] = loss_for(task[name], layer_gives_logits(layer), keras)
    if not losses:
        from edgeprune.base.errors import InputError

        raise InputError("fine-tuning a model with several outputs needs labels for at least one (y_<output>)")
    return losses, metrics, list(losses)


def only_outputs(split, names):
    """``split`` with labels for ``names`` only (None: unchanged)."""
    if split is None or names is None or not isinstance(split.y, dict):
        return split
    from edgeprune.training.data import Split

    return Split(split.x, {k: v for k, v in split.y.items() if k in names}, split.source)


def learning_rate_schedule(settings: FitSettings, steps_per_epoch: int, keras=None):
    """The learning rate ``settings`` ask for: a float or a schedule of ``keras`` (per step).

    - ``cosine``: Keras' CosineDecay from the LR to :data:`COSINE_FLOOR` of it over all steps;
      with ``schedule_window`` (first, total), the part of a ``total``-epoch cosine this run covers.
    - ``plateau`` and ``constant``: the LR itself (plateau halves it from a callback).
    - ``one-cycle``: a linear warm-up from :data:`ONE_CYCLE_START` of the LR to the LR over the
      first ``lr_warmup`` of the steps, then a cosine to zero: a large LR early lets a pruned
      network leave the fine-tuning basin, the decay settles it (Le & Hua, ICLR 2021).
    - ``rewind``: learning-rate rewinding (Renda et al., ICLR 2020): recovery of N epochs
      (``epochs``) replays epochs E-N..E of the dense model's own E-epoch schedule
      (``original_epochs``), assumed to be a cosine from the LR (its peak) to zero, the common
      recipe. Renda et al. found this beats fine-tuning at the final, small LR; Le & Hua show the
      gain comes from the larger LR it restarts at. N = E is a full cosine from the peak.
    """
    keras = _keras(keras)
    lr = settings.learning_rate
    total = max(1, settings.epochs * steps_per_epoch)
    if settings.lr_schedule == "cosine" and settings.schedule_window is not None:
        first, span = settings.schedule_window
        return _warmup_cosine_class(keras)(lr, decay_steps=max(1, span * steps_per_epoch),
                                          offset_steps=first * steps_per_epoch, floor=COSINE_FLOOR)
    if settings.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total, alpha=COSINE_FLOOR)
    if settings.lr_schedule == "one-cycle":
        warmup = int(round(settings.lr_warmup * total))
        return _warmup_cosine_class(keras)(lr, warmup_steps=warmup, start=lr * ONE_CYCLE_START,
                                          decay_steps=max(1, total - warmup))
    if settings.lr_schedule == "rewind":
        problem = rewind_problem(settings.original_epochs, settings.epochs)
        if problem:
            from edgeprune.base.errors import InputError

            raise InputError(problem)
        skipped = (settings.original_epochs - settings.epochs) * steps_per_epoch
        return _warmup_cosine_class(keras)(lr, decay_steps=settings.original_epochs * steps_per_epoch,
                                          offset_steps=skipped)
    if settings.lr_schedule in ("plateau", "constant"):
        return lr
    raise ValueError(f"unknown lr_schedule {settings.lr_schedule!r} (known: {', '.join(LR_SCHEDULES)})")


def warmup_epochs(settings: FitSettings) -> int:
    """Epochs the one-cycle warm-up spans (0 for other schedules): early stopping waits them out,
    since a rising LR makes those epochs worse on purpose."""
    if settings.lr_schedule != "one-cycle":
        return 0
    return int(np.ceil(settings.lr_warmup * settings.epochs))


@functools.cache
def _warmup_cosine_class(keras):
    """A LearningRateSchedule of ``keras`` (Keras 3 or tf_keras; each optimizer takes only its
    own): linear warm-up, then a cosine from ``peak`` to zero, optionally entered part-way.

    Keras' CosineDecay has a warm-up but cannot start part-way down the cosine (rewinding), so
    both schedules that need either are this one class.
    """
    from edgeprune.base.env import tf

    tf_ = tf()

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        """lr(step): ``start`` -> ``peak`` linearly over ``warmup_steps``; then
        peak * (floor + (1 - floor) * (1 + cos(pi * p)) / 2) with
        p = (offset_steps + steps after warm-up) / decay_steps."""

        def __init__(self, peak, *, decay_steps, warmup_steps=0, start=0.0, offset_steps=0, floor=0.0):
            super().__init__()
            self.peak, self.start = float(peak), float(start)
            self.decay_steps, self.warmup_steps = int(decay_steps), int(warmup_steps)
            self.offset_steps, self.floor = int(offset_steps), float(floor)

        def __call__(self, step):
            step = tf_.cast(step, tf_.float32)
            rising = self.start + (self.peak - self.start) * step / max(1, self.warmup_steps)
            done = tf_.minimum(1.0, (self.offset_steps + step - self.warmup_steps) / self.decay_steps)
            falling = self.peak * (self.floor + (1.0 - self.floor) * 0.5 * (1.0 + tf_.cos(np.pi * done)))
            return tf_.where(step < self.warmup_steps, rising, falling)

        def get_config(self):
            return dict(peak=self.peak, decay_steps=self.decay_steps, warmup_steps=self.warmup_steps,
                        start=self.start, offset_steps=self.offset_steps, floor=self.floor)

    # registered: Keras 3's clone_model (copy_model) rebuilds a compiled model's optimizer from config
    return keras.saving.register_keras_serializable(package="edgeprune")(WarmupCosine)


def make_optimizer(settings: FitSettings, steps_per_epoch: int, keras=None):
    """Adam with the learning rate (schedule) of :func:`learning_rate_schedule`."""
    keras = _keras(keras)
    return keras.optimizers.Adam(learning_rate=learning_rate_schedule(settings, steps_per_epoch, keras))


class _Progress:
    """Builds the Keras callback that shows training progress through ``Output``.

    A progress bar (one step per epoch, loss and validation accuracy in its description)
    while training runs, one summary line at the end, and every epoch with ``-v``.
    """

    @staticmethod
    def make(output: Output, label: str, epochs: int, keras=None):
        keras = _keras(keras)

        class ProgressCallback(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self._ctx = None
                self._handle = None
                self._last = ""

            def on_train_begin(self, logs=None):
                self._ctx = output.progress(f"{label}: epoch 0/{epochs}", total=epochs)
                self._handle = self._ctx.__enter__()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                parts = [f"{label}: epoch {epoch + 1}/{epochs}"]
                for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                    if key in logs:
                        parts.append(f"{key} {float(logs[key]):.4f}")
                self._last = "  ".join(parts)
                output.debug(self._last)
                if self._handle is not None:
                    self._handle.update(self._last)
                    self._handle.advance()

            def on_train_end(self, logs=None):
                if self._ctx is not None:
                    self._ctx.__exit__(None, None, None)
                    self._ctx = self._handle = None
                if self._last:
                    output.info(self._last)

        return ProgressCallback()


def callbacks_for(settings: FitSettings, has_val: bool, monitor_acc: bool, output: Output,
                  keras=None) -> list:
    """Early stopping (best weights restored; not during a one-cycle warm-up), optional plateau
    LR, progress reporting, the epoch hooks, then ``settings.extra_callbacks``."""
    keras = _keras(keras)
    monitor = ("val_" if has_val else "") + ("accuracy" if monitor_acc else "loss")
    mode = "max" if monitor_acc else "min"
    cbs = [_Progress.make(output, settings.label, settings.epochs, keras)]
    if settings.early_stopping:
        cbs.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=settings.patience, restore_best_weights=True,
            start_from_epoch=warmup_epochs(settings),
        ))
    if settings.lr_schedule == "plateau":
        cbs.append(
            keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=0.5, patience=max(1, settings.patience // 2))
        )
    if settings.epoch_hooks:
        cbs.append(_hook_callback(settings.epoch_hooks, keras))
    return cbs + list(settings.extra_callbacks)


def _hook_callback(hooks, keras):
    """A Keras callback (of the model's own Keras) that calls each ``hook(epoch, logs)``."""

    class EpochHooks(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            values = {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
            for hook in hooks:
                hook(epoch, values)

    return EpochHooks()


def fit_compiled(model, train, val, settings: FitSettings, *, monitor_acc: bool, output: Output) -> dict:
    """``model.fit`` with the standard callbacks on already-compiled ``model``; returns history."""
    from edgeprune.base.env import keras_of, tf

    tf().random.set_seed(settings.seed)
    x, y = train.x, train.y
    validation = None
    if val is not None:
        validation = (val.x,) if val.y is None else (val.x, val.y)
    history = model.fit(
        x,
        y,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        validation_data=validation,
        shuffle=True,
        verbose=0,
        callbacks=callbacks_for(settings, val is not None, monitor_acc, output, keras_of(model)),
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def with_regularizer(loss, regularizer, model):
    """``loss`` plus ``regularizer()`` on ``model``'s weights (for several outputs: on the first)."""
    regularizer.bind(model)

    def add(base):
        def regularized(y_true, y_pred):
            return base(y_true, y_pred) + regularizer()
        return regularized

    if isinstance(loss, dict):
        first = next(iter(loss))
        return {name: add(fn) if name == first else fn for name, fn in loss.items()}
    return add(loss)


def finetune(model, train, val=None, *, task: str, settings: FitSettings | None = None, output: Output | None = None):
    """Fine-tune a copy of ``model`` on labelled data; returns ``(model, history)``.

    The returned model is a plain (uncompiled, default-strategy) copy holding the best
    weights seen on the validation data.
    """
    from edgeprune.base.env import keras_of
    from edgeprune.training._models import copy_model

    settings = settings or FitSettings()
    output = output or default_output()
    if settings.epochs <= 0 or train.y is None:
        return model, {}
    np.random.seed(settings.seed)
    strat = strategy()
    with strat.scope():
        work = copy_model(model)
        keras = keras_of(work)
        loss, metrics, names = compile_args(model, task, keras)
        train_loss = loss if settings.regularizer is None else with_regularizer(loss, settings.regularizer, work)
        steps = int(np.ceil(len(train) / settings.batch_size))
        work.compile(optimizer=make_optimizer(settings, steps, keras), loss=train_loss, metrics=metrics)
    # several outputs: early stopping watches the total validation loss
    history = fit_compiled(work, only_outputs(train, names), only_outputs(val, names), settings,
                           monitor_acc=bool(metrics) and names is None, output=output)
    if train_loss is not loss:  # cloning recompiles, and the regularized loss is not serializable
        work.compile(loss=loss)
    return copy_model(work), history
