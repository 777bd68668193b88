"""``edgeprune compile`` end to end: real converter, real interpreters, exit codes, atomic output."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeprune.device.profiles import load_profile

SMALL_CPU = str(Path(__file__).parent / "data" / "small-cpu.yaml")  # rounds channels to 4
from helpers_models import digits_like, invoke_cli, tiny_keras3_cnn, tiny_tf_keras_cnn  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile")
    tiny_tf_keras_cnn().save(root / "tiny.h5")
    tiny_keras3_cnn().save(root / "k3.keras")
    np.savez(root / "cal.npz", x=digits_like(40), y=np.arange(40) % 10)
    return root


def _read(out_dir):
    return (json.loads((out_dir / "manifest.json").read_text()),
            json.loads((out_dir / "report.json").read_text()))


def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}"))


def test_default_target_float32_keras3(files, tmp_path):
    out = tmp_path / "art"
    code, result = invoke_cli(["compile", files / "k3.keras", "-o", out, "--json"])
    assert code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["target"] == "x86-64" and summary["quantization"] == "float32"
    manifest, report = _read(out)
    data = (out / "model.tflite").read_bytes()
    assert manifest["artifact"] == {"file": "model.tflite", "sha256": hashlib.sha256(data).hexdigest(),
                                    "bytes": len(data)}
    assert manifest["source"]["flavour"] == "keras3"
    assert manifest["source"]["sha256"] == hashlib.sha256((files / "k3.keras").read_bytes()).hexdigest()
    assert manifest["profile"]["name"] == "x86-64" and manifest["profile"]["pruning"]["round_to"] == load_profile("x86-64").pruning.round_to
    assert manifest["versions"]["tensorflow"] and manifest["versions"]["tf_keras"] and manifest["versions"]["keras"]
    assert manifest["inputs"][0]["shape"] == [1, 8, 8, 1] and manifest["inputs"][0]["dtype"] == "float32"
    assert manifest["calibration"] is None
    assert [s["name"] for s in report["stages"]] == ["load", "convert", "check"]
    assert all(s["seconds"] >= 0 for s in report["stages"])
    assert report["sizes"]["source_params"] == 1490 and report["sizes"]["tflite_bytes"] == len(data)
    assert report["arena"]["bytes"] > 0 and report["budgets"] == []
    assert _leftovers(tmp_path, "art") == []


def test_int8_with_calibration_records_data(files, tmp_path):
    out = tmp_path / "int8"
    code, result = invoke_cli(["compile", files / "tiny.h5", "-o", out, "--quantize", "int8", "--io", "uint8",
                               "--calibration", files / "cal.npz", "--num-samples", "16", "--seed", "3"])
    assert code == 0, result.output
    manifest, report = _read(out)
    assert manifest["quantization"] == {"mode": "int8", "io": "uint8"}
    cal = manifest["calibration"]
    assert cal["count"] == 16 and cal["seed"] == 3 and len(cal["sha256"]) == 64 and cal["labelled"]
    assert manifest["inputs"][0]["dtype"] == "uint8" and manifest["inputs"][0]["scale"] > 0
    assert [s["name"] for s in report["stages"]] == ["load", "calibration", "convert", "check"]


def test_cortex_m7_uses_tflm_arena(files, tmp_path):
    out = tmp_path / "m7"
    code, result = invoke_cli(["compile", files / "tiny.h5", "--target", "cortex-m7", "-o", out,
                               "--calibration", files / "cal.npz"])
    assert code == 0, result.output
    manifest, report = _read(out)
    assert manifest["quantization"] == {"mode": "int8", "io": "int8"} and manifest["runtime"] == "tflm"
    assert report["arena"]["method"].startswith("tflm") and report["arena"]["bytes"] > 1000
    assert {b["budget"]: b["ok"] for b in report["budgets"]} == {"max_model_bytes": True, "max_arena_bytes": True}


def _profile(tmp_path, **budgets):
    lines = "".join(f"  {k}: {v}\n" for k, v in budgets.items())
    path = tmp_path / "tiny-mcu.yaml"
    path.write_text(
        "name: tiny-mcu\ndescription: an MCU with almost no RAM\ncpu: cortex-m0\narch: armv7e-m\ncores: 1\n"
        "quantization:\n  default: int8\n  allowed: [int8]\n  io: int8\n"
        "operators:\n  int8_only: true\n  runtime: tflm\n"
        f"budgets:\n{lines}"
    )
    return path


def test_arena_budget_failure_keeps_nothing_but_rejected(files, tmp_path):
    out = tmp_path / "fail"
    code, result = invoke_cli(["compile", files / "tiny.h5", "--target", _profile(tmp_path, max_arena_bytes=1000),
                               "-o", out, "--calibration", files / "cal.npz"])
    assert code == 1
    msg = str(result.exception)
    assert "max_arena_bytes" in msg and "limit 1000" in msg and "over by" in msg and "fail.rejected" in msg
    assert not out.exists()
    rejected = tmp_path / "fail.rejected"
    assert (rejected / "model.tflite").is_file()
    _, report = _read(rejected)
    failed = [b for b in report["budgets"] if not b["ok"]]
    assert failed[0]["budget"] == "max_arena_bytes" and failed[0]["actual"] > 1000
    assert _leftovers(tmp_path, "fail") == []


def test_model_bytes_budget_failure(files, tmp_path):
    out = tmp_path / "big"
    code, result = invoke_cli(["compile", files / "tiny.h5", "--target", _profile(tmp_path, max_model_bytes=100),
                               "-o", out, "--calibration", files / "cal.npz"])
    assert code == 1 and "max_model_bytes" in str(result.exception) and not out.exists()


def test_float_mode_on_int8_only_target(files, tmp_path):
    code, result = invoke_cli(["compile", files / "tiny.h5", "--target", "cortex-m7", "--quantize", "float32",
                               "-o", tmp_path / "x"])
    assert code == 2 and "does not accept quantization 'float32'" in str(result.exception)


def test_float_io_on_int8_only_target_fails_verification(files, tmp_path):
    out = tmp_path / "io"
    code, result = invoke_cli(["compile", files / "tiny.h5", "--target", "cortex-m7", "--io", "float",
                               "--calibration", files / "cal.npz", "-o", out])
    assert code == 1 and "float op" in str(result.exception) and "QUANTIZE" in str(result.exception)
    assert not out.exists() and _leftovers(tmp_path, "io") == []


@pytest.mark.parametrize("args, match", [
    (["--quantize", "int3"], "unknown quantization 'int3'"),
    (["--quantize", "int8"], "needs representative data"),
    (["--target", "no-such-board"], "unknown target 'no-such-board'"),
    (["--calibration", "missing.npz", "--quantize", "int8"], "no such file"),
])
def test_bad_options_exit_2(files, tmp_path, args, match):
    out = tmp_path / "o"
    code, result = invoke_cli(["compile", files / "tiny.h5", "-o", out, *args])
    assert code == 2 and match in str(result.exception)
    assert not out.exists()


def test_bad_calibration_shape_exit_2(files, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((4, 16, 16, 3), np.float32))
    code, result = invoke_cli(["compile", files / "tiny.h5", "-o", tmp_path / "o", "--quantize", "int8",
                               "--calibration", tmp_path / "bad.npy"])
    assert code == 2 and "expected samples of shape (N, 8, 8, 1)" in str(result.exception)


def test_bad_models_exit_2(files, tmp_path):
    (tmp_path / "junk.keras").write_text("junk")
    for model, match in ((tmp_path / "missing.keras", "no such file"), (tmp_path / "junk.keras", "not a Keras model")):
        code, result = invoke_cli(["compile", model, "-o", tmp_path / "o"])
        assert code == 2 and match in str(result.exception)


def test_lambda_needs_unsafe(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Lambda(lambda t: t * 0.5, name="half")(inputs)))
    keras.Model(inputs, outputs).save(tmp_path / "lam.keras")
    code, result = invoke_cli(["compile", tmp_path / "lam.keras", "-o", tmp_path / "o"])
    assert code == 2 and "'half'" in str(result.exception) and "--unsafe" in str(result.exception)
    code, result = invoke_cli(["compile", tmp_path / "lam.keras", "-o", tmp_path / "o", "--unsafe"])
    assert code == 0, result.output


def test_existing_output_needs_force(files, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, result = invoke_cli(["compile", files / "tiny.h5", "-o", out])
    assert code == 2 and "--force" in str(result.exception)
    code, result = invoke_cli(["compile", files / "tiny.h5", "-o", out, "--force"])
    assert code == 0 and sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "model.tflite", "reference_sample.npz", "report.html", "report.json", "report.md",
        "report_files"]
    assert _leftovers(tmp_path, "again") == []


def test_python_api(files, tmp_path):
    import edgeprune.pipelines.compile  # noqa: F401  (binds the module on the package: must stay callable)

    result = edgeprune.compile(files / "tiny.h5", tmp_path / "api", quantize="dynamic")
    assert result.tflite_path.is_file() and result.manifest["quantization"]["mode"] == "dynamic"
    with pytest.raises(TypeError, match="unknown option"):
        edgeprune.compile(files / "tiny.h5", tmp_path / "api2", quantise="int8")


def test_prune_stage(tmp_path):
    import edgeprune.base.env as _env

    tk = _env.tf_keras()
    tk.utils.set_random_seed(0)
    inputs = tk.Input((8, 8, 1))
    h = tk.layers.Conv2D(16, 3, activation="relu", name="c1")(inputs)
    h = tk.layers.Conv2D(16, 3, activation="relu", name="c2")(h)
    outputs = tk.layers.Dense(10, name="head")(tk.layers.GlobalAveragePooling2D()(h))
    tk.Model(inputs, outputs).save(tmp_path / "wide.h5")
    out = tmp_path / "pruned"
    code, result = invoke_cli(["compile", tmp_path / "wide.h5", "-o", out, "--ratio", "0.5",
                               "--protect", "head", "--target", SMALL_CPU])
    assert code == 0, result.output
    manifest, report = _read(out)
    assert [s["name"] for s in report["stages"]] == ["load", "prune", "convert", "check"]
    assert report["pruning"]["params_after"] < report["pruning"]["params_before"]
    assert report["sizes"]["pruned_params"] < report["sizes"]["source_params"]
    assert manifest["options"]["ratio"] == 0.5


def test_subprocess_json_and_exit_codes(files, tmp_path):
    out = tmp_path / "sub"
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "compile", str(files / "tiny.h5"), "-o", str(out),
                           "--quantize", "dynamic", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["quantization"] == "dynamic" and (out / "model.tflite").stat().st_size == summary["tflite_bytes"]
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "compile", str(tmp_path / "nope.keras"), "-o",
                           str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"edgeprune: error: {tmp_path / 'nope.keras'}: no such file or directory"


def test_artifact_dir_is_atomic_on_interrupt(tmp_path):
    from edgeprune.base.artifacts import ArtifactDir

    dest = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with ArtifactDir(dest) as tmp:
            (tmp / "model.tflite").write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with ArtifactDir(dest) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (dest / "a.txt").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_budget_failure_with_force_keeps_previous_artifact(files, tmp_path):
    out = tmp_path / "keep"
    profile = _profile(tmp_path, max_arena_bytes=1000)
    code, _ = invoke_cli(["compile", files / "tiny.h5", "--target", "cortex-m7", "-o", out,
                          "--calibration", files / "cal.npz"])
    assert code == 0
    before = (out / "model.tflite").read_bytes()
    code, _ = invoke_cli(["compile", files / "tiny.h5", "--target", profile, "-o", out, "--force",
                          "--calibration", files / "cal.npz", "--seed", "1"])
    assert code == 1 and (out / "model.tflite").read_bytes() == before
    assert (tmp_path / "keep.rejected" / "model.tflite").is_file()
