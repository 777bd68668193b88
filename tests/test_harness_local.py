"""The harness on this machine: real converter, real interpreter, the runner in a subprocess."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeprune.base.env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from edgeprune.base.errors import DeviceError, InputError, VerificationError
from edgeprune.device import runner
from edgeprune.device.api import bench, evaluate_tflite

INPUT = (8, 8, 1)
CLASSES = 3


def _classifier(seed: int):
    from edgeprune.base.env import tf_keras

    K = tf_keras()
    K.utils.set_random_seed(seed)
    inp = K.Input(INPUT)
    h = K.layers.Conv2D(4, 3, activation="relu")(inp)
    h = K.layers.GlobalAveragePooling2D()(h)
    h = K.layers.Dense(8, activation="relu")(h)
    return K.Model(inp, K.layers.Dense(CLASSES, activation="softmax")(h))


def _convert(model, *, int8=False, calibration=None) -> bytes:
    from edgeprune.base.env import tf

    TF = tf()
    converter = TF.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        converter.optimizations = [TF.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))
        converter.target_spec.supported_ops = [TF.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = TF.int8
        converter.inference_output_type = TF.int8
    return converter.convert()


def build_models(root: Path) -> dict:
    """Tiny classifier (float32 + int8 .tflite, .keras), a differently-initialised one, eval data
    labelled by the reference (so its accuracy is 100%), and a tiny regression model."""
    from edgeprune.base.env import tf_keras

    K = tf_keras()
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (48,) + INPUT).astype(np.float32)
    ref = _classifier(1)
    y = np.argmax(ref.predict(x, verbose=0), axis=1).astype(np.int64)
    paths = {"x": x, "y": y}
    ref.save(root / "ref.keras")
    paths["reference"] = root / "ref.keras"
    (root / "f32.tflite").write_bytes(_convert(ref))
    (root / "int8.tflite").write_bytes(_convert(ref, int8=True, calibration=x[:32]))
    (root / "other.tflite").write_bytes(_convert(_classifier(7)))
    np.savez(root / "eval.npz", x=x, y=y)
    np.savez(root / "eval_bad_shape.npz", x=rng.uniform(0, 1, (5, 9, 9, 1)).astype(np.float32), y=y[:5])
    # Regression: 4 features -> 2 float targets (MSE path).
    inp = K.Input((4,))
    reg = K.Model(inp, K.layers.Dense(2)(inp))
    (root / "reg.tflite").write_bytes(_convert(reg))
    xr = rng.normal(size=(20, 4)).astype(np.float32)
    yr = rng.normal(size=(20, 2)).astype(np.float32)
    np.savez(root / "reg.npz", x=xr, y=yr)
    paths.update({k: root / f"{k}.tflite" for k in ("f32", "int8", "other", "reg")})
    paths.update(eval=root / "eval.npz", eval_bad_shape=root / "eval_bad_shape.npz", reg_eval=root / "reg.npz",
                 reg_model=reg, ref_model=ref)
    return paths


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("harness-models"))


def independent_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """Outputs computed with TensorFlow's own tf.lite.Interpreter, one sample at a time."""
    from edgeprune.base.env import tf

    interpreter = tf().lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for sample in x:
        s, z = inp["quantization"]
        data = sample[None]
        if inp["dtype"] == np.int8:
            data = np.clip(np.round(data / s + z), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], data)
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])[0]
        s, z = out["quantization"]
        rows.append((raw.astype(np.float32) - z) * s if out["dtype"] == np.int8 else raw)
    return np.stack(rows)


def _check_thread_result(r: dict) -> None:
    for key in ("load_ms", "init_ms", "first_inference_ms"):
        assert r[key] >= 0
    s = r["steady"]
    assert s["count"] >= 10
    assert s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert s["min_ms"] <= s["mean_ms"] <= s["max_ms"] and s["std_ms"] >= 0
    assert r["warmup"]["count"] == 2
    assert r["peak_rss_kb"] > 1000


def test_bench_float32_threads_sweep(models):
    result = bench(models["f32"], threads=(1, 2), runs=10, warmup=2)
    assert result["errors"] == [] and len(result["devices"]) == 1
    dev = result["devices"][0]
    assert dev["host"] == "local"
    assert dev["artifact"]["sha256"] == result["artifact"]["sha256"]
    for key in ("hostname", "cpu", "cores", "os", "python", "runtime", "runtime_version", "numpy"):
        assert dev["device"][key], key
    assert dev["device"]["runtime"] == "ai-edge-litert"
    assert [r["threads"] for r in dev["results"]] == [1, 2]
    for r in dev["results"]:
        _check_thread_result(r)
    assert result["gate"]["checked"] is False
    json.dumps(result)  # the whole result is JSON-serialisable


def test_bench_int8_accuracy_equals_independent_computation(models):
    result = bench(models["int8"], runs=10, warmup=2, eval_data=models["eval"])
    ev = result["devices"][0]["eval"]
    expected = independent_outputs(models["int8"], models["x"])
    want = float(np.mean(np.argmax(expected, 1) == models["y"]))
    assert ev["samples"] == 48 and ev["accuracy"] == pytest.approx(want)
    assert ev["mse"] is None
    assert result["artifact"]["inputs"][0]["dtype"] == "int8"


def test_reference_agreement(models):
    result = bench(models["int8"], runs=10, warmup=2, eval_data=models["eval"],
                   reference_model=models["reference"], max_accuracy_drop=25.0, keep_outputs=True)
    assert result["reference"]["accuracy"] == pytest.approx(1.0)  # labels are the reference's argmax
    dev = result["devices"][0]
    ref = models["ref_model"].predict(models["x"], verbose=0)
    ag = dev["agreement"]
    assert ag["max_abs_error"] == pytest.approx(float(np.abs(dev["outputs"] - ref).max()), rel=1e-5)
    assert ag["top1_agreement"] == pytest.approx(float(np.mean(np.argmax(dev["outputs"], 1) == np.argmax(ref, 1))))
    assert ag["top1_agreement"] >= 0.75 and ag["max_abs_error"] < 0.2
    assert dev["eval"]["accuracy_drop_points"] == pytest.approx((1.0 - dev["eval"]["accuracy"]) * 100)
    assert result["gate"]["passed"] is True


def test_float32_matches_reference_closely(models):
    result = bench(models["f32"], runs=10, warmup=2, eval_data=models["eval"], reference_model=models["reference"])
    ag = result["devices"][0]["agreement"]
    assert ag["top1_agreement"] == 1.0 and ag["max_abs_error"] < 1e-4


def test_accuracy_gate_fails_with_numbers(models):
    with pytest.raises(VerificationError) as err:
        bench(models["other"], runs=10, warmup=2, eval_data=models["eval"], reference_model=models["reference"],
              max_accuracy_drop=1.0)
    assert "drop" in str(err.value) and "> --max-accuracy-drop 1" in str(err.value)
    assert "95% CI" in str(err.value)
    assert err.value.result["gate"]["passed"] is False
    row = err.value.result["devices"][0]["eval"]
    lo, hi = row["drop_ci95"]
    assert lo <= row["accuracy_drop_points"] <= hi


def test_latency_gate_and_profile_budget(models, tmp_path):
    with pytest.raises(VerificationError, match=r"latency p50 .* > budget 1e-06 ms"):
        bench(models["f32"], runs=10, warmup=2, max_latency_ms=1e-6)
    profile = tmp_path / "tiny.yaml"
    profile.write_text("name: tiny\ndescription: test\ncpu: any\narch: x86_64\ncores: 2\nthreads: 2\n"
                       "budgets:\n  max_latency_ms: 0.000001\n")
    with pytest.raises(VerificationError) as err:
        bench(models["f32"], target=str(profile), runs=10, warmup=2)
    assert err.value.result["gate"]["max_latency_ms"] == 1e-6
    assert [r["threads"] for r in err.value.result["devices"][0]["results"]] == [2]  # profile threads


def test_regression_mse_and_evaluate_tflite(models):
    data = np.load(models["reg_eval"])
    got = evaluate_tflite(models["reg"], data["x"], data["y"])
    want = models["reg_model"].predict(data["x"], verbose=0)
    assert got["accuracy"] is None
    assert got["mse"] == pytest.approx(float(np.mean((want - data["y"]) ** 2)), rel=1e-4)
    result = bench(models["reg"], runs=10, warmup=2, eval_data=models["reg_eval"])
    assert result["devices"][0]["eval"]["mse"] == pytest.approx(got["mse"], rel=1e-5)


def test_evaluate_tflite_bytes_int8(models):
    content = Path(models["int8"]).read_bytes()
    got = evaluate_tflite(content, models["x"], models["y"], threads=2)
    expected = independent_outputs(models["int8"], models["x"])
    assert got["outputs"].dtype == np.float32 and got["outputs"].shape == (48, CLASSES)
    assert np.abs(got["outputs"] - expected).max() < 1e-6
    assert got["accuracy"] == pytest.approx(float(np.mean(np.argmax(expected, 1) == models["y"])))
    with pytest.raises(InputError, match="per-sample shape"):
        evaluate_tflite(content, np.zeros((2, 4, 4, 1), np.float32))


def test_manifest_sha_checked(models, tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    data = Path(models["f32"]).read_bytes()
    (art / "model.tflite").write_bytes(data)
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    (art / "manifest.json").write_text(json.dumps(
        {"profile": "x86-64", "quantization": "float32", "artifact": {"file": "model.tflite", "sha256": sha}}))
    result = bench(art, runs=10, warmup=2)  # an artifact directory is accepted
    manifest = result["artifact"]["manifest"]
    assert manifest["sha256_checked"] and manifest["quantization"] == "float32" and manifest["profile"] == "x86-64"
    (art / "manifest.json").write_text(json.dumps({"artifact": {"file": "model.tflite", "sha256": "0" * 64}}))
    with pytest.raises(VerificationError, match="does not match manifest.json"):
        bench(art / "model.tflite", runs=10)


def test_bad_inputs(models, tmp_path):
    with pytest.raises(InputError, match="artifact not found"):
        bench(tmp_path / "missing.tflite")
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"this is not a flatbuffer at all")
    with pytest.raises(InputError, match="not a TFLite model"):
        bench(junk)
    with pytest.raises(InputError, match=r"--val-data .*expected samples of shape \(N, 8, 8, 1\).*found \(N, 9, 9, 1\)"):
        bench(models["f32"], eval_data=models["eval_bad_shape"])
    with pytest.raises(InputError, match="--threads"):
        bench(models["f32"], threads=(0,))
    with pytest.raises(InputError, match="--reference needs --eval"):
        bench(models["f32"], reference_model=models["reference"])


def test_local_python_without_numpy_is_a_device_error(models, tmp_path):
    import venv

    bare = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(bare)
    with pytest.raises(DeviceError, match=r"local: numpy is not importable .*pip install numpy.*\[missing_numpy\]"):
        bench(models["f32"], remote_python=str(bare / "bin" / "python"), runs=5)


def test_runner_standalone_json_on_stdout(models, tmp_path):
    """The runner needs no edgeprune: a job on the command line, one JSON document out (the raw
    outputs; the controller scores them with edgeprune.device.metrics)."""
    job = json.dumps({"artifact": str(models["int8"]), "runs": 5, "warmup": 1,
                      "eval_inputs": str(tmp_path / "x.npy")})
    np.save(tmp_path / "x.npy", models["x"])
    proc = subprocess.run([sys.executable, runner.__file__, job], capture_output=True, text=True,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["results"][0]["steady"]["count"] == 5
    outputs = np.load(io.BytesIO(base64.b64decode(doc["eval"]["outputs_npy_b64"])), allow_pickle=False)
    assert outputs.shape == (len(models["x"]), 3) and doc["eval"]["samples"] == len(models["x"])
    bad = subprocess.run([sys.executable, runner.__file__, json.dumps({"artifact": "nope.tflite"})],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == runner.EXIT_BAD_JOB
    assert json.loads(bad.stdout)["error"]["kind"] == "missing_artifact"
