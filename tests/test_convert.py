"""Quantization modes through the real converter, flatbuffer inspection and the TFLM check."""
from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from helpers_models import digits_like, predict, tiny_tf_keras_cnn

from edgeprune.base.errors import InputError, VerificationError
from edgeprune.quantize import tflm
from edgeprune.quantize.convert import (
    convert,
    estimate_arena_bytes,
    float_ops,
    io_details,
    op_counts,
)


@pytest.fixture(scope="module")
def model():
    return tiny_tf_keras_cnn()


@pytest.fixture(scope="module")
def rep():
    return digits_like(40, seed=1)


@pytest.fixture(scope="module")
def int8_model(model, rep):
    return convert(model, "int8", representative=rep, io="int8", int8_only=True)


def _run(tflite: bytes, x: np.ndarray) -> np.ndarray:
    interp = Interpreter(model_content=tflite)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for sample in x:
        value = sample[None]
        scale, zero = inp["quantization"]
        if inp["dtype"] != np.float32:
            value = np.clip(np.round(value / scale + zero), -128 if inp["dtype"] == np.int8 else 0,
                            127 if inp["dtype"] == np.int8 else 255).astype(inp["dtype"])
        interp.set_tensor(inp["index"], value)
        interp.invoke()
        res = interp.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] != np.float32:
            res = (res - out["quantization"][1]) * out["quantization"][0]
        results.append(res[0])
    return np.asarray(results)


@pytest.mark.parametrize("mode", ["float32", "dynamic", "float16", "int8", "int16x8"])
def test_every_mode_converts_and_runs(model, rep, mode):
    tflite = convert(model, mode, representative=rep)
    x = digits_like(8, seed=5)
    got = _run(tflite, x)
    ref = predict(model, x)
    tol = 1e-5 if mode == "float32" else 0.08
    assert np.max(np.abs(got - ref)) < tol
    details = io_details(tflite)
    assert details["inputs"][0]["shape"] == [1, 8, 8, 1]
    assert details["inputs"][0]["dtype"] == "float32"


def test_float32_is_larger_than_int8(model, rep, int8_model):
    assert len(convert(model, "float32")) > len(int8_model)


@pytest.mark.parametrize("io", ["int8", "uint8"])
def test_int8_io_types(model, rep, io):
    tflite = convert(model, "int8", representative=rep, io=io)
    detail = io_details(tflite)["inputs"][0]
    assert detail["dtype"] == io and detail["scale"] > 0
    assert io_details(tflite)["outputs"][0]["dtype"] == io
    x = digits_like(8, seed=6)
    assert np.mean(_run(tflite, x).argmax(-1) == predict(model, x).argmax(-1)) >= 0.75


def test_int8_only_graph_has_no_float_ops(int8_model):
    assert float_ops(int8_model) == []
    counts = op_counts(int8_model)
    assert counts["CONV_2D"] == 1 and "QUANTIZE" not in counts


def test_int8_only_refuses_float_io(model, rep):
    with pytest.raises(VerificationError, match="still has 2 float op.*#0 QUANTIZE"):
        convert(model, "int8", representative=rep, io="float", int8_only=True)


def test_float_model_has_float_ops(model):
    assert float_ops(convert(model, "float32"))[0].startswith("#0 CONV_2D")


@pytest.mark.parametrize("kwargs, match", [
    ({"quantization": "int4"}, "unknown mode 'int4'"),
    ({"quantization": "int8"}, "needs representative data"),
    ({"quantization": "int16x8"}, "needs representative data"),
    ({"quantization": "float32", "io": "int8"}, "--io int8 needs --quantize int8"),
    ({"quantization": "dynamic", "int8_only": True}, "int8 builtins only"),
    ({"quantization": "int8", "io": "int4", "representative": np.zeros((1, 8, 8, 1), np.float32)}, "unknown type 'int4'"),
])
def test_refusals(model, kwargs, match):
    with pytest.raises(InputError, match=match):
        convert(model, **kwargs)


def test_arena_estimate(model, int8_model):
    float_arena = estimate_arena_bytes(convert(model, "float32"))
    int8_arena = estimate_arena_bytes(int8_model)
    # the largest live pair: conv output (6*6*4) and the BatchNorm multiply after it (6*6*4)
    assert float_arena == 4 * (144 + 144)
    assert int8_arena == 144 + 144


def test_tflm_reports_exact_arena(int8_model):
    result = tflm.check(int8_model)
    assert result["runtime"] == "tflm"
    assert result["arena_bytes"] > estimate_arena_bytes(int8_model)
    assert result["arena_bytes"] == result["arena_head_bytes"] + result["arena_tail_bytes"]


def test_tflm_refuses_too_small_arena(int8_model):
    with pytest.raises(VerificationError, match="TensorFlow Lite Micro cannot load the model|the TFLM interpreter crashed"):
        tflm.check(int8_model, arena_size=256)


def test_tflm_small_arena_reports_missing_bytes(int8_model):
    with pytest.raises(VerificationError, match="cannot load the model: Failed to resize buffer"):
        tflm.check(int8_model, arena_size=500)
