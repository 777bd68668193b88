"""Fashion-MNIST for the benchmarks, from the Debian package ``dataset-fashion-mnist``.

The four idx ``.gz`` files live in ``/usr/share/datasets/fashion-mnist`` (``dpkg -L
dataset-fashion-mnist``). As root with apt-get the package is installed when missing; a
directory holding the files may be given with ``$EDGEPRUNE_FASHION_MNIST``. Nothing is
downloaded from the web.

    from _fashion import load_fashion_mnist
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()   # uint8 (N, 28, 28), int64 labels
"""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

PACKAGE = "dataset-fashion-mnist"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def data_dir() -> Path:
    names = [n for pair in FILES.values() for n in pair]
    env = os.environ.get("EDGEPRUNE_FASHION_MNIST")
    folder = Path(env) if env else DEFAULT_DIR
    if not all((folder / n).is_file() for n in names) and not env and os.geteuid() == 0 \
            and shutil.which("apt-get"):
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", PACKAGE]):
            subprocess.run(cmd, check=False, capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not all((folder / n).is_file() for n in names):
        raise SystemExit(f"Fashion-MNIST not found in {folder}: apt-get install {PACKAGE} "
                         "or set EDGEPRUNE_FASHION_MNIST to a folder with the four idx .gz files")
    return folder


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist():
    """((x_train, y_train), (x_test, y_test)): 60,000 and 10,000 28x28 uint8 images, labels 0-9."""
    folder = data_dir()
    out = []
    for split in ("train", "test"):
        images, labels = FILES[split]
        out.append((_idx(folder / images), _idx(folder / labels).astype(np.int64)))
    return tuple(out)
