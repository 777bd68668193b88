"""Benchmark: how much accuracy pruning costs on sklearn digits, and how much training recovers.

Small CNN (conv32-BN-conv64-BN-pool-conv64-BN-GAP-dense10, wide enough that channel
selection matters) on the 8x8 digits; splits are 60% train / 20% validation (early stopping,
distillation) / 20% test (reported). For each seed: the dense baseline; at 2x and 4x MAC
reduction one-shot (raw and with BatchNorm statistics re-estimated), fine-tuned, fine-tuned
with distillation (same epochs as fine-tuning) and iterative pruning (3 steps, distillation);
at 4x every importance criterion one-shot with BN statistics re-estimated on 256 unlabelled
training inputs (that is where criteria differ; fine-tuning mostly erases the difference),
against random ranking (the mean over 5 random rankings per seed); int8 PTQ vs QAT. Prints a Markdown table with mean +- std over the
seeds. Not a test: run once, e.g.

    /work/venv/bin/python benchmarks/digits_recovery.py --seeds 3
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import edgeprune.base.env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

CRITERIA = ("l1", "l2", "bn", "taylor", "mean_activation", "apoz", "entropy", "random")
WIDTHS = (32, 64, 64)
RANDOM_DRAWS = 5


def load(seed: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return (x[:a], y[:a]), (x[a:b], y[a:b]), (x[b:], y[b:])


def build(seed: int):
    from edgeprune.base.env import tf, tf_keras

    tf().random.set_seed(seed)
    k = tf_keras()
    inp = k.Input((8, 8, 1))
    x = inp
    for i, (filters, pool) in enumerate(zip(WIDTHS, (False, True, False))):
        x = k.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = k.layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = k.layers.ReLU(name=f"relu{i + 1}")(x)
        if pool:
            x = k.layers.MaxPooling2D(name=f"pool{i + 1}")(x)
    x = k.layers.GlobalAveragePooling2D(name="gap")(x)
    out = k.layers.Dense(10, activation="softmax", name="dense")(x)
    return k.Model(inp, out)


def accuracy(model, data) -> float:
    x, y = data
    return float(np.mean(model.predict(x, batch_size=256, verbose=0).argmax(axis=1) == y)) * 100.0


def run_seed(seed: int, epochs: int, ft_epochs: int, out, temperature: float, alpha: float) -> dict:
    from edgeprune.base.env import tf, tf_keras
    from edgeprune.device.api import evaluate_tflite
    from edgeprune.pruning.api import prune_model
    from edgeprune.training._tflite import to_tflite
    from edgeprune.training.api import recover
    from edgeprune.training.bn_recal import recalibrate_batchnorm
    from edgeprune.training.data import Split
    from edgeprune.training.finetune import FitSettings
    from edgeprune.training.iterative import iterative_prune
    from edgeprune.training.qat import train_qat

    tf().random.set_seed(seed)
    np.random.seed(seed)
    train, val, test = load(seed)
    k = tf_keras()
    base = build(seed)
    # fixed epochs: with BatchNorm the early validation accuracy is noisy, early stopping quits too soon
    base.compile(k.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    base.fit(*train, epochs=epochs, batch_size=32, verbose=0)
    res = {"dense": accuracy(base, test)}
    calib = train[0][:256], train[1][:256]
    common = dict(train=train, val=val, epochs=ft_epochs, batch_size=32, learning_rate=1e-3, patience=5,
                  seed=seed, output=out)

    kd_opts = {"temperature": temperature, "alpha": alpha}

    def prune(model, target, criterion="l1"):
        return prune_model(model, target_macs=target, criterion=criterion, data=calib[0], labels=calib[1], seed=seed)

    for label, target in (("2x", 0.5), ("4x", 0.25)):
        one = prune(base, target)
        res[f"{label} MACs kept"] = 100.0 * one.report["macs_after"] / one.report["macs_before"]
        res[f"{label} one-shot"] = accuracy(one.model, test)
        res[f"{label} one-shot+BN recal"] = _recal_acc(one.model, calib[0], test, recalibrate_batchnorm)
        res[f"{label} fine-tuned"] = accuracy(recover(one.model, **common), test)
        kd = recover(one.model, teacher=base, distill=True, **kd_opts, **common)
        res[f"{label} fine-tuned+KD"] = accuracy(kd, test)
        step_common = dict(common, epochs=max(2, ft_epochs // 2))
        it, _ = iterative_prune(base, steps=3, target_macs=target,
                                prune_kwargs=dict(criterion="l1", data=calib[0], labels=calib[1], seed=seed),
                                recover=lambda m: recover(m, teacher=base, distill=True, **kd_opts, **step_common), output=out)  # noqa: B023 (called in this iteration)
        it = recover(it, teacher=base, distill=True, **kd_opts, **common)
        res[f"{label} iterative(3)+KD"] = accuracy(it, test)
        if label == "2x":
            kd_2x = kd
        print(f"  seed {seed} {label} done", file=sys.stderr, flush=True)
    for crit in CRITERIA:
        if crit == "random":  # the baseline is an expectation: average RANDOM_DRAWS rankings
            accs = [_recal_acc(prune_model(base, target_macs=0.25, criterion="random", seed=1000 * seed + j).model,
                               calib[0], test, recalibrate_batchnorm) for j in range(RANDOM_DRAWS)]
            res["4x random one-shot+BN recal"] = float(np.mean(accs))
            continue
        one = prune(base, 0.25, crit)
        res[f"4x {crit} one-shot+BN recal"] = _recal_acc(one.model, calib[0], test, recalibrate_batchnorm)
    print(f"  seed {seed} criteria done", file=sys.stderr, flush=True)
    for label, model in (("dense", base), ("2x+KD", kd_2x)):
        ptq = to_tflite(model, "int8", representative=train[0][:200])
        res[f"int8 PTQ ({label})"] = 100.0 * evaluate_tflite(ptq, test[0], test[1], trusted=True)["accuracy"]
        qat_model, _ = train_qat(model, Split(*train, "train"), Split(*val, "val"), task="sparse",
                                 settings=FitSettings(epochs=max(2, ft_epochs // 3), batch_size=32, learning_rate=2e-4,
                                                      patience=3, seed=seed, label="QAT"), output=out)
        qat = to_tflite(qat_model, "int8", representative=train[0][:200])
        res[f"int8 QAT ({label})"] = 100.0 * evaluate_tflite(qat, test[0], test[1], trusted=True)["accuracy"]
    return res


def _recal_acc(model, x, test, recalibrate) -> float:
    """Accuracy after re-estimating BN statistics (on a copy: the pruned model is reused)."""
    from edgeprune.training._models import copy_model

    model = copy_model(model)
    recalibrate(model, x)
    return accuracy(model, test)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="baseline training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=15,
                        help="epochs of fine-tuning and of distillation (the same for both)")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the hard-label loss in distillation")
    parser.add_argument("--json", dest="json_path", help="also write the raw per-seed numbers here")
    args = parser.parse_args(argv)
    from edgeprune.base.console import Output

    out = Output(quiet=True)
    start = time.time()
    runs = []
    for seed in range(args.seeds):
        runs.append(run_seed(seed, args.epochs, args.finetune_epochs, out, args.temperature, args.alpha))
        print(f"seed {seed} finished after {time.time() - start:.0f}s", file=sys.stderr, flush=True)
    keys = list(runs[0])
    dense = np.array([r["dense"] for r in runs])
    print(f"\n### digits recovery benchmark ({args.seeds} seeds, test-set accuracy %, mean ± std)\n")
    print("| setting | accuracy % | Δ vs dense (points) |")
    print("|---|---|---|")
    for key in keys:
        vals = np.array([r[key] for r in runs])
        delta = "" if key == "dense" or "MACs kept" in key else f"{np.mean(vals - dense):+.2f}"
        print(f"| {key} | {vals.mean():.2f} ± {vals.std():.2f} | {delta} |")
    rand = np.array([r["4x random one-shot+BN recal"] for r in runs])
    print("\n4x MAC reduction, one-shot + BN re-estimation, per criterion (Δ vs random: paired by seed)\n")
    print("| criterion | accuracy % | Δ vs random (points) |")
    print("|---|---|---|")
    for crit in CRITERIA:
        vals = np.array([r[f"4x {crit} one-shot+BN recal"] for r in runs])
        delta = "" if crit == "random" else f"{np.mean(vals - rand):+.2f} ± {np.std(vals - rand):.2f}"
        print(f"| {crit} | {vals.mean():.2f} ± {vals.std():.2f} | {delta} |")
    print(f"\n(total {time.time() - start:.0f}s)")
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(runs, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
