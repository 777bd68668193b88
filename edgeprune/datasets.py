"""Calibration and evaluation arrays from files, image folders or user code, checked early.

A wrong shape, NaN or an empty source otherwise surfaces deep inside the TFLite converter as an
unreadable error; here it becomes one line saying what was expected and what was found.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edgeprune._pyfile import import_python_file
from edgeprune.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def array_sha256(x: np.ndarray) -> str:
    """Digest of an array's dtype, shape and bytes (recorded in manifests for reproducibility)."""
    x = np.ascontiguousarray(x)
    digest = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
    digest.update(x.tobytes())
    return digest.hexdigest()


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


# --- sources -------------------------------------------------------------------------------

def _from_npy(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        return np.load(path, allow_pickle=False), None
    except ValueError as exc:
        raise InputError(f"{path}: cannot read .npy without pickle ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: unreadable .npy file ({exc})") from None


def _from_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            if "x" in keys:
                x = data["x"]
            elif len(keys) == 1:
                x = data[keys[0]]
            else:
                raise InputError(
                    f"{path}: .npz needs an array named 'x' (or exactly one array); found {', '.join(keys) or 'none'}"
                )
            y = data["y"] if "y" in keys else None
    except InputError:
        raise
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: unreadable .npz file ({str(exc).splitlines()[0]})") from None
    return x, y


def _image_files(root: Path) -> tuple[list[Path], list[int] | None]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    classes = sorted({p.parent for p in files})
    if all(p.parent != root for p in files) and len(classes) > 1:
        index = {c: i for i, c in enumerate(classes)}
        return files, [index[p.parent] for p in files]
    return files, None


def _from_images(root: Path, input_shape, preprocessing, subset) -> tuple[np.ndarray, np.ndarray | None]:
    from PIL import Image

    if input_shape is None or len(input_shape) != 4 or None in tuple(input_shape)[1:]:
        raise InputError(f"{root}: an image folder needs a model with a fixed (N, H, W, C) input, "
                         f"found {_fmt_shape(input_shape or ())}")
    _, h, w, c = input_shape
    if c not in (1, 3):
        raise InputError(f"{root}: images can feed 1 or 3 channels, the model input has {c}")
    lo, hi = (preprocessing.scale if preprocessing is not None else (0.0, 1.0))
    files, labels = _image_files(root)
    keep = subset(len(files))
    files = [files[i] for i in keep]
    labels = None if labels is None else np.asarray([labels[i] for i in keep])
    out = np.empty((len(files), h, w, c), np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as img:
                img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                arr = np.asarray(img, np.float32)
        except OSError as exc:
            raise InputError(f"{f}: unreadable image ({exc})") from None
        out[i] = (arr.reshape(h, w, c) / 255.0) * (hi - lo) + lo
    return out, labels


def _import_callable(spec: str):
    target, _, fn_name = spec.rpartition(":")
    if not fn_name.isidentifier():
        raise InputError(f"calibration '{spec}': expected module:function or path/to/file.py:function")
    if target.endswith(".py") or Path(target).is_file():
        module = import_python_file(target, f"calibration '{spec}'")
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise InputError(f"calibration '{spec}': cannot import module '{target}' ({exc})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise InputError(f"calibration '{spec}': '{fn_name}' is not a function in {target}")
    return fn


def _collect(result: Any, spec: str, sample_shape) -> tuple[np.ndarray, np.ndarray | None]:
    """A callable's result: an array, an (x, y) pair, or an iterable of samples/batches/pairs."""
    if isinstance(result, np.ndarray) or hasattr(result, "__array__") and not isinstance(result, (list, tuple)):
        return np.asarray(result), None
    if isinstance(result, tuple) and len(result) == 2 and all(hasattr(r, "__len__") for r in result):
        x, y = np.asarray(result[0]), np.asarray(result[1])
        if x.ndim >= 2 and len(x) == len(y):
            return x, y
    if not isinstance(result, Iterable):
        raise InputError(f"calibration '{spec}': returned {type(result).__name__}, expected an array or an iterable of arrays")
    xs, ys = [], []
    for item in result:
        y = None
        if isinstance(item, (tuple, list)) and len(item) == 2 and not np.isscalar(item[0]):
            item, y = item
        elif isinstance(item, (tuple, list)) and len(item) == 1:
            item = item[0]
        arr = np.asarray(item)
        single = sample_shape is not None and arr.ndim == len(sample_shape)
        xs.append(arr[None] if single else arr)
        if y is not None:
            ys.append(np.atleast_1d(np.asarray(y)))
    if not xs:
        raise InputError(f"calibration '{spec}': the iterable yielded no samples")
    try:
        x = np.concatenate(xs)
    except ValueError:
        shapes = sorted({a.shape[1:] for a in xs})
        raise InputError(f"calibration '{spec}': items have different shapes {shapes[:3]}") from None
    y = np.concatenate(ys) if ys and len(ys) == len(xs) else None
    return x, y


def _bundled_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("edgeprune") / "data" / "calibration"))


def _recipe(src: str) -> dict | None:
    """A calibration recipe (YAML: source, num_samples, seed) by path or bundled name."""
    path = Path(src)
    if path.suffix.lower() not in (".yaml", ".yml"):
        if path.exists() or ":" in src or "/" in src:
            return None
        path = _bundled_dir() / f"{src}.yaml"
        if not path.is_file():
            return None
    if not path.is_file():
        raise InputError(f"calibration recipe '{src}': no such file")
    from edgeprune.yamlfile import read_yaml

    data = read_yaml(path, f"calibration recipe {path}")
    if not isinstance(data, dict) or not isinstance(data.get("source"), str):
        raise InputError(f"calibration recipe {path}: expected a mapping with a 'source' string")
    source = data["source"]
    if ":" not in source and not Path(source).is_absolute():
        source = str(path.parent / source)
    data = dict(data, source=source)
    for key in ("num_samples", "seed"):
        if key in data and not isinstance(data[key], int):
            raise InputError(f"calibration recipe {path}: '{key}' must be an integer")
    return data


# --- checks --------------------------------------------------------------------------------

def _check(x: np.ndarray, y, src: str, input_shape, preprocessing, check_range: bool):
    if x.size == 0 or x.ndim == 0 or len(x) == 0:
        raise InputError(f"calibration '{src}': no samples (found shape {x.shape})")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
            or x.dtype == np.bool_):
        raise InputError(f"calibration '{src}': expected numeric data, found dtype {x.dtype}")
    if input_shape is not None:
        want = tuple(input_shape)[1:]
        got = x.shape[1:]
        if len(got) == len(want) - 1 and want[-1] == 1 and all(w in (None, g) for w, g in zip(want, got)):
            x = x[..., None]  # (N, H, W) for a (N, H, W, 1) model
            got = x.shape[1:]
        if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
            raise InputError(
                f"calibration '{src}': expected samples of shape {_fmt_shape((None, *want))} "
                f"for the model input, found {_fmt_shape((None, *got))}"
            )
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        raise InputError(
            f"calibration '{src}': {int(bad.sum())} NaN/Inf values in {int(bad.reshape(len(x), -1).any(1).sum())} "
            "samples; expected finite numbers"
        )
    if check_range and preprocessing is not None:
        lo, hi = preprocessing.scale
        span = max(hi - lo, 1e-12)
        mn, mx = float(x.min()), float(x.max())
        if mn < lo - 0.05 * span or mx > hi + 0.05 * span:
            raise InputError(
                f"calibration '{src}': values span [{mn:.4g}, {mx:.4g}] but the target's "
                f"preprocessing.scale expects [{lo:g}, {hi:g}]; rescale the data or use a profile "
                "with the matching preprocessing.scale"
            )
    if y is not None:
        y = np.asarray(y)
        if len(y) != len(x):
            raise InputError(f"calibration '{src}': {len(x)} samples but {len(y)} labels")
    return x, y


def _subset_fn(num_samples: int | None, seed: int):
    if num_samples is not None and num_samples <= 0:
        raise InputError(f"--num-samples must be positive, found {num_samples}")

    def subset(n: int) -> np.ndarray:
        if num_samples is None or n <= num_samples:
            return np.arange(n)
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(n, size=num_samples, replace=False))

    return subset


def load_arrays(src: str, *, input_shape=None, preprocessing=None, num_samples: int | None = None,
                seed: int = 0, check_range: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Load ``src`` as float32 ``x`` (and labels ``y`` when present), checked against the model.

    ``src``: a ``.npy``/``.npz`` file, an image directory (class sub-folders become labels), or
    ``module:function`` / ``path/to/file.py:function``. ``input_shape`` is the model input shape
    including the batch dimension; ``preprocessing`` a profile's Preprocessing (range, colour).
    ``num_samples`` keeps a seeded random subset.
    """
    src = str(src)
    recipe = _recipe(src)
    if recipe is not None:
        src = recipe["source"]
        num_samples = recipe.get("num_samples") if num_samples is None else num_samples
        seed = recipe.get("seed", seed) if seed == 0 else seed
    subset = _subset_fn(num_samples, seed)
    path = Path(src)
    sample_shape = tuple(input_shape)[1:] if input_shape is not None else None
    if path.is_dir():
        x, y = _from_images(path, input_shape, preprocessing, subset)
        return _check(x, y, src, input_shape, preprocessing, check_range=False)
    if path.is_file() or path.suffix.lower() in (".npy", ".npz"):
        if not path.is_file():
            raise InputError(f"calibration '{src}': no such file")
        if path.suffix.lower() == ".npz":
            x, y = _from_npz(path)
        elif path.suffix.lower() == ".npy":
            x, y = _from_npy(path)
        else:
            raise InputError(f"calibration '{src}': expected .npy, .npz, an image folder or module:function")
    elif ":" in src:
        fn = _import_callable(src)
        try:
            result = fn()
        except Exception as exc:
            raise InputError(f"calibration '{src}': the function raised {type(exc).__name__}: {exc}") from None
        x, y = _collect(result, src, sample_shape)
    else:
        raise InputError(f"calibration '{src}': no such file or directory (or module:function)")
    x = np.asarray(x)
    if x.ndim > 0 and len(x) > 0:
        n = len(x)
        keep = subset(n)
        x = x[keep]
        if y is not None and len(y) == n:
            y = np.asarray(y)[keep]
    return _check(x, y, src, input_shape, preprocessing, check_range)
