"""Eval data for verification: an .npz with ``x`` (inputs) and optional ``y`` (labels/targets).

Checked against the artifact's input tensor on the compile machine, so a wrong shape is a
clear usage error (exit 2) rather than a crash on the device.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeprune.errors import InputError


@dataclass
class EvalData:
    path: Path
    x: np.ndarray
    y: np.ndarray | None

    @property
    def samples(self) -> int:
        return int(len(self.x))


def _load_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files:
                raise InputError(f"{path}: expected arrays 'x' (inputs) and 'y' (labels), found "
                                 f"{', '.join(data.files) or 'none'}")
            return data["x"], (data["y"] if "y" in data.files else None)
    except InputError:
        raise
    except ValueError as exc:  # object arrays need pickle: refused on purpose
        raise InputError(f"{path}: cannot read eval data ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npz/.npy file ({exc})") from None


def load_eval_data(path: str | Path, input_tensor: dict) -> EvalData:
    """Read and check eval data against the model's (single) input tensor summary."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: eval data not found")
    x, y = _load_arrays(p)
    if x.dtype.kind not in "fiub":
        raise InputError(f"{p}: x must be numeric, found dtype {x.dtype}")
    want = list(input_tensor["shape"][1:])
    if x.ndim == len(want) and list(x.shape) == want:
        x = x[None]  # a single sample
    if list(x.shape[1:]) != want:
        raise InputError(f"{p}: x has per-sample shape {list(x.shape[1:])}, the model input expects {want}")
    if len(x) == 0:
        raise InputError(f"{p}: x holds no samples")
    if y is not None:
        if y.dtype.kind not in "fiub":
            raise InputError(f"{p}: y must be numeric, found dtype {y.dtype}")
        if len(y) != len(x):
            raise InputError(f"{p}: y has {len(y)} rows but x has {len(x)} samples")
    if x.dtype.kind == "f" and x.dtype != np.float32:
        x = x.astype(np.float32)
    return EvalData(p, np.ascontiguousarray(x), y)
