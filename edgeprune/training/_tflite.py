"""Conversion and interpreter evaluation, through the project's modules when they exist.

edgeprune.quantize.convert / edgeprune.device do the work; this module only adds the EXPERIMENTAL_SPARSITY conversion the
gradual-pruning report measures.
"""
from __future__ import annotations

import numpy as np


def to_tflite(model, quantization: str = "float32", *, representative=None, sparsity: bool = False) -> bytes:
    """Convert ``model`` (float32 / int8 / dynamic); ``sparsity`` adds EXPERIMENTAL_SPARSITY."""
    if not sparsity:
        from edgeprune.quantize.convert import convert

        return convert(model, quantization, representative=representative)
    from edgeprune.base.env import tf

    tf_ = tf()
    converter = tf_.lite.TFLiteConverter.from_keras_model(model)
    opts = [tf_.lite.Optimize.EXPERIMENTAL_SPARSITY]
    if quantization in ("int8", "dynamic"):
        opts.append(tf_.lite.Optimize.DEFAULT)
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
    """An interpreter for ``to_tflite``'s own output (trusted bytes: a user's file goes through
    edgeprune.device.tflite_check.check_untrusted_tflite first)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeprune.base.env import quiet_native

    with quiet_native():
        return Interpreter(model_content=tflite_bytes, num_threads=threads)
