"""The Fashion-MNIST loader (benchmarks/_fashion.py) and a smoke run of fashion_mnist_recovery.py.

The data come from the Debian package ``dataset-fashion-mnist`` (scripts/setup.sh --test
installs it as root); without it the tests that need the real files skip and say why.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _fashion import ENV as FASHION_MNIST_ENV  # noqa: E402
from _fashion import available, load_fashion_mnist  # noqa: E402

needs_data = pytest.mark.skipif(
    not available(),
    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist (scripts/setup.sh --test does it as root)",
)


def _idx(path: Path, magic: int, dims: list[int], payload: bytes) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as fh:
        fh.write(header + payload)


def _fake_set(folder: Path, n_train: int = 6, n_test: int = 4) -> None:
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz", 0x0803, [n, 28, 28], bytes(range(256)) * (n * 784 // 256)
             + bytes(n * 784 % 256))
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 0x0801, [n], bytes(i % 10 for i in range(n)))


def test_loader_reads_idx_files_from_the_env_directory(tmp_path, monkeypatch):
    _fake_set(tmp_path)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    (x, y), (xt, yt) = load_fashion_mnist(install=False)
    assert x.shape == (6, 28, 28) and xt.shape == (4, 28, 28)
    assert x.dtype == np.uint8 and y.dtype == np.int64
    assert x.reshape(-1)[255] == 255 and x.reshape(-1)[0] == 0
    assert list(y) == [0, 1, 2, 3, 4, 5] and list(yt) == [0, 1, 2, 3]


def test_loader_rejects_a_wrong_or_truncated_file_in_one_line(tmp_path, monkeypatch):
    _fake_set(tmp_path)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x0803, [4], bytes(4))   # image magic on a label file
    with pytest.raises(SystemExit, match="t10k-labels-idx1-ubyte.gz: not an idx file") as err:
        load_fashion_mnist(install=False)
    assert "\n" not in str(err.value)
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x0801, [4], bytes(3))
    with pytest.raises(SystemExit, match="truncated"):
        load_fashion_mnist(install=False)
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(SystemExit, match=f"{FASHION_MNIST_ENV}=.*missing one of"):
        load_fashion_mnist(install=False)


@needs_data
def test_installed_fashion_mnist_has_the_official_splits(monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    (x, y), (xt, yt) = load_fashion_mnist(install=False)
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert int(x.min()) == 0 and int(x.max()) == 255
    assert np.bincount(y).tolist() == [6000] * 10 and np.bincount(yt).tolist() == [1000] * 10


@pytest.mark.slow
@needs_data
def test_benchmark_quick_run_reports_every_variant(tmp_path):
    saved = tmp_path / "run.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(FASHION_MNIST_ENV, None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fashion_mnist_recovery.py"), "--quick", "--json",
         "--train-size", "256", "--val-size", "128", "--test-size", "256", "--save", str(saved)],
        capture_output=True, text=True, env=env, timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert json.loads(saved.read_text()) == doc
    assert doc["setup"]["test_images"] == 256 and doc["setup"]["seeds_done"] == 1
    run = doc["runs"][0]
    for key, stats in doc["headline"].items():
        assert 0.0 <= stats["mean"] <= 100.0, key
        assert stats["values"] == [run["acc"][key]]
    dense = run["macs"]["dense"]
    for label, fraction in (("2x", 0.5), ("4x", 0.25)):
        assert run["macs"][f"{label} pruned"] <= fraction * dense * 1.02
        assert abs(run["macs"][f"{label} narrow"] - run["macs"][f"{label} pruned"]) <= 0.1 * run["macs"][f"{label} pruned"]
        assert 0.0 < run["width"][label] < 1.0
    assert set(doc["criteria_4x"]) == {"l1", "taylor", "random"}
    assert len(doc["targets"]) == 4 and all(isinstance(t["met"], bool) for t in doc["targets"])
    assert "| 4x narrow from scratch |" in done.stderr   # the Markdown table goes to stderr with --json
    table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fashion_mnist_recovery.py"),
                            "--table-from", str(saved)], capture_output=True, text=True, env=env, timeout=300)
    assert table.returncode == 0, table.stderr[-3000:]
    assert "| 4x narrow from scratch |" in table.stdout and "(1 of 1 seeds" in table.stdout
