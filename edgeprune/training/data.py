"""Training and validation data: load, split, and check labels against the model first.

Sources: ``.npz`` with ``x``/``y`` arrays, an image directory with one sub-folder per class
(sorted folder names are the class indices), or ``module:function`` returning a
``tf.data.Dataset`` or an ``(x, y)`` pair. Everything is checked before any training starts,
so a bad label file fails in a second rather than after an epoch.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeprune.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm"}


@dataclass
class Split:
    """Arrays ready for training: ``y`` is None for unlabelled data (label-free distillation)."""

    x: np.ndarray
    y: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.x)


def load_source(src: str, *, input_shape=None, scale=(0.0, 1.0), flag: str = "--train-data") -> Split:
    """Read one data source into arrays (labels may be absent)."""
    path = Path(src)
    if path.suffix == ".npz" and path.exists():
        x, y = _load_npz(path, flag)
    elif path.is_dir():
        x, y = _load_image_dir(path, input_shape, scale, flag)
    elif ":" in src and not path.exists():
        x, y = _load_callable(src, flag)
    elif not path.exists():
        raise InputError(f"{flag} {src}: no such file or directory")
    else:
        raise InputError(f"{flag} {src}: expected a .npz file, an image folder or module:function")
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise InputError(f"{flag} {src}: x must be numeric, found dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    return Split(x, None if y is None else np.asarray(y), src)


def _load_npz(path: Path, flag: str):
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            if "x" not in keys:
                raise InputError(f"{flag} {path}: expected arrays 'x' and 'y', found {keys}")
            return data["x"], (data["y"] if "y" in keys else None)
    except ValueError as exc:  # object arrays need pickle: refused
        raise InputError(f"{flag} {path}: cannot read without pickle ({exc})") from None


def _load_image_dir(path: Path, input_shape, scale, flag: str):
    from PIL import Image

    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{flag} {path}: expected one sub-folder per class, found none")
    if input_shape is None or len(input_shape) != 3:
        raise InputError(f"{flag} {path}: image folders need a model with (H, W, C) input, found {input_shape}")
    height, width, channels = (int(v) for v in input_shape)
    mode = "L" if channels == 1 else "RGB"
    lo, hi = scale
    xs, ys = [], []
    for index, name in enumerate(classes):
        files = sorted(f for f in (path / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for file in files:
            try:
                with Image.open(file) as img:
                    arr = np.asarray(img.convert(mode).resize((width, height)), dtype=np.float32)
            except OSError as exc:
                raise InputError(f"{flag} {file}: not a readable image ({exc})") from None
            arr = arr.reshape(height, width, channels)
            xs.append(lo + arr / 255.0 * (hi - lo))
            ys.append(index)
    if not xs:
        raise InputError(f"{flag} {path}: no images found in the class folders {classes}")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def _load_callable(src: str, flag: str):
    module_name, _, func_name = src.partition(":")
    if "." not in sys.path and "" not in sys.path:
        sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
        func = getattr(module, func_name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"{flag} {src}: cannot import ({exc})") from None
    result = func()
    if isinstance(result, tuple) and len(result) == 2:
        return result
    if hasattr(result, "as_numpy_iterator"):
        return _dataset_to_arrays(result, src, flag)
    raise InputError(f"{flag} {src}: expected the function to return a tf.data.Dataset or (x, y), found {type(result).__name__}")


def _dataset_to_arrays(dataset, src: str, flag: str):
    """Materialise a (possibly batched) dataset of x or (x, y) elements."""
    xs, ys = [], []
    batched = None
    for element in dataset.as_numpy_iterator():
        if isinstance(element, tuple):
            x, y = element[0], element[1] if len(element) > 1 else None
        else:
            x, y = element, None
        if batched is None:
            spec = dataset.element_spec[0] if isinstance(dataset.element_spec, tuple) else dataset.element_spec
            batched = spec.shape.rank is not None and spec.shape.rank >= 1 and spec.shape[0] is None
        xs.append(np.asarray(x))
        if y is not None:
            ys.append(np.asarray(y))
    if not xs:
        raise InputError(f"{flag} {src}: the dataset is empty")
    join = np.concatenate if batched else np.stack
    return join(xs), (join(ys) if ys else None)


def split(data: Split, fraction: float, seed: int = 0) -> tuple[Split, Split]:
    """Seeded shuffle, then hold out ``fraction`` for validation."""
    n = len(data)
    n_val = int(round(n * fraction))
    if n_val < 1 or n_val >= n:
        raise InputError(f"--val-split {fraction}: leaves no training or no validation samples out of {n}")
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = order[:n_val], order[n_val:]

    def take(idx):
        return Split(data.x[idx], None if data.y is None else data.y[idx], data.source)

    return take(train_idx), take(val_idx)


def check_against_model(data: Split, model, flag: str = "--train-data") -> str:
    """Check x and y fit ``model``; return the task ('sparse', 'onehot', 'regression', 'unlabelled').

    Refuses (InputError, expected vs found): wrong x shape, NaN/inf, label count mismatch,
    non-integer class labels, labels outside the model's output units, one-hot width mismatch.
    """
    src = data.source
    in_shape = tuple(model.inputs[0].shape[1:])
    if tuple(data.x.shape[1:]) != in_shape and not _compatible(data.x.shape[1:], in_shape):
        raise InputError(f"{flag} {src}: samples have shape {tuple(data.x.shape[1:])}, model expects {in_shape}")
    if not np.all(np.isfinite(data.x)):
        raise InputError(f"{flag} {src}: x contains NaN or infinite values ({int(np.sum(~np.isfinite(data.x)))} entries)")
    if data.y is None:
        return "unlabelled"
    y = data.y
    if len(y) != len(data.x):
        raise InputError(f"{flag} {src}: {len(data.x)} samples but {len(y)} labels")
    if y.dtype.kind not in "fiub":
        raise InputError(f"{flag} {src}: labels must be numeric, found dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise InputError(f"{flag} {src}: labels contain NaN or infinite values")
    out_shape = tuple(model.outputs[0].shape[1:])
    units = int(out_shape[-1]) if out_shape else 1
    squeezed = y.reshape(len(y), -1) if y.ndim > 1 else y
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1 and units > 1):
        flat = squeezed.reshape(-1)
        if units == 1:
            return "binary" if np.all((flat == 0) | (flat == 1)) else "regression"
        if y.dtype.kind == "f" and not np.all(flat == np.round(flat)):
            if units == 1:
                return "regression"
            raise InputError(f"{flag} {src}: class labels must be integers, found non-integer values such as {flat[flat != np.round(flat)][0]}")
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= units:
            raise InputError(
                f"{flag} {src}: labels must be class indices in [0, {units - 1}] for a model with "
                f"{units} output units, found range [{lo}, {hi}]"
            )
        return "sparse"
    if tuple(y.shape[1:]) != out_shape:
        raise InputError(f"{flag} {src}: labels have shape {tuple(y.shape[1:])}, model outputs {out_shape}")
    if np.all((y == 0) | (y == 1)) and np.all(y.reshape(len(y), -1).sum(axis=1) == 1):
        return "onehot"
    return "regression"


def _compatible(found, expected) -> bool:
    return len(found) == len(expected) and all(e is None or f == e for f, e in zip(found, expected))


@dataclass
class TrainingData:
    train: Split | None  # None: only --val-data was given (gate only)
    val: Split | None
    task: str


def resolve(options, model, *, calibration: np.ndarray | None = None, scale=(0.0, 1.0)) -> TrainingData | None:
    """Training/validation splits for ``options`` checked against ``model``.

    With no ``train_data`` but calibration images, returns unlabelled data for label-free
    distillation; with only ``val_data``, returns validation data alone (``train`` None).
    Returns None when no data was given.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise InputError(
            f"training needs a single-input, single-output model; '{model.name}' has "
            f"{len(model.inputs)} inputs and {len(model.outputs)} outputs"
        )
    in_shape = tuple(model.inputs[0].shape[1:])
    if options.train_data:
        train = load_source(options.train_data, input_shape=in_shape, scale=scale, flag="--train-data")
        if options.val_data:
            val = load_source(options.val_data, input_shape=in_shape, scale=scale, flag="--val-data")
        else:
            train, val = split(train, options.val_split, options.seed)
    elif options.val_data:  # validation only: enough for the accuracy gate, nothing to train on
        val = load_source(options.val_data, input_shape=in_shape, scale=scale, flag="--val-data")
        return TrainingData(None, val, check_against_model(val, model, "--val-data"))
    elif calibration is not None:
        x = np.asarray(calibration, dtype=np.float32)
        train, val = split(Split(x, None, "calibration data"), options.val_split, options.seed)
    else:
        return None
    task = check_against_model(train, model, "--train-data")
    val_task = check_against_model(val, model, "--val-data")
    if {task, val_task} - {"unlabelled"} and task != val_task and "unlabelled" not in (task, val_task):
        raise InputError(f"--val-data {val.source}: labels look like '{val_task}' but training labels are '{task}'")
    if task == "unlabelled" and val_task != "unlabelled":
        val = Split(val.x, None, val.source)
    return TrainingData(train, val, task)
