"""The device runner measures with LiteRT's CompiledModel where ai-edge-litert has it, and the
Interpreter when told to (or where the runtime lacks it); both give the same outputs.

Real runner subprocesses (edgeprune.device.local.run_local), real converter, real runtimes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeprune.base.errors import DeviceError
from edgeprune.device.jobs import RunRequest
from edgeprune.device.local import run_local
from edgeprune.device.runner import RUNTIME_API_ENV

pytest.importorskip("ai_edge_litert.compiled_model")


def _two_in_two_out():
    """Image + a feature vector in, a 5-way classifier and a 2-value regression out."""
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 1), name="image")
    extra = keras.Input((3,), name="extra")
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(image)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Concatenate(name="cat")([h, extra])
    return keras.Model([image, extra], [keras.layers.Dense(5, activation="softmax", name="cls")(h),
                                        keras.layers.Dense(2, name="reg")(h)])


def _inputs(n, seed):
    rng = np.random.default_rng(seed)
    return {"image": rng.random((n, 8, 8, 1), dtype=np.float32), "extra": rng.random((n, 3), dtype=np.float32)}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    from edgeprune.base.env import tf

    TF = tf()
    root = tmp_path_factory.mktemp("cm")
    model = _two_in_two_out()
    paths = {}
    converter = TF.lite.TFLiteConverter.from_keras_model(model)
    paths["float32"] = root / "float32.tflite"
    paths["float32"].write_bytes(converter.convert())
    calibration = _inputs(32, 1)
    converter = TF.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [TF.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ({k: v[i:i + 1] for k, v in calibration.items()} for i in range(32))
    converter.target_spec.supported_ops = [TF.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = TF.int8
    converter.inference_output_type = TF.int8
    paths["int8"] = root / "int8.tflite"
    paths["int8"].write_bytes(converter.convert())
    paths["eval"] = root / "eval_x.npz"
    np.savez(paths["eval"], **_inputs(70, 2))  # 70: more than one batch of 64 for the Interpreter
    return paths


def _run(path: Path, eval_x: Path | None = None, **extra) -> dict:
    return run_local(RunRequest(artifact=path, sha256=None, threads=(1, 2), runs=5, warmup=1, eval_x=eval_x,
                                extra=extra))


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_compiled_model_by_default_and_outputs_equal_the_interpreter(models, kind):
    compiled = _run(models[kind], models["eval"])
    assert compiled["runtime"].startswith("ai-edge-litert ") and compiled["runtime"].endswith(" CompiledModel")
    assert compiled["device"]["runtime_api"] == "CompiledModel"
    assert [r["threads"] for r in compiled["results"]] == [1, 2]
    assert all(r["steady"]["count"] == 5 for r in compiled["results"])
    interpreter = _run(models[kind], models["eval"], runtime_api="interpreter")
    assert interpreter["runtime"].endswith(" Interpreter")
    a, b = compiled["eval"]["outputs"], interpreter["eval"]["outputs"]
    assert sorted(a) == sorted(b) == ["output_0", "output_1"]
    for name in a:
        assert a[name].shape == b[name].shape and a[name].shape[0] == 70
        np.testing.assert_array_equal(a[name], b[name])  # same kernels: bit-identical, so equal accuracy
    assert np.any(a["output_1"] != 0)


def test_environment_variable_forces_the_interpreter(models, monkeypatch):
    monkeypatch.setenv(RUNTIME_API_ENV, "interpreter")
    result = _run(models["float32"])
    assert result["device"]["runtime_api"] == "Interpreter"
    assert result["runtime"].endswith(" Interpreter")


def test_time_models_run_on_compiled_model(models):
    result = run_local(RunRequest(artifact=None, sha256=None, models=(models["float32"], models["int8"]),
                                  extra={"time_runs": 3, "time_rounds": 2}))
    assert result["runtime"].endswith(" CompiledModel")
    rows = result["timings"]["models"]
    assert len(rows) == 2 and all(row["us"] > 0 for row in rows)


def test_unknown_runtime_api_is_one_line(models):
    with pytest.raises(DeviceError) as err:
        _run(models["float32"], runtime_api="gpu")
    message = str(err.value)
    assert "runtime_api 'gpu'" in message and "interpreter" in message and "\n" not in message


def test_op_profiler_detection_names_the_device_and_the_fallback(models, tmp_path):
    from edgeprune.pruning.latency import op_profiler_note

    result = _run(models["float32"])
    assert result["device"]["benchmark_model"] is None  # no registry here ships the native binary
    assert op_profiler_note("pi5", None) == (
        "op profiler: benchmark_model not found on pi5; per-layer times come from single-op models")
    binary = tmp_path / "benchmark_model"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    result = _run(models["float32"], benchmark_model=str(binary))
    assert result["device"]["benchmark_model"] == str(binary)
    assert "found on pi5" in op_profiler_note("pi5", str(binary))
