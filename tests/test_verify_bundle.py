"""`edgeprune verify`, `pack` and `unpack` (hostile archives), and the TFLite metadata compile embeds."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers_models import invoke_cli
from report_helpers import labelled_by, prunable_cnn

LABELS = [f"class {i}" for i in range(10)]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("ship")
    model = prunable_cnn()
    model.save(root / "m.h5")
    x, y = labelled_by(model, 24)
    np.savez(root / "cal.npz", x=x, y=y)
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    out = root / "art"
    code, result = invoke_cli(["compile", root / "m.h5", "-o", out, "--quantize", "int8", "--calibration",
                               root / "cal.npz", "--labels", root / "labels.txt"])
    assert code == 0, result.output
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_verify_fresh_artifact(artifact):
    code, result = invoke_cli(["verify", artifact, "--json"])
    assert code == 0, result.output
    r = json.loads(result.stdout)
    files = {h["file"] for h in r["hashes"]}
    assert {"model.tflite", "reference_sample.npz", "labels.txt", "report.json", "report.html", "report.md"} <= files
    assert any(f.startswith("report_files/") and f.endswith(".png") for f in files)
    assert r["sample"]["count"] == 8 and r["sample"]["max_abs_diff"] <= r["sample"]["atol"]
    with np.load(artifact / "reference_sample.npz", allow_pickle=False) as npz:
        assert npz["x"].shape == (8, 8, 8, 1) and npz["y"].shape == (8, 10)


@pytest.mark.parametrize("offset", [100, -50])
def test_verify_flipped_byte_exits_1(artifact, tmp_path, offset):
    art = _copy(artifact, tmp_path / "a")
    data = bytearray((art / "model.tflite").read_bytes())
    data[offset] ^= 0x01
    (art / "model.tflite").write_bytes(bytes(data))
    code, result = invoke_cli(["verify", art])
    assert code == 1 and "model.tflite" in str(result.exception) and "sha256" in str(result.exception)


def test_verify_covers_the_reports_and_a_rerender_updates_them(artifact, tmp_path):
    art = _copy(artifact, tmp_path / "a")
    page = (art / "report.html").read_text()
    (art / "report.html").write_text(page.replace("edgeprune compile report", "edgeprune compile rep0rt", 1))
    code, result = invoke_cli(["verify", art])
    assert code == 1 and "report.html" in str(result.exception)
    code, _ = invoke_cli(["report", art])  # re-rendering records the new hashes
    assert code == 0
    code, result = invoke_cli(["verify", art])
    assert code == 0, result.output


def test_verify_reports_what_differs_when_outputs_change(artifact, tmp_path):
    """A sample whose recorded outputs no longer match (hash updated too): the comparison fails."""
    from edgeprune.base.artifacts import sha256_bytes

    art = _copy(artifact, tmp_path / "a")
    with np.load(art / "reference_sample.npz", allow_pickle=False) as npz:
        x, y = npz["x"], npz["y"].copy()
    y[3, 2] += 0.5
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    (art / "reference_sample.npz").write_bytes(buf.getvalue())
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["reference_sample"]["sha256"] = sha256_bytes(buf.getvalue())
    (art / "manifest.json").write_text(json.dumps(manifest))
    code, result = invoke_cli(["verify", art])
    assert code == 1 and "sample 3" in str(result.exception) and "output index [2]" in str(result.exception)


def test_pack_unpack_roundtrip_and_verify_bundle(artifact, tmp_path):
    bundle = tmp_path / "b.tar.gz"
    code, result = invoke_cli(["pack", artifact, "-o", bundle, "--json"])
    assert code == 0, result.output
    files = set(json.loads(result.stdout)["files"])
    assert {"model.tflite", "manifest.json", "labels.txt", "report.json", "report.html", "reference_sample.npz"} <= files
    with tarfile.open(bundle) as tar:
        assert all(m.isfile() and m.mode == 0o644 and not m.name.startswith("/") for m in tar.getmembers())
    code, result = invoke_cli(["verify", bundle])
    assert code == 0, result.output
    code, result = invoke_cli(["unpack", bundle, "-o", tmp_path / "u"])
    assert code == 0, result.output
    for name in files:
        assert (tmp_path / "u" / name).read_bytes() == (artifact / name).read_bytes()
    code, _ = invoke_cli(["pack", artifact, "-o", bundle])
    assert code == 2  # exists, no --force
    code, _ = invoke_cli(["unpack", bundle, "-o", tmp_path / "u"])
    assert code == 2


def _hostile(path: Path, add) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
        add(tar)
    return path


def _file(name, data=b"pwned"):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return add


def _special(name, kind, linkname=""):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        tar.addfile(info)
    return add


@pytest.mark.parametrize("label,add,words", [
    ("dotdot", _file("../escaped.txt"), "'..'"),
    ("nested-dotdot", _file("report_files/../../escaped.txt"), "'..'"),
    ("absolute", _file("/tmp/edgeprune-escaped.txt"), "absolute"),
    ("symlink", _special("model.tflite", tarfile.SYMTYPE, "/etc/passwd"), "link"),
    ("hardlink", _special("model.tflite", tarfile.LNKTYPE, "manifest.json"), "link"),
    ("chardev", _special("dev", tarfile.CHRTYPE), "device"),
    ("fifo", _special("pipe", tarfile.FIFOTYPE), "FIFO"),
    ("duplicate", _file("manifest.json"), "twice"),
])
def test_unpack_refuses_hostile_archives(tmp_path, label, add, words):
    work = tmp_path / "work"
    work.mkdir()
    bundle = _hostile(tmp_path / f"{label}.tar.gz", add)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, result = invoke_cli(["unpack", bundle, "-o", work / "out"])
    assert code == 2 and words in str(result.exception)
    assert not (work / "out").exists() and list(work.iterdir()) == []  # nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written outside
    assert not Path("/tmp/edgeprune-escaped.txt").exists()


def test_unpack_refuses_garbage(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(os.urandom(64))
    code, result = invoke_cli(["unpack", tmp_path / "x.tar.gz", "-o", tmp_path / "o"])
    assert code == 2 and not (tmp_path / "o").exists()


def test_metadata_embedded_and_readable(artifact):
    from edgeprune.quantize.metadata import read_metadata

    model = (artifact / "model.tflite").read_bytes()
    meta = read_metadata(model)
    assert meta["labels"] == LABELS
    assert meta["normalization"] == {"mean": [0.0], "std": [255.0]} and meta["input_range"] == [0.0, 1.0]
    code, result = invoke_cli(["inspect", artifact / "model.tflite", "--json"])
    assert json.loads(result.stdout)["metadata"]["labels"] == LABELS


def test_metadata_readable_by_tflite_support(artifact):
    """LiteRT's own metadata tooling (tflite-support's MetadataDisplayer) reads what compile wrote."""
    metadata = pytest.importorskip("tensorflow_lite_support.metadata.python.metadata",
                                   reason="scripts/setup.sh --test installs tflite-support (no deps)")
    displayer = metadata.MetadataDisplayer.with_model_file(str(artifact / "model.tflite"))
    doc = json.loads(displayer.get_metadata_json())
    inp = doc["subgraph_metadata"][0]["input_tensor_metadata"][0]
    norm = inp["process_units"][0]["options"]
    assert norm["mean"] == [0.0] and norm["std"] == [255.0]
    assert inp["content"]["content_properties"]["color_space"] == "GRAYSCALE"
    assert displayer.get_packed_associated_file_list() == ["labels.txt"]
    assert displayer.get_associated_file_buffer("labels.txt").decode().splitlines() == LABELS
