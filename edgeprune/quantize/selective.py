"""``compile --keep-float auto``: selective int8 quantization chosen by measurement.

When the int8 artifact fails the accuracy gate, the per-tensor error of the artifact itself is
measured against the float model (edgeprune.quantize.quant_error). Ops are ranked by the error they
add (SQNR of their inputs minus their own), and the worst are kept in float one at a time,
re-quantizing with the converter's selective path, until the gate passes or ``max_layers`` ops
are float. When keeping an op alone does not lower the drop, the damage is in the tensor it
reads, so the op is tried together with that tensor's producer; a trial that does not lower the
drop is undone, so every op that stays float earned its place. Each step records what it cost: artifact bytes and latency in the local interpreter.

How selective quantization works in TF 2.21 (the path tf.lite.experimental.QuantizationDebugger
uses for ``denylisted_nodes``): calibrate only (``converter._experimental_calibrate_only``
with the MLIR quantizer), then ``tensorflow.lite.python.convert.mlir_quantize(calibrated,
denylisted_nodes=[op output tensor names])``. A denylisted op runs in float between a
DEQUANTIZE and a QUANTIZE.
"""
from __future__ import annotations

import numpy as np

from edgeprune.base.errors import InputError

MAX_LAYERS = 8
ERROR_SAMPLES = 32


def calibrate(model, representative: np.ndarray) -> bytes:
    """The calibrated float model (ranges recorded, nothing quantized yet)."""
    from edgeprune.base.env import quiet_native, tf

    t = tf()
    data = np.asarray(representative, np.float32)
    converter = t.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [t.lite.Optimize.DEFAULT]

    def rep():
        for i in range(len(data)):
            yield [data[i:i + 1]]

    converter.representative_dataset = rep
    converter.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    import contextlib
    import io

    # Keras 3's export prints "Saved artifact at ..." on Python's stdout (see edgeprune.quantize.convert)
    with quiet_native(), contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def quantize(calibrated: bytes, io: str, denylisted_nodes=()) -> bytes:
    """int8 model from a calibrated one, ops writing ``denylisted_nodes`` left in float."""
    from edgeprune.base.env import quiet_native, tf

    t = tf()
    from tensorflow.lite.python import convert as tfl_convert

    io_type = {"float": t.float32, "int8": t.int8, "uint8": t.uint8}[io]
    with quiet_native():
        return tfl_convert.mlir_quantize(calibrated, fully_quantize=io != "float", input_data_type=io_type,
                                         output_data_type=io_type, denylisted_nodes=list(denylisted_nodes))


def _drop(tflite: bytes, original, x, y) -> dict:
    from edgeprune.device.gate import check_accuracy_gate

    return check_accuracy_gate(tflite, original, x, y, None)


def keep_float_auto(model, original, tflite: bytes, *, representative, io: str, gate_x, gate_y,
                    max_drop: float, threads: int = 1, max_layers: int = MAX_LAYERS, output=None) -> tuple[bytes, dict]:
    """(artifact bytes, report) after keeping the fewest measured-worst ops in float."""
    from edgeprune.pruning.latency import LayerTimer
    from edgeprune.quantize.convert import convert
    from edgeprune.quantize.quant_error import measure

    timer = LayerTimer(threads=threads, runs=30, rounds=3)
    start = _drop(tflite, original, gate_x, gate_y)
    base_ms = timer.time_blob(tflite) / 1000.0
    report = {"mode": "auto", "max_drop_points": max_drop, "drop_points_int8": start["drop_points"],
              "bytes_int8": len(tflite), "latency_ms_int8": round(base_ms, 4),
              "latency_method": f"local LiteRT interpreter, {threads} thread(s)", "steps": [], "kept_float": []}
    if start["drop_points"] <= max_drop + 1e-9:
        report["summary"] = (f"The all-int8 artifact passes the gate (drop {start['drop_points']:.2f} pt "
                             f"≤ {max_drop:g}): no layer kept in float.")
        report["passed"] = True
        return tflite, report
    x_err = np.asarray(gate_x[:ERROR_SAMPLES], np.float32)
    errors = measure(tflite, convert(model, "float32"), x_err)
    candidates = [r for r in errors["layers"] if r["op"] not in ("QUANTIZE", "DEQUANTIZE")]
    report["layers"] = [{k: v for k, v in r.items() if k != "inputs"} for r in errors["layers"]]
    candidates.sort(key=lambda r: (-(r.get("local_drop_db") or 0.0), r["sqnr_db"] if r["sqnr_db"] is not None else 1e9))
    calibrated = calibrate(model, representative)
    producers = {r["float_tensor"]: r for r in errors["layers"] if r["op"] not in ("QUANTIZE", "DEQUANTIZE")}
    current, deny, prev_ms, prev_bytes = tflite, [], base_ms, len(tflite)
    prev_drop, passed, tried = start["drop_points"], False, 0
    for r in candidates:
        if passed or len(deny) >= max_layers or tried >= 3 * max_layers:
            break
        if r["float_tensor"] in deny:
            continue
        # Try the op alone; if that does not help, the damage is in the tensor it reads, so try it
        # together with the op(s) producing that tensor. A trial that does not lower the drop is undone.
        options = [[r["float_tensor"]]]
        feeders = [t for t in r.get("inputs", []) if t in producers and t not in deny]
        if feeders:
            options.append([r["float_tensor"], *feeders])
        for extra in options:
            tried += 1
            try:
                candidate = quantize(calibrated, io, deny + extra)
            except Exception as exc:  # the converter refuses this node: skip it
                if output is not None:
                    output.debug(f"keep-float: cannot keep {extra} in float ({str(exc).splitlines()[0][:120]})")
                continue
            gate = _drop(candidate, original, gate_x, gate_y)
            if gate["drop_points"] >= prev_drop - 1e-9:
                continue
            ms = timer.time_blob(candidate) / 1000.0
            for name in extra:
                row = producers.get(name, r)
                report["steps"].append({"tensor": name, "op": row["op"], "sqnr_db": row["sqnr_db"],
                                        "local_drop_db": row.get("local_drop_db"),
                                        "drop_points_after": gate["drop_points"],
                                        "bytes_added": (len(candidate) - prev_bytes) if name == extra[-1] else 0,
                                        "latency_ms_added": round(ms - prev_ms, 4) if name == extra[-1] else 0.0})
            deny += extra
            current, prev_ms, prev_bytes, prev_drop = candidate, ms, len(candidate), gate["drop_points"]
            passed = prev_drop <= max_drop + 1e-9
            break
    report["kept_float"] = [s["tensor"] for s in report["steps"]]
    report["passed"] = passed
    report["bytes_final"] = len(current)
    report["latency_ms_final"] = round(prev_ms, 4)
    n = len(report["kept_float"])
    if passed:
        report["summary"] = (f"int8 lost {start['drop_points']:.2f} pt > {max_drop:g}; keeping {n} op(s) in float "
                             f"({', '.join(report['kept_float'])}) brings the drop to "
                             f"{report['steps'][-1]['drop_points_after']:.2f} pt for +{len(current) - len(tflite)} bytes "
                             f"and {prev_ms - base_ms:+.3f} ms.")
    else:
        report["summary"] = (f"int8 lost {start['drop_points']:.2f} pt > {max_drop:g}; {n} op(s) kept in float "
                             f"did not pass the gate (tried at most {max_layers}).")
    return current, report


def check_keep_float(value: str | None, quant: str, int8_only: bool, max_drop) -> None:
    """Refuse --keep-float where it cannot work, before any conversion."""
    if value is None:
        return
    if value != "auto":
        raise InputError(f"--keep-float: expected 'auto', got '{value}'")
    if quant != "int8":
        raise InputError(f"--keep-float auto selects float layers of an int8 model; --quantize is {quant}")
    if int8_only:
        raise InputError("--keep-float: the target runs int8 builtins only (operators.int8_only); no layer can stay float")
    if max_drop is None:
        raise InputError("--keep-float auto needs an accuracy gate: pass --max-accuracy-drop POINTS and labelled data")

