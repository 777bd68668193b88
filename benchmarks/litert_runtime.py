"""LiteRT's modern tools against the classic ones, side by side in one run.

1. Runtime API: the runner's two ways to run a .tflite (``Interpreter`` and LiteRT 2.x's
   ``CompiledModel``, see ``edgeprune.device.runner.choose_api``) on MobileNetV2 (alpha 0.35,
   96x96) and a small CNN, float32 and int8, 1 and 2 threads. Every configuration is timed in
   each of ``--rounds`` rounds, interleaved (round-robin) so machine drift hits all alike; a
   round is the mean of ``--runs`` invokes; the figure is the median over rounds, in ms.
2. Export path: Keras 3's ``model.export(path, format="litert")`` against
   ``TFLiteConverter.from_keras_model`` on keras.applications families (float32): bytes, op
   counts (edgeprune.quantize.inspection), max |output - Keras output| on one random input,
   conversion seconds. Which one edgeprune's compile should use follows from these numbers.

    python benchmarks/litert_runtime.py                  # both parts (~3 min on 2 cores)
    python benchmarks/litert_runtime.py --part runtime --rounds 9 --json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import edgeprune.base.env as env
from edgeprune.device import runner
from edgeprune.quantize.inspection import inspect_tflite

FAMILIES = {  # name -> (builder, input size): small inputs keep conversion quick; weights=None (offline)
    "MobileNetV2": (lambda k, s: k.applications.MobileNetV2(input_shape=s, alpha=0.35, weights=None), 96),
    "ResNet50": (lambda k, s: k.applications.ResNet50(input_shape=s, weights=None), 64),
    "EfficientNetB0": (lambda k, s: k.applications.EfficientNetB0(input_shape=s, weights=None), 64),
    "ConvNeXtTiny": (lambda k, s: k.applications.ConvNeXtTiny(input_shape=s, weights=None), 64),
}


def small_cnn(keras):
    inputs = keras.Input((32, 32, 3), name="image")
    h = inputs
    for filters in (16, 32, 64):
        h = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h), name="small_cnn")


def convert(model, int8: bool) -> bytes:
    """TFLiteConverter.from_keras_model, full int8 (random calibration) when asked."""
    tf = env.tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        shape = (1,) + tuple(model.input_shape[1:])
        rng = np.random.default_rng(0)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.random(shape, dtype=np.float32)] for _ in range(32))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def prepared(api, path: Path, threads: int):
    """An allocated Interpreter or CompiledModelSession with random inputs set."""
    session = runner.load_interpreter(api, str(path), threads)
    runner.allocate(session, str(path))
    rng = np.random.default_rng(0)
    for detail in session.get_input_details():
        session.set_tensor(detail["index"], runner.random_input(detail, rng, np))
    for _ in range(3):
        session.invoke()
    return session


def runtime_part(work: Path, rounds: int, runs: int, threads_list) -> list[dict]:
    keras = env.keras3()
    _, _, interpreter = runner.find_runtime()
    apis = {"Interpreter": interpreter, "CompiledModel": runner.choose_api(interpreter, {"runtime_api": "compiled_model"})}
    keras.utils.set_random_seed(0)
    models = {"MobileNetV2 a0.35 96": FAMILIES["MobileNetV2"][0](keras, (96, 96, 3)), "small CNN 32": small_cnn(keras)}
    sessions = {}
    for name, model in models.items():
        for quant in ("float32", "int8"):
            path = work / f"{name.split()[0]}-{quant}.tflite"
            path.write_bytes(convert(model, quant == "int8"))
            for threads in threads_list:
                for api_name, api in apis.items():
                    sessions[(name, quant, threads, api_name)] = prepared(api, path, threads)
    times = {key: [] for key in sessions}
    clock = time.perf_counter
    for _ in range(rounds):
        for key, session in sessions.items():
            start = clock()
            for _ in range(runs):
                session.invoke()
            times[key].append((clock() - start) / runs * 1000.0)
    rows = []
    for name in models:
        for quant in ("float32", "int8"):
            for threads in threads_list:
                i = statistics.median(times[(name, quant, threads, "Interpreter")])
                c = statistics.median(times[(name, quant, threads, "CompiledModel")])
                rows.append({"model": name, "quantization": quant, "threads": threads, "interpreter_ms": i,
                             "compiled_model_ms": c, "compiled_over_interpreter": c / i})
    return rows


def run_tflite(data: bytes, x: np.ndarray) -> np.ndarray:
    _, _, interpreter = runner.find_runtime()
    session = interpreter(model_content=data, num_threads=1)
    session.allocate_tensors()
    session.set_tensor(session.get_input_details()[0]["index"], x)
    session.invoke()
    return session.get_tensor(session.get_output_details()[0]["index"])


def export_part(work: Path, families) -> list[dict]:
    keras = env.keras3()
    rows = []
    for family in families:
        build, size = FAMILIES[family]
        keras.utils.set_random_seed(0)
        model = build(keras, (size, size, 3))
        x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
        reference = np.asarray(model(x, training=False))
        row = {"family": family, "input": size, "params": int(model.count_params())}
        for path_name in ("converter", "export"):
            start = time.perf_counter()
            try:
                if path_name == "converter":
                    data = convert(model, int8=False)
                else:
                    target = work / f"{family}-export.tflite"
                    model.export(str(target), format="litert", verbose=False)
                    data = target.read_bytes()
            except Exception as exc:  # a family the path cannot convert is a result, not a crash
                row[path_name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
                continue
            seconds = time.perf_counter() - start
            info = inspect_tflite(data, name=f"{family}-{path_name}.tflite")
            row[path_name] = {"bytes": len(data), "seconds": seconds, "ops": sum(info["op_counts"].values()),
                              "op_counts": info["op_counts"],
                              "max_abs_diff": float(np.abs(run_tflite(data, x) - reference).max())}
        if "bytes" in row["converter"] and "bytes" in row.get("export", {}):
            c, e = row["converter"], row["export"]
            row["same_ops"] = c["op_counts"] == e["op_counts"]
            row["bytes_diff"] = e["bytes"] - c["bytes"]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("all", "runtime", "export"), default="all")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds per configuration (median taken)")
    parser.add_argument("--runs", type=int, default=20, help="invokes per round")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--families", default=",".join(FAMILIES), help="keras.applications families to export")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    args = parser.parse_args(argv)
    threads_list = [int(t) for t in args.threads.split(",")]
    result = {"runtime": None, "export": None}
    # TensorFlow's SavedModel export prints to stdout; keep stdout for the result (--json)
    with tempfile.TemporaryDirectory(prefix="litert-runtime-") as work, contextlib.redirect_stdout(sys.stderr):
        if args.part in ("all", "runtime"):
            result["runtime"] = runtime_part(Path(work), args.rounds, args.runs, threads_list)
        if args.part in ("all", "export"):
            result["export"] = export_part(Path(work), [f for f in args.families.split(",") if f])
    name, version, _ = runner.find_runtime()
    result["setup"] = {"runtime": f"{name} {version}", "keras": env.keras3().__version__, "cpu": runner.cpu_model(),
                       "rounds": args.rounds, "runs": args.runs}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['setup']['runtime']}, Keras {result['setup']['keras']}, {result['setup']['cpu']}")
    if result["runtime"]:
        print(f"\nmedian of {args.rounds} rounds x {args.runs} invokes, ms")
        print(f"{'model':22} {'quant':8} {'thr':>3} {'Interpreter':>12} {'CompiledModel':>14} {'CM/Interp':>10}")
        for r in result["runtime"]:
            print(f"{r['model']:22} {r['quantization']:8} {r['threads']:>3} {r['interpreter_ms']:>12.4f} "
                  f"{r['compiled_model_ms']:>14.4f} {r['compiled_over_interpreter']:>10.2f}")
    if result["export"]:
        print(f"\n{'family':15} {'path':10} {'bytes':>11} {'ops':>5} {'max|diff|':>10} {'seconds':>8}")
        for r in result["export"]:
            for path_name in ("converter", "export"):
                v = r[path_name]
                if "error" in v:
                    print(f"{r['family']:15} {path_name:10} error: {v['error']}")
                else:
                    print(f"{r['family']:15} {path_name:10} {v['bytes']:>11,} {v['ops']:>5} "
                          f"{v['max_abs_diff']:>10.2e} {v['seconds']:>8.1f}")
            if "same_ops" in r:
                print(f"{'':15} export - converter: {r['bytes_diff']:+,} bytes, same op counts: {r['same_ops']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
