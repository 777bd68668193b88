"""Regenerate the README's application-coverage table: every keras.applications family, built
offline (weights=None) in Keras 3 and in tf_keras, goes through edgeprune as a user's file would.

Per model: save it (.keras), load it with edgeprune's loader (safe mode), compile to TFLite
float32 and int8 (calibration: 8 random images), run both in LiteRT, prune 30 % of the channels
file to file (``edgeprune.prune``), reload the pruned file in plain Keras with no custom objects,
and record MACs before/after. The table between the README's ``coverage`` markers is replaced.

    python scripts/application_coverage.py [--flavours keras3,tf_keras] [--all-members]
        [--models MobileNetV2,ResNet50] [--json out.json] [--no-readme]

One member per family by default (members share their family's layer types); ``--all-members``
runs all of them (about an hour on 2 cores).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from readme_table import publish  # noqa: E402  (scripts/, beside this file)

import edgeprune.base.env  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)

FAMILIES = {  # family -> members (the first one runs by default)
    "VGG": ["VGG16", "VGG19"],
    "ResNet": ["ResNet50", "ResNet101", "ResNet152"],
    "ResNetV2": ["ResNet50V2", "ResNet101V2", "ResNet152V2"],
    "Inception": ["InceptionV3"],
    "InceptionResNet": ["InceptionResNetV2"],
    "Xception": ["Xception"],
    "MobileNet": ["MobileNet"],
    "MobileNetV2": ["MobileNetV2"],
    "MobileNetV3": ["MobileNetV3Small", "MobileNetV3Large"],
    "DenseNet": ["DenseNet121", "DenseNet169", "DenseNet201"],
    "NASNet": ["NASNetMobile", "NASNetLarge"],
    "EfficientNet": [f"EfficientNetB{i}" for i in range(8)],
    "EfficientNetV2": ["EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2", "EfficientNetV2B3",
                       "EfficientNetV2S", "EfficientNetV2M", "EfficientNetV2L"],
    "ConvNeXt": ["ConvNeXtTiny", "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtXLarge"],
    "RegNet": ["RegNetX002", "RegNetY002"],
}
MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"
# Failures that are not edgeprune's, with the reason the table prints.
UPSTREAM = {
    ("tf_keras", "ConvNeXt"): "tf_keras cannot read back its own ConvNeXt files (.keras: \"'str' object is "
                             "not callable\"; .h5: unknown layer LayerScale); in memory it prunes "
                             "(tests/test_pruning_applications.py)",
}


def _keras(flavour):
    from edgeprune.base.env import keras3, tf_keras

    return keras3() if flavour == "keras3" else tf_keras()


def _run_tflite(blob: bytes, x: np.ndarray) -> np.ndarray:
    from edgeprune.device.api import evaluate_tflite

    return np.asarray(evaluate_tflite(blob, x)["outputs"])


def one(flavour: str, name: str, work: Path) -> dict:
    """Every step for one model; the first failing step is recorded with its one-line error."""
    import edgeprune
    from edgeprune.load.model_io import load_model
    from edgeprune.quantize.convert import convert

    row = {"flavour": flavour, "model": name, "compile_float32": False, "compile_int8": False,
           "prune": False, "reload": False}
    K = _keras(flavour)
    if not hasattr(K.applications, name):
        row["error"] = "not in this Keras"
        return row
    size = MIN_SIZE.get(name, 32)
    step = "build"
    try:
        K.backend.clear_session()
        model = getattr(K.applications, name)(input_shape=(size, size, 3), weights=None, classes=10)
        path = work / f"{flavour}_{name}.keras"
        model.save(path)
        x = np.random.default_rng(0).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
        step = "load"
        loaded = load_model(path)
        step = "compile float32"
        out = _run_tflite(convert(loaded.model, "float32"), x[:1])
        row["compile_float32"] = bool(out.shape == (1, 10) and np.isfinite(out).all())
        step = "compile int8"
        out = _run_tflite(convert(loaded.model, "int8", representative=x), x[:1])
        row["compile_int8"] = out.shape == (1, 10)
        step = "prune"
        t0 = time.perf_counter()
        result = edgeprune.prune(path, work / f"{flavour}_{name}_pruned.keras", ratio=0.3)
        row["prune_s"] = round(time.perf_counter() - t0, 1)
        row.update(macs_before=result.report["macs_before"], macs_after=result.report["macs_after"],
                   params_before=result.report["params_before"], params_after=result.report["params_after"])
        row["prune"] = result.report["macs_after"] < result.report["macs_before"]
        step = "reload"
        back = K.models.load_model(work / f"{flavour}_{name}_pruned.keras", compile=False)
        same_io = [tuple(t.shape) for t in back.inputs] == [tuple(t.shape) for t in model.inputs]
        row["reload"] = bool(same_io and np.asarray(back(x[:1])).shape == (1, 10))
    except Exception as exc:  # noqa: BLE001 - recorded per model, the table shows it
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        row["error"] = f"{step}: {text}"
        for (flav, prefix), reason in UPSTREAM.items():
            if flavour == flav and name.startswith(prefix):
                row["error"] = f"upstream: {reason}"
        if "-v" in sys.argv:
            traceback.print_exc()
    return row


def table(rows: list) -> str:
    ok = lambda v: "yes" if v else "**no**"  # noqa: E731
    lines = ["| Keras | model | float32 | int8 | prune 30 % | reloads | MACs before → after | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error") == "not in this Keras":
            continue
        macs = (f"{r['macs_before'] / 1e6:.1f}M → {r['macs_after'] / 1e6:.1f}M" if "macs_before" in r else "")
        lines.append(f"| {r['flavour']} | {r['model']} | {ok(r['compile_float32'])} | {ok(r['compile_int8'])} | "
                     f"{ok(r['prune'])} | {ok(r['reload'])} | {macs} | {r.get('error', '')} |")
    done = [r for r in rows if r.get("error") != "not in this Keras"]
    compiled = sum(r["compile_float32"] and r["compile_int8"] for r in done)
    pruned = sum(r["prune"] and r["reload"] for r in done)
    lines.append("")
    lines.append(f"{len(done)} models: {compiled} compile to float32 and int8 ({100 * compiled / max(len(done), 1):.0f} %), "
                 f"{pruned} prune and reload ({100 * pruned / max(len(done), 1):.0f} %). Input 32x32 "
                 "(75 for Inception, 71 for Xception), 10 classes, random weights.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flavours", default="keras3,tf_keras")
    ap.add_argument("--all-members", action="store_true")
    ap.add_argument("--models", help="comma-separated model names instead of the family list")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--no-readme", action="store_true", help="print the table, leave README.md alone")
    args = ap.parse_args(argv)
    if args.models:
        names = args.models.split(",")
    else:
        names = [m for members in FAMILIES.values() for m in (members if args.all_members else members[:1])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for flavour in args.flavours.split(","):
            for name in names:
                t0 = time.perf_counter()
                row = one(flavour, name, Path(tmp))
                rows.append(row)
                if row.get("error") != "not in this Keras":
                    print(f"[{flavour}] {name}: f32={row['compile_float32']} int8={row['compile_int8']} "
                          f"prune={row['prune']} reload={row['reload']} {row.get('error', '')} "
                          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
                for f in Path(tmp).iterdir():
                    f.unlink()
    publish(table(rows), rows, start=START, end=END, json_path=args.json, readme=not args.no_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
