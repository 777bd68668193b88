"""Entry points of the training stage: ``recover()`` and ``run_training_stage()``.

``run_training_stage`` is what ``compile`` calls between pruning and conversion:
data -> (iterative pruning) -> fine-tune / distil -> gradual (tfmot) pruning -> QAT.
Its result says which quantization the model must be converted with (int8 after QAT)
and carries the gate split: data the accuracy gate measures on, which neither early stopping
nor distillation selected on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeprune.base.console import Output, default_output
from edgeprune.base.errors import InputError
from edgeprune.training.data import Split, TrainingData


@dataclass
class StageResult:
    model: Any                      # tf_keras model to convert (a QAT model when qat is True)
    report: dict = field(default_factory=dict)
    quantization: str | None = None  # "int8" after QAT: convert with this mode
    validation: Split | None = None  # labelled validation data (selection; representative fallback)
    gate: Split | None = None        # labelled data the accuracy gate measures on, never selected on
    gate_source: str | None = None   # where the gate data came from, in words
    pruned_report: dict | None = None  # prune report when this stage did the (iterative) pruning

    @property
    def qat(self) -> bool:
        return self.quantization == "int8"


def _as_split(data, name: str) -> Split | None:
    if data is None or isinstance(data, Split):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return Split(data[0], data[1], name)
    return Split(data, None, name)


def recover(student, *, teacher=None, train, val=None, epochs: int = 10, distill: bool = False,
            temperature: float = 4.0, alpha: float = 0.5, distill_schedule: str = "constant",
            alpha_end: float | None = None, batch_size: int = 32, learning_rate: float = 3e-3,
            lr_schedule: str = "cosine", lr_warmup: float | None = None, original_epochs: int | None = None,
            patience: int = 3, seed: int = 0, recalibrate_bn: bool = True, after_epoch: int = 0,
            output: Output | None = None):
    """Recover a pruned model's accuracy by fine-tuning or distillation; returns the new model.

    BatchNorm statistics are first re-estimated on ``train`` inputs (``recalibrate_bn``).

    ``train``/``val`` are ``(x, y)`` (y may be None: label-free distillation, needs ``teacher``)
    or bare ``x`` arrays. ``distill`` needs ``teacher`` (normally the unpruned model).

    The settings are the training flags' (``--finetune-epochs`` is ``epochs``,
    ``--distill-temperature``/``--distill-alpha``/``--distill-alpha-end`` are ``temperature``/
    ``alpha``/``alpha_end``, the rest have the flags' names) and are checked like them:
    ``lr_schedule`` is cosine, plateau, one-cycle (warm-up over ``lr_warmup`` of the steps),
    constant or rewind (replays the last ``epochs`` of an ``original_epochs`` cosine training
    from ``learning_rate``); ``distill_schedule`` constant or anneal. Bad values -> InputError.
    ``after_epoch`` K > 0: the model was cut after K epochs of training
    (:func:`edgeprune.training.early_pruning.train_before_cut`); the cosine goes on from there.
    """
    from edgeprune.training.data import check_against_model
    from edgeprune.training.finetune import FitSettings
    from edgeprune.training.options import build_options

    given = dict(finetune_epochs=epochs, distill=distill, distill_temperature=temperature, distill_alpha=alpha,
                 distill_schedule=distill_schedule, distill_alpha_end=alpha_end, batch_size=batch_size,
                 learning_rate=learning_rate, lr_schedule=lr_schedule, lr_warmup=lr_warmup,
                 original_epochs=original_epochs, patience=patience, seed=seed, bn_recalibrate=recalibrate_bn)
    options = build_options({k: v for k, v in given.items() if v is not None})  # None: the option's default
    train_s, val_s = _as_split(train, "train"), _as_split(val, "val")
    task = check_against_model(train_s, student, "train")
    if val_s is not None:
        check_against_model(val_s, student, "val")
        if train_s.y is None:
            val_s = Split(val_s.x, None, val_s.source)
    if options.bn_recalibrate:
        student = _recalibrated(student, train_s.x, [])
    settings = FitSettings.from_options(options, label="distill" if distill or train_s.y is None else "fine-tune")
    if after_epoch > 0:
        from edgeprune.training.early_pruning import after_cut_settings

        settings = after_cut_settings(settings, after_epoch)
    return _recover(student, teacher, TrainingData(train_s, val_s, task), options, settings,
                    output or default_output())[0]


def _recover(student, teacher, data: TrainingData, options, settings, output):
    """Distil (``options.distill``, or no labels) or fine-tune ``student`` with ``settings``."""
    from edgeprune.training.distill import distill as run_distill
    from edgeprune.training.finetune import finetune

    if options.distill or data.train.y is None:
        if teacher is None:
            raise InputError("distillation needs the unpruned model as teacher" if options.distill else
                             "recovery without labels needs a teacher model (label-free distillation)")
        return run_distill(student, teacher, data.train, data.val, task=data.task,
                           temperature=options.distill_temperature, alpha=options.distill_alpha,
                           schedule=options.distill_schedule, alpha_end=options.distill_alpha_end,
                           settings=settings, output=output)
    return finetune(student, data.train, data.val, task=data.task, settings=settings, output=output)


def run_training_stage(model, options, *, original=None, prune_kwargs: dict | None = None,
                       calibration: np.ndarray | None = None, preprocessing=None, gate: bool = True,
                       epoch_hooks=(), output: Output | None = None) -> StageResult:
    """Run every training step ``options`` asks for on ``model``.

    - ``model``: the pruned model (compile pruned it one-shot), or the unpruned model when
      ``prune_kwargs`` is given (then this stage prunes, in ``options.iterative_steps`` steps).
    - ``original``: the unpruned, unquantized model (teacher and gate reference); defaults
      to ``model`` when this stage does the pruning.
    - ``prune_kwargs``: ``ratio`` or ``target_macs`` plus criterion/round_to/min_channels/
      data/labels/protect/seed for :func:`edgeprune.pruning.api.prune_model`.
    - ``calibration``: inputs used, when there is no --train-data, to re-estimate BatchNorm
      statistics after pruning and (with --distill) for label-free distillation.
    - ``gate``: hold out gate data (an accuracy gate follows); False keeps all the validation
      data for selection (``edgeprune prune`` has no gate).
    - ``epoch_hooks``: ``hook(epoch, logs)`` functions called after every recovery epoch
      (:class:`FitSettings.epoch_hooks`); the search stops unpromising trials through them.
    """
    from edgeprune.training.data import resolve
    from edgeprune.training.early_pruning import after_cut_settings
    from edgeprune.training.finetune import FitSettings

    output = output or default_output()
    if prune_kwargs is not None and original is None:
        original = model
    teacher = original if original is not None else model
    report: dict = {}
    use_calibration = calibration if options.distill else None
    data = resolve(options, teacher, calibration=use_calibration, preprocessing=preprocessing, gate=gate,
                   output=output)
    trainable = data if data is not None and data.train is not None else None
    if data is not None:
        report["data"] = {"train_samples": len(data.train) if data.train else 0,
                          "val_samples": len(data.val) if data.val else 0,
                          "gate_samples": len(data.gate) if data.gate else 0, "labels": data.task,
                          "source": (data.train or data.val or data.gate).source,
                          "gate_source": data.gate_source}
    labelled = trainable is not None and trainable.train.y is not None
    for flag, wanted in (("--qat", options.qat), ("--gradual-sparsity/--sparsity-m-by-n", options.wants_sparsity)):
        if wanted and not labelled:
            raise InputError(f"{flag} needs labelled training data: pass --train-data (a .npz with x and y, "
                             "or a class-folder image directory)")
    if options.iterative_steps > 1 and trainable is None:
        output.warn("--iterative-steps without --train-data (or --distill with calibration images): "
                    "steps are not fine-tuned in between, so this equals one-shot pruning")
    distils = options.distill or (trainable is not None and not labelled)  # unlabelled: label-free distillation
    settings = FitSettings.from_options(options, label="distill" if distils else "fine-tune",
                                        epoch_hooks=list(epoch_hooks))

    recal_x = trainable.train.x if trainable is not None else calibration
    recal_log: list = []

    def recover_fn(m):
        if options.bn_recalibrate and recal_x is not None:
            m = _recalibrated(m, recal_x, recal_log)
        if trainable is None or options.finetune_epochs <= 0:
            return m
        return _recover(m, teacher, trainable, options, settings, output)[0]

    pruned_report = None
    if prune_kwargs is not None:
        kwargs = dict(prune_kwargs)
        targets = {key: kwargs.pop(key, None) for key in ("ratio", "target_macs", "target_latency")}
        if options.prune_at_epoch > 0:
            model, report["before_cut"] = _train_before_cut(model, options, trainable, settings, output)
            settings = after_cut_settings(settings, options.prune_at_epoch)
        if options.sparsity_epochs > 0:
            model, report["structured_sparsity"] = _sparsity_phase(model, options, trainable, kwargs, output)
        if options.iterative_steps > 1:
            from edgeprune.training.iterative import iterative_prune

            model, pruned_report = iterative_prune(model, steps=options.iterative_steps, recover=recover_fn,
                                                   prune_kwargs=kwargs, output=output, **targets)
        else:
            from edgeprune.pruning.api import prune_model

            result = prune_model(model, **targets, **kwargs)
            model, pruned_report = recover_fn(result.model), result.report
        report["recovery"] = _recovery_summary(options, trainable, recal_log)
    elif original is not None and original is not model and (trainable is not None or recal_x is not None):
        model = recover_fn(model)
        report["recovery"] = _recovery_summary(options, trainable, recal_log)
    if options.wants_sparsity:
        from edgeprune.training.gradual import sparsity_report, train_gradual

        dense = model
        model, sparse = train_gradual(model, trainable.train, trainable.val, task=trainable.task, options=options, output=output)
        sparse["target"] = sparsity_report(dense, model, trainable.train.x)
        sparse.pop("history", None)
        report["sparsity"] = sparse
    quantization = None
    if options.qat:
        from edgeprune.training.qat import train_qat

        qat_settings = FitSettings.from_options(options, label="QAT",
                                                epochs=options.qat_epochs or max(1, min(options.finetune_epochs, 5)))
        model, qat_report = train_qat(model, trainable.train, trainable.val, task=trainable.task, settings=qat_settings,
                                      prune_preserve=options.wants_sparsity, output=output)
        qat_report.pop("history", None)
        report["qat"] = qat_report
        quantization = "int8"
    validation = None
    if data is not None and data.val is not None and data.val.y is not None:
        validation = data.val
    return StageResult(model=model, report=report, quantization=quantization, validation=validation,
                       gate=None if data is None else data.gate, gate_source=None if data is None else data.gate_source,
                       pruned_report=pruned_report)


def _train_before_cut(model, options, data, settings, output):
    """``--prune-at-epoch K``: the first K epochs of the shared schedule, on labelled data."""
    from edgeprune.training.early_pruning import train_before_cut

    if data is None or data.train.y is None:
        raise InputError("--prune-at-epoch needs labelled training data: pass --train-data (a .npz with x "
                         "and y, or a class-folder image directory)")
    return train_before_cut(model, data.train, data.val, task=data.task, settings=settings,
                            prune_at_epoch=options.prune_at_epoch, output=output)


def _sparsity_phase(model, options, data, prune_kwargs: dict, output):
    """Train with the structured-sparsity penalty, then let the learnt group norms rank the
    units globally (unless a criterion was chosen): the cut removes what the penalty zeroed,
    and each group keeps as many channels as it needed."""
    from edgeprune.training.finetune import FitSettings
    from edgeprune.training.structured_sparsity import train_structured_sparsity

    if data is None or data.train.y is None:
        raise InputError("--sparsity-epochs needs labelled training data: pass --train-data (a .npz with x "
                         "and y, or a class-folder image directory)")
    settings = FitSettings.from_options(options, epochs=options.sparsity_epochs)
    model, report = train_structured_sparsity(
        model, data.train, data.val, task=data.task, method=options.sparsity_method,
        strength=options.sparsity_strength, growth=options.sparsity_growth, settings=settings,
        protect=prune_kwargs.get("protect", ()), output=output)
    if prune_kwargs.get("criterion") is None:
        prune_kwargs.update(criterion="group_norm", global_ranking=True)
    return model, report


def _recalibrated(model, x, log: list):
    """A copy of ``model`` with BatchNorm statistics re-estimated on up to 1024 inputs of ``x``."""
    from edgeprune.training._models import copy_model
    from edgeprune.training.bn_recal import recalibrate_batchnorm

    if not any(type(layer).__name__ == "BatchNormalization" for layer in model.layers):
        return model
    from edgeprune.load.datasets import take

    model = copy_model(model)
    log.append(recalibrate_batchnorm(model, take(x, slice(0, 1024))))
    return model


def _recovery_summary(options, data, recal_log=()) -> dict:
    bn = {"bn_recalibrated": recal_log[-1]["layers"], "bn_samples": recal_log[-1]["samples"]} if recal_log else {}
    if data is None or options.finetune_epochs <= 0:
        why = "no training data" if data is None else "--finetune-epochs 0"
        return {"method": "bn-recalibration" if recal_log else "none", "why": why, **bn}
    method = "distillation" if options.distill or data.train.y is None else "fine-tuning"
    out = {"method": method, "epochs": options.finetune_epochs, "labelled": data.train.y is not None,
           "lr_schedule": options.lr_schedule, **bn}
    if method == "distillation":
        out.update(temperature=options.distill_temperature, alpha=options.distill_alpha,
                   distill_schedule=options.distill_schedule)
    return out
