"""Benchmark: a small ViT on Fashion-MNIST at 2x fewer MACs, by what pruning removes (issue #23).

A Keras 3 ViT built from stock layers (patch 4 on 28x28 -> a 7x7 grid of 49 tokens, width 64, a
depthwise 3x3 convolution on the grid as the position encoding (CPVT's PEG: stock, prunable, no
custom layer), ``--depth`` pre-norm blocks of MultiHeadAttention(4 heads, key_dim 16) and an MLP
64 -> 128 -> 64 (GELU), global average pooling, LayerNorm, a dense softmax) is trained dense with
the careful training of ``fashion_mnist_recovery.py`` (Adam at 1e-3, cosine, the best validation epoch),
then pruned to half its MACs (``prune_model(target_macs=0.5)``, Taylor ranking on 512 training
images) and recovered with ``edgeprune.training.api.recover`` at the dense learning rate, cosine.
Recipes:

- ``heads``: ``attention_unit="heads"``: whole heads go, with MLP and residual-stream channels;
- ``head-dims``: ``attention_unit="dims"`` (the default): every head keeps its place and loses
  the same query/key and value dimensions, with MLP and residual-stream channels;
- ``mlp-only``: ``--protect`` every layer except the MLP hidden layers (one negative-lookahead
  regex), so only the MLP width falls; when that cannot reach 2x the row says the MACs it reached;
- ``narrow``: the same ViT with its width, MLP width and head size scaled (head count kept) to the
  MACs of the pruned models, trained from scratch for the dense + recovery epochs.

Accuracy is measured on the float32 ``.tflite`` over the test split; mean ± std over seeds,
deltas paired by seed against ``narrow`` and ``dense``. Prints a Markdown table; ``--json``
prints the document on stdout (table on stderr); ``--save`` writes it after every seed.

    nice -n 10 python benchmarks/vit_fashion.py --screen                  # 1 seed, smaller
    nice -n 10 python benchmarks/vit_fashion.py --seeds 3 --save benchmarks/vit_fashion_seeds3.json

Data: the Debian package ``dataset-fashion-mnist`` (see ``benchmarks/_fashion.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `_fashion`, `fashion_mnist_recovery` beside this

import fashion_mnist_recovery as fm  # noqa: E402

import edgeprune.base.env  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)

DIM, HEADS, MLP, PATCH = 64, 4, 128, 4
RECIPES = ("heads", "head-dims", "mlp-only", "narrow")
TARGET = 0.5          # MAC fraction kept: 2x fewer
SCORING = 512         # training images the Taylor criterion ranks channels on
# every layer but the MLP hidden layers (b1_fc1, b2_fc1 ...): their outputs and internal widths stay
MLP_ONLY_PROTECT = r"(?!b\d+_fc1$).*"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build(width: float = 1.0, *, depth: int = 3, seed: int = 0):
    """The small ViT; ``width`` multiplies the residual width, the MLP width and the head size
    (the narrow baseline keeps the head count, as a ViT family does)."""
    import keras

    from edgeprune.base.env import tf

    tf().random.set_seed(seed)
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    dim, mlp = max(HEADS, int(round(DIM * width))), max(1, int(round(MLP * width)))
    key_dim = max(1, int(round(DIM // HEADS * width)))
    inp = keras.Input((28, 28, 1), name="image")
    grid = layers.Conv2D(dim, PATCH, strides=PATCH, name="patches")(inp)              # (7, 7, dim)
    grid = layers.Add(name="pos_add")([grid, layers.DepthwiseConv2D(3, padding="same", name="pos")(grid)])
    x = layers.Reshape((-1, dim), name="tokens")(grid)                                 # (49, dim)
    for b in range(1, depth + 1):
        h = layers.LayerNormalization(epsilon=1e-6, name=f"b{b}_ln1")(x)
        h = layers.MultiHeadAttention(HEADS, key_dim, name=f"b{b}_mha")(h, h)
        x = layers.Add(name=f"b{b}_add1")([x, h])
        h = layers.LayerNormalization(epsilon=1e-6, name=f"b{b}_ln2")(x)
        h = layers.Dense(mlp, activation="gelu", name=f"b{b}_fc1")(h)
        h = layers.Dense(dim, name=f"b{b}_fc2")(h)
        x = layers.Add(name=f"b{b}_add2")([x, h])
    x = layers.GlobalAveragePooling1D(name="gap")(x)
    x = layers.LayerNormalization(epsilon=1e-6, name="head_ln")(x)
    out = layers.Dense(10, activation="softmax", name="classes")(x)
    return keras.Model(inp, out, name=f"fmnist_vit_w{width:.3f}")


def narrow_width(target_macs: int, depth: int) -> tuple[float, int]:
    """Width multiplier whose ViT has the MACs closest to ``target_macs`` (bisection)."""
    lo, hi = 0.05, 1.0
    for _ in range(14):
        mid = (lo + hi) / 2
        if fm.macs(build(mid, depth=depth)) > target_macs:
            hi = mid
        else:
            lo = mid
    best = min((lo, hi), key=lambda w: abs(fm.macs(build(w, depth=depth)) - target_macs))
    return best, fm.macs(build(best, depth=depth))


def attention_shape(model) -> list:
    """(num_heads, key_dim) of every MultiHeadAttention: what each recipe left."""
    return [[int(layer.num_heads), int(layer.key_dim)] for layer in model.layers
            if type(layer).__name__ == "MultiHeadAttention"]


def prune_recipe(dense, recipe: str, train, seed: int):
    """The recipe's pruned model and report; mlp-only falls back to the most it can remove."""
    from edgeprune.base.errors import InputError
    from edgeprune.pruning.api import prune_model

    kwargs = dict(criterion="taylor", data=train[0][:SCORING], labels=train[1][:SCORING], seed=seed)
    if recipe == "mlp-only":
        kwargs["protect"] = (MLP_ONLY_PROTECT,)
    else:
        kwargs["attention_unit"] = "heads" if recipe == "heads" else "dims"
    try:
        return prune_model(dense, target_macs=TARGET, **kwargs)
    except InputError as exc:  # the unlocked layers cannot carry 2x: take what they can
        log(f"  {recipe}: {exc}; pruning the largest ratio instead")
        return prune_model(dense, ratio=0.9, **kwargs)


def run_seed(seed: int, data, args, out) -> dict:
    from edgeprune.training.api import recover

    t0 = time.time()
    train, val, test = fm.splits(data, seed, args.train_size, args.val_size, args.test_size)
    res = {"seed": seed, "acc": {}, "macs": {}, "attention": {}, "seconds": {}}
    acc, mac = res["acc"], res["macs"]
    dense = fm.train_from_scratch(build(depth=args.depth, seed=seed), train, val, epochs=args.epochs,
                                  batch_size=args.batch_size, lr=args.lr, seed=seed)
    mac["dense"], acc["dense"] = fm.macs(dense), fm.acc_tflite(dense, test)
    res["attention"]["dense"] = attention_shape(dense)
    res["seconds"]["dense"] = round(time.time() - t0, 1)
    log(f"seed {seed} dense: {acc['dense']:.2f}% ({mac['dense'] / 1e6:.3f} MMACs, {time.time() - t0:.0f}s)")
    pruned_macs = []
    for recipe in [r for r in args.recipes if r != "narrow"]:
        t1 = time.time()
        cut = prune_recipe(dense, recipe, train, seed)
        model = recover(cut.model, train=train, val=val, epochs=args.recovery_epochs, batch_size=args.batch_size,
                        learning_rate=args.lr, lr_schedule="cosine", patience=args.recovery_epochs, seed=seed,
                        output=out)
        acc[recipe], mac[recipe] = fm.acc_tflite(model, test), cut.report["macs_after"]
        res["attention"][recipe] = attention_shape(model)
        res["seconds"][recipe] = round(time.time() - t1, 1)
        if recipe != "mlp-only" or mac[recipe] <= TARGET * mac["dense"]:
            pruned_macs.append(mac[recipe])
        log(f"seed {seed} {recipe}: {acc[recipe]:.2f}% ({mac[recipe] / 1e6:.3f} MMACs, attention "
            f"{res['attention'][recipe]}, {time.time() - t0:.0f}s)")
    if "narrow" in args.recipes:
        t1 = time.time()
        goal = int(np.mean(pruned_macs)) if pruned_macs else int(TARGET * mac["dense"])
        width, mac["narrow"] = narrow_width(goal, args.depth)
        narrow = fm.train_from_scratch(build(width, depth=args.depth, seed=seed), train, val,
                                       epochs=args.epochs + args.recovery_epochs, batch_size=args.batch_size,
                                       lr=args.lr, seed=seed)
        acc["narrow"], res["narrow_width"] = fm.acc_tflite(narrow, test), round(width, 4)
        res["attention"]["narrow"] = attention_shape(narrow)
        res["seconds"]["narrow"] = round(time.time() - t1, 1)
        log(f"seed {seed} narrow (width {width:.3f}): {acc['narrow']:.2f}% ({mac['narrow'] / 1e6:.3f} MMACs, "
            f"{time.time() - t0:.0f}s)")
    return res


def summarize(runs, recipes) -> dict:
    """Per setting: mean/std accuracy, mean MMACs, and deltas paired by seed."""
    rows = {}
    for key in ["dense", *recipes]:
        if any(key not in r["acc"] for r in runs):
            continue
        vals = np.array([r["acc"][key] for r in runs])
        row = {"mean": float(vals.mean()), "std": float(vals.std()),
               "mmacs": float(np.mean([r["macs"][key] for r in runs])) / 1e6,
               "attention": runs[0]["attention"].get(key)}
        for ref, name in (("narrow", "vs_narrow"), ("dense", "vs_dense")):
            if key != ref and all(ref in r["acc"] for r in runs):
                d = vals - np.array([r["acc"][ref] for r in runs])
                row[name] = {"mean": float(d.mean()), "std": float(d.std())}
        rows[key] = row
    return {"table": rows}


def _delta(d) -> str:
    return "" if d is None else f"{d['mean']:+.2f} ± {d['std']:.2f}"


def markdown(summary, setup) -> str:
    lines = [f"Small ViT (depth {setup['depth']}, width {DIM}, {HEADS} heads, MLP {MLP}), {setup['seeds_done']} "
             f"seed(s), {setup['train_size']} train images, {setup['epochs']} dense epochs + "
             f"{setup['recovery_epochs']} recovery epochs; test accuracy % on the float32 .tflite "
             f"({setup['test_images']} images)", "",
             "| setting | MMACs | attention (heads x key_dim, block 1) | accuracy % | Δ vs narrow | Δ vs dense |",
             "|---|---|---|---|---|---|"]
    for key, row in summary["table"].items():
        att = row.get("attention") or []
        shape = f"{att[0][0]} x {att[0][1]}" if att else ""
        lines.append(f"| {key} | {row['mmacs']:.3f} | {shape} | {row['mean']:.2f} ± {row['std']:.2f} | "
                     f"{_delta(row.get('vs_narrow'))} | {_delta(row.get('vs_dense'))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--depth", type=int, default=3, help="transformer blocks")
    parser.add_argument("--train-size", type=int, default=8000, help="training images (subset of the 60k)")
    parser.add_argument("--val-size", type=int, default=5000, help="validation images carved from the 60k")
    parser.add_argument("--test-size", type=int, default=None, help="test images (default: all 10,000)")
    parser.add_argument("--epochs", type=int, default=8, help="dense training epochs")
    parser.add_argument("--recovery-epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="learning rate of dense, narrow and recovery (3e-3, the CNNs', was no better here)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {','.join(RECIPES)}")
    parser.add_argument("--screen", action="store_true",
                        help="1 seed, 5k train / 2k val / 2k test images, 5 dense + 2 recovery epochs")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout (table on stderr)")
    parser.add_argument("--save", metavar="PATH", help="also write the JSON document here after every seed")
    args = parser.parse_args(argv)
    args.recipes = tuple(r.strip() for r in args.recipes.split(",") if r.strip())
    if any(r not in RECIPES for r in args.recipes):
        parser.error(f"--recipes: choose from {','.join(RECIPES)}")
    if args.screen:
        args.seeds, args.epochs, args.recovery_epochs = 1, 5, 2
        args.train_size, args.val_size, args.test_size = 5000, 2000, 2000

    from _fashion import load_fashion_mnist

    from edgeprune.base.console import Output

    data = tuple((x.astype(np.float32)[..., None] / 255.0, y) for x, y in load_fashion_mnist())
    out = Output(quiet=True)
    start = time.time()
    setup = {k: getattr(args, k) for k in ("seeds", "depth", "train_size", "val_size", "epochs", "recovery_epochs",
                                           "batch_size", "lr", "recipes", "screen")}
    setup.update(test_images=len(data[1][0]) if args.test_size is None else min(args.test_size, len(data[1][0])),
                 target_macs=TARGET, scoring_images=SCORING, mlp_only_protect=MLP_ONLY_PROTECT,
                 architecture={"dim": DIM, "heads": HEADS, "key_dim": DIM // HEADS, "mlp": MLP, "patch": PATCH,
                               "tokens": (28 // PATCH) ** 2, "position": "depthwise 3x3 (PEG)", "pool": "GAP"})
    log(f"ViT Fashion-MNIST: {args.seeds} seed(s), dense MMACs {fm.macs(build(depth=args.depth)) / 1e6:.3f}")
    runs, document = [], {}
    for seed in range(args.seeds):
        runs.append(run_seed(seed, data, args, out))
        setup["seconds"], setup["seeds_done"] = round(time.time() - start, 1), len(runs)
        document = {"setup": setup, "runs": runs, **summarize(runs, args.recipes)}
        if args.save:
            fm._write_atomic(Path(args.save), json.dumps(document, indent=2))
    fm.emit(markdown(document, setup) + f"\n\n(total {setup['seconds']:.0f}s)", document, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
