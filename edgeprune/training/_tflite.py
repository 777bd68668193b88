"""Conversion and interpreter evaluation, through the project's modules when they exist.

edgeprune.convert / edgeprune.harness are written by other engineers; until they are
importable these fall back to the plain TFLiteConverter and the LiteRT interpreter.
"""
from __future__ import annotations

import numpy as np


def to_tflite(model, quantization: str = "float32", *, representative=None, sparsity: bool = False) -> bytes:
    """Convert ``model`` (float32 / int8 / dynamic); ``sparsity`` adds EXPERIMENTAL_SPARSITY."""
    if not sparsity:
        try:
            from edgeprune.convert import convert
        except ImportError:
            convert = None
        if convert is not None:
            return convert(model, quantization, representative=representative)
    from edgeprune._env import tf

    tf_ = tf()
    converter = tf_.lite.TFLiteConverter.from_keras_model(model)
    opts = []
    if quantization in ("int8", "dynamic"):
        opts.append(tf_.lite.Optimize.DEFAULT)
    if sparsity:
        opts.append(tf_.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = opts
    if quantization == "int8" and representative is not None:
        rep = np.asarray(representative, dtype=np.float32)

        def gen():
            for i in range(min(len(rep), 200)):
                yield [rep[i : i + 1]]

        converter.representative_dataset = gen
        converter.target_spec.supported_ops = [tf_.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def interpreter(tflite_bytes: bytes, threads: int = 1):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - ai-edge-litert is a dependency
        from edgeprune._env import tf

        Interpreter = tf().lite.Interpreter
    return Interpreter(model_content=tflite_bytes, num_threads=threads)


def run_tflite(tflite_bytes: bytes, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Outputs of the .tflite on ``x`` (float), quantizing int8/uint8 inputs and outputs."""
    try:
        from edgeprune.harness.api import evaluate_tflite
    except ImportError:
        evaluate_tflite = None
    if evaluate_tflite is not None:
        return np.asarray(evaluate_tflite(tflite_bytes, x)["outputs"])
    interp = interpreter(tflite_bytes)
    inp = interp.get_input_details()[0]
    outs = []
    for start in range(0, len(x), batch):
        chunk = np.asarray(x[start : start + batch], dtype=np.float32)
        interp.resize_tensor_input(inp["index"], [len(chunk), *inp["shape"][1:]])
        interp.allocate_tensors()
        inp_d = interp.get_input_details()[0]
        out_d = interp.get_output_details()[0]
        interp.set_tensor(inp_d["index"], _quantize(chunk, inp_d))
        interp.invoke()
        outs.append(_dequantize(interp.get_tensor(out_d["index"]), out_d))
    return np.concatenate(outs)


def _quantize(x, detail):
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])
    return x.astype(detail["dtype"])


def _dequantize(y, detail):
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy for class-index or one-hot labels (binary: threshold 0.5)."""
    y = np.asarray(y)
    outputs = np.asarray(outputs).reshape(len(outputs), -1)
    if outputs.shape[1] == 1:
        pred = (outputs[:, 0] > 0.5).astype(np.int64)
        return float(np.mean(pred == y.reshape(-1)))
    truth = y.argmax(axis=-1) if y.ndim > 1 and y.shape[-1] == outputs.shape[1] else y.reshape(-1)
    return float(np.mean(outputs.argmax(axis=1) == truth))
