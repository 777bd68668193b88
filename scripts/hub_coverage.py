"""Regenerate the README's keras-hub coverage table: every keras-hub vision backbone that builds
offline from its class at a small size, a keras-hub Task, a ViT and a keyword-spotting transformer
built from Keras layers, and a user's functional subclass go through edgeprune as a user's file
would.

Per model (:func:`one`): save it (.keras); load it with edgeprune's loader (safe mode, no custom
objects); prune 50 % file to file (``edgeprune.prune``), recording the channel groups pruned and
locked (with why) and the pruner's MACs before and after; count the MACs of the dense float32
artifact (the pruner's count must agree with it); convert the pruned model to float32 and compare
the artifact with the pruned Keras model on 8 random inputs (max abs diff, top-1 agreement); load
the pruned file again with edgeprune's loader. The table between the README's ``hub-coverage``
markers is replaced.

    python scripts/hub_coverage.py [--models ViTBackbone,VGGBackbone] [--json out.json] [--no-readme]

The models and their builders live in tests/hub_models.py (shared with the tests);
tests/test_hub_coverage.py runs :func:`one` on each and fails when a row the table marks yes
regresses. About 2 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from hub_models import MODELS  # noqa: E402
from readme_table import publish  # noqa: E402  (scripts/, beside this file)

import edgeprune.base.env  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)

START, END = "<!-- hub-coverage:start -->", "<!-- hub-coverage:end -->"
RATIO = 0.5
SAMPLES = 8
TOKENS = 10  # token ids of the random samples of integer inputs
MACS_TOLERANCE = 0.02  # pruner vs artifact MACs (tests/test_macs_agreement.py)
ATOL = 1e-3  # artifact vs Keras, relative to the output's largest magnitude (at least 1)
# Rows tests/test_hub_coverage.py runs in the default (fast) tier; the others are @slow.
FAST = {"ViTBackbone", "functional subclass (user's)"}
# Failures that are not edgeprune's, with the reason the table prints (checked with Keras alone).
UPSTREAM = {
    "EfficientNetBackbone": "upstream: Keras cannot load keras-hub 0.32's own EfficientNetBackbone file either "
                            "(keras.saving.load_model: 2 objects could not be loaded, top_conv)",
}
# The yes/no columns, in table order: what tests/test_hub_coverage.py holds each row to.
STEPS = ("loads", "prunes", "converts", "agrees", "reloads")


def _outputs(value) -> list[np.ndarray]:
    """A model's outputs as a list of arrays (a dict of outputs in key order)."""
    if isinstance(value, dict):
        return [np.asarray(value[k]) for k in sorted(value)]
    if isinstance(value, (list, tuple)):
        return [np.asarray(v) for v in value]
    return [np.asarray(value)]


def _compare(keras_outs: list, tflite_outs: list) -> tuple[float, float]:
    """(max abs diff over all outputs, relative to each output's scale; top-1 agreement of the
    first output): each Keras output is paired with the unused artifact output of its shape."""
    pool = [np.asarray(o) for o in tflite_outs]
    worst = 0.0
    first_pair = None
    for k in keras_outs:
        match = next((i for i, t in enumerate(pool) if t.size == k.size), None)
        if match is None:
            raise ValueError(f"the artifact has no output of the shape {k.shape}")
        t = pool.pop(match).reshape(k.shape)
        worst = max(worst, float(np.max(np.abs(t - k))) / max(1.0, float(np.max(np.abs(k)))))
        first_pair = first_pair or (k, t)
    k, t = first_pair
    top1 = float(np.mean(k.reshape(len(k), -1).argmax(1) == t.reshape(len(t), -1).argmax(1)))
    return worst, top1


def _short_locks(locked: list[str]) -> str:
    """The report's locked groups ("layer: why") as their reasons with counts, shortest first."""
    reasons = Counter()
    for entry in locked:
        why = entry.split(": ", 1)[-1]
        why = re.sub(r"\s*\(.*?\)", "", why).strip()  # drop the parenthesised detail
        reasons[why[:60]] += 1
    return "; ".join(f"{why} ×{n}" if n > 1 else why for why, n in sorted(reasons.items(), key=lambda kv: len(kv[0])))


def _sample(model, n: int) -> list[np.ndarray]:
    """``n`` random inputs, one array per model input: uniform floats in [0, 1), or token ids
    below TOKENS for an integer input (every text row's vocabulary is larger)."""
    rng = np.random.default_rng(0)
    arrays = []
    for tensor in model.inputs:
        shape, dtype = (n, *tuple(tensor.shape[1:])), str(tensor.dtype)
        arrays.append(rng.integers(0, TOKENS, shape).astype(dtype) if "int" in dtype
                      else rng.uniform(0, 1, shape).astype(np.float32))
    return arrays


def _keras_feed(arrays: list, n: int | None = None):
    """The first ``n`` samples as Keras takes them: one array, or a list for several inputs."""
    arrays = [a[:n] for a in arrays]
    return arrays[0] if len(arrays) == 1 else arrays


def _tflite_feed(model, arrays: list):
    """As evaluate_tflite takes them: one array, or a dict keyed by input name."""
    return arrays[0] if len(arrays) == 1 else {t.name: a for t, a in zip(model.inputs, arrays)}


def one(name: str, work: Path) -> dict:
    """Every step for the model ``name`` of tests/hub_models.py; the first failing step is
    recorded with its one-line error and the later steps stay False."""
    import edgeprune
    from edgeprune.base.env import keras3
    from edgeprune.device.api import evaluate_tflite
    from edgeprune.load.model_io import load_model
    from edgeprune.quantize.convert import convert
    from edgeprune.quantize.inspection import inspect_tflite

    build, _ = MODELS[name]
    row = {"model": name, "tier": "fast" if name in FAST else "slow", **{s: False for s in STEPS}}
    step = "build"
    try:
        keras3().backend.clear_session()
        model = build()
        src, dst = work / "model.keras", work / "pruned.keras"
        model.save(src)
        step = "load"
        loaded = load_model(src)
        row["loads"] = True
        step = "MACs of the dense artifact"
        row["artifact_macs"] = int(inspect_tflite(convert(loaded.model, "float32"))["macs"])
        step = "prune"
        result = edgeprune.prune(src, dst, ratio=RATIO)
        report = result.report
        row.update(macs_before=report["macs_before"], macs_after=report["macs_after"],
                   groups=report["groups"], pruned_groups=report["pruned_groups"],
                   locked=_short_locks(report["locked"]))
        row["macs_agree_pct"] = round(100 * (report["macs_before"] - row["artifact_macs"]) / row["artifact_macs"], 2)
        row["prunes"] = report["macs_after"] < report["macs_before"]
        step = "convert"
        x = _sample(model, SAMPLES)
        blob = convert(result.model, "float32")
        row["converts"] = True
        step = "compare"
        tflite = evaluate_tflite(blob, _tflite_feed(result.model, x), trusted=True)["outputs"]
        tflite = list(tflite.values()) if isinstance(tflite, dict) else [tflite]
        keras_outs = _outputs(result.model.predict(_keras_feed(x), verbose=0))
        row["max_abs_diff"], row["top1"] = _compare(keras_outs, tflite)
        row["agrees"] = row["max_abs_diff"] <= ATOL and row["top1"] == 1.0
        step = "reload"
        back = load_model(dst).model
        same = all(np.allclose(a, b, atol=1e-5) for a, b in zip(
            _outputs(back.predict(_keras_feed(x, 2), verbose=0)),
            _outputs(result.model.predict(_keras_feed(x, 2), verbose=0))))
        row["reloads"] = bool(same)
        if not same:
            row["error"] = "reload: the reloaded file computes something else"
        if abs(row["macs_agree_pct"]) > 100 * MACS_TOLERANCE:
            row["error"] = f"pruner MACs differ from the artifact's by {row['macs_agree_pct']:+.1f} %"
    except Exception as exc:  # noqa: BLE001 - recorded per model, the table shows it
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        text = re.sub(r"^\S+\.keras: ", "", text)  # the temp file's name tells nobody anything
        from edgeprune.base.errors import EdgepruneError

        if not isinstance(exc, EdgepruneError):  # an internal error: say which
            text = f"internal {type(exc).__name__}: {text}"
        note = f"{step}: {text}"
        row["error"] = UPSTREAM.get(name) or (note if len(note) <= 200 else note[:200].rsplit(" ", 1)[0] + " …")
        if "-v" in sys.argv:
            traceback.print_exc()
    return row


def table(rows: list) -> str:
    ok = lambda v: "yes" if v else "**no**"  # noqa: E731
    lines = ["| model | tier | loads | prunes 50 % | groups pruned | groups locked (why) | MACs before → after | "
             "dense artifact MACs (agree) | converts f32 | agrees (max diff, top-1) | reloads | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        macs = f"{r['macs_before']:,} → {r['macs_after']:,}" if "macs_before" in r else ""
        art = f"{r['artifact_macs']:,} ({r['macs_agree_pct']:+.2f} %)" if "macs_agree_pct" in r else ""
        groups = f"{r['pruned_groups']}/{r['groups']}" if "groups" in r else ""
        agree = ok(r["agrees"]) + (f" ({r['max_abs_diff']:.1e}, {r['top1'] * SAMPLES:.0f}/{SAMPLES})"
                                   if "max_abs_diff" in r else "")
        lines.append(f"| {r['model']} | {r['tier']} | {ok(r['loads'])} | {ok(r['prunes'])} | {groups} | "
                     f"{r.get('locked', '')} | {macs} | {art} | {ok(r['converts'])} | {agree} | "
                     f"{ok(r['reloads'])} | {r.get('error', '')} |")
    whole = sum(all(r[s] for s in STEPS) for r in rows)
    lines.append("")
    lines.append(f"{len(rows)} models: {whole} load, prune, convert, agree and reload "
                 f"({100 * whole / max(len(rows), 1):.0f} %). Input 32x32x3 (KWS: 49x40 MFCC; encoder-decoder: 12 + 16 token ids), random "
                 f"weights, ratio {RATIO}, {SAMPLES} random inputs; keras-hub 0.32 models built from their "
                 "classes (tests/hub_models.py). Tier: the row's test in tests/test_hub_coverage.py runs "
                 "by default (fast) or with the slow tests.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated model names (tests/hub_models.py MODELS) instead of all")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--no-readme", action="store_true", help="print the table, leave README.md alone")
    ap.add_argument("-v", action="store_true", help="print each failure's traceback")
    args = ap.parse_args(argv)
    names = args.models.split(",") if args.models else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    rows = []
    for name in names:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            row = one(name, Path(tmp))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"{name}: " + " ".join(f"{s}={row[s]}" for s in STEPS) + f" {row.get('error', '')} "
              f"({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    publish(table(rows), rows, start=START, end=END, json_path=args.json, readme=not args.no_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
