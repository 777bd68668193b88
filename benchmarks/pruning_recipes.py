"""Benchmark: which pruning recipe beats a narrow network trained from scratch (Fashion-MNIST).

Two architectures, the MobileNet-style depthwise-separable CNN of
``fashion_mnist_recovery.py`` and a residual conv-BN CNN (two stages of two residual blocks),
each trained dense for ``--epochs``; then, at 2x and 4x fewer MACs, every recipe below gets the
same recovery budget of ``--recovery-epochs`` (a sparsity phase counts against it):

- ``narrow``: the same architecture made narrow by a width multiplier giving the pruned MACs,
  trained from scratch for ``--epochs + --recovery-epochs`` (equal total epochs, the same
  careful training as the dense model: Adam, cosine decay, best validation epoch kept);
- ``narrow (budget)``: the narrow network given only the recovery budget (the user who has a
  trained model and little time: the question is then whether pruning saves that time);
- ``l1 uniform low-LR``: today's default: one-shot l1, every group cut alike, fine-tuned at
  ``--finetune-lr``;
- ``l1 uniform high-LR``: the same cut retrained from the dense learning rate with cosine decay
  (Le & Hua, ICLR 2021; learning-rate rewinding, Renda et al. 2020);
- ``l1 global high-LR``: l1 scores ranked across groups (per-group normalised): a
  non-uniform allocation;
- ``group-norm sparsity`` / ``bn-l1 sparsity``: ``--sparsity-epochs`` of structured-sparsity
  training (edgeprune.training.structured_sparsity), cut by the learnt group norms with global
  ranking, then the rest of the budget at the high LR.
- recovery schedules on the uniform l1 cut: ``l1 one-cycle`` (``--lr-schedule one-cycle``),
  ``l1 rewind`` (``--lr-schedule rewind --original-epochs`` the dense epochs: the last N epochs
  of the dense cosine), ``l1 distill`` (distillation from the dense model, T 4, alpha 0.5) and
  ``l1 distill anneal`` (``--distill-schedule anneal``: T 4 -> 1, alpha 0.5 -> 1);
- criteria on the uniform cut, high LR: ``taylor high-LR`` (first-order Taylor on 512 training
  images), ``bn high-LR`` (BatchNorm scales, network slimming's ranking) and ``random high-LR``
  (the honest baseline); ``taylor distill``: the Taylor cut recovered by distillation;
- more Taylor variants (the depthwise CNN at 4x): ``taylor global high-LR`` (Taylor scores ranked
  across groups, per-group normalised: a non-uniform shape), ``taylor iterative high-LR`` (two
  Taylor cuts, each followed by half the recovery budget), ``taylor 2k high-LR`` (Taylor scored on
  2,048 training images instead of 512) and ``taylor sparse-dense`` (pruning during training: the
  dense model's last ``--sparsity-epochs`` epochs carry the group-norm penalty, so the total stays
  ``--epochs``; then the Taylor cut and the full recovery budget);
- ``taylor early``: pruning early in training (``--prune-at-epoch``; Early-Bird tickets, You et
  al., ICLR 2020): the dense architecture trains on the narrow network's own ``--epochs + --recovery-epochs`` cosine
  schedule, is cut by Taylor after ``--early-epochs`` and trains on along the same schedule (equal
  total epochs; no converged dense model is needed, so it answers the from-scratch user only);
  ``taylor early global`` ranks that cut globally (per-group normalised);
- ``latency-aware high-LR``: ``--target-latency`` at the latency a per-layer table (measured
  here, 1 thread, float32) predicts for the uniform cut, keeping the most MACs within it
  (l1 ranking, so only the allocation differs from ``l1 uniform high-LR``);
- ``sensitivity high-LR``: per-stage ratios from ``edgeprune sensitivity`` curves (each stage
  pruned alone at 1/8 steps, artifact accuracy on validation images) and its greedy allocation
  for the MAC target: a non-uniform allocation chosen by measurement.

Accuracy is measured on the converted float32 ``.tflite`` over the test split; validation data
(carved from the training images, disjoint from the training subset) is all that selects.

    python benchmarks/pruning_recipes.py --screen            # 1 seed, 10k train images: ~25 min on 2 cores
    python benchmarks/pruning_recipes.py --seeds 3 --save run.json   # confirmation run
    python benchmarks/pruning_recipes.py --quick             # smoke run (tests)

Prints a Markdown table (mean ± std over seeds, Δ paired by seed against narrow from scratch);
``--json`` prints one JSON document on stdout instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fashion_mnist_recovery as fm  # noqa: E402  (the depthwise CNN, narrow widths, careful training)

import edgeprune.base.env  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)

TARGETS = (("2x", 0.5), ("4x", 0.25))
RECIPES = ("narrow", "narrow (budget)", "l1 uniform low-LR", "l1 uniform high-LR", "l1 global high-LR",
           "group-norm sparsity", "bn-l1 sparsity", "l1 one-cycle", "l1 rewind", "l1 distill", "l1 distill anneal",
           "taylor high-LR", "random high-LR", "sensitivity high-LR", "bn high-LR", "taylor distill",
           "latency-aware high-LR", "taylor global high-LR", "taylor iterative high-LR", "taylor 2k high-LR",
           "taylor sparse-dense", "taylor early", "taylor early global")
RECAL = 2048


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_resnet(width: float = 1.0, *, seed: int = 0):
    """A residual conv-BN CNN: stem 16, stages of 32 and 64 channels, two blocks each."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers

    def ch(n: int) -> int:
        return max(1, int(round(n * width)))

    def conv_bn(x, filters, stride, name, relu=True):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=name)(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    inp = keras.Input((28, 28, 1), name="image")
    x = conv_bn(inp, ch(16), 1, "stem")
    for s, filters in enumerate((32, 64), start=1):
        for b in range(2):
            stride = 2 if b == 0 else 1
            h = conv_bn(x, ch(filters), stride, f"s{s}b{b}_a")
            h = conv_bn(h, ch(filters), 1, f"s{s}b{b}_b", relu=False)
            if b == 0:
                x = layers.Conv2D(ch(filters), 1, strides=stride, use_bias=False, name=f"s{s}_proj")(x)
                x = layers.BatchNormalization(momentum=0.9, name=f"s{s}_proj_bn")(x)
            x = layers.ReLU(name=f"s{s}b{b}_out")(layers.Add(name=f"s{s}b{b}_add")([x, h]))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, layers.Dense(10, activation="softmax", name="classes")(x), name=f"fmnist_resnet_w{width:.3f}")


ARCHITECTURES = {"depthwise": fm.build, "residual": build_resnet}


def narrow_width(builder, target_macs: int) -> tuple[float, int]:
    lo, hi = 0.02, 1.0
    for _ in range(16):
        mid = (lo + hi) / 2
        if fm.macs(builder(mid)) > target_macs:
            hi = mid
        else:
            lo = mid
    best = min((lo, hi), key=lambda w: abs(fm.macs(builder(w)) - target_macs))
    return best, fm.macs(builder(best))


def run_arch(arch: str, seed: int, data, args, out) -> dict:
    from edgeprune.pruning.api import prune_model
    from edgeprune.training.api import recover
    from edgeprune.training.data import Split
    from edgeprune.training.finetune import FitSettings
    from edgeprune.training.structured_sparsity import train_structured_sparsity

    builder = ARCHITECTURES[arch]
    t0 = time.time()
    train, val, test = fm.splits(data, seed, args.train_size, args.val_size, args.test_size)
    recal_x = train[0][:RECAL]
    res = {"arch": arch, "seed": seed, "acc": {}, "macs": {}, "width": {}}
    acc, mac = res["acc"], res["macs"]
    dense = fm.train_from_scratch(builder(seed=seed), train, val, epochs=args.epochs, batch_size=args.batch_size,
                                  lr=args.lr, seed=seed)
    mac["dense"], acc["dense"] = fm.macs(dense), fm.acc_tflite(dense, test)
    log(f"  {arch} seed {seed}: dense {acc['dense']:.2f}% ({time.time() - t0:.0f}s)")

    def finetune(model, epochs, lr, **kwargs):
        if epochs <= 0:
            return model
        return recover(fm.recalibrated(model, recal_x), train=train, val=val, epochs=epochs, batch_size=args.batch_size,
                       learning_rate=lr, patience=epochs, seed=seed, recalibrate_bn=False, output=out, **kwargs)

    wanted = set(args.recipes)
    curves = None
    if "sensitivity high-LR" in wanted:
        curves = _sensitivity_curves(dense, val, seed, out)

    wanted = set(args.recipes)
    for label, target in [t for t in TARGETS if t[0] in args.targets]:
        def record(name, model, macs_after, label=label):
            if name not in wanted:
                return
            acc[f"{label} {name}"] = fm.acc_tflite(model, test)
            mac[f"{label} {name}"] = macs_after
            log(f"  {arch} seed {seed} {label} {name}: {acc[f'{label} {name}']:.2f}% "
                f"({macs_after / 1e6:.3f} MMACs, {time.time() - t0:.0f}s)")

        uniform = prune_model(dense, target_macs=target, criterion="l1")
        for name, lr in (("l1 uniform low-LR", args.finetune_lr), ("l1 uniform high-LR", args.lr)):
            if name in wanted:
                record(name, finetune(uniform.model, args.recovery_epochs, lr), uniform.report["macs_after"])
        schedules = {"l1 one-cycle": dict(lr_schedule="one-cycle"),
                     "l1 rewind": dict(lr_schedule="rewind", original_epochs=max(args.epochs, args.recovery_epochs)),
                     "l1 distill": dict(teacher=dense, distill=True),
                     "l1 distill anneal": dict(teacher=dense, distill=True, distill_schedule="anneal", alpha_end=1.0)}
        for name, kwargs in schedules.items():
            if name in wanted:
                record(name, finetune(uniform.model, args.recovery_epochs, args.lr, **kwargs),
                       uniform.report["macs_after"])
        for crit in ("taylor", "random", "bn"):
            if f"{crit} high-LR" in wanted:
                cut = prune_model(dense, target_macs=target, criterion=crit, data=train[0][:512],
                                  labels=train[1][:512], seed=seed)
                record(f"{crit} high-LR", finetune(cut.model, args.recovery_epochs, args.lr), cut.report["macs_after"])
        taylor_data = dict(criterion="taylor", data=train[0][:512], labels=train[1][:512], seed=seed)
        if "taylor global high-LR" in wanted:
            cut = prune_model(dense, target_macs=target, global_ranking=True, **taylor_data)
            record("taylor global high-LR", finetune(cut.model, args.recovery_epochs, args.lr),
                   cut.report["macs_after"])
        if "taylor 2k high-LR" in wanted:
            cut = prune_model(dense, target_macs=target, **dict(taylor_data, data=train[0][:2048],
                                                                 labels=train[1][:2048]))
            record("taylor 2k high-LR", finetune(cut.model, args.recovery_epochs, args.lr), cut.report["macs_after"])
        if "taylor iterative high-LR" in wanted:
            from edgeprune.training.iterative import iterative_prune

            steps = 2
            per_step = max(1, args.recovery_epochs // steps)
            model, report = iterative_prune(dense, steps=steps, target_macs=target, prune_kwargs=taylor_data,
                                            recover=lambda m, n=per_step: finetune(m, n, args.lr), output=out)
            record("taylor iterative high-LR", model, report["macs_after"])
        if "taylor sparse-dense" in wanted:
            if "sparse_dense" not in res:
                res["sparse_dense"] = _sparse_dense(builder, train, val, args, seed, out)
            cut = prune_model(res["sparse_dense"], target_macs=target, **taylor_data)
            record("taylor sparse-dense", finetune(cut.model, args.recovery_epochs, args.lr), cut.report["macs_after"])
        for name, ranked in (("taylor early", False), ("taylor early global", True)):
            if name in wanted:
                model, macs_after = _early_prune(builder, train, val, target, args, seed, out, global_ranking=ranked)
                record(name, model, macs_after)
        if "taylor distill" in wanted:
            cut = prune_model(dense, target_macs=target, criterion="taylor", data=train[0][:512],
                              labels=train[1][:512], seed=seed)
            record("taylor distill", finetune(cut.model, args.recovery_epochs, args.lr, teacher=dense, distill=True),
                   cut.report["macs_after"])
        if "latency-aware high-LR" in wanted:
            from prune_latency import counts_in

            from edgeprune.load.graph import trace
            from edgeprune.pruning.api import table_for_graph
            from edgeprune.pruning.groups import build_groups

            if "table" not in res:
                graph = trace(dense)
                res["table"] = (graph, table_for_graph(graph, build_groups(graph), None, 1, 1, 1, "float32", None)[0])
            graph, table = res["table"]
            fraction = table.predict(graph, counts_in(graph, uniform.model)) / table.predict(graph, {})
            aware = prune_model(dense, target_latency=fraction, latency_table=table, latency_objective="macs",
                                criterion="l1")
            res.setdefault("latency_aware", {})[label] = {"predicted_fraction": round(fraction, 4)}
            record("latency-aware high-LR", finetune(aware.model, args.recovery_epochs, args.lr),
                   aware.report["macs_after"])
        if curves is not None:
            from edgeprune.pruning.sensitivity_allocation import greedy_allocation

            alloc = greedy_allocation(curves["stages"], curves["baseline"]["macs"], target)
            cut = prune_model(dense, ratio=0.0, per_layer=alloc["per_layer"], criterion="l1")
            res.setdefault("sensitivity", {})[label] = {"per_stage": alloc["per_stage"], "reached": alloc["reached"]}
            record("sensitivity high-LR", finetune(cut.model, args.recovery_epochs, args.lr), cut.report["macs_after"])
        if "l1 global high-LR" in wanted:
            ranked = prune_model(dense, target_macs=target, criterion="l1", global_ranking=True)
            record("l1 global high-LR", finetune(ranked.model, args.recovery_epochs, args.lr),
                   ranked.report["macs_after"])
        for method in [m for m in ("group-norm", "bn-l1") if f"{m} sparsity" in wanted]:
            settings = FitSettings(epochs=args.sparsity_epochs, batch_size=args.batch_size,
                                   learning_rate=args.finetune_lr, seed=seed)
            sparse, report = train_structured_sparsity(dense, Split(*train, "train"), Split(*val, "val"), task="sparse",
                                                       method=method, strength=args.sparsity_strength,
                                                       settings=settings, output=out)
            cut = prune_model(sparse, target_macs=target, criterion="group_norm", global_ranking=True)
            res.setdefault("sparsity", {})[f"{label} {method}"] = {
                k: report[k] for k in ("units_near_zero", "median_norm_kept", "units_penalized")}
            record(f"{method} sparsity", finetune(cut.model, args.recovery_epochs - args.sparsity_epochs, args.lr),
                   cut.report["macs_after"])
        width, narrow_macs = narrow_width(builder, uniform.report["macs_after"])
        res["width"][label] = width
        if "narrow" in wanted:
            narrow = fm.train_from_scratch(builder(width, seed=seed), train, val,
                                           epochs=args.epochs + args.recovery_epochs, batch_size=args.batch_size,
                                           lr=args.lr, seed=seed)
            record("narrow", narrow, narrow_macs)
        if "narrow (budget)" in wanted:
            budget = fm.train_from_scratch(builder(width, seed=seed), train, val, epochs=args.recovery_epochs,
                                           batch_size=args.batch_size, lr=args.lr, seed=seed)
            record("narrow (budget)", budget, narrow_macs)
    res.pop("table", None)  # the latency table is not JSON (and is measured again per run)
    res.pop("sparse_dense", None)
    res["seconds"] = round(time.time() - t0, 1)
    return res


def _sparse_dense(builder, train, val, args, seed: int, out):
    """Pruning during training: the dense recipe for ``epochs - sparsity_epochs`` epochs, then
    ``sparsity_epochs`` of group-norm sparsity at the fine-tuning LR (equal total epochs)."""
    from edgeprune.training.data import Split
    from edgeprune.training.finetune import FitSettings
    from edgeprune.training.structured_sparsity import train_structured_sparsity

    first = fm.train_from_scratch(builder(seed=seed), train, val, epochs=max(1, args.epochs - args.sparsity_epochs),
                                  batch_size=args.batch_size, lr=args.lr, seed=seed)
    settings = FitSettings(epochs=args.sparsity_epochs, batch_size=args.batch_size, learning_rate=args.finetune_lr,
                           seed=seed)
    sparse, _ = train_structured_sparsity(first, Split(*train, "train"), Split(*val, "val"), task="sparse",
                                          method="group-norm", strength=args.sparsity_strength, settings=settings,
                                          output=out)
    return sparse


def _early_prune(builder, train, val, target: float, args, seed: int, out, *, global_ranking: bool = False):
    """edgeprune's ``--prune-at-epoch``: the dense architecture trains ``early_epochs`` of an
    ``epochs + recovery_epochs`` cosine schedule, is cut by Taylor to ``target`` of its MACs, and
    the pruned network trains the rest of the same schedule (best validation epoch kept, as the
    narrow network's)."""
    from edgeprune.pruning.api import prune_model
    from edgeprune.training.api import recover
    from edgeprune.training.data import Split
    from edgeprune.training.early_pruning import train_before_cut
    from edgeprune.training.finetune import FitSettings

    total = args.epochs + args.recovery_epochs
    early = min(args.early_epochs, total - 1)
    settings = FitSettings(epochs=total - early, batch_size=args.batch_size, learning_rate=args.lr, seed=seed)
    model, _ = train_before_cut(builder(seed=seed), Split(*train, "train"), Split(*val, "val"), task="sparse",
                                settings=settings, prune_at_epoch=early, output=out)
    cut = prune_model(model, target_macs=target, criterion="taylor", data=train[0][:512], labels=train[1][:512],
                      seed=seed, global_ranking=global_ranking)
    pruned = recover(cut.model, train=train, val=val, epochs=total - early, batch_size=args.batch_size,
                     learning_rate=args.lr, patience=total - early, seed=seed, after_epoch=early, output=out)
    return pruned, cut.report["macs_after"]


def _sensitivity_curves(dense, val, seed: int, out) -> dict:
    """``edgeprune sensitivity`` of the dense model on the validation split (float32 artifacts)."""
    import tempfile

    from edgeprune.search.sensitivity import sensitivity

    with tempfile.TemporaryDirectory(prefix="recipes-sensitivity-") as tmp:
        path, data, profile = Path(tmp) / "dense.keras", Path(tmp) / "val.npz", Path(tmp) / "cpu.yaml"
        dense.save(path)
        np.savez(data, x=val[0], y=val[1])
        # channels as the recipes cut them (no rounding), so the curves describe the same cuts
        profile.write_text("name: bench-cpu\ndescription: this machine\ncpu: x86-64\narch: x86_64\ncores: 2\n"
                           "threads: 1\npruning:\n  round_to: 1\n  min_channels: 1\n")
        return sensitivity(str(path), val_data=str(data), target=str(profile), quantize="float32", seed=seed,
                           output=out,
                           ratios=[i / 8 for i in range(1, 8)], target_macs=(0.5,))


def merge_runs(runs: list[dict]) -> list[dict]:
    """Runs of one architecture and seed saved apart (recipes measured later) as one run each.

    Runs repeat exactly on one machine (same seed, same dense model), so the dense accuracy of
    both must match: a mismatch means another machine or setting, and merging would pair
    unlike things."""
    merged: dict = {}
    for run in runs:
        key = (run["arch"], run["seed"])
        if key not in merged:
            merged[key] = {**run, "acc": dict(run["acc"]), "macs": dict(run["macs"])}
            continue
        if abs(merged[key]["acc"]["dense"] - run["acc"]["dense"]) > 1e-6:
            raise SystemExit(f"{key}: dense accuracy differs between saved runs "
                             f"({merged[key]['acc']['dense']} vs {run['acc']['dense']}): not the same setup")
        merged[key]["acc"].update(run["acc"])
        merged[key]["macs"].update(run["macs"])
    return list(merged.values())


def summarize(runs, recipes=RECIPES) -> dict:
    table = {}
    for arch in sorted({r["arch"] for r in runs}):
        mine = [r for r in runs if r["arch"] == arch]
        rows = {}
        for key in ["dense"] + [f"{label} {recipe}" for label, _ in TARGETS for recipe in recipes]:
            if any(key not in r["acc"] for r in mine):
                continue  # a target or recipe this run did not measure
            vals = np.array([r["acc"][key] for r in mine])
            row = {"mean": float(vals.mean()), "std": float(vals.std()),
                   "mmacs": float(np.mean([r["macs"][key] for r in mine])) / 1e6}
            if key != "dense":
                label = key.split()[0]
                for ref, name in ((f"{label} narrow", "vs_narrow"), (f"{label} narrow (budget)", "vs_budget"),
                                  ("dense", "vs_dense")):
                    if any(ref not in r["acc"] for r in mine):
                        continue
                    d = vals - np.array([r["acc"][ref] for r in mine])
                    row[name] = {"mean": float(d.mean()), "std": float(d.std())}
            rows[key] = row
        table[arch] = rows
    return table


def _delta(d) -> str:
    return "" if d is None else f"{d['mean']:+.2f} ± {d['std']:.2f}"


def markdown(summary, seeds, setup) -> str:
    lines = []
    for arch, rows in summary.items():
        lines += [f"### {arch} CNN ({seeds} seed(s), {setup['train_size']} train images, {setup['epochs']} dense "
                  f"epochs, recovery budget {setup['recovery_epochs']} epochs; test accuracy % on the .tflite)", "",
                  "| setting | MMACs | accuracy % | Δ vs narrow | Δ vs narrow (budget) | Δ vs dense |",
                  "|---|---|---|---|---|---|"]
        for key, row in rows.items():
            vn, vb, vd = (_delta(row.get(name)) for name in ("vs_narrow", "vs_budget", "vs_dense"))
            lines.append(f"| {key} | {row['mmacs']:.3f} | {row['mean']:.2f} ± {row['std']:.2f} | {vn} | {vb} | {vd} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=None, help="seeds to run [3; --screen: 1]")
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed+seeds-1")
    parser.add_argument("--arch", default="depthwise,residual")
    parser.add_argument("--train-size", type=int, default=30000)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=15, help="dense training epochs")
    parser.add_argument("--recovery-epochs", type=int, default=6,
                        help="epochs every recipe gets after the dense model (sparsity phase included)")
    parser.add_argument("--sparsity-epochs", type=int, default=3)
    parser.add_argument("--early-epochs", type=int, default=3,
                        help="taylor early: epochs of the from-scratch schedule before the cut")
    parser.add_argument("--sparsity-strength", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="dense, narrow and high-LR recovery learning rate")
    parser.add_argument("--finetune-lr", type=float, default=5e-4, help="low-LR recovery learning rate")
    parser.add_argument("--screen", action="store_true",
                        help="screening run: 1 seed, 10k train / 2k val / 5k test images, 8 dense epochs, "
                             "recovery 4 epochs (2 of them sparsity)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few hundred images, 1 epoch each")
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"comma-separated recipes to run (narrow is always run unless --budget-only): {', '.join(RECIPES)}")
    parser.add_argument("--budget-only", action="store_true",
                        help="skip the equal-epochs narrow network (the user-realistic question compares with "
                             "'narrow (budget)' only)")
    parser.add_argument("--targets", default="2x,4x", help="MAC reductions to run: 2x, 4x or both")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", metavar="PATH", help="also write the JSON document here after every run")
    parser.add_argument("--table-from", nargs="+", metavar="PATH",
                        help="print the table of the runs in these saved documents (e.g. seeds run apart) and exit")
    args = parser.parse_args(argv)
    if args.table_from:
        docs = [json.loads(Path(p).read_text()) for p in args.table_from]
        runs = merge_runs([run for doc in docs for run in doc["runs"]])
        setup = docs[0]["setup"]
        recipes = [r for r in RECIPES if any(r in doc["setup"].get("recipes", RECIPES) for doc in docs)]
        print(markdown(summarize(runs, recipes), len({r["seed"] for r in runs}), setup))
        return 0
    if args.screen:
        args.seeds = 1 if args.seeds is None else args.seeds
        args.train_size, args.val_size, args.test_size = 10000, 2000, 5000
        args.epochs, args.recovery_epochs, args.sparsity_epochs = 8, 4, 2
    args.seeds = 3 if args.seeds is None else args.seeds
    if args.quick:
        args.seeds, args.train_size, args.val_size, args.test_size = 1, 384, 128, 256
        args.epochs, args.recovery_epochs, args.sparsity_epochs = 1, 2, 1
    args.recipes = tuple(r.strip() for r in args.recipes.split(",") if r.strip())
    args.targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    if not args.targets or set(args.targets) - {label for label, _ in TARGETS}:
        parser.error(f"--targets: choose from {', '.join(label for label, _ in TARGETS)}")
    unknown = sorted(set(args.recipes) - set(RECIPES))
    if unknown:
        parser.error(f"--recipes: unknown {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    args.recipes = tuple(r for r in RECIPES if r in args.recipes or (r == "narrow" and not args.budget_only))
    if args.sparsity_epochs >= args.recovery_epochs:
        parser.error("--sparsity-epochs must leave at least one recovery epoch")
    from _fashion import load_fashion_mnist

    from edgeprune.base.console import Output

    data = tuple((x.astype(np.float32)[..., None] / 255.0, y) for x, y in load_fashion_mnist())
    out = Output(quiet=True)
    setup = {k: getattr(args, k) for k in ("seeds", "arch", "train_size", "val_size", "test_size", "epochs",
                                           "recovery_epochs", "sparsity_epochs", "early_epochs", "sparsity_strength", "batch_size",
                                           "lr", "finetune_lr", "recipes", "targets", "screen", "quick")}
    start, runs = time.time(), []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for arch in args.arch.split(","):
            runs.append(run_arch(arch.strip(), seed, data, args, out))
            setup["seconds"] = round(time.time() - start, 1)
            document = {"setup": setup, "runs": runs, "summary": summarize(runs, args.recipes)}
            if args.save:
                fm._write_atomic(Path(args.save), json.dumps(document, indent=2))
    fm.emit(markdown(document["summary"], args.seeds, setup) + f"\n(total {setup['seconds']:.0f}s)", document,
            args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
