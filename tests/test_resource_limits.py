"""Declared sizes in untrusted files are checked before anything is allocated (edgeprune.base.limits).

Every hostile file here is tiny: a hand-written npy header declaring 10^12 elements, a PNG whose
IHDR says 40000x40000, a .tar.gz whose header declares a member bigger than the limit, zips
whose directory declares sizes and ratios over the limit. Where the real bomb would be big, the
limit is lowered through its EDGEPRUNE_MAX_* variable instead. Each run is the real CLI in a
subprocess: exit code, exactly one stderr line naming the file and the variable, no traceback,
nothing written.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers_models import digits_like, tiny_keras3_cnn

from edgeprune.base import limits
from edgeprune.base.errors import InputError

PY = sys.executable


def edgeprune(*args, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "edgeprune", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a refused run (no traceback, not an internal error)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgeprune: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    return lines[0]


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("limits-model") / "k3.keras"
    tiny_keras3_cnn().save(path)
    return path


def refused_compile(tmp_path: Path, model_path: Path, *extra, env=None, code=2) -> str:
    """Compile into tmp_path/out, expect the refusal, and check nothing was written anywhere."""
    before = listing(tmp_path)
    proc = edgeprune("compile", model_path, "-o", tmp_path / "out", *extra, env=env)
    assert proc.returncode == code, proc.stderr
    line = one_error_line(proc)
    assert listing(tmp_path) == before
    return line


# --- .keras zips -------------------------------------------------------------------------------

def keras_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


META = json.dumps({"keras_version": "3.5.0"}).encode()


@pytest.mark.parametrize("members, env, words", [
    # a config.json of 2 MiB of spaces (2 KB compressed) against a 1 MiB config limit
    ({"config.json": b"{" + b" " * (2 << 20) + b"}", "metadata.json": META},
     {"EDGEPRUNE_MAX_CONFIG_BYTES": "1M"}, ["member 'config.json'", "2,097,154 bytes", "1,048,576-byte limit",
                                           "EDGEPRUNE_MAX_CONFIG_BYTES"]),
    # 4 MiB of zeros deflate ~1028:1, over the default ratio limit
    ({"config.json": b"{}", "metadata.json": META, "model.weights.h5": bytes(4 << 20)},
     {}, ["member 'model.weights.h5'", "compression ratio of 1,0", "1,000:1 limit", "EDGEPRUNE_MAX_COMPRESSION_RATIO"]),
    ({"config.json": b"{}", "metadata.json": META, "model.weights.h5": os.urandom(300_000)},
     {"EDGEPRUNE_MAX_MEMBER_BYTES": "200K"}, ["member 'model.weights.h5'", "300,000 bytes", "204,800-byte limit",
                                             "EDGEPRUNE_MAX_MEMBER_BYTES"]),
    ({"config.json": b"{}", "metadata.json": META, "a.bin": os.urandom(150_000), "b.bin": os.urandom(150_000)},
     {"EDGEPRUNE_MAX_ARCHIVE_BYTES": "200K"}, ["members together", "204,800-byte limit",
                                              "EDGEPRUNE_MAX_ARCHIVE_BYTES"]),
], ids=["config-bomb", "ratio", "member", "total"])
def test_keras_zip_declared_sizes(tmp_path, members, env, words):
    bomb = keras_zip(tmp_path / "bomb.keras", members)
    line = refused_compile(tmp_path, bomb, env=env)
    assert f"{bomb}: " in line and all(w in line for w in words), line


def test_keras_zip_under_the_limits_still_loads(model, tmp_path):
    """The real tiny model passes the zip checks with the defaults (its weights are not a bomb)."""
    from edgeprune.load.model_io import detect

    fmt = detect(model)
    assert fmt.kind == "keras_zip" and fmt.config["class_name"] == "Functional"


# --- .npy / .npz ---------------------------------------------------------------------------

def npy_header(shape, descr="<f4") -> bytes:
    """A version 1.0 npy header, written by hand (numpy would refuse to build such an array)."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def test_npy_declaring_a_trillion_elements(model, tmp_path):
    huge = tmp_path / "huge.npy"
    huge.write_bytes(npy_header((1_000_000, 1000, 1000)) + bytes(64))
    assert huge.stat().st_size < 200
    line = refused_compile(tmp_path, model, "--quantize", "int8", "--calibration", huge)
    assert line == (f"edgeprune: error: calibration '{huge}': declares 4,000,000,000,000 bytes, over the "
                    "8,589,934,592-byte limit (raise it with EDGEPRUNE_MAX_ARRAY_BYTES)")


@pytest.mark.parametrize("header, words", [
    (npy_header((40, 8, 8, 1), "|O"), "holds Python objects"),
    (npy_header((40, 8, 8, 1)), "declares 10,240 bytes of data but holds 64 (truncated)"),
    (b"\x93NUMPY\x01\x00\xff\xff{'descr'", "not a valid .npy array"),
])
def test_npy_headers_refused_in_one_line(tmp_path, header, words):
    from edgeprune.load.datasets import load_arrays

    bad = tmp_path / "bad.npy"
    bad.write_bytes(header + bytes(64))
    with pytest.raises(InputError) as err:
        load_arrays(str(bad), input_shape=(None, 8, 8, 1))
    assert str(err.value).startswith(f"calibration '{bad}': ") and words in str(err.value)


def test_npz_member_headers_and_sizes(tmp_path, monkeypatch):
    from edgeprune.load.datasets import load_arrays

    lying = tmp_path / "lying.npz"  # the member is small; the npy header inside declares 4 TB
    with zipfile.ZipFile(lying, "w") as zf:
        zf.writestr("x.npy", npy_header((1_000_000, 1000, 1000)) + bytes(64))
    with pytest.raises(InputError) as err:
        load_arrays(str(lying), input_shape=(None, 8, 8, 1))
    assert str(err.value) == (f"calibration '{lying}': member 'x.npy': declares 4,000,000,000,000 bytes, over the "
                              "8,589,934,592-byte limit (raise it with EDGEPRUNE_MAX_ARRAY_BYTES)")

    big = tmp_path / "big.npz"
    np.savez_compressed(big, x=np.zeros((400, 8, 8, 1), np.float32))  # 102 KB declared, ~200 B on disk
    monkeypatch.setenv("EDGEPRUNE_MAX_ARRAY_BYTES", "100K")
    with pytest.raises(InputError) as err:
        load_arrays(str(big), input_shape=(None, 8, 8, 1))
    assert "member 'x.npy': declares 102,528 bytes, over the 102,400-byte limit" in str(err.value)
    monkeypatch.delenv("EDGEPRUNE_MAX_ARRAY_BYTES")
    x, _ = load_arrays(str(big), input_shape=(None, 8, 8, 1))
    assert x.shape == (400, 8, 8, 1)

    objects = tmp_path / "objects.npz"
    with zipfile.ZipFile(objects, "w") as zf:
        zf.writestr("x.npy", npy_header((2,), "|O") + bytes(16))
    with pytest.raises(InputError, match="holds Python objects"):
        load_arrays(str(objects), input_shape=(None, 8, 8, 1))


def test_npz_lowered_limit_through_the_cli(model, tmp_path):
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=digits_like(40))
    line = refused_compile(tmp_path, model, "--quantize", "int8", "--calibration", cal,
                           env={"EDGEPRUNE_MAX_ARRAY_BYTES": "4K"})
    assert f"calibration '{cal}': member 'x.npy'" in line and "EDGEPRUNE_MAX_ARRAY_BYTES" in line


# --- images --------------------------------------------------------------------------------

def png(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (8-bit gray) over one tiny IDAT: a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side, env, pixels, limit", [
    (40000, {}, "1,600,000,000", "100,000,000"),                    # past twice the limit: Pillow's own error
    (40, {"EDGEPRUNE_MAX_IMAGE_PIXELS": "1000"}, "1,600", "1,000"),  # between one and two times: our check
])
def test_image_declaring_too_many_pixels(model, tmp_path, side, env, pixels, limit):
    images = tmp_path / "images"
    images.mkdir()
    bomb = images / "bomb.png"
    bomb.write_bytes(png(side, side))
    assert bomb.stat().st_size < 200
    line = refused_compile(tmp_path, model, "--quantize", "int8", "--calibration", images, env=env)
    assert line.startswith(f"edgeprune: error: {bomb}")
    assert f"declares {pixels} pixels, over the {limit}-pixel limit (raise it with EDGEPRUNE_MAX_IMAGE_PIXELS)" in line


def test_image_batch_over_the_array_limit(tmp_path, monkeypatch):
    from PIL import Image

    from edgeprune.load.datasets import load_arrays

    for i in range(3):
        Image.new("L", (8, 8)).save(tmp_path / f"{i}.png")
    monkeypatch.setenv("EDGEPRUNE_MAX_ARRAY_BYTES", "1000")
    with pytest.raises(InputError) as err:  # 3 images x 16 x 16 x 1 float32, refused before np.empty
        load_arrays(str(tmp_path), input_shape=(None, 16, 16, 1))
    assert "decodes to 3,072 bytes, over the 1,000-byte limit" in str(err.value)


# --- bundles (tar) -------------------------------------------------------------------------

def tar_header(name: str, size: int, kind: bytes = b"0") -> bytes:
    """A ustar header block written by hand (tarfile will not describe data it is not given)."""
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode = size, kind, 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def gz_bomb(path: Path, declared: int, kind: bytes = b"0") -> Path:
    """manifest.json, then a member declaring ``declared`` bytes of zeros: a tiny .tar.gz."""
    manifest = tar_header("manifest.json", 2) + b"{}".ljust(512, b"\0")
    with open(path, "wb") as raw:
        import gzip

        with gzip.GzipFile(fileobj=raw, mode="wb") as gz:
            gz.write(manifest + tar_header("model.tflite" if kind == b"0" else "pax", declared, kind))
            zeros = bytes(1 << 20)
            for _ in range(declared >> 20):
                gz.write(zeros)
    return path


@pytest.mark.parametrize("kind, words", [
    (b"0", "member 'model.tflite': declares 8,388,608 bytes"),
    (b"x", "a tar header: declares 8,388,608 bytes"),  # a pax header tarfile would read in one go
])
def test_tar_gz_bomb(tmp_path, kind, words):
    bomb = gz_bomb(tmp_path / "bomb.tar.gz", 8 << 20, kind)
    assert bomb.stat().st_size < 20_000
    before = listing(tmp_path)
    proc = edgeprune("unpack", bomb, "-o", tmp_path / "out", env={"EDGEPRUNE_MAX_MEMBER_BYTES": "1M"})
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert f"{bomb}: {words}, over the 1,048,576-byte limit (raise it with EDGEPRUNE_MAX_MEMBER_BYTES)" in line
    assert listing(tmp_path) == before


def many_members(path: Path, count: int, size: int) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for i in range(count):
            info = tarfile.TarInfo("manifest.json" if i == 0 else f"report_files/{i}.png")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return path


@pytest.mark.parametrize("count, size, env, words", [
    (20, 10, {"EDGEPRUNE_MAX_ARCHIVE_MEMBERS": "5"}, "has at least 6 members, over the 5-member limit"),
    (3, 600_000, {"EDGEPRUNE_MAX_ARCHIVE_BYTES": "1M"},
     "members together: declare at least 1,200,000 bytes, over the 1,048,576-byte limit"),
])
def test_tar_member_count_and_total(tmp_path, monkeypatch, count, size, env, words):
    from edgeprune.ship.bundle import read_members

    bundle = many_members(tmp_path / "many.tar.gz", count, size)
    with monkeypatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        with pytest.raises(InputError) as err:
            read_members(bundle)
    assert str(err.value).startswith(f"{bundle}") and words in str(err.value)
    assert len(read_members(bundle)) == count  # within the defaults it is a fine bundle


# --- the loaded model ----------------------------------------------------------------------

def test_model_input_declaring_huge_samples(tmp_path):
    import keras

    inputs = keras.Input((50_000, 50_000, 3), name="huge")
    outputs = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D(name="gap")(inputs))
    path = tmp_path / "huge.keras"
    keras.Model(inputs, outputs).save(path)
    line = refused_compile(tmp_path, path)
    assert line == (f"edgeprune: error: {path}: input 'huge': declares samples of 7,500,000,000 elements, over the "
                    "1,073,741,824-element limit (raise it with EDGEPRUNE_MAX_INPUT_ELEMENTS)")


def test_model_parameter_limit(model, tmp_path):
    line = refused_compile(tmp_path, model, env={"EDGEPRUNE_MAX_MODEL_PARAMS": "1000"})
    assert line == (f"edgeprune: error: {model}: has 1,490 parameters, over the 1,000-parameter limit "
                    "(raise it with EDGEPRUNE_MAX_MODEL_PARAMS)")


# --- the limits themselves -----------------------------------------------------------------

def test_env_overrides_and_bad_values(monkeypatch):
    assert limits.current() == limits.ResourceLimits()
    monkeypatch.setenv("EDGEPRUNE_MAX_ARRAY_BYTES", "2G")
    monkeypatch.setenv("EDGEPRUNE_MAX_IMAGE_PIXELS", "12_000_000")
    assert limits.current().array_bytes == 2 << 30 and limits.current().image_pixels == 12_000_000
    monkeypatch.setenv("EDGEPRUNE_MAX_ARRAY_BYTES", "lots")
    with pytest.raises(InputError, match=r"EDGEPRUNE_MAX_ARRAY_BYTES='lots': expected a positive integer"):
        limits.current()


def test_bad_limit_value_is_one_line(model, tmp_path):
    line = refused_compile(tmp_path, model, env={"EDGEPRUNE_MAX_CONFIG_BYTES": "-5"})
    assert "EDGEPRUNE_MAX_CONFIG_BYTES='-5': expected a positive integer" in line


def test_reference_sample_declaring_terabytes_is_refused_before_numpy_allocates(model, tmp_path):
    """verify reads an artifact's reference sample with the data loader's header checks: a
    hash-consistent sample whose x.npy declares 8 TB names the limit instead of asking for 8 TB."""
    import hashlib

    art = tmp_path / "art"
    assert edgeprune("compile", model, "-o", art).returncode == 0
    raw = io.BytesIO()
    np.lib.format.write_array_header_1_0(raw, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
    with zipfile.ZipFile(art / "reference_sample.npz", "w") as zf:
        zf.writestr("x.npy", raw.getvalue() + bytes(64))
        zf.writestr("y.npy", npy_header((2,)) + bytes(8))
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["reference_sample"]["sha256"] = hashlib.sha256((art / "reference_sample.npz").read_bytes()).hexdigest()
    (art / "manifest.json").write_text(json.dumps(manifest))
    proc = edgeprune("verify", art)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "declares 8,000,000,000,000 bytes" in line and "EDGEPRUNE_MAX_ARRAY_BYTES" in line
