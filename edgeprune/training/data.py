"""Training, validation and gate data: split, and check labels against the model first.

Loading is :func:`edgeprune.load.datasets.load_arrays` (the one loader: ``.npz``, class-folder image
directories, ``module:function`` returning arrays, pairs or a ``tf.data.Dataset``). This module
splits the data three ways and reads which kind of labels each output has, before any training
starts, so a bad label file fails in a second rather than after an epoch:

- ``train``: what the weights are fitted on;
- ``val``: what early stopping and distillation select on;
- ``gate``: what the accuracy gate measures on, never seen by the selection (``--gate-data``, or
  ``--gate-split`` of the validation data held out before training).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeprune.base.errors import InputError
from edgeprune.load.datasets import count, load_arrays, signature, take


@dataclass
class Split:
    """Arrays ready for training: ``x`` an array (or a dict per input), ``y`` an array (or a dict
    per output), None for unlabelled data (label-free distillation)."""

    x: np.ndarray | dict
    y: np.ndarray | dict | None
    source: str

    def __len__(self) -> int:
        return count(self.x)

    def take(self, index) -> Split:
        y = None if self.y is None else take(self.y, index)
        return Split(take(self.x, index), y, self.source)

    def unlabelled(self) -> Split:
        return Split(self.x, None, self.source)


def load_split(src: str, model, *, preprocessing=None, flag: str) -> Split:
    """Read one source for ``model`` with the one loader (same decoding and checks as calibration)."""
    inputs, outputs = signature(model)
    x, y = load_arrays(src, inputs=inputs, outputs=outputs, preprocessing=preprocessing, flag=flag)
    return Split(x, y, src)


def split(data: Split, fraction: float, seed: int = 0, flag: str = "--val-split") -> tuple[Split, Split]:
    """Seeded shuffle, then hold out ``fraction``: returns (kept, held out)."""
    n = len(data)
    n_val = int(round(n * fraction))
    if n_val < 1 or n_val >= n:
        raise InputError(f"{flag} {fraction}: leaves no samples on one side out of {n}")
    order = np.random.default_rng(seed).permutation(n)
    return data.take(order[n_val:]), data.take(order[:n_val])


def _task(y, width: int, what: str) -> str:
    from edgeprune.device.metrics import label_kind

    return label_kind(y, width, what)


def check_against_model(data: Split, model, flag: str = "--train-data"):
    """Check x and y fit ``model``; return the task of its labels.

    The task is 'sparse', 'onehot', 'binary', 'regression' or 'unlabelled' (one output), or a
    dict of them keyed by output name (several outputs). Refuses (InputError, expected vs
    found): wrong x shape, NaN/inf, label count mismatch, non-integer class labels, labels
    outside the model's output units, one-hot width mismatch.
    """
    from edgeprune.load.datasets import check_arrays

    inputs, outputs = signature(model)
    where = f"{flag} {data.source}"
    x, y = check_arrays(data.x, data.y, inputs=inputs, outputs=outputs, flag=flag, src=data.source)
    data.x, data.y = x, y
    if y is None:
        return "unlabelled"
    widths = {name: int(np.prod([d for d in t.shape[1:] if d is not None]) or 1)
              for name, t in zip(outputs, model.outputs)}
    if len(outputs) == 1:
        if isinstance(y, dict):
            y = data.y = next(iter(y.values()))
        return _task(y, widths[outputs[0]], where)
    if not isinstance(y, dict):
        raise InputError(f"{where}: the model has outputs {', '.join(outputs)}; give labels per output as y_<name>")
    unknown = sorted(set(y) - set(outputs))
    if unknown:
        raise InputError(f"{where}: labels for unknown output(s) {', '.join(unknown)} (outputs: {', '.join(outputs)})")
    return {name: (_task(y[name], widths[name], f"{where} (output '{name}')") if name in y else "unlabelled")
            for name in outputs}


@dataclass
class TrainingData:
    train: Split | None  # None: only --val-data was given (gate only)
    val: Split | None    # early stopping / distillation select on this
    task: str | dict
    gate: Split | None = None  # the accuracy gate measures on this, disjoint from the selection
    gate_source: str | None = None


def _selects(options) -> bool:
    return options.finetune_epochs > 0


def resolve(options, model, *, calibration=None, preprocessing=None, gate: bool = True,
            output=None) -> TrainingData | None:
    """Training, validation and gate splits for ``options`` checked against ``model``.

    With no ``train_data`` but calibration inputs, returns unlabelled data for label-free
    distillation; with only ``val_data``, validation data alone (``train`` None) that is also
    the gate data. When training selects on the validation data, ``gate_split`` of it is held
    out first for the gate (unless ``gate_data`` is given; ``gate`` False: no gate follows, keep
    it all for selection). Returns None when no data was given. Unlabelled ``train_data``
    without ``distill`` trains by label-free distillation: ``output`` warns that it does.
    """
    wants_gate, gate, gate_source = gate, None, None
    if options.gate_data:
        gate = load_split(options.gate_data, model, preprocessing=preprocessing, flag="--gate-data")
        check_against_model(gate, model, "--gate-data")
        gate_source = f"--gate-data {options.gate_data}"
    if options.train_data:
        train = load_split(options.train_data, model, preprocessing=preprocessing, flag="--train-data")
        if options.val_data:
            val = load_split(options.val_data, model, preprocessing=preprocessing, flag="--val-data")
        else:
            train, val = split(train, options.val_split, options.seed)
    elif options.val_data:  # validation only: enough for the accuracy gate, nothing to train on
        val = load_split(options.val_data, model, preprocessing=preprocessing, flag="--val-data")
        task = check_against_model(val, model, "--val-data")
        if gate is None:
            gate, gate_source = val, f"--val-data {options.val_data} (nothing selects on it)"
        return TrainingData(None, val, task, gate, gate_source)
    elif calibration is not None:
        x = calibration if isinstance(calibration, dict) else np.asarray(calibration, dtype=np.float32)
        train, val = split(Split(x, None, "calibration data"), options.val_split, options.seed)
    else:
        return TrainingData(None, None, "unlabelled", gate, gate_source) if gate is not None else None
    task = check_against_model(train, model, "--train-data")
    if task == "unlabelled" and options.train_data and not options.distill and options.finetune_epochs > 0:
        from edgeprune.base.console import default_output

        (output or default_output()).warn(
            f"--train-data {options.train_data} has no labels: recovery distils the unpruned model's outputs "
            "(label-free distillation) instead of fine-tuning on labels; pass --distill to say so, or add labels "
            "(y in the .npz, or class sub-folders)")
    val_task = check_against_model(val, model, "--val-data")
    if task != "unlabelled" and val_task != "unlabelled" and task != val_task:
        raise InputError(f"--val-data {val.source}: labels look like '{val_task}' but training labels are '{task}'")
    if gate is None and val.y is not None and wants_gate:
        if _selects(options):
            val, gate = split(val, options.gate_split, options.seed + 1, flag="--gate-split")
            gate_source = (f"{len(gate)} of the validation images held out before training "
                           f"(--gate-split {options.gate_split:g}); selection used the other {len(val)}")
        else:
            gate, gate_source = val, "the validation data (nothing selects on it: --finetune-epochs 0)"
    if task == "unlabelled" and val_task != "unlabelled":
        val = val.unlabelled()  # distillation selects without labels; the gate above keeps them
    return TrainingData(train, val, task, gate, gate_source)
