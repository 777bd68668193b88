"""Check the harness's latency against LiteRT's own ``litert-benchmark`` on the same file.

Both tools run the same .tflite with the same thread counts, interleaved round by round so
machine load affects both alike. Each round gives one median per tool; the comparison uses
each tool's lowest round median (the round least disturbed by other processes: on a shared
machine other load only ever adds time) and also prints the median of the round medians.
The script exits 1 when the two differ by more than the tolerance (default 5%).

    python benchmarks/bench_vs_litert.py              # MobileNetV2 224x224, float32 (~25 s to convert)
    python benchmarks/bench_vs_litert.py --small      # a small CNN, seconds
    python benchmarks/bench_vs_litert.py --model m.tflite --threads 1,2,4
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import edgeprune.base.env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from edgeprune.device.artifact import sha256_of
from edgeprune.device.jobs import RunRequest
from edgeprune.device.local import run_local


def build_model(small: bool, path: Path) -> Path:
    from edgeprune.base.env import tf, tf_keras

    K = tf_keras()
    if small:
        inp = K.Input((96, 96, 3))
        h = inp
        for filters in (16, 32, 64, 128):
            h = K.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(h)
            h = K.layers.DepthwiseConv2D(3, padding="same", activation="relu")(h)
        h = K.layers.GlobalAveragePooling2D()(h)
        model = K.Model(inp, K.layers.Dense(10)(h))
    else:
        model = K.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    path.write_bytes(tf().lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def litert_benchmark_median(binary: str, model: Path, threads: int, runs: int, warmup: int, work: Path) -> float:
    out = work / f"litert-{threads}-{time.monotonic_ns()}.json"
    proc = subprocess.run([binary, "--model", str(model), "--num_threads", str(threads), "--num_runs", str(runs),
                           "--warmup_runs", str(warmup), "--use_cpu", "--result_json", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        sys.exit(f"litert-benchmark failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(out.read_text())["latency"]["median_ms"])


def harness_median(model: Path, threads: int, runs: int, warmup: int) -> float:
    request = RunRequest(artifact=model, sha256=sha256_of(model.read_bytes()), threads=(threads,), runs=runs,
                         warmup=warmup)
    return float(run_local(request)["results"][0]["steady"]["p50_ms"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a small CNN instead of MobileNetV2")
    parser.add_argument("--model", type=Path, help="an existing .tflite to use")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per thread count")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--litert-benchmark", default=shutil.which("litert-benchmark")
                        or str(Path(sys.executable).with_name("litert-benchmark")))
    args = parser.parse_args()
    if not Path(args.litert_benchmark).exists():
        sys.exit("litert-benchmark not found (it ships with ai-edge-litert); pass --litert-benchmark PATH")

    with tempfile.TemporaryDirectory(prefix="bench-vs-litert-") as tmp:
        work = Path(tmp)
        if args.model:
            model = args.model
        else:
            t0 = time.time()
            model = build_model(args.small, work / ("small.tflite" if args.small else "mobilenet_v2.tflite"))
            print(f"converted {model.name} ({model.stat().st_size / 1e6:.1f} MB) in {time.time() - t0:.1f} s")
        rows, ok = [], True
        for threads in [int(t) for t in args.threads.split(",")]:
            ours, theirs = [], []
            for r in range(args.rounds):
                # Alternate which tool goes first so drift in machine load cancels out.
                order = ("harness", "litert") if r % 2 == 0 else ("litert", "harness")
                for tool in order:
                    if tool == "harness":
                        ours.append(harness_median(model, threads, args.runs, args.warmup))
                    else:
                        theirs.append(litert_benchmark_median(args.litert_benchmark, model, threads, args.runs,
                                                              args.warmup, work))
            a, b = min(ours), min(theirs)
            ratio = a / b
            agree = abs(ratio - 1.0) <= args.tolerance
            ok &= agree
            rows.append((threads, a, b, ratio, agree, ours, theirs))

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nmodel: {model.name}; {args.runs} runs x {args.rounds} interleaved rounds per tool and thread count; "
          f"{os.cpu_count()} CPUs, load average {load}")
    print(f"{'threads':>7} {'harness p50 ms':>15} {'litert-benchmark median ms':>27} {'ratio':>7}  "
          f"agree(±{args.tolerance:.0%})   [median of round medians: harness / litert / ratio]")
    for threads, a, b, ratio, agree, ours, theirs in rows:
        ma, mb = statistics.median(ours), statistics.median(theirs)
        print(f"{threads:>7} {a:>15.3f} {b:>27.3f} {ratio:>7.3f}  {'yes' if agree else 'NO':<10}   "
              f"[{ma:.3f} / {mb:.3f} / {ma / mb:.3f}]")
        print(f"{'':>7} rounds: harness {', '.join(f'{v:.3f}' for v in ours)}")
        print(f"{'':>7}         litert-benchmark {', '.join(f'{v:.3f}' for v in theirs)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
