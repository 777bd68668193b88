"""The one data loader: calibration, training, validation, gate and evaluation arrays.

Every command reads data here, so an image folder decodes, resizes (bilinear), scales (the
profile's ``preprocessing.scale``) and is checked the same way whether it calibrates int8,
fine-tunes, gates or verifies. A wrong shape, NaN or an empty source otherwise surfaces deep
inside the TFLite converter or after a training epoch as an unreadable error; here it becomes
one line naming the flag, what was expected and what was found.

Models with several inputs take an ``.npz`` keyed by input name (or a ``module:function``
yielding dicts keyed by input name, or tuples in input order); ``x`` is then a dict. Labels of
several outputs are ``y_<output name>`` arrays; ``y`` is then a dict.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import os
import re
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.base import limits
from edgeprune.base.errors import InputError
from edgeprune.base.pyfile import import_python_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def array_sha256(x: np.ndarray) -> str:
    """Digest of an array's dtype, shape and bytes (recorded in manifests for reproducibility)."""
    x = np.ascontiguousarray(x)
    digest = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
    digest.update(x.tobytes())
    return digest.hexdigest()


def _fmt_shape(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


# --- sources -------------------------------------------------------------------------------

def _npy_header(fh, where: str, available: int) -> None:
    """Read an npy header from ``fh`` and refuse, before anything is allocated, object dtypes
    (they need pickle), a declared shape x itemsize over the array limit, and more data declared
    than the ``available`` bytes hold (np.load allocates the declared shape first)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(fh)
        else:  # 3.0 (utf-8 field names) has no public reader
            shape, _, dtype = fmt._read_array_header(fh, version)
    except Exception as exc:  # numpy parses the header with ast and tokenize: hostile bytes raise a zoo
        raise InputError(f"{where}: not a valid .npy array ({_first_line(exc)})") from None
    if dtype.hasobject:
        raise InputError(f"{where}: holds Python objects (dtype {dtype}), which cannot be read without pickle "
                         "(refused); save numeric arrays")
    nbytes = math.prod(shape) * dtype.itemsize
    limits.check("array_bytes", nbytes, where)
    data_left = available - fh.tell()
    if nbytes > data_left:
        raise InputError(f"{where}: declares {nbytes:,} bytes of data but holds {max(data_left, 0):,} (truncated)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _from_npy(path: Path, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with open(path, "rb") as fh:
            _npy_header(fh, where, os.fstat(fh.fileno()).st_size)
        return np.load(path, allow_pickle=False), None
    except ValueError as exc:
        raise InputError(f"{where}: cannot read .npy without pickle ({exc})") from None
    except OSError as exc:
        raise InputError(f"{where}: unreadable .npy file ({exc})") from None


def check_npz(path: Path, where: str) -> None:
    """Every member's declared size (zip directory) and its inner npy header, before np.load
    inflates any of them."""
    limit = limits.current()
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            member = f"{where}: member '{info.filename}'"
            limits.check("array_bytes", info.file_size, member, limits=limit)
            if info.filename.endswith(".npy") and not info.is_dir():
                with zf.open(info) as fh:
                    _npy_header(fh, member, info.file_size)


def _npz_labels(data, keys: list[str], outputs, where: str):
    """``y`` (one output) or ``{name: y_<name>}`` (several outputs) from an open .npz."""
    named = {o: data[f"y_{o}"] for o in (outputs or []) if f"y_{o}" in keys}
    if outputs and len(outputs) > 1:
        if "y" in keys and not named:
            raise InputError(f"{where}: the model has {len(outputs)} outputs ({', '.join(outputs)}); name "
                             f"their labels y_<output> (e.g. y_{outputs[0]}) instead of 'y'")
        return named or None
    if "y" in keys:
        return data["y"]
    return next(iter(named.values()), None)


def _from_npz(path: Path, spec: _Spec, where: str):
    try:
        check_npz(path, where)
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            if spec.multi:
                missing = [n for n in spec.names if n not in keys and f"x_{n}" not in keys]
                if missing:
                    raise InputError(f"{where}: the model has inputs {', '.join(spec.names)}; the .npz needs an "
                                     f"array per input name, missing {', '.join(missing)} (found {', '.join(keys) or 'none'})")
                x = {n: data[n] if n in keys else data[f"x_{n}"] for n in spec.names}
            elif "x" in keys:
                x = data["x"]
            elif spec.names and spec.names[0] in keys:
                x = data[spec.names[0]]
            elif len(keys) == 1:
                x = data[keys[0]]
            else:
                raise InputError(
                    f"{where}: .npz needs an array named 'x' (or exactly one array); found {', '.join(keys) or 'none'}"
                )
            y = _npz_labels(data, keys, spec.outputs, where)
    except InputError:
        raise
    except ValueError as exc:  # object arrays need pickle: refused on purpose
        raise InputError(f"{where}: cannot read without pickle ({str(exc).splitlines()[0]})") from None
    except (OSError, EOFError, zipfile.BadZipFile, NotImplementedError, zlib.error) as exc:  # NotImplemented: zip method
        raise InputError(f"{where}: unreadable .npz file ({_first_line(exc)})") from None
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


def _from_images(root: Path, input_shape, preprocessing, subset, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode (PIL), convert to L or RGB, resize bilinear to the input, scale to preprocessing.scale."""
    from PIL import Image

    if input_shape is None or len(input_shape) != 4 or None in tuple(input_shape)[1:]:
        raise InputError(f"{where}: an image folder needs a model with a fixed (N, H, W, C) input, "
                         f"found {_fmt_shape(input_shape or ())}")
    _, h, w, c = input_shape
    if c not in (1, 3):
        raise InputError(f"{where}: images can feed 1 or 3 channels, the model input has {c}")
    lo, hi = (preprocessing.scale if preprocessing is not None else (0.0, 1.0))
    files, labels = _image_files(root)
    keep = subset(len(files))
    files = [files[i] for i in keep]
    labels = None if labels is None else np.asarray([labels[i] for i in keep])
    limits.check("array_bytes", len(files) * h * w * c * 4, where, what="decodes to")
    out = np.empty((len(files), h, w, c), np.float32)
    limit = limits.current()
    for i, f in enumerate(files):
        try:
            with _open_image(f, limit) as img:
                img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                arr = np.asarray(img, np.float32)
        except OSError as exc:
            raise InputError(f"{f}: unreadable image ({exc})") from None
        out[i] = (arr.reshape(h, w, c) / 255.0) * (hi - lo) + lo
    return out, labels


def _open_image(f: Path, limit: limits.ResourceLimits):
    """``Image.open`` (which reads the header only) with the pixel limit checked before any
    decoding. Pillow's own bomb check is set to the same limit: it warns past it (the check
    right after reports that with numbers) and raises past twice it (reported the same way)."""
    import warnings

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = limit.image_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(f)
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = int(found.group(1)) if found else 2 * limit.image_pixels + 1
            limits.check("image_pixels", pixels, str(f), limits=limit)
            raise  # not reached: Pillow raised past twice the limit
    width, height = img.size
    try:
        limits.check("image_pixels", width * height, f"{f} ({width}x{height})", limits=limit)
    except InputError:
        img.close()
        raise
    return img


def _import_callable(spec: str, where: str):
    target, _, fn_name = spec.rpartition(":")
    if not fn_name.isidentifier():
        raise InputError(f"{where}: expected module:function or path/to/file.py:function")
    if target.endswith(".py") or Path(target).is_file():
        module = import_python_file(target, where)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise InputError(f"{where}: cannot import module '{target}' ({exc})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise InputError(f"{where}: '{fn_name}' is not a function in {target}")
    return fn


def _arrays(item) -> bool:
    return all(hasattr(v, "__array__") or isinstance(v, (list, np.ndarray)) for v in item)


def _split_item(item, spec: _Spec):
    """One yielded element -> (x part, y part or None): x an array (one input) or a dict."""
    if isinstance(item, dict):
        return item, None
    if isinstance(item, (tuple, list)):
        if spec.multi and len(item) == len(spec.names) and _arrays(item) and spec.matches(item):
            return dict(zip(spec.names, item)), None  # the inputs in model order
        if len(item) == 2 and not np.isscalar(item[0]):
            x, y = item
            if spec.multi and isinstance(x, (tuple, list)):
                x = dict(zip(spec.names, x))
            return x, y
        if len(item) == 1:
            return item[0], None
    return item, None


def _as_batch(x, y, spec: _Spec):
    """Add the batch axis to a single sample (and to its label)."""
    if isinstance(x, dict):
        arrays = {k: np.asarray(v) for k, v in x.items()}
        first = spec.names[0] if spec.names and spec.names[0] in arrays else next(iter(arrays))
        single = spec.sample(first) is not None and arrays[first].ndim == len(spec.sample(first))
        x = {k: (v[None] if single else v) for k, v in arrays.items()}
    else:
        arr = np.asarray(x)
        sample = spec.sample(spec.names[0] if spec.names else None)
        single = sample is not None and arr.ndim == len(sample)
        x = arr[None] if single else arr
    if y is not None:
        if isinstance(y, (tuple, list)) and spec.outputs and len(y) == len(spec.outputs):
            y = dict(zip(spec.outputs, y))
        if isinstance(y, dict):
            y = {k: (np.asarray(v)[None] if single else np.atleast_1d(np.asarray(v))) for k, v in y.items()}
        else:
            y = np.asarray(y)[None] if single else np.atleast_1d(np.asarray(y))
    return x, y


def _concat(parts: list, where: str):
    if isinstance(parts[0], dict):
        keys = list(parts[0])
        if any(set(p) != set(keys) for p in parts):
            raise InputError(f"{where}: items have different keys")
        return {k: _concat([p[k] for p in parts], where) for k in keys}
    try:
        return np.concatenate(parts)
    except ValueError:
        shapes = sorted({np.shape(a)[1:] for a in parts})
        raise InputError(f"{where}: items have different shapes {shapes[:3]}") from None


def _collect(result: Any, spec: _Spec, where: str):
    """A callable's result: an array, a dict of arrays, an (x, y) pair, a ``tf.data.Dataset``, or
    an iterable of samples, batches, dicts or pairs."""
    if hasattr(result, "as_numpy_iterator"):  # tf.data.Dataset
        result = result.as_numpy_iterator()
    elif isinstance(result, dict):
        return {k: np.asarray(v) for k, v in result.items()}, None
    elif isinstance(result, np.ndarray) or hasattr(result, "__array__") and not isinstance(result, (list, tuple)):
        return np.asarray(result), None
    elif isinstance(result, tuple) and len(result) == 2 and all(hasattr(r, "__len__") for r in result) \
            and not (spec.multi and spec.matches(result)):
        x, y = result
        x = dict(zip(spec.names, x)) if spec.multi and isinstance(x, (tuple, list)) else x
        if isinstance(x, dict) or (np.asarray(x).ndim >= 2 and len(x) == len(y)):
            return (x if isinstance(x, dict) else np.asarray(x)), (y if isinstance(y, dict) else np.asarray(y))
    if not isinstance(result, Iterable):
        raise InputError(f"{where}: returned {type(result).__name__}, expected an array or an iterable of arrays")
    xs, ys = [], []
    for item in result:
        x, y = _as_batch(*_split_item(item, spec), spec)
        xs.append(x)
        if y is not None:
            ys.append(y)
    if not xs:
        raise InputError(f"{where}: the iterable yielded no samples")
    x = _concat(xs, where)
    y = _concat(ys, where) if ys and len(ys) == len(xs) else None
    return x, y


def _bundled_dir() -> Path:
    from edgeprune.base.resources import bundled_dir

    return bundled_dir("calibration")


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
    from edgeprune.base.yamlfile import read_yaml

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


# --- model signature ------------------------------------------------------------------------

@dataclass
class _Spec:
    """What the data must feed: input names and shapes (batch included), output names."""

    names: list[str]
    shapes: list[tuple | None]
    outputs: list[str] | None = None

    @property
    def multi(self) -> bool:
        return len(self.names) > 1

    def sample(self, name) -> tuple | None:
        if name is None or name not in self.names:
            shape = self.shapes[0] if self.shapes else None
        else:
            shape = self.shapes[self.names.index(name)]
        return None if shape is None else tuple(shape)[1:]

    def matches(self, item) -> bool:
        """Whether a tuple's arrays fit the inputs in order (as samples or batches)."""
        if len(item) != len(self.names):
            return False
        for arr, shape in zip(item, self.shapes):
            dims = np.shape(arr)
            want = tuple(shape or ())[1:]
            if len(dims) not in (len(want), len(want) + 1) or not _fits(dims[-len(want):] if want else (), want):
                return False
        return True


def _fits(found, want) -> bool:
    return len(found) == len(want) and all(w is None or int(w) == int(f) for f, w in zip(found, want))


def signature(model) -> tuple[list[tuple[str, tuple]], list[str]]:
    """``([(input name, shape with batch)], [output names])`` of a Keras model (either flavour)."""
    from edgeprune.load.shapes import input_names

    inputs = [(name, tuple(t.shape)) for name, t in zip(input_names(model), model.inputs)]
    names = getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))]
    return inputs, list(names)


def count(x) -> int:
    """Number of samples in ``x`` (an array, or a dict of arrays for several inputs)."""
    return int(len(next(iter(x.values())))) if isinstance(x, dict) else int(len(x))


def take(a, index):
    """Rows ``index`` of an array, or of every array of a dict; None stays None."""
    if a is None:
        return None
    if isinstance(a, dict):
        return {k: np.asarray(v)[index] for k, v in a.items()}
    return np.asarray(a)[index]


# --- the input range -------------------------------------------------------------------------

# What a data set's span snaps to (smallest first), and what a leading layer's input is tried as.
STANDARD_RANGES = ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0))


@dataclass(frozen=True)
class InputRange:
    """The value range the model's image inputs take, and who said so.

    Passed to :func:`load_arrays` wherever a profile's ``Preprocessing`` fits (it has the same
    ``scale`` and ``color``): image folders are scaled onto ``scale``, and array data outside it
    is refused when ``checked`` (the range was stated by --input-range, the model or the
    calibration data). The profile's value alone is a default, not a fact about the model, so
    it scales images but refuses no data.
    """

    scale: tuple[float, float]
    source: str  # who decided: "--input-range", "model layer 'NAME' (Rescaling)", "calibration data", ...
    color: str = "rgb"
    checked: bool = True

    @property
    def described(self) -> str:
        return f"the model's input range is [{self.scale[0]:g}, {self.scale[1]:g}] (from {self.source})"

    def to_json(self) -> dict:
        """What manifest.json records (and ``bench`` reads back as the artifact's range)."""
        return {"range": [float(self.scale[0]), float(self.scale[1])], "source": self.source,
                "checked": self.checked}


def parse_input_range(value, flag: str = "--input-range") -> tuple[float, float] | None:
    """``"LO,HI"`` (or a pair of numbers) -> ``(lo, hi)``; one-line InputError otherwise."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    try:
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise InputError(f"{flag}: expected LO,HI (two numbers, e.g. -1,1 or 0,255), found '{value}'") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"{flag}: expected finite LO < HI, found '{value}'")
    return lo, hi


def _image_of(lo: float, hi: float, scale, offset) -> tuple[float, float]:
    """The span ``[lo, hi]`` maps to under ``x * scale + offset`` (per channel: the union)."""
    ends = np.concatenate([np.ravel(lo * np.asarray(scale, np.float64) + np.asarray(offset, np.float64)),
                           np.ravel(hi * np.asarray(scale, np.float64) + np.asarray(offset, np.float64))])
    return float(ends.min()), float(ends.max())


def _rescaling_input(scale, offset) -> tuple[float, float] | None:
    """The standard range a Rescaling layer's input is meant to be: the one it maps onto a
    normalised span ([0, 1], [-1, 1], or any unit-wide span inside [-1, 1]), e.g. 1/255 and
    (1/127.5, -1) take [0, 255], (2, -1) takes [0, 1]."""
    for cand in (STANDARD_RANGES[2], STANDARD_RANGES[0], STANDARD_RANGES[1]):
        a, b = _image_of(*cand, scale, offset)
        if a >= -1.05 and b <= 1.05 and b - a >= 0.9:
            return cand
    return None


def _normalization_input(mean, variance) -> tuple[float, float] | None:
    """The standard range a Normalization layer was adapted on: the one it maps onto the most
    centred span a few standard deviations wide (ImageNet statistics in pixels take [0, 255],
    the same statistics in [0, 1] take [0, 1]). An identity layer (mean 0, variance 1) says nothing."""
    mean, variance = np.asarray(mean, np.float64), np.asarray(variance, np.float64)
    if np.allclose(mean, 0.0) and np.allclose(variance, 1.0):
        return None
    std = np.sqrt(np.maximum(variance, 1e-12))
    best = None
    for cand in STANDARD_RANGES:
        a, b = _image_of(*cand, 1.0 / std, -mean / std)
        if 1.0 <= b - a <= 20.0:
            off_centre = abs(a + b) / 2 / (b - a)
            if best is None or off_centre < best[0]:
                best = (off_centre, cand)
    return None if best is None else best[1]


def model_input_range(model) -> tuple[tuple[float, float], str] | None:
    """``((lo, hi), "model layer 'NAME' (Rescaling)")`` when the model's first input is an image
    (N, H, W, C) that goes straight into a Rescaling or Normalization layer: the range that
    layer's input expects. None when the model has no such layer (or its graph cannot be traced:
    a bare SavedModel); a feature vector's Normalization describes no pixel range."""
    try:
        from edgeprune.load.graph import trace

        graph = trace(model)
        first = graph.tensors[tuple(graph.inputs[0])]
    except Exception:  # any model compile accepts must still compile: no layer, no opinion
        return None
    consumers = first.consumers
    if len(first.shape) != 3 or len(consumers) != 1:
        return None
    node = graph.layers[consumers[0]]
    found = None
    if node.class_name == "Rescaling":
        found = _rescaling_input(node.config.get("scale", 1.0), node.config.get("offset", 0.0))
    elif node.class_name == "Normalization" and not node.config.get("invert"):
        try:
            found = _normalization_input(np.asarray(node.layer.mean), np.asarray(node.layer.variance))
        except (AttributeError, TypeError, ValueError):
            found = None
    return None if found is None else (found, f"model layer '{node.name}' ({node.class_name})")


def data_range(x, prefer=None) -> tuple[float, float] | None:
    """The range the image inputs of ``x`` fit in (within 5 %, at most 0.1): ``prefer`` (the
    profile's) if they fit it, else the smallest of [0, 1], [-1, 1], [0, 255], else their own
    span; None when ``x`` has no image (N, H, W, C) input."""
    arrays = [v for v in (x.values() if isinstance(x, dict) else [x]) if np.ndim(v) == 4]
    if not arrays:
        return None
    lo = min(float(np.min(a)) for a in arrays)
    hi = max(float(np.max(a)) for a in arrays)
    for a, b in ((tuple(prefer),) if prefer is not None else ()) + STANDARD_RANGES:
        slack = 0.05 * min(b - a, 2.0)  # [-3, 3] is not [0, 255] data
        if lo >= a - slack and hi <= b + slack:
            return a, b
    return (lo, hi) if hi > lo else None


def input_range(profile=None, *, flag=None, model=None, recorded: dict | None = None, data=None,
                data_source: str = "calibration data") -> InputRange:
    """The one decision of the model's input range, for every command that reads input data.

    Precedence: ``flag`` (``--input-range LO,HI``) > the model's leading Rescaling/Normalization
    layer (or, for an artifact, the range its compile ``recorded`` in manifest.json) > ``data``
    (the calibration data, snapped to a standard range) > the profile's ``preprocessing.scale``.
    The range belongs to the model: a profile cannot know whether a MobileNet expects [-1, 1]
    or [0, 255], so its value is only the default for image folders and refuses no data.
    """
    color = profile.preprocessing.color if profile is not None else "rgb"
    stated = parse_input_range(flag)
    if stated is not None:
        return InputRange(stated, "--input-range", color)
    found = model_input_range(model) if model is not None else None
    if found is not None:
        return InputRange(found[0], found[1], color)
    if recorded and recorded.get("range"):
        lo, hi = recorded["range"]
        return InputRange((float(lo), float(hi)), f"the artifact's manifest ({recorded.get('source')})", color,
                          checked=bool(recorded.get("checked", True)))
    spanned = data_range(data, profile.preprocessing.scale if profile is not None else None) \
        if data is not None else None
    if spanned is not None:
        return InputRange(spanned, data_source, color)
    if profile is not None:
        return InputRange(tuple(profile.preprocessing.scale), f"profile '{profile.name}' (default)", color,
                          checked=False)
    return InputRange((0.0, 1.0), "default", color, checked=False)


# --- checks --------------------------------------------------------------------------------

def _check_input(x: np.ndarray, where: str, shape, preprocessing, check_range: bool, label: str = ""):
    x = np.asarray(x)
    if x.size == 0 or x.ndim == 0 or len(x) == 0:
        raise InputError(f"{where}: no samples{label} (found shape {x.shape})")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
            or x.dtype == np.bool_):
        raise InputError(f"{where}: expected numeric data{label}, found dtype {x.dtype}")
    if shape is not None:
        want = tuple(shape)[1:]
        got = x.shape[1:]
        if len(got) == len(want) - 1 and want[-1] == 1 and all(w in (None, g) for w, g in zip(want, got)):
            x = x[..., None]  # (N, H, W) for a (N, H, W, 1) model
            got = x.shape[1:]
        if not _fits(got, want):
            raise InputError(
                f"{where}: expected samples of shape {_fmt_shape((None, *want))} "
                f"for the model input{label}, found {_fmt_shape((None, *got))}"
            )
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        raise InputError(
            f"{where}: {int(bad.sum())} NaN/Inf values in {int(bad.reshape(len(x), -1).any(1).sum())} "
            f"samples{label}; expected finite numbers"
        )
    if check_range and preprocessing is not None and getattr(preprocessing, "checked", True):
        lo, hi = preprocessing.scale
        span = max(hi - lo, 1e-12)
        mn, mx = float(x.min()), float(x.max())
        if mn < lo - 0.05 * span or mx > hi + 0.05 * span:
            expected = getattr(preprocessing, "described", None) or f"the target's preprocessing.scale expects [{lo:g}, {hi:g}]"
            raise InputError(
                f"{where}: values{label} span [{mn:.4g}, {mx:.4g}] but {expected}; rescale the data, "
                "or pass --input-range LO,HI if the model really takes this range"
            )
        if span >= 100 and mx - mn < 0.02 * span:  # [0, 1] or [-1, 1] data for a model that scales pixels itself
            expected = getattr(preprocessing, "described", None) or f"the target's preprocessing.scale is [{lo:g}, {hi:g}]"
            raise InputError(
                f"{where}: values{label} span only [{mn:.4g}, {mx:.4g}] but {expected}: already rescaled? "
                "Give the data unscaled, or pass --input-range LO,HI if the model really takes this range"
            )
    return x


def _check_labels(y, n: int, where: str, label: str = ""):
    y = np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise InputError(f"{where}: labels{label} must be numeric, found dtype {y.dtype}")
    if len(y) != n:
        raise InputError(f"{where}: {n} samples but {len(y)} labels{label}")
    return y


def _check(x, y, where: str, spec: _Spec, preprocessing, check_range: bool):
    if isinstance(x, dict) and not spec.names:
        if len(x) != 1:
            raise InputError(f"{where}: found inputs {', '.join(sorted(x))}, the model has one input")
        x = next(iter(x.values()))
    if isinstance(x, dict):
        unknown = sorted(set(x) - set(spec.names)) if spec.names else []
        if unknown or (spec.multi and set(x) != set(spec.names)):
            raise InputError(f"{where}: inputs named {', '.join(sorted(x))}, the model's are {', '.join(spec.names)}")
        # the profile's pixel range applies to image inputs (N, H, W, C), not to side vectors
        x = {name: _check_input(x[name], where, spec.shapes[i], preprocessing,
                                check_range and len(spec.shapes[i] or ()) == 4, f" (input '{name}')")
             for i, name in enumerate(spec.names)}
        sizes = {count(v) for v in x.values()}
        if len(sizes) > 1:
            raise InputError(f"{where}: inputs have different sample counts {sorted(sizes)}")
        if not spec.multi:
            x = x[spec.names[0]]
    else:
        if spec.multi:
            raise InputError(f"{where}: the model has {len(spec.names)} inputs ({', '.join(spec.names)}); give an "
                             ".npz keyed by input name, or a module:function yielding dicts or tuples")
        x = _check_input(x, where, spec.shapes[0] if spec.shapes else None, preprocessing, check_range)
    n = count(x)
    if isinstance(y, dict):
        y = {k: _check_labels(v, n, where, f" of output '{k}'") for k, v in y.items()}
    elif y is not None:
        y = _check_labels(y, n, where)
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
                seed: int = 0, check_range: bool = True, inputs=None, outputs=None,
                flag: str = "calibration") -> tuple:
    """Load ``src`` as float32 ``x`` (and labels ``y`` when present), checked against the model.

    ``src``: a ``.npy``/``.npz`` file, an image directory (class sub-folders become labels),
    ``module:function`` / ``path/to/file.py:function`` (arrays, (x, y) pairs, batches, dicts,
    or a ``tf.data.Dataset``), or a recipe. ``input_shape`` is the model input shape including
    the batch dimension; for several inputs pass ``inputs=[(name, shape), ...]`` instead (then
    ``x`` is a dict keyed by input name) and ``outputs`` (output names) to read per-output
    labels ``y_<name>``. ``preprocessing`` is a profile's Preprocessing (pixel range).
    ``num_samples`` keeps a seeded random subset. ``flag`` names the source in errors.
    """
    src = str(src)
    recipe = _recipe(src)
    if recipe is not None:
        src = recipe["source"]
        num_samples = recipe.get("num_samples") if num_samples is None else num_samples
        seed = recipe.get("seed", seed) if seed == 0 else seed
    if inputs:
        spec = _Spec([n for n, _ in inputs], [tuple(s) if s is not None else None for _, s in inputs],
                     list(outputs) if outputs else None)
    else:
        spec = _Spec([], [tuple(input_shape)] if input_shape is not None else [],
                     list(outputs) if outputs else None)
    where = f"{flag} '{src}'"
    subset = _subset_fn(num_samples, seed)
    path = Path(src)
    if path.is_dir():
        if spec.multi:
            raise InputError(f"{where}: an image folder feeds one input; the model has {len(spec.names)}")
        x, y = _from_images(path, spec.shapes[0] if spec.shapes else None, preprocessing, subset, where)
        return _check(x, y, where, spec, preprocessing, check_range=False)
    if path.is_file() or path.suffix.lower() in (".npy", ".npz"):
        if not path.is_file():
            raise InputError(f"{where}: no such file")
        if path.suffix.lower() == ".npz":
            x, y = _from_npz(path, spec, where)
        elif path.suffix.lower() == ".npy":
            x, y = _from_npy(path, where)
        else:
            raise InputError(f"{where}: expected .npy, .npz, an image folder or module:function")
    elif ":" in src:
        fn = _import_callable(src, where)
        try:
            result = fn()
        except Exception as exc:
            raise InputError(f"{where}: the function raised {type(exc).__name__}: {exc}") from None
        x, y = _collect(result, spec, where)
    else:
        raise InputError(f"{where}: no such file or directory (or module:function)")
    if isinstance(x, dict) and not spec.multi and len(x) == 1:
        x = next(iter(x.values()))
    if not isinstance(x, dict):
        x = np.asarray(x)
    n = count(x) if (isinstance(x, dict) or x.ndim > 0) else 0
    if n > 0:
        keep = subset(n)
        x = take(x, keep)
        if isinstance(y, dict):
            y = {k: (np.asarray(v)[keep] if len(v) == n else v) for k, v in y.items()}
        elif y is not None and len(y) == n:
            y = np.asarray(y)[keep]
    return _check(x, y, where, spec, preprocessing, check_range)


def check_arrays(x, y=None, *, inputs, outputs=None, preprocessing=None, check_range: bool = False,
                 flag: str = "data", src: str = "arrays") -> tuple:
    """The loader's checks on arrays already in memory (the Python API's ``train=(x, y)``)."""
    spec = _Spec([n for n, _ in inputs], [tuple(s) if s is not None else None for _, s in inputs],
                 list(outputs) if outputs else None)
    if isinstance(x, dict) and not spec.multi and len(x) == 1:
        x = next(iter(x.values()))
    if isinstance(x, (list, tuple)) and spec.multi:
        x = dict(zip(spec.names, x))
    if isinstance(y, (list, tuple)) and outputs and len(outputs) > 1 and len(y) == len(outputs):
        y = dict(zip(outputs, y))
    return _check(x, y, f"{flag} '{src}'", spec, preprocessing, check_range)
