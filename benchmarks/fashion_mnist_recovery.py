"""Benchmark: pruning + recovery on Fashion-MNIST against a narrow network trained from scratch.

A Keras 3 MobileNet-style CNN (3x3 conv stem, four depthwise-separable blocks with BatchNorm/ReLU,
global average pooling, dense softmax) is trained by this script on a training subset of
Fashion-MNIST; a validation split carved from the 60k training images (disjoint from the
training subset) is the only data that selects anything (best epoch, early stopping,
distillation); accuracy is reported on the official 10k test split, measured on the converted
``.tflite`` for every variant that ships (float32, and int8 for PTQ/QAT).

Per seed, at 2x and 4x MAC reduction (``prune_model(target_macs=0.5 / 0.25)``):
one-shot (raw, and with BatchNorm statistics re-estimated), fine-tuned, fine-tuned with
distillation, iterative (3 steps with distillation, the same total epochs); every importance
criterion against random ranking at 4x (one-shot + BN re-estimation, and after a short
distillation of ``--criteria-epochs``); int8 PTQ against QAT (dense and 2x+KD); and the baseline pruning has to beat:
the same architecture made narrow by a width multiplier chosen to give the pruned model's MACs,
trained from scratch for the dense epochs + the fine-tuning epochs. Prints a Markdown table
(mean ± std over seeds, deltas paired by seed) and checks the issue's targets; ``--json``
prints one JSON document on stdout instead (tables and progress go to stderr).

    nice -n 10 python benchmarks/fashion_mnist_recovery.py            # full run, ~30 min a seed on 2 cores
    python benchmarks/fashion_mnist_recovery.py --quick               # smoke run on a few hundred images

Data: the Debian package ``dataset-fashion-mnist`` (see ``benchmarks/_fashion.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_fashion` beside this script

import edgeprune.base.env  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)

CRITERIA = ("l1", "l2", "bn", "taylor", "mean_activation", "apoz", "entropy", "random")
STEM = 16
BLOCKS = ((32, 2), (64, 1), (128, 2), (128, 1))  # (pointwise filters, depthwise stride): 28 -> 14 -> 7
TARGETS = (("2x", 0.5), ("4x", 0.25))
CALIB = 256           # unlabelled/labelled images the data-driven criteria score channels on
RECAL = 2048          # images BatchNorm statistics are re-estimated on after pruning
ITER_STEPS = 3


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- model and data

def build(width: float = 1.0, *, seed: int = 0):
    """The MobileNet-style CNN; ``width`` multiplies every layer's channels (the narrow baseline).

    Keras 3, what users arrive with (edgeprune prunes, fine-tunes and distils it natively; QAT
    crosses to tf_keras at tfmot's door). BatchNorm momentum 0.9: with a few hundred steps an
    epoch the default 0.99 leaves the moving statistics behind the weights.
    """
    import keras

    from edgeprune.base.env import tf

    tf().random.set_seed(seed)
    keras.utils.set_random_seed(seed)
    layers = keras.layers

    def ch(n: int) -> int:
        return max(1, int(round(n * width)))

    def bn_relu(x, name):
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    inp = keras.Input((28, 28, 1), name="image")
    x = layers.Conv2D(ch(STEM), 3, padding="same", use_bias=False, name="stem")(inp)
    x = bn_relu(x, "stem")
    for i, (filters, stride) in enumerate(BLOCKS, start=1):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"b{i}_dw")(x)
        x = bn_relu(x, f"b{i}_dw")
        x = layers.Conv2D(ch(filters), 1, use_bias=False, name=f"b{i}_pw")(x)
        x = bn_relu(x, f"b{i}_pw")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(10, activation="softmax", name="classes")(x)
    return keras.Model(inp, out, name=f"fmnist_mobilenet_w{width:.3f}")


def macs(model) -> int:
    from edgeprune.pruning.macs import count

    return int(count(model)["macs"])


def narrow_width(target_macs: int) -> tuple[float, int]:
    """Width multiplier whose model has the MACs closest to ``target_macs`` (bisection, then
    the nearer of the two bracketing rounded widths)."""
    lo, hi = 0.02, 1.0
    for _ in range(16):
        mid = (lo + hi) / 2
        if macs(build(mid)) > target_macs:
            hi = mid
        else:
            lo = mid
    best = min((lo, hi), key=lambda w: abs(macs(build(w)) - target_macs))
    return best, macs(build(best))


def splits(data, seed: int, train_size: int, val_size: int, test_size: int | None):
    """Train subset and validation split, disjoint, from the 60k training images; the test split."""
    (x, y), (xt, yt) = data
    order = np.random.default_rng(seed).permutation(len(x))
    val_idx, train_idx = order[:val_size], order[val_size:val_size + train_size]
    test = (xt, yt) if test_size is None else (xt[:test_size], yt[:test_size])
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx]), test


def train_from_scratch(model, train, val, *, epochs: int, batch_size: int, lr: float, seed: int):
    """Adam + cosine decay for a fixed number of epochs; keeps the weights of the best
    validation-accuracy epoch (selection on validation data only)."""
    import keras as k

    k.utils.set_random_seed(seed)
    steps = int(np.ceil(len(train[0]) / batch_size)) * epochs
    model.compile(k.optimizers.Adam(k.optimizers.schedules.CosineDecay(lr, steps, alpha=0.05)),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])

    class KeepBest(k.callbacks.Callback):
        best, weights = -1.0, None

        def on_epoch_end(self, epoch, logs=None):
            acc = float((logs or {}).get("val_accuracy", 0.0))
            if acc > self.best:
                self.best, self.weights = acc, self.model.get_weights()

        def on_train_end(self, logs=None):
            if self.weights is not None:
                self.model.set_weights(self.weights)

    model.fit(*train, validation_data=val, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0,
              callbacks=[KeepBest()])
    return model


# --------------------------------------------------------------------------- measuring

def acc_keras(model, data) -> float:
    x, y = data
    return 100.0 * float(np.mean(model.predict(x, batch_size=1024, verbose=0).argmax(axis=1) == y))


def acc_tflite(model, data, quantization: str = "float32", representative=None) -> float:
    """Test accuracy of the converted artifact (what ships), not of the Keras model."""
    from edgeprune.device.api import evaluate_tflite
    from edgeprune.training._tflite import to_tflite

    blob = to_tflite(model, quantization, representative=representative)
    return 100.0 * evaluate_tflite(blob, data[0], data[1], trusted=True)["accuracy"]  # converted here: trusted


def recalibrated(model, x):
    """A copy of ``model`` with BatchNorm statistics re-estimated on ``x`` (the input is reused)."""
    from edgeprune.training._models import copy_model
    from edgeprune.training.bn_recal import recalibrate_batchnorm

    model = copy_model(model)
    recalibrate_batchnorm(model, x)
    return model


# --------------------------------------------------------------------------- one seed

def run_seed(seed: int, data, args, out) -> dict:
    from edgeprune.base.env import tf
    from edgeprune.pruning.api import prune_model
    from edgeprune.training.api import recover
    from edgeprune.training.data import Split
    from edgeprune.training.finetune import FitSettings
    from edgeprune.training.iterative import iterative_prune
    from edgeprune.training.qat import train_qat

    t0 = time.time()

    def step(what: str) -> None:
        log(f"  seed {seed}: {what} ({time.time() - t0:.0f}s)")

    tf().random.set_seed(seed)
    np.random.seed(seed)
    train, val, test = splits(data, seed, args.train_size, args.val_size, args.test_size)
    calib = train[0][:CALIB], train[1][:CALIB]
    recal_x = train[0][:RECAL]
    rep = train[0][:200]
    res: dict = {"seed": seed, "acc": {}, "macs": {}, "width": {}}
    acc, mac = res["acc"], res["macs"]

    base = train_from_scratch(build(seed=seed), train, val, epochs=args.epochs, batch_size=args.batch_size,
                              lr=args.lr, seed=seed)
    mac["dense"] = macs(base)
    acc["dense"] = acc_tflite(base, test)
    step(f"dense trained, test {acc['dense']:.2f}%")

    kd = {"temperature": args.temperature, "alpha": args.alpha}
    common = dict(train=train, val=val, epochs=args.finetune_epochs, batch_size=args.batch_size,
                  learning_rate=args.finetune_lr, patience=args.finetune_epochs, seed=seed,
                  recalibrate_bn=False, output=out)

    def prune(model, target, criterion="l1", prune_seed=seed):
        return prune_model(model, target_macs=target, criterion=criterion, data=calib[0], labels=calib[1],
                           seed=prune_seed)

    def kd_recover(model, epochs=None):
        return recover(recalibrated(model, recal_x), teacher=base, distill=True, **kd,
                       **dict(common, epochs=epochs or args.finetune_epochs))

    kd_models = {}
    for label, target in TARGETS:
        one = prune(base, target)
        mac[f"{label} pruned"] = one.report["macs_after"]
        acc[f"{label} one-shot"] = acc_keras(one.model, test)
        acc[f"{label} one-shot+BN recal"] = acc_keras(recalibrated(one.model, recal_x), test)
        acc[f"{label} fine-tuned"] = acc_tflite(recover(recalibrated(one.model, recal_x), **common), test)
        kd_models[label] = kd_recover(one.model)
        acc[f"{label} fine-tuned+KD"] = acc_tflite(kd_models[label], test)
        step(f"{label} one-shot / fine-tuned / KD: {acc[f'{label} fine-tuned+KD']:.2f}%")

        # iterative: ITER_STEPS prune+distil steps sharing the same total epochs as one-shot KD
        per = [max(1, args.finetune_epochs // ITER_STEPS)] * (ITER_STEPS - 1)
        per.append(max(1, args.finetune_epochs - sum(per)))
        calls = iter(per)
        it, _ = iterative_prune(base, steps=ITER_STEPS, target_macs=target,
                                prune_kwargs=dict(criterion="l1", data=calib[0], labels=calib[1], seed=seed),
                                recover=lambda m: kd_recover(m, epochs=next(calls, per[-1])), output=out)  # noqa: B023
        acc[f"{label} iterative({ITER_STEPS})+KD"] = acc_tflite(it, test)
        step(f"{label} iterative: {acc[f'{label} iterative({ITER_STEPS})+KD']:.2f}%")

        width, narrow_macs = narrow_width(one.report["macs_after"])
        res["width"][label] = width
        mac[f"{label} narrow"] = narrow_macs
        narrow = train_from_scratch(build(width, seed=seed), train, val, epochs=args.epochs + args.finetune_epochs,
                                    batch_size=args.batch_size, lr=args.lr, seed=seed)
        acc[f"{label} narrow from scratch"] = acc_tflite(narrow, test)
        step(f"{label} narrow (width {width:.3f}) from scratch: {acc[f'{label} narrow from scratch']:.2f}%")

    # every criterion at 4x: one-shot + BN re-estimation (random: mean of several rankings) and
    # a short distillation (--criteria-epochs, the same for every criterion; one ranking each)
    label, target = TARGETS[-1]
    short = args.criteria_epochs
    for crit in args.criteria:
        if crit == "random":
            draws = [prune(base, target, "random", 1000 * seed + j).model for j in range(args.random_draws)]
            acc[f"{label} random one-shot+BN recal"] = float(np.mean(
                [acc_keras(recalibrated(m, recal_x), test) for m in draws]))
            pruned = draws[0]
        else:
            pruned = prune(base, target, crit).model
            acc[f"{label} {crit} one-shot+BN recal"] = acc_keras(recalibrated(pruned, recal_x), test)
        acc[f"{label} {crit} short KD"] = acc_keras(kd_recover(pruned, epochs=short), test)
        step(f"criterion {crit}: one-shot+BN {acc[f'{label} {crit} one-shot+BN recal']:.2f}%, "
             f"{short}-epoch KD {acc[f'{label} {crit} short KD']:.2f}%")

    qat_settings = FitSettings(epochs=args.qat_epochs, batch_size=args.batch_size, learning_rate=args.qat_lr,
                               patience=args.qat_epochs, seed=seed, label="QAT")
    for name, model in (("dense", base), ("2x+KD", kd_models["2x"])):
        acc[f"int8 PTQ ({name})"] = acc_tflite(model, test, "int8", rep)
        qat_model, _ = train_qat(model, Split(*train, "train"), Split(*val, "val"), task="sparse",
                                 settings=qat_settings, output=out)
        acc[f"int8 QAT ({name})"] = acc_tflite(qat_model, test, "int8", rep)
        step(f"int8 {name}: PTQ {acc[f'int8 PTQ ({name})']:.2f}%, QAT {acc[f'int8 QAT ({name})']:.2f}%")
    res["seconds"] = round(time.time() - t0, 1)
    return res


# --------------------------------------------------------------------------- report

HEADLINE = ("dense",
            "2x one-shot", "2x one-shot+BN recal", "2x fine-tuned", "2x fine-tuned+KD", "2x iterative(3)+KD",
            "2x narrow from scratch",
            "4x one-shot", "4x one-shot+BN recal", "4x fine-tuned", "4x fine-tuned+KD", "4x iterative(3)+KD",
            "4x narrow from scratch",
            "int8 PTQ (dense)", "int8 QAT (dense)", "int8 PTQ (2x+KD)", "int8 QAT (2x+KD)")


def _measured_on(key: str) -> str:
    return "Keras" if "one-shot" in key else ".tflite int8" if "int8" in key else ".tflite float32"


def _stats(runs, key, ref=None) -> dict:
    vals = np.array([r["acc"][key] for r in runs])
    out = {"mean": float(vals.mean()), "std": float(vals.std()), "values": [float(v) for v in vals]}
    if ref is not None:
        delta = vals - np.array([r["acc"][ref] for r in runs])
        out["delta_mean"], out["delta_std"] = float(delta.mean()), float(delta.std())
    return out


def _mmacs_for(key: str, runs) -> str:
    macs_key = {"dense": "dense", "int8 PTQ (dense)": "dense", "int8 QAT (dense)": "dense",
                "int8 PTQ (2x+KD)": "2x pruned", "int8 QAT (2x+KD)": "2x pruned"}.get(key)
    if macs_key is None:
        label = key.split()[0]
        macs_key = f"{label} narrow" if "narrow" in key else f"{label} pruned"
    return f"{np.mean([r['macs'][macs_key] for r in runs]) / 1e6:.3f}"


def summarize(runs, crits) -> dict:
    summary = {key: _stats(runs, key, None if key == "dense" else "dense") for key in HEADLINE}
    label = TARGETS[-1][0]
    criteria = {}
    for crit in crits:
        criteria[crit] = {
            "one_shot_bn": _stats(runs, f"{label} {crit} one-shot+BN recal", f"{label} random one-shot+BN recal"),
            "short_kd": _stats(runs, f"{label} {crit} short KD", f"{label} random short KD"),
        }
    targets = []
    for lab, limit in (("2x", 0.5), ("4x", 1.5)):
        d = _stats(runs, f"{lab} fine-tuned+KD", "dense")
        targets.append({"target": f"{lab} fine-tuned+KD within {limit} points of dense",
                        "measured": f"{d['delta_mean']:+.2f} ± {d['delta_std']:.2f} points",
                        "met": bool(d["delta_mean"] >= -limit)})
        n = _stats(runs, f"{lab} fine-tuned+KD", f"{lab} narrow from scratch")
        targets.append({"target": f"{lab} pruned+KD at least as accurate as narrow from scratch",
                        "measured": f"{n['delta_mean']:+.2f} ± {n['delta_std']:.2f} points",
                        "met": bool(n["delta_mean"] >= 0.0)})
    return {"headline": summary, "criteria_4x": criteria, "targets": targets}


def markdown(runs, summary, setup) -> str:
    lines = [f"### Fashion-MNIST recovery ({len(runs)} seeds, test accuracy % on {setup['test_images']} "
             "test images, mean ± std; Δ paired by seed)", "",
             "| setting | MMACs | accuracy % | Δ vs dense (points) | measured on |", "|---|---|---|---|---|"]
    for key in HEADLINE:
        s = summary["headline"][key]
        delta = "" if key == "dense" else f"{s['delta_mean']:+.2f} ± {s['delta_std']:.2f}"
        lines.append(f"| {key} | {_mmacs_for(key, runs)} | {s['mean']:.2f} ± {s['std']:.2f} | {delta} "
                     f"| {_measured_on(key)} |")
    lines += ["", "4x MAC reduction, every criterion (Keras, float); Δ vs random paired by seed", "",
              f"| criterion | one-shot + BN recal % | Δ vs random | {setup['criteria_epochs']}-epoch KD % | Δ vs random |",
              "|---|---|---|---|---|"]
    for crit, c in summary["criteria_4x"].items():
        a, b = c["one_shot_bn"], c["short_kd"]
        da = "" if crit == "random" else f"{a['delta_mean']:+.2f} ± {a['delta_std']:.2f}"
        db = "" if crit == "random" else f"{b['delta_mean']:+.2f} ± {b['delta_std']:.2f}"
        lines.append(f"| {crit} | {a['mean']:.2f} ± {a['std']:.2f} | {da} | {b['mean']:.2f} ± {b['std']:.2f} | {db} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for t in summary["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=30000, help="training images (subset of the 60k)")
    parser.add_argument("--val-size", type=int, default=5000, help="validation images carved from the 60k")
    parser.add_argument("--test-size", type=int, default=None, help="test images (default: all 10,000)")
    parser.add_argument("--epochs", type=int, default=15, help="dense training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=8,
                        help="epochs of fine-tuning, of distillation and of all iterative steps together")
    parser.add_argument("--criteria-epochs", type=int, default=2,
                        help="epochs of the short distillation every criterion gets in the 4x criteria table")
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate of dense and narrow training")
    parser.add_argument("--finetune-lr", type=float, default=2e-3)
    parser.add_argument("--qat-lr", type=float, default=2e-4)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.3, help="weight of the hard-label loss in distillation")
    parser.add_argument("--random-draws", type=int, default=3,
                        help="random rankings averaged for the one-shot random baseline")
    parser.add_argument("--criteria", default=",".join(CRITERIA),
                        help="comma-separated criteria compared at 4x (must include l1 and random)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 seed, 1 epoch each, 512 train / 256 val / 512 test images, "
                             "criteria l1,taylor,random")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout (table on stderr)")
    parser.add_argument("--save", metavar="PATH",
                        help="also write the JSON document here, rewritten after every seed (partial results "
                             "survive an interrupted run)")
    parser.add_argument("--table-from", metavar="PATH",
                        help="print the table of a document written by --save (a finished or an interrupted "
                             "run) and exit, training nothing")
    args = parser.parse_args(argv)
    if args.table_from:
        document = json.loads(Path(args.table_from).read_text())
        print(markdown(document["runs"], document, document["setup"])
              + f"\n\n({document['setup']['seeds_done']} of {document['setup']['seeds']} seeds, "
              f"{document['setup']['seconds']:.0f}s)")
        return 0
    if args.quick:
        args.seeds, args.epochs, args.finetune_epochs, args.qat_epochs, args.random_draws = 1, 1, 1, 1, 1
        args.criteria_epochs = 1
        args.train_size, args.val_size, args.test_size = min(args.train_size, 512), min(args.val_size, 256), \
            min(args.test_size or 512, 512)
        args.criteria = "l1,taylor,random"
    args.criteria = tuple(c.strip() for c in args.criteria.split(",") if c.strip())
    unknown = [c for c in args.criteria if c not in CRITERIA]
    if unknown or not {"l1", "random"} <= set(args.criteria):
        parser.error(f"--criteria: choose from {','.join(CRITERIA)}, including l1 and random")

    from _fashion import load_fashion_mnist

    from edgeprune.base.console import Output

    # uint8 (N, 28, 28) -> float32 in [0, 1] with a channel axis
    data = tuple((x.astype(np.float32)[..., None] / 255.0, y) for x, y in load_fashion_mnist())
    out = Output(quiet=True)
    start = time.time()
    setup = {k: getattr(args, k) for k in ("seeds", "train_size", "val_size", "epochs", "finetune_epochs",
                                           "criteria_epochs", "qat_epochs", "batch_size", "lr", "finetune_lr", "qat_lr",
                                           "temperature", "alpha", "random_draws", "criteria", "quick")}
    setup["test_images"] = len(data[1][0]) if args.test_size is None else min(args.test_size, len(data[1][0]))
    setup["architecture"] = {"stem": STEM, "blocks": [list(b) for b in BLOCKS], "input": [28, 28, 1]}
    log(f"Fashion-MNIST recovery: {args.seeds} seed(s), {args.train_size} train / {args.val_size} val / "
        f"{setup['test_images']} test images, dense MMACs {macs(build()) / 1e6:.3f}")
    runs = []
    for seed in range(args.seeds):
        runs.append(run_seed(seed, data, args, out))
        log(f"seed {seed} finished after {time.time() - start:.0f}s")
        setup["seconds"], setup["seeds_done"] = round(time.time() - start, 1), len(runs)
        document = {"setup": setup, "runs": runs, **summarize(runs, args.criteria)}
        if args.save:
            _write_atomic(Path(args.save), json.dumps(document, indent=2))
    emit(markdown(runs, document, setup) + f"\n\n(total {setup['seconds']:.0f}s)", document, args.json)
    return 0


def emit(table: str, document: dict, as_json: bool) -> None:
    """The table on stdout, or (``--json``) the document on stdout and the table on stderr."""
    if as_json:
        log(table)
        print(json.dumps(document, indent=2))
    else:
        print(table)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)

if __name__ == "__main__":
    sys.exit(main())
