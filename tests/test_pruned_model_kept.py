"""compile with pruning keeps the pruned float Keras model in DIR (listed, hashed, bundled), and
inspect --quant-error compares the artifact with it; silent changes of meaning are said in one
stderr line: unlabelled --train-data (label-free distillation), an rpi4 artifact benched here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_models import invoke_cli, tiny_keras3_cnn
from report_helpers import labelled_by, prunable_cnn

from edgeprune.load.model_io import load_model

SMALL_CPU = str(Path(__file__).parent / "data" / "small-cpu.yaml")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A tf_keras CNN compiled to int8 with --ratio 0.5 (nothing pruned away from the tensors'
    names: each conv keeps its name with fewer channels)."""
    root = tmp_path_factory.mktemp("pruned")
    model = prunable_cnn()
    model.save(root / "m.h5")
    x, y = labelled_by(model, 48)
    np.savez(root / "x.npz", x=x, y=y)
    code, result = invoke_cli(["compile", root / "m.h5", "--target", SMALL_CPU, "--ratio", "0.5", "--quantize",
                               "int8", "--calibration", root / "x.npz", "-o", root / "out"])
    assert code == 0, result.output
    return root


def _json(args):
    code, result = invoke_cli([*args, "--json"])
    assert code == 0, result.output
    return json.loads(result.stdout)


def test_the_pruned_model_is_kept_listed_and_loads_safely(pruned):
    out = pruned / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["pruned_model"]
    assert entry["file"] == "pruned.h5" and entry["flavour"] == "tf_keras"
    loaded = load_model(out / "pruned.h5", safe_mode=True)
    assert loaded.flavour == "tf_keras" and loaded.sha256 == entry["sha256"]
    report = json.loads((out / "report.json").read_text())
    assert loaded.model.count_params() == report["sizes"]["pruned_params"] < report["sizes"]["source_params"]
    assert loaded.model.get_layer("conv1").filters == 4  # 8 channels, half pruned
    # verify checks its hash; a changed file is caught
    assert any(h["file"] == "pruned.h5" for h in _json(["verify", out])["hashes"])


def test_a_changed_pruned_model_fails_verify_and_a_bundle_carries_it(pruned, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pruned / "out", copy)
    bundle = tmp_path / "b.tar.gz"
    _json(["pack", copy, "-o", bundle])
    _json(["unpack", bundle, "-o", tmp_path / "there"])
    assert (tmp_path / "there" / "pruned.h5").read_bytes() == (copy / "pruned.h5").read_bytes()
    with open(copy / "pruned.h5", "ab") as fh:
        fh.write(b"\0")
    code, result = invoke_cli(["verify", copy])
    assert code == 1 and "pruned.h5" in str(result.exception)


def test_quant_error_compares_with_the_pruned_model(pruned):
    args = ["inspect", pruned / "out", "--quant-error", "--calibration", pruned / "x.npz", "--num-samples", "8"]
    r = _json([*args, "--reference", pruned / "m.h5"])  # the model before pruning, as a user passes it
    assert r["reference"] == str(pruned / "out" / "pruned.h5") and r["reference_given"] == str(pruned / "m.h5")
    assert r["unmatched"] == [] and r["compared"] >= 5
    assert {row["op"] for row in r["layers"]} >= {"CONV_2D", "FULLY_CONNECTED"}
    # without the kept model the unpruned reference matches only the unpruned tensors
    (pruned / "out" / "pruned.h5").rename(pruned / "aside.h5")
    try:
        before = _json([*args, "--reference", pruned / "m.h5"])
    finally:
        (pruned / "aside.h5").rename(pruned / "out" / "pruned.h5")
    assert len(before["unmatched"]) >= 2 and before["compared"] < r["compared"]


def test_a_keras3_model_is_kept_as_keras3(tmp_path):
    model = tiny_keras3_cnn()
    model.save(tmp_path / "k3.keras")
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    _json(["compile", tmp_path / "k3.keras", "--target", SMALL_CPU, "--ratio", "0.5", "--calibration",
           tmp_path / "x.npy", "-o", tmp_path / "out"])
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["pruned_model"]["file"] == "pruned.keras"
    loaded = load_model(tmp_path / "out" / "pruned.keras", safe_mode=True)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert loaded.flavour == "keras3" and loaded.model.count_params() == report["sizes"]["pruned_params"]


def test_unlabelled_train_data_says_it_distils(pruned, tmp_path):
    x, _ = labelled_by(prunable_cnn(), 32)
    np.savez(tmp_path / "unlabelled.npz", x=x)
    base = ["compile", pruned / "m.h5", "--target", SMALL_CPU, "--ratio", "0.5", "--train-data",
            tmp_path / "unlabelled.npz", "--finetune-epochs", "1"]
    code, result = invoke_cli([*base, "-o", tmp_path / "a"])
    assert code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "has no labels" in line]
    assert len(said) == 1 and "label-free distillation" in said[0] and said[0].startswith("warning:")
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["training"]["recovery"]["method"] == "distillation"
    assert "distill: epoch" in result.output and "fine-tune: epoch" not in result.output
    # labelled --val-data still gates, although distillation selects on it without labels
    x_val, y_val = labelled_by(prunable_cnn(), 24, seed=5)
    np.savez(tmp_path / "val.npz", x=x_val, y=y_val)
    summary = _json([*base, "--val-data", tmp_path / "val.npz", "--max-accuracy-drop", "100", "-o", tmp_path / "g"])
    assert summary["accuracy_gate"]["samples"] > 0 and "validation" in summary["accuracy_gate"]["data"]
    code, result = invoke_cli([*base, "--distill", "-o", tmp_path / "b"])  # asked for: nothing to say
    assert code == 0 and "has no labels" not in result.stderr
    code, result = invoke_cli([*base, "-o", tmp_path / "c", "-q"])  # -q: errors only
    assert code == 0 and "warning" not in result.stderr


def test_an_rpi4_artifact_benched_here_says_so(tmp_path):
    model = prunable_cnn()
    model.save(tmp_path / "m.h5")
    x, y = labelled_by(model, 16)
    np.savez(tmp_path / "x.npz", x=x, y=y)
    _json(["compile", tmp_path / "m.h5", "--target", "rpi4", "--calibration", tmp_path / "x.npz",
           "-o", tmp_path / "rpi4"])
    code, result = invoke_cli(["bench", tmp_path / "rpi4", "--runs", "2", "--warmup", "0"])
    assert code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "compiled for 'rpi4'" in line]
    assert len(said) == 1 and "--target rpi4" in said[0] and "1 thread" in said[0]
    code, result = invoke_cli(["bench", tmp_path / "rpi4", "--runs", "2", "--warmup", "0", "--host", "local"])
    assert code == 0 and "compiled for" not in result.stderr  # measuring here on purpose
