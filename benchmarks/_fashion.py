"""Fashion-MNIST for the benchmarks, from the Debian package ``dataset-fashion-mnist``.

The one loader every benchmark uses (``search_fashion_mnist.py``, ``fashion_mnist_recovery.py``).
The four idx ``.gz`` files live in ``/usr/share/datasets/fashion-mnist`` (``dpkg -L
dataset-fashion-mnist``). As root with apt-get the package is installed when missing; a
directory holding the files may be given with ``$EDGEPRUNE_FASHION_MNIST`` (then only that
directory is used). Nothing is downloaded from the web. Problems end the script with one line
(``SystemExit``), never a traceback.

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
ENV = "EDGEPRUNE_FASHION_MNIST"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
MAGIC = {"images": 0x0803, "labels": 0x0801}   # idx: uint8 payload, 3 or 1 dimensions
HOW = f"apt-get install {PACKAGE} or set {ENV} to a folder with the four idx .gz files"


def _complete(folder: Path) -> bool:
    return all((folder / n).is_file() for pair in FILES.values() for n in pair)


def data_dir(*, install: bool = True) -> Path:
    env = os.environ.get(ENV)
    folder = Path(env) if env else DEFAULT_DIR
    if not _complete(folder) and install and not env and hasattr(os, "geteuid") and os.geteuid() == 0 \
            and shutil.which("apt-get"):
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", PACKAGE]):
            subprocess.run(cmd, check=False, capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not _complete(folder) and env:
        names = ", ".join(n for pair in FILES.values() for n in pair)
        raise SystemExit(f"{ENV}={env}: missing one of {names}")
    if not _complete(folder):
        raise SystemExit(f"Fashion-MNIST not found in {folder}: {HOW}")
    return folder


def available() -> bool:
    """True when the files are there (never installs): for tests that skip without them."""
    try:
        data_dir(install=False)
    except SystemExit:
        return False
    return True


def _idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise SystemExit(f"{path}: not an idx file of the expected kind (magic {found:#x}, expected {magic:#x})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise SystemExit(f"{path}: truncated ({data.size} values, the header says {int(np.prod(dims))})")
    return data.reshape(dims)


def load_fashion_mnist(*, install: bool = True):
    """((x_train, y_train), (x_test, y_test)): 60,000 and 10,000 28x28 uint8 images, labels 0-9.

    The test split is the official one: carve validation data out of the training split.
    """
    folder = data_dir(install=install)
    out = []
    for split in ("train", "test"):
        images, labels = FILES[split]
        x, y = _idx(folder / images, MAGIC["images"]), _idx(folder / labels, MAGIC["labels"]).astype(np.int64)
        if len(x) != len(y):
            raise SystemExit(f"{folder / images}: {len(x)} images but {len(y)} labels")
        out.append((x, y))
    return tuple(out)
