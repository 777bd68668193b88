"""Calibration/eval arrays from every source, and a clear refusal for every bad one."""
from __future__ import annotations

import numpy as np
import pytest

from edgeprune.base.errors import InputError
from edgeprune.device.profiles import Preprocessing
from edgeprune.load.datasets import array_sha256, load_arrays

SHAPE = (None, 8, 8, 1)


def _x(n=20, seed=0):
    return np.random.default_rng(seed).random((n, 8, 8, 1), dtype=np.float32)


def test_npy(tmp_path):
    np.save(tmp_path / "x.npy", _x())
    x, y = load_arrays(str(tmp_path / "x.npy"), input_shape=SHAPE)
    assert x.shape == (20, 8, 8, 1) and x.dtype == np.float32 and y is None


def test_npz_with_labels_and_single_array(tmp_path):
    np.savez(tmp_path / "xy.npz", x=_x(), y=np.arange(20))
    x, y = load_arrays(str(tmp_path / "xy.npz"), input_shape=SHAPE)
    assert len(x) == len(y) == 20
    np.savez(tmp_path / "one.npz", data=_x(5))
    x, y = load_arrays(str(tmp_path / "one.npz"), input_shape=SHAPE)
    assert x.shape[0] == 5 and y is None


def test_npz_ambiguous_arrays(tmp_path):
    np.savez(tmp_path / "two.npz", a=_x(), b=_x())
    with pytest.raises(InputError, match="needs an array named 'x'.*found a, b"):
        load_arrays(str(tmp_path / "two.npz"), input_shape=SHAPE)


def test_seeded_subset_is_reproducible(tmp_path):
    np.savez(tmp_path / "xy.npz", x=_x(50), y=np.arange(50))
    a = load_arrays(str(tmp_path / "xy.npz"), input_shape=SHAPE, num_samples=10, seed=1)
    b = load_arrays(str(tmp_path / "xy.npz"), input_shape=SHAPE, num_samples=10, seed=1)
    c = load_arrays(str(tmp_path / "xy.npz"), input_shape=SHAPE, num_samples=10, seed=2)
    assert len(a[0]) == 10 and array_sha256(a[0]) == array_sha256(b[0]) != array_sha256(c[0])
    np.testing.assert_array_equal(a[0], _x(50)[a[1]])  # labels follow their samples


def test_missing_channel_axis_is_added(tmp_path):
    np.save(tmp_path / "x.npy", _x()[..., 0])
    x, _ = load_arrays(str(tmp_path / "x.npy"), input_shape=SHAPE)
    assert x.shape == (20, 8, 8, 1)


def test_image_folder_with_class_subfolders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    x, y = load_arrays(str(tmp_path / "imgs"), input_shape=(None, 12, 10, 1),
                       preprocessing=Preprocessing(scale=(-1.0, 1.0)))
    assert x.shape == (6, 12, 10, 1) and list(y) == [0, 0, 0, 1, 1, 1]
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() < 0
    x3, _ = load_arrays(str(tmp_path / "imgs"), input_shape=(None, 8, 8, 3), num_samples=4)
    assert x3.shape == (4, 8, 8, 3) and 0.0 <= x3.min() and x3.max() <= 1.0


def test_empty_image_folder(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match="no images found"):
        load_arrays(str(tmp_path / "none"), input_shape=SHAPE)


_GEN_SRC = '''
import numpy as np

def batches():
    rng = np.random.default_rng(0)
    for _ in range(3):
        yield rng.random((4, 8, 8, 1), dtype=np.float32)

def samples():
    return [np.zeros((8, 8, 1), np.float32) for _ in range(5)]

def pair():
    return np.zeros((6, 8, 8, 1), np.float32), np.arange(6)

def broken():
    raise ValueError("no data today")

def nothing():
    return iter(())
'''


def test_callable_sources(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(_GEN_SRC)
    x, y = load_arrays(f"{tmp_path / 'mydata.py'}:batches", input_shape=SHAPE)
    assert x.shape == (12, 8, 8, 1) and y is None
    x, _ = load_arrays(f"{tmp_path / 'mydata.py'}:samples", input_shape=SHAPE)
    assert x.shape == (5, 8, 8, 1)
    monkeypatch.syspath_prepend(str(tmp_path))
    x, y = load_arrays("mydata:pair", input_shape=SHAPE)
    assert x.shape == (6, 8, 8, 1) and list(y) == list(range(6))


@pytest.mark.parametrize("fn, match", [
    ("broken", "raised ValueError: no data today"),
    ("nothing", "yielded no samples"),
    ("missing", "'missing' is not a function"),
])
def test_callable_errors(tmp_path, fn, match):
    (tmp_path / "mydata.py").write_text(_GEN_SRC)
    with pytest.raises(InputError, match=match):
        load_arrays(f"{tmp_path / 'mydata.py'}:{fn}", input_shape=SHAPE)


def test_unimportable_module():
    with pytest.raises(InputError, match="cannot import module 'no_such_module_xyz'"):
        load_arrays("no_such_module_xyz:f", input_shape=SHAPE)


def test_wrong_shape_says_expected_and_found(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 16, 16, 3), np.float32))
    with pytest.raises(InputError, match=r"expected samples of shape \(N, 8, 8, 1\).*found \(N, 16, 16, 3\)"):
        load_arrays(str(tmp_path / "x.npy"), input_shape=SHAPE)


def test_nan_and_inf_refused(tmp_path):
    x = _x()
    x[3, 0, 0, 0] = np.nan
    x[5, 1, 1, 0] = np.inf
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(InputError, match="2 NaN/Inf values in 2 samples"):
        load_arrays(str(tmp_path / "x.npy"), input_shape=SHAPE)


def test_empty_array_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((0, 8, 8, 1), np.float32))
    with pytest.raises(InputError, match="no samples"):
        load_arrays(str(tmp_path / "x.npy"), input_shape=SHAPE)


def test_value_range_checked_against_profile(tmp_path):
    np.save(tmp_path / "x.npy", _x() * 255.0)
    with pytest.raises(InputError, match=r"preprocessing.scale expects \[0, 1\]"):
        load_arrays(str(tmp_path / "x.npy"), input_shape=SHAPE, preprocessing=Preprocessing())


def test_pickled_arrays_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="without pickle"):
        load_arrays(str(tmp_path / "obj.npy"), input_shape=SHAPE)


def test_missing_source_and_bad_count(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_arrays(str(tmp_path / "nope.npz"), input_shape=SHAPE)
    with pytest.raises(InputError, match="no such file or directory"):
        load_arrays(str(tmp_path / "nothing"), input_shape=SHAPE)
    np.save(tmp_path / "x.npy", _x())
    with pytest.raises(InputError, match="--num-samples must be positive"):
        load_arrays(str(tmp_path / "x.npy"), input_shape=SHAPE, num_samples=0)


def test_bundled_recipe_by_name_and_path(tmp_path):
    x, y = load_arrays("digits-sample", input_shape=SHAPE)
    assert x.shape == (200, 8, 8, 1) and y.shape == (200,) and 0.0 <= x.min() and x.max() <= 1.0
    np.save(tmp_path / "x.npy", _x(30))
    (tmp_path / "r.yaml").write_text("name: mine\nsource: x.npy\nnum_samples: 7\nseed: 3\n")
    x, _ = load_arrays(str(tmp_path / "r.yaml"), input_shape=SHAPE)
    assert len(x) == 7
    (tmp_path / "bad.yaml").write_text("name: bad\n")
    with pytest.raises(InputError, match="'source' string"):
        load_arrays(str(tmp_path / "bad.yaml"), input_shape=SHAPE)
