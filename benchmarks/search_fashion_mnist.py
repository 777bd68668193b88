"""Samplers of ``edgeprune search`` on real data: TPE vs random, NSGA-II vs random.

Fashion-MNIST (Debian ``dataset-fashion-mnist``), a small CNN trained here (3 conv stages at
28x28, 14x14 and 7x7), the local CPU as the device with a latency budget. The search space
is the one ``edgeprune search`` uses: per-stage ratios (stages from the dependency graph),
criterion, quantization and fine-tuning epochs. Every trial is one run of compile's pipeline
(``edgeprune.search.pipeline.run_trial``): prune, fine-tune on a training subset, convert,
compile's budget checks, accuracy of the artifact on held-out images. Latency is predicted
from a per-layer latency table measured once on this machine (``--latency-table``), which
keeps trials cheap; the budget is a constraint (``constraints_func``), as in the command.

Trials are cached by their params across runs (the same point gives the same artifact), so
the samplers are compared on one set of measurements, and the 2-core machine evaluates
each point once. Runs: random, TPE and NSGA-II, --trials each, over --seeds seeds.

Reports, per seed and mean +- std: the best feasible accuracy after 10/20/40 trials (random
vs TPE) and the trials TPE needed to reach random's best at --trials; the hypervolume of the
feasible (accuracy, latency, size) front of NSGA-II vs random.

    nice -n 10 python benchmarks/search_fashion_mnist.py [--trials 40] [--seeds 0,1,2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fashion import load_fashion_mnist  # noqa: E402

import edgeprune.base.env  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)


def build_cnn(seed: int):
    from edgeprune.base.env import tf, tf_keras

    tf().random.set_seed(seed)
    k = tf_keras()
    inp = k.Input((28, 28, 1))
    x = k.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inp)
    x = k.layers.MaxPooling2D(name="pool1")(x)
    x = k.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = k.layers.MaxPooling2D(name="pool2")(x)
    x = k.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    x = k.layers.Dense(64, activation="relu", name="fc")(x)
    out = k.layers.Dense(10, activation="softmax", name="out")(x)
    return k.Model(inp, out)


def prepare(work: Path, train_n: int, finetune_n: int, val_n: int, epochs: int) -> dict:
    (xtr, ytr), (xte, yte) = load_fashion_mnist()
    f = lambda a: (a.astype(np.float32) / 255.0)[..., None]  # noqa: E731
    rng = np.random.default_rng(0)
    order = rng.permutation(len(xtr))
    tr, ft = order[:train_n], order[train_n:train_n + finetune_n]
    model = build_cnn(0)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(f(xtr[tr]), ytr[tr], epochs=epochs, batch_size=64, verbose=0)
    print(f"trained the CNN on {train_n} images, {epochs} epochs in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    model.save(work / "fmnist.h5")
    np.savez(work / "finetune.npz", x=f(xtr[ft]), y=ytr[ft])
    np.savez(work / "val.npz", x=f(xte[:val_n]), y=yte[:val_n])
    return {"model": work / "fmnist.h5", "train": work / "finetune.npz", "val": work / "val.npz"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train", type=int, default=12000, help="images to train the CNN on")
    ap.add_argument("--finetune", type=int, default=500, help="training subset for fine-tuning trials")
    ap.add_argument("--val", type=int, default=1000, help="test images each artifact is scored on")
    ap.add_argument("--calib", type=int, default=32, help="calibration images for int8 (the converter dominates a trial)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--budget", type=float, default=0.5, help="latency budget, fraction of the unpruned model's")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    import optuna

    from edgeprune.device.profiles import load_profile
    from edgeprune.load.datasets import load_arrays
    from edgeprune.load.model_io import load_model
    from edgeprune.pruning.api import latency_table
    from edgeprune.search.pipeline import Base, Latency, run_trial
    from edgeprune.search.space import Space, SpaceConfig, decode, find_stages
    from edgeprune.search.study import make_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="edgeprune-bench-search-"))
    files = prepare(work, args.train, args.finetune, args.val, args.epochs)
    t0 = time.perf_counter()
    table = work / "table.json"
    summary = latency_table(str(files["model"]), table, threads=1, round_to=4, min_channels=4)
    print(f"latency table: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    loaded = load_model(files["model"])
    stages = find_stages(loaded.model)

    # the device: this CPU, one thread, channels in multiples of 4; latency budget below
    probe = work / "probe.yaml"
    probe.write_text("name: bench-cpu\ndescription: this machine\ncpu: x86-64\narch: x86_64\ncores: 2\n"
                     "threads: 1\npruning:\n  round_to: 4\n  min_channels: 4\n")
    lat0 = Latency(load_profile(probe), str(probe), table=str(table), model=loaded.model)
    full_ms = lat0.predict({})
    budget = round(full_ms * args.budget, 4)
    profile_path = work / "cpu.yaml"
    profile_path.write_text(probe.read_text() + f"budgets:\n  max_latency_ms: {budget}\n")
    profile = load_profile(profile_path)
    latency = Latency(profile, str(profile_path), table=str(table), model=loaded.model)
    config = SpaceConfig(per_stage=True, stage_ratios=[0.0, 0.25, 0.5, 0.625, 0.75, 0.875],
                         criteria=["l1", "l2"], quantizations=["float32", "int8"], finetune_epochs=[0, 1])
    space = Space(config, profile, stages)
    base = Base(model=str(files["model"]), target=str(profile_path), val_data=str(files["val"]),
                train_data=str(files["train"]), num_samples=args.calib, seed=0, batch_size=64)
    x_val, y_val = load_arrays(str(files["val"]))
    cache: dict = {}
    seconds = []

    def measure(params: dict) -> dict:
        key = json.dumps(params, sort_keys=True)
        if key not in cache:
            t = time.perf_counter()
            res = run_trial(base, decode(params), stages, work / "trials" / f"t{len(cache):04d}",
                            eval_data=(x_val, y_val), latency=latency, profile=profile)
            seconds.append(time.perf_counter() - t)
            cache[key] = {"accuracy": res.accuracy, "latency_ms": res.latency_ms, "bytes": res.model_bytes,
                          "constraints": res.constraints}
        return cache[key]

    def run(sampler_name: str, seed: int) -> list[dict]:
        multi = sampler_name == "nsga2"
        directions = ["maximize", "minimize", "minimize"] if multi else ["maximize"]
        study = optuna.create_study(directions=directions,
                                    sampler=make_sampler(sampler_name, space.distributions(), seed=seed,
                                                         trials=args.trials))
        log = []

        def objective(trial):
            space.suggest(trial)
            m = measure(trial.params)
            trial.set_user_attr("constraints", m["constraints"])
            log.append(m)
            return (m["accuracy"], m["latency_ms"], m["bytes"]) if multi else m["accuracy"]

        study.optimize(objective, n_trials=args.trials)
        return log

    def feasible(m):
        return all(v <= 0 for v in m["constraints"].values())

    def best_at(log, n):
        ok = [m["accuracy"] for m in log[:n] if feasible(m)]
        return max(ok) if ok else 0.0

    full_bytes = None

    def hypervolume(log):
        from optuna._hypervolume import compute_hypervolume

        pts = np.array([[-m["accuracy"], m["latency_ms"] / budget, m["bytes"] / full_bytes]
                        for m in log if feasible(m)])
        ref = np.array([-0.1, 1.0, 1.0])  # chance accuracy, the latency budget, the unpruned size
        pts = pts[(pts <= ref).all(axis=1)] if len(pts) else pts  # points beyond it add no volume
        if len(pts) == 0:
            return 0.0
        return float(compute_hypervolume(pts, ref))

    logs: dict = {"random": {}, "tpe": {}, "nsga2": {}}
    started = time.perf_counter()
    unpruned = measure({**{f"stage:{s.name}": 0.0 for s in stages}, "criterion": "l1", "round_to": 4,
                        "quantization": "float32", "finetune_epochs": 0, "distill": False})
    full_bytes = unpruned["bytes"]
    for seed in seeds:
        for name in ("random", "tpe", "nsga2"):
            t = time.perf_counter()
            logs[name][seed] = run(name, seed)
            print(f"{name} seed {seed}: {time.perf_counter() - t:.0f}s, {len(cache)} distinct points so far",
                  file=sys.stderr)
    elapsed = time.perf_counter() - started

    checkpoints = [n for n in (10, 20, 40) if n <= args.trials] or [args.trials]
    rows = {}
    for name in ("random", "tpe"):
        rows[name] = {n: [best_at(logs[name][s], n) for s in seeds] for n in checkpoints}
    reach = []
    for s in seeds:
        target = best_at(logs["random"][s], args.trials)
        hit = next((n for n in range(1, args.trials + 1) if best_at(logs["tpe"][s], n) >= target), None)
        reach.append(hit)
    hv = {name: [hypervolume(logs[name][s]) for s in seeds] for name in ("random", "nsga2")}

    def ms(vals):
        return f"{statistics.mean(vals):.4f} +- {statistics.pstdev(vals):.4f}"

    print(f"\nFashion-MNIST small CNN: unpruned accuracy {unpruned['accuracy']:.4f} (float32 artifact, {args.val} "
          f"test images), predicted latency {full_ms:.3f} ms, budget {budget:.3f} ms ({args.budget:g}x); "
          f"space of {space.size} points; {len(cache)} distinct points measured "
          f"(median {statistics.median(seconds):.1f}s each), {elapsed / 60:.1f} min in all")
    print("\nbest feasible accuracy after N trials (mean +- std over seeds " + args.seeds + ")")
    print("sampler  " + "  ".join(f"{'N=' + str(n):>18}" for n in checkpoints))
    for name in ("random", "tpe"):
        print(f"{name:8} " + "  ".join(f"{ms(rows[name][n]):>18}" for n in checkpoints))
    print(f"\ntrials TPE needed to reach random's {args.trials}-trial best, per seed: "
          + ", ".join("not reached" if r is None else str(r) for r in reach))
    print("\nhypervolume of the feasible (accuracy, latency, size) front, reference (0.1, budget, unpruned size)")
    for name in ("random", "nsga2"):
        print(f"{name:8} {ms(hv[name])}   per seed: " + ", ".join(f"{v:.4f}" for v in hv[name]))
    if args.json:
        args.json.write_text(json.dumps({
            "unpruned": unpruned, "budget_ms": budget, "full_ms": full_ms, "space_size": space.size,
            "best_at": {k: {str(n): v for n, v in r.items()} for k, r in rows.items()},
            "tpe_trials_to_reach_random_best": reach, "hypervolume": hv,
            "distinct_points": len(cache), "minutes": elapsed / 60, "table": summary,
        }, indent=2, default=str))


if __name__ == "__main__":
    main()
