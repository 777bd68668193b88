"""Knowledge distillation from the unpruned model (teacher) into the pruned one (student).

Loss = alpha * hard-label cross-entropy + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T)),
where s and t are logits. Models that end in softmax are split into a logits model (the
softmax input); a teacher whose probabilities come from elsewhere is read as log(p).
Without labels (e.g. only calibration images) the loss is the teacher term alone.

Models with several outputs are distilled head by head and the losses summed: softmax heads
as above, every other head (regression, one-unit sigmoid) by alpha * MSE to its labels +
(1 - alpha) * MSE to the teacher's output.

T and alpha are fixed (``schedule="constant"``, the default) or annealed epoch by epoch
(``"anneal"``, see :func:`schedule_values`): then they are variables of the Distiller that a
callback of the model's own Keras sets before each epoch, and its train step reads.
"""
from __future__ import annotations

import numpy as np

from edgeprune.base.console import Output, default_output
from edgeprune.base.errors import InputError
from edgeprune.training.finetune import FitSettings, fit_compiled, make_optimizer, strategy

_EPS = 1e-7
DISTILL_SCHEDULES = ("constant", "anneal")


def schedule_values(epoch: int, epochs: int, *, temperature: float, alpha: float, schedule: str = "constant",
                    alpha_end: float | None = None) -> tuple[float, float]:
    """(temperature, alpha) for 0-based ``epoch`` of ``epochs``.

    ``anneal`` moves both linearly from their starting values in the first epoch to a temperature
    of 1 and ``alpha_end`` (None: alpha stays) in the last. Why: a high temperature passes on the
    teacher's relative class similarities while the freshly pruned student is still far off; at 1
    the teacher term matches the probabilities the student will actually output. Moving alpha
    towards 1 ends as plain fine-tuning on the labels. The T^2 factor of the loss keeps the
    teacher term's gradient scale comparable as T changes (Hinton et al., 2015).
    """
    if schedule == "constant":
        return float(temperature), float(alpha)
    if schedule != "anneal":
        raise ValueError(f"unknown distillation schedule {schedule!r} (known: {', '.join(DISTILL_SCHEDULES)})")
    done = epoch / max(1, epochs - 1)
    end = alpha if alpha_end is None else alpha_end
    return float(temperature + (1.0 - temperature) * done), float(alpha + (end - alpha) * done)


def _weight_is_zero(alpha) -> bool:
    """A fixed alpha of 0 (skip the hard term); a scheduled alpha (a variable) is never skipped."""
    from edgeprune.base.env import tf

    return not tf().is_tensor(alpha) and alpha == 0.0


def distillation_loss(student_logits, teacher_logits, y=None, *, temperature=4.0, alpha=0.5, task="sparse"):
    """The distillation loss for one batch (a scalar tensor); y None -> teacher term only.

    ``temperature`` and ``alpha`` are numbers or scalar variables (an annealing schedule)."""
    from edgeprune.base.env import tf

    tf_ = tf()
    t = tf_.cast(temperature, student_logits.dtype) if tf_.is_tensor(temperature) else float(temperature)
    s_log = tf_.nn.log_softmax(student_logits / t, axis=-1)
    t_prob = tf_.nn.softmax(teacher_logits / t, axis=-1)
    t_log = tf_.nn.log_softmax(teacher_logits / t, axis=-1)
    kl = tf_.reduce_mean(tf_.reduce_sum(t_prob * (t_log - s_log), axis=-1)) * (t * t)
    if y is None or _weight_is_zero(alpha):
        return kl
    if task == "onehot":
        hard = tf_.reduce_mean(tf_.nn.softmax_cross_entropy_with_logits(tf_.cast(y, tf_.float32), student_logits))
    else:
        labels = tf_.cast(tf_.reshape(y, [-1]), tf_.int32)
        hard = tf_.reduce_mean(tf_.nn.sparse_softmax_cross_entropy_with_logits(labels, student_logits))
    return alpha * hard + (1.0 - alpha) * kl


def teacher_logits_model(teacher, sample: np.ndarray):
    """(model, mode): a logits model and mode 'logits' (split at softmax / already logits) or
    'log-probs' (outputs look like probabilities: use log p)."""
    from edgeprune.base.env import is_keras3_model, keras_of
    from edgeprune.training._models import as_functional, logits_model

    split = logits_model(teacher)
    if split is not None:
        return split, "logits"
    teacher = as_functional(teacher)
    out = teacher.predict(sample[:64], verbose=0)
    if np.all(out >= 0) and np.allclose(out.sum(axis=-1), 1.0, atol=1e-3):
        keras = keras_of(teacher)
        log = keras.ops.log if is_keras3_model(teacher) else keras.backend.log
        log_out = keras.layers.Lambda(lambda p: log(p + _EPS), name="log_probs")(teacher.output)
        return keras.Model(teacher.inputs, log_out), "log-probs"
    return teacher, "logits"


def _distiller_class(keras):
    """The Distiller model class for ``keras`` (the student's Keras: Keras 3 or tf_keras)."""
    from edgeprune.base.env import tf

    tf_ = tf()

    class Distiller(keras.Model):
        """Trains ``student`` (a logits model) against a frozen ``teacher`` (logits model)."""

        def __init__(self, student, teacher, temperature, alpha, task, labelled, heads=None, scheduled=False):
            super().__init__()
            self.heads = heads  # several outputs: [(name, 'softmax'|'mse', task)]
            self.student = student
            self.teacher = teacher
            self.teacher.trainable = False
            # fixed: Python numbers (the graph of before schedules existed); scheduled: variables
            # that _schedule_callback sets before each epoch and the compiled train step reads
            if scheduled:
                self.temperature = tf_.Variable(float(temperature), trainable=False, name="distill_temperature")
                self.alpha = tf_.Variable(float(alpha), trainable=False, name="distill_alpha")
            else:
                self.temperature, self.alpha = temperature, alpha
            self.task = task
            self.labelled = labelled
            self.loss_tracker = keras.metrics.Mean(name="loss")
            if task == "onehot":
                self.acc = keras.metrics.CategoricalAccuracy(name="accuracy")
            else:
                self.acc = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

        @property
        def metrics(self):
            return [self.loss_tracker, self.acc] if self.labelled and not self.heads else [self.loss_tracker]

        def call(self, x, training=False):
            return self.student(x, training=training)

        def _step_loss(self, x, y, training):
            s = self.student(x, training=training)
            t = self.teacher(x, training=False)
            if self.heads:
                return s, self._heads_loss(s, t, y)
            loss = distillation_loss(s, t, y if self.labelled else None,
                                     temperature=self.temperature, alpha=self.alpha, task=self.task)
            return s, loss

        def _heads_loss(self, s, t, y):
            total = 0.0
            for i, (name, kind, task) in enumerate(self.heads):
                yi = y.get(name) if isinstance(y, dict) else None
                if kind == "softmax":
                    total += distillation_loss(s[i], t[i], yi, temperature=self.temperature,
                                               alpha=self.alpha, task=task)
                    continue
                si = tf_.cast(s[i], tf_.float32)
                term = tf_.reduce_mean(tf_.square(si - tf_.cast(t[i], tf_.float32)))
                if yi is not None and not _weight_is_zero(self.alpha):
                    target = tf_.reshape(tf_.cast(yi, tf_.float32), tf_.shape(si))
                    term = self.alpha * tf_.reduce_mean(tf_.square(si - target)) + (1.0 - self.alpha) * term
                total += term
            return total

        def train_step(self, data):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
            replicas = tf_.distribute.get_strategy().num_replicas_in_sync
            with tf_.GradientTape() as tape:
                s, loss = self._step_loss(x, y, True)
                # gradients are summed over replicas: scale the per-replica mean to the global batch
                scaled = loss / replicas
            grads = tape.gradient(scaled, self.student.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.student.trainable_variables))
            return self._update(y, s, loss)

        def test_step(self, data):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
            s, loss = self._step_loss(x, y, False)
            return self._update(y, s, loss)

        def _update(self, y, s, loss):
            self.loss_tracker.update_state(loss)
            if self.labelled and not self.heads:
                self.acc.update_state(y, s)
            return {m.name: m.result() for m in self.metrics}

    return Distiller


def _schedule_callback(keras, distiller, epochs: int, values):
    """A callback of ``keras`` that sets the Distiller's temperature and alpha variables to
    ``values(epoch, epochs)`` before each epoch and logs them (the history shows what was used)."""

    class DistillSchedule(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            temperature, alpha = values(epoch, epochs)
            distiller.temperature.assign(temperature)
            distiller.alpha.assign(alpha)

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["temperature"] = float(distiller.temperature.numpy())
                logs["alpha"] = float(distiller.alpha.numpy())

    return DistillSchedule()


def _fit_distiller(distiller, keras, train, val, settings: FitSettings, schedule: str, values, *, monitor_acc, output):
    """``fit_compiled`` on the Distiller, with the schedule's callback first when it anneals."""
    if schedule != "constant":
        from dataclasses import replace

        callback = _schedule_callback(keras, distiller, settings.epochs, values)
        settings = replace(settings, extra_callbacks=[callback, *settings.extra_callbacks])
    return fit_compiled(distiller, train, val, settings, monitor_acc=monitor_acc, output=output)


def distill(student, teacher, train, val=None, *, task: str, temperature: float = 4.0, alpha: float = 0.5,
            schedule: str = "constant", alpha_end: float | None = None,
            settings: FitSettings | None = None, output: Output | None = None):
    """Distil ``teacher`` into a copy of ``student``; returns ``(student_model, history)``.

    ``train.y`` None means label-free distillation (teacher outputs only). The returned
    student has the original architecture (softmax included), plain and uncompiled.
    ``schedule``/``alpha_end``: how temperature and alpha move over the epochs
    (:func:`schedule_values`); with ``"anneal"`` the history has ``temperature`` and ``alpha``.
    """
    from functools import partial

    from edgeprune.base.env import keras_of
    from edgeprune.training._models import as_functional, copy_model, logits_model

    values = partial(schedule_values, temperature=temperature, alpha=alpha, schedule=schedule, alpha_end=alpha_end)
    values(0, 1)  # an unknown schedule fails here, before any model is built

    settings = settings or FitSettings(label="distill")
    output = output or default_output()
    if isinstance(task, dict):
        return _distill_heads(student, teacher, train, val, task=task, temperature=temperature, alpha=alpha,
                              schedule=schedule, values=values, settings=settings, output=output)
    if task not in ("sparse", "onehot", "unlabelled"):
        raise InputError(f"--distill needs classification labels (class indices or one-hot), found '{task}' labels")
    if settings.epochs <= 0:
        return student, {}
    student = as_functional(student)
    labelled = train.y is not None
    strat = strategy()
    with strat.scope():
        student_logits = logits_model(student) or copy_model(student)
        teacher_logits, mode = teacher_logits_model(teacher, train.x)
        if int(teacher_logits.outputs[0].shape[-1]) != int(student_logits.outputs[0].shape[-1]):
            raise InputError(
                f"teacher has {teacher_logits.outputs[0].shape[-1]} outputs, student "
                f"{student_logits.outputs[0].shape[-1]}: distillation needs the same classes"
            )
        keras = keras_of(student_logits)
        distiller = _distiller_class(keras)(student_logits, teacher_logits, temperature, alpha,
                                            "onehot" if task == "onehot" else "sparse", labelled,
                                            scheduled=schedule != "constant")
        steps = int(np.ceil(len(train) / settings.batch_size))
        distiller.compile(optimizer=make_optimizer(settings, steps, keras))
    output.debug(f"distillation: teacher read as {mode}, T={temperature}, alpha={alpha}, schedule={schedule}, "
                 f"labelled={labelled}")
    history = _fit_distiller(distiller, keras, train, val, settings, schedule, values,
                             monitor_acc=labelled and (val is None or val.y is not None), output=output)
    result = copy_model(student)
    result.set_weights(student_logits.get_weights())
    return result, history


def _distill_heads(student, teacher, train, val, *, task: dict, temperature, alpha, schedule, values, settings, output):
    """Distillation of a model with several outputs (see the module docstring)."""
    from edgeprune.training._models import (
        as_functional,
        copy_model,
        layer_is_softmax,
        logits_model,
        output_layers,
    )

    if settings.epochs <= 0:
        return student, {}
    student = as_functional(student)
    heads = []
    for name, layer in output_layers(student):
        kind = "softmax" if layer_is_softmax(layer) else "mse"
        head_task = task.get(name, "unlabelled")
        if kind == "softmax" and head_task not in ("sparse", "onehot", "unlabelled"):
            raise InputError(f"--distill: output '{name}' is a softmax head but its labels look like '{head_task}'")
        heads.append((name, kind, "onehot" if head_task == "onehot" else "sparse"))
    labelled = isinstance(train.y, dict) and bool(train.y)
    strat = strategy()
    with strat.scope():
        student_logits = logits_model(student, all_outputs=True) or copy_model(student)
        teacher_logits = logits_model(teacher, all_outputs=True) or copy_model(teacher)
        from edgeprune.base.env import keras_of

        keras = keras_of(student_logits)
        distiller = _distiller_class(keras)(student_logits, teacher_logits, temperature, alpha, "sparse", labelled,
                                            heads, scheduled=schedule != "constant")
        steps = int(np.ceil(len(train) / settings.batch_size))
        distiller.compile(optimizer=make_optimizer(settings, steps, keras))
    output.debug(f"distillation of {len(heads)} outputs: {', '.join(f'{n} ({k})' for n, k, _ in heads)}")
    history = _fit_distiller(distiller, keras, train, val, settings, schedule, values, monitor_acc=False,
                             output=output)
    result = copy_model(student)
    result.set_weights(student_logits.get_weights())
    return result, history
