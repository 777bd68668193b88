"""Is the search's best trial usable? ``edgeprune search`` with recovery in every trial vs without.

The question a user asks of a search under a latency budget: does the model it ships keep the
dense model's accuracy? Fashion-MNIST (Debian ``dataset-fashion-mnist``), a conv-BN CNN with
three stages trained here with care (Adam, cosine decay, ``--epochs`` on ``--train`` images),
the local CPU (one thread) with a latency budget of ``--budget`` x the dense model's latency.
Both runs call :func:`edgeprune.search.search` exactly as the command does, per-stage ratios,
TPE, ``--trials`` trials:

- ``recovery`` (today's defaults with ``--train-data``): every trial recovers for 2 or 4 epochs
  on the training images, Hyperband stops trials that trail after the same epoch, and the
  3 most accurate feasible trials get the full recovery (10 epochs);
- ``no recovery`` (the defaults before): trials are pruned and converted, nothing is trained.

Latency comes from a per-layer table measured once on this machine (``--latency-table``):
it keeps trials cheap and deterministic. The best trial's artifact is then timed side by side
with the dense artifact (interleaved rounds), and scored on ``--test`` test images that no step
selected on. Prints: per run, the best trial's accuracy in the search, after the full
recovery, on the test images, its delta to dense in points, its measured latency / dense,
trials run and stopped early, minutes.

    nice -n 10 python benchmarks/search_recovery.py [--trials 40] [--budget 0.5] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fashion import load_fashion_mnist  # noqa: E402

import edgeprune.base.env  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build_cnn(seed: int):
    """Three conv-BN stages (28x28, 14x14, 7x7), GAP, softmax: ~7 MMACs."""
    from edgeprune.base.env import tf, tf_keras

    tf().random.set_seed(seed)
    k = tf_keras()
    inp = k.Input((28, 28, 1))
    x = inp
    for i, (width, pool) in enumerate(((32, True), (64, True), (128, False))):
        x = k.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = k.layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)
        x = k.layers.ReLU(name=f"relu{i + 1}")(x)
        if pool:
            x = k.layers.MaxPooling2D(name=f"pool{i + 1}")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    out = k.layers.Dense(10, activation="softmax", name="out")(x)
    return k.Model(inp, out)


def prepare(work: Path, args) -> dict:
    """Train the dense CNN; write model, training data, validation (held out of training) and test."""
    from edgeprune.base.env import tf_keras

    (xtr, ytr), (xte, yte) = load_fashion_mnist()
    f = lambda a: (a.astype(np.float32) / 255.0)[..., None]  # noqa: E731
    order = np.random.default_rng(0).permutation(len(xtr))
    tr, va = order[:args.train], order[args.train:args.train + args.val]
    k = tf_keras()
    model = build_cnn(0)
    steps = args.epochs * int(np.ceil(args.train / 64))
    model.compile(k.optimizers.Adam(k.optimizers.schedules.CosineDecay(3e-3, steps)),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(f(xtr[tr]), ytr[tr], epochs=args.epochs, batch_size=64, verbose=0)
    log(f"trained the dense CNN: {args.train} images, {args.epochs} epochs, {time.perf_counter() - t0:.0f}s")
    model.save(work / "fmnist.h5")
    np.savez(work / "train.npz", x=f(xtr[tr]), y=ytr[tr])
    np.savez(work / "val.npz", x=f(xtr[va]), y=ytr[va])
    np.savez(work / "test.npz", x=f(xte[:args.test]), y=yte[:args.test])
    return {"model": work / "fmnist.h5", "train": work / "train.npz", "val": work / "val.npz",
            "test": work / "test.npz"}


def interleaved_ms(paths: list[Path], rounds: int = 5, runs: int = 50) -> list[float]:
    """Median per-invoke latency (ms, one thread) of each model, measured in interleaved rounds."""
    from ai_edge_litert.interpreter import Interpreter

    interps = []
    for p in paths:
        it = Interpreter(model_path=str(p), num_threads=1)
        it.allocate_tensors()
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], np.zeros(d["shape"], dtype=d["dtype"]))
        it.invoke()
        interps.append(it)
    samples: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, it in enumerate(interps):
            for _ in range(runs):
                t = time.perf_counter()
                it.invoke()
                samples[i].append((time.perf_counter() - t) * 1000)
    return [float(np.median(s)) for s in samples]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--budget", type=float, default=0.5, help="latency budget, fraction of the dense model's")
    ap.add_argument("--train", type=int, default=12000, help="training images (dense training and recovery)")
    ap.add_argument("--val", type=int, default=2000, help="validation images (held out of training)")
    ap.add_argument("--test", type=int, default=5000, help="test images the shipped artifacts are scored on")
    ap.add_argument("--epochs", type=int, default=10, help="dense training epochs")
    ap.add_argument("--runs", default="recovery,no recovery", help="which runs (comma list)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="the document on stdout, the table on stderr")
    args = ap.parse_args()

    from edgeprune.base.console import Output
    from edgeprune.device.api import evaluate_tflite
    from edgeprune.pruning.api import latency_table
    from edgeprune.search import search

    work = Path(tempfile.mkdtemp(prefix="edgeprune-bench-search-recovery-"))
    files = prepare(work, args)
    test = np.load(files["test"])
    table = work / "table.json"
    latency_table(str(files["model"]), table, threads=1, round_to=4, min_channels=4)

    from edgeprune.device.profiles import load_profile
    from edgeprune.load.model_io import load_model
    from edgeprune.search.pipeline import Latency

    probe = work / "probe.yaml"
    probe.write_text("name: bench-cpu\ndescription: this machine\ncpu: x86-64\narch: x86_64\ncores: 2\n"
                     "threads: 1\npruning:\n  round_to: 4\n  min_channels: 4\n")
    loaded = load_model(files["model"])
    dense_pred_ms = Latency(load_profile(probe), str(probe), table=str(table), model=loaded.model).predict({})
    budget = round(dense_pred_ms * args.budget, 5)
    profile = work / "cpu.yaml"
    profile.write_text(probe.read_text() + f"budgets:\n  max_latency_ms: {budget}\n")

    space = {"per_stage": True, "stage_ratios": [0.0, 0.25, 0.5, 0.625, 0.75], "quantizations": ["float32", "int8"]}
    runs = {"recovery": dict(train_data=str(files["train"])),
            "no recovery": dict(train_data=None, final_epochs=0)}
    wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
    dense_dir = work / "dense"
    from edgeprune.pipelines.compile import CompileOptions, run_compile

    run_compile(str(files["model"]), dense_dir, CompileOptions(target=str(profile), quantize="float32"),
                output=Output(quiet=True))
    dense_test = evaluate_tflite(dense_dir / "model.tflite", test["x"], test["y"], threads=1, trusted=True)["accuracy"]
    results = {}
    for name in wanted:
        t0 = time.perf_counter()
        res = search(str(files["model"]), val_data=str(files["val"]), target=str(profile), space=dict(space),
                     sampler="tpe", trials=args.trials, latency_table=str(table), seed=args.seed,
                     output_dir=work / name.replace(" ", "-"), batch_size=64, output=Output(quiet=True),
                     **runs[name])
        minutes = (time.perf_counter() - t0) / 60
        best = res["best"]
        row = {"minutes": round(minutes, 1), "trials": len(res["trials"]),
               "stopped_early": sum(1 for t in res["trials"] if t.get("stopped_early")), "best": None}
        if best is not None:
            final = best.get("final") or {}
            artifact = Path(final.get("artifact") or best["artifact"])
            acc_test = evaluate_tflite(artifact, test["x"], test["y"], threads=1, trusted=True)["accuracy"]
            ms_best, ms_dense = interleaved_ms([artifact, dense_dir / "model.tflite"])
            row["best"] = {"number": best["number"], "params": best["params"], "search_accuracy": best["accuracy"],
                           "final_accuracy": final.get("accuracy"), "test_accuracy": acc_test,
                           "delta_points": round(100 * (acc_test - dense_test), 2),
                           "predicted_ms": best["latency_ms"], "measured_ms": ms_best,
                           "dense_measured_ms": ms_dense, "measured_ratio": round(ms_best / ms_dense, 3),
                           "macs": best["macs"]}
        results[name] = row
        log(f"{name}: {row['trials']} trials ({row['stopped_early']} stopped early) in {minutes:.1f} min")

    lines = [f"Fashion-MNIST conv-BN CNN, dense test accuracy {100 * dense_test:.2f} % ({args.test} test images); "
             f"latency budget {args.budget:g}x the dense model's ({budget:.4f} ms predicted, 1 thread); "
             f"TPE, {args.trials} trials, per-stage ratios, float32/int8", "",
             f"{'run':12} {'trials':>6} {'stopped':>7} {'search %':>9} {'final %':>8} {'test %':>7} "
             f"{'vs dense':>8} {'lat/dense':>9} {'MMACs':>6} {'min':>5}"]
    for name, row in results.items():
        b = row["best"]
        if b is None:
            lines.append(f"{name:12} {row['trials']:>6} {row['stopped_early']:>7}   no feasible trial")
            continue
        final = f"{100 * b['final_accuracy']:.2f}" if b["final_accuracy"] is not None else "-"
        lines.append(f"{name:12} {row['trials']:>6} {row['stopped_early']:>7} {100 * b['search_accuracy']:>9.2f} "
                     f"{final:>8} {100 * b['test_accuracy']:>7.2f} {b['delta_points']:>+8.2f} "
                     f"{b['measured_ratio']:>9.3f} {b['macs'] / 1e6:>6.2f} {row['minutes']:>5.1f}")
    table_text = "\n".join(lines)
    document = {"dense_test_accuracy": dense_test, "budget_ms": budget, "dense_predicted_ms": dense_pred_ms,
                "args": vars(args), "runs": results}
    if args.json:
        log(table_text)
        print(json.dumps(document, indent=2, default=str))
    else:
        print(table_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
