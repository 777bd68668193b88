"""Does structured pruning buy real latency? MobileNetV2 / ResNet50 / a ViT (224x224, random weights).

Models are the Keras 3 ``keras.applications`` builds users have (``--keras tf_keras`` for the
Keras 2 builds); the tfmot comparison is built in tf_keras, the only Keras tfmot runs on.

For each model: the dense network, edgeprune structured pruning at ~25/50/75% of channels
(channels rounded as the --target profile says: x86-64 rounds to 16), tfmot unstructured magnitude pruning at the same weight sparsity (stripped and
converted, no training needed for latency), latency-aware structured pruning (a per-layer
latency table measured with the interpreter; at the latency the table predicts for each
uniform ratio, the allocation that keeps the most MACs), and for MobileNetV2 the natively
narrow alpha=0.5 and alpha=0.35 networks plus a pruned MobileNetV2 at alpha=0.5's MACs; for the
ViT (``--models vit``, see :func:`vit`) each ratio twice, by per-head dimensions and by whole heads
(``attention_unit``), and no tfmot variant. Every variant is converted to
TFLite (float32 and int8 with random representative data) and timed in the LiteRT
interpreter with 1 and 2 threads. Models are measured interleaved (round-robin, several
rounds, median) so machine drift cancels. Not a test: run it by hand, it takes many minutes.

    python benchmarks/prune_latency.py [--models mobilenetv2,resnet50,vit] [--ratios 0.25,0.5,0.75]
        [--quant float32,int8] [--threads 1,2] [--runs 20] [--rounds 5] [--json out.json]
        [--table-threads 1,2] [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import edgeprune.base.env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from edgeprune.base.env import keras3, tf, tf_keras
from edgeprune.pruning import macs as macs_mod
from edgeprune.pruning import prune_model

SIZE = 224


FLAVOUR = {"keras": "keras3"}  # replaced from --keras in main()


def build(name: str, alpha: float = 1.0, flavour: str | None = None):
    K = keras3() if (flavour or FLAVOUR["keras"]) == "keras3" else tf_keras()
    if name == "mobilenetv2":
        return K.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=alpha, weights=None)
    if name == "resnet50":
        return K.applications.ResNet50(input_shape=(SIZE, SIZE, 3), weights=None)
    if name == "vit":
        return vit(K)
    raise SystemExit(f"unknown model {name}")


VIT = {"patch": 16, "dim": 192, "heads": 3, "mlp": 768, "blocks": 4}  # ViT-Ti/16's widths, 4 of its 12 blocks


def vit(K):
    """A ViT-Ti/16-like classifier of stock Keras layers (``VIT``): 16x16 patches (196 tokens at
    224), a depthwise 3x3 convolution on the patch grid as the position encoding (CPVT's PEG:
    no custom layer), pre-norm blocks of MultiHeadAttention and a GELU MLP, average-pooled
    tokens, 1000 classes. Four blocks instead of twelve keep conversion and timing short; every
    block is alike, so the speed-up per MAC removed is the block's."""
    layers, v = K.layers, VIT
    inp = K.Input((SIZE, SIZE, 3), name="image")
    grid = layers.Conv2D(v["dim"], v["patch"], strides=v["patch"], name="patches")(inp)
    grid = layers.Add(name="pos_add")([grid, layers.DepthwiseConv2D(3, padding="same", name="pos")(grid)])
    x = layers.Reshape((-1, v["dim"]), name="tokens")(grid)
    for b in range(1, v["blocks"] + 1):
        h = layers.LayerNormalization(epsilon=1e-6, name=f"b{b}_ln1")(x)
        h = layers.MultiHeadAttention(v["heads"], v["dim"] // v["heads"], name=f"b{b}_mha")(h, h)
        x = layers.Add(name=f"b{b}_add1")([x, h])
        h = layers.LayerNormalization(epsilon=1e-6, name=f"b{b}_ln2")(x)
        h = layers.Dense(v["mlp"], activation="gelu", name=f"b{b}_fc1")(h)
        x = layers.Add(name=f"b{b}_add2")([x, layers.Dense(v["dim"], name=f"b{b}_fc2")(h)])
    x = layers.LayerNormalization(epsilon=1e-6, name="head_ln")(layers.GlobalAveragePooling1D(name="gap")(x))
    return K.Model(inp, layers.Dense(1000, activation="softmax", name="classes")(x), name="vit_ti16_4blocks")


def convert(model, quant: str) -> bytes:
    import contextlib
    import io

    t = tf()
    conv = t.lite.TFLiteConverter.from_keras_model(model)
    if quant == "int8":
        rng = np.random.default_rng(0)

        def rep():
            for _ in range(8):
                yield [rng.uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)]

        conv.optimizations = [t.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with contextlib.redirect_stdout(io.StringIO()):  # Keras 3's export prints "Saved artifact"
        return conv.convert()


def tfmot_pruned(name: str, sparsity: float):
    """Unstructured magnitude pruning at ``sparsity`` (masks applied by one zero-lr step), stripped."""
    import tensorflow_model_optimization as tfmot

    K = tf_keras()
    model = build(name, flavour="tf_keras")  # tfmot runs on Keras 2 only
    sched = tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0, frequency=1)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=sched)
    pruned.compile(optimizer=K.optimizers.SGD(learning_rate=0.0), loss="mse")
    x = np.zeros((1, SIZE, SIZE, 3), np.float32)
    y = np.zeros((1,) + tuple(pruned.output_shape[1:]), np.float32)
    pruned.fit(x, y, epochs=1, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return tfmot.sparsity.keras.strip_pruning(pruned)


def weight_sparsity(model) -> float:
    ws = [w for l in model.layers for w in l.get_weights() if w.ndim > 1]
    total = sum(w.size for w in ws)
    return float(sum((w == 0).sum() for w in ws) / max(total, 1))


class Variant:
    def __init__(self, model_name, label, model, base_macs, base_params, removed=None):
        counted = macs_mod.count(model)
        self.model_name, self.label = model_name, label
        self.macs, self.params = counted["macs"], model.count_params()
        self.base_macs, self.base_params = base_macs, base_params
        self.sparsity = weight_sparsity(model) if label.startswith("tfmot") else 0.0
        self.removed = removed  # fraction of prunable channels removed (structured variants)
        self.model = model
        self.blobs: dict = {}
        self.latency: dict = {}


POLICY = {"round_to": 16, "min_channels": 16}  # replaced from --target in main()


def counts_in(graph, pruned) -> dict:
    """Channel count of every tensor of the dense ``graph`` in ``pruned`` (same layer names)."""
    names = {layer.name for layer in pruned.layers}
    return {key: int(pruned.get_layer(t.producer).output.shape[-1]) for key, t in graph.tensors.items()
            if t.producer in names and t.spatial == 1}


def latency_table_for(name, dense, log, cache_dir, threads=1):
    """The per-layer latency table of the dense model (float32, ``threads``), cached as JSON."""
    from edgeprune.load.graph import trace
    from edgeprune.pruning.api import table_for_graph
    from edgeprune.pruning.groups import build_groups

    graph = trace(dense)
    path = Path(cache_dir) / f"{name}_latency_{SIZE}_{threads}t.json" if cache_dir else None
    t0 = time.perf_counter()
    table, info = table_for_graph(graph, build_groups(graph), path, POLICY["round_to"], POLICY["min_channels"],
                                 threads, "float32", None)
    log(f"{name}: {threads}-thread latency table, {info['points_measured']} points measured in "
        f"{time.perf_counter() - t0:.1f} s")
    return graph, table


def make_variants(name: str, ratios, quants, log, cache_dir=None, table_threads=(1,)) -> list:
    dense = build(name)
    base = macs_mod.count(dense)
    out = [Variant(name, "dense", dense, base["macs"], dense.count_params())]
    tables = {t: latency_table_for(name, dense, log, cache_dir, t) for t in table_threads}
    for r in ratios:
        t0 = time.perf_counter()
        res = prune_model(dense, ratio=r, **POLICY)
        log(f"{name}: structured {r:.0%} pruned in {time.perf_counter() - t0:.2f} s "
            f"(analysis {res.report['timing_s']['analysis']} s, surgery {res.report['timing_s']['surgery']} s)")
        v = Variant(name, f"structured {r:.0%}", res.model, base["macs"], out[0].params, removed=res.report["ratio_used"])
        out.append(v)
        if name == "vit":  # the same ratio removing whole heads (the variant above: per-head dimensions)
            heads = prune_model(dense, ratio=r, attention_unit="heads", **POLICY)
            out.append(Variant(name, f"structured {r:.0%} heads", heads.model, base["macs"], out[0].params,
                               removed=heads.report["ratio_used"]))
        for t, (graph, table) in tables.items():
            # the latency the table predicts for the uniform ratio, met with the most MACs
            fraction = table.predict(graph, counts_in(graph, res.model)) / table.predict(graph, {})
            aware = prune_model(dense, target_latency=fraction, latency_table=table, threads=t,
                                latency_objective="macs", **POLICY)
            lat = aware.report["latency_table"]
            log(f"{name}: latency-aware ({t}t table) at {fraction:.3f} of the predicted latency "
                f"({lat['allocation']}), {aware.report['ratio_used']:.1%} of channels removed")
            out.append(Variant(name, f"latency-aware @{r:.0%} ({t}t table)", aware.model, base["macs"],
                               out[0].params, removed=aware.report["ratio_used"]))
        if name == "vit":  # tfmot has no pruning wrapper for MultiHeadAttention
            continue
        sparsity = 1 - v.params / out[0].params
        log(f"{name}: tfmot magnitude pruning at {sparsity:.1%} weight sparsity")
        out.append(Variant(name, f"tfmot {sparsity:.0%}", tfmot_pruned(name, sparsity), base["macs"], out[0].params))
    if name == "mobilenetv2":
        out.append(Variant(name, "alpha=0.35", build(name, alpha=0.35), base["macs"], out[0].params))
        narrow = build(name, alpha=0.5)
        nv = Variant(name, "alpha=0.5", narrow, base["macs"], out[0].params)
        out.append(nv)
        target = nv.macs / base["macs"]
        res = prune_model(build(name), target_macs=target, **POLICY)
        out.append(Variant(name, "structured @alpha0.5 MACs", res.model, base["macs"], out[0].params))
    for v in out:
        for q in quants:
            cached = None
            if cache_dir:
                cached = Path(cache_dir) / f"{name}_{v.label.replace(' ', '_').replace('%', 'pct')}_{q}_{SIZE}.tflite"
                if cached.is_file():
                    v.blobs[q] = cached.read_bytes()
                    log(f"{name} {v.label} {q}: reusing {cached}")
                    continue
            t0 = time.perf_counter()
            v.blobs[q] = convert(v.model, q)
            log(f"{name} {v.label} {q}: converted in {time.perf_counter() - t0:.1f} s, {len(v.blobs[q]):,} bytes")
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(".tmp")
                tmp.write_bytes(v.blobs[q])
                tmp.replace(cached)
        v.model = None
    return out


def measure(variants, quants, threads, runs, rounds, log, statistic="median"):
    """Latency of every variant in ms: the median over rounds of each round's mean invoke, or
    (``statistic="min"``) the fastest single invoke, which other jobs on a shared machine can
    only slow down (timeit's advice for a busy machine)."""
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    for q in quants:
        for th in threads:
            interps = []
            for v in variants:
                it = Interpreter(model_content=v.blobs[q], num_threads=th)
                it.allocate_tensors()
                d = it.get_input_details()[0]
                x = rng.uniform(-1, 1, d["shape"]).astype(np.float32)
                if d["dtype"] != np.float32:
                    scale, zero = d["quantization"]
                    x = np.clip(np.round(x / scale + zero), -128, 127).astype(d["dtype"])
                it.set_tensor(d["index"], x)
                for _ in range(3):
                    it.invoke()
                interps.append(it)
            samples, fastest = [[] for _ in variants], [float("inf")] * len(variants)
            for _round in range(rounds):  # round-robin over models so drift hits all alike
                for i, it in enumerate(interps):
                    times = []
                    for _ in range(runs):
                        t0 = time.perf_counter()
                        it.invoke()
                        times.append((time.perf_counter() - t0) * 1000)
                    samples[i].append(statistics.fmean(times))
                    fastest[i] = min(fastest[i], min(times))
            for v, s, f in zip(variants, samples, fastest):
                v.latency[(q, th)] = f if statistic == "min" else statistics.median(s)
            log(f"measured {q} with {th} thread(s)")


def report(all_variants, quants, threads):
    rows = []
    lines = []
    hdr = (f"{'model':12} {'variant':28} {'params':>10} {'MMACs':>8} " +
           " ".join(f"{q} KB".rjust(10) for q in quants) + " " +
           " ".join(f"{q}/{t}t ms".rjust(13) for q in quants for t in threads))
    lines.append(hdr)
    for v in all_variants:
        lat = " ".join(f"{v.latency[(q, t)]:13.2f}" for q in quants for t in threads)
        size = " ".join(f"{len(v.blobs[q]) / 1024:10.0f}" for q in quants)
        lines.append(f"{v.model_name:12} {v.label:28} {v.params:10,} {v.macs / 1e6:8.1f} {size} {lat}")
        rows.append({"model": v.model_name, "variant": v.label, "params": v.params, "macs": v.macs,
                     "weight_sparsity": v.sparsity, "channels_removed": v.removed,
                     "tflite_bytes": {q: len(v.blobs[q]) for q in quants},
                     "latency_ms": {f"{q}/{t}": v.latency[(q, t)] for q in quants for t in threads}})
    lines.append("")
    lines.append("speed-up vs MAC reduction (structured; 1.0 = latency falls as fast as MACs; target >= 0.85 float32):")
    by_model = {}
    for v in all_variants:
        by_model.setdefault(v.model_name, []).append(v)
    ratios = {}
    for name, vs in by_model.items():
        dense = vs[0]
        for v in vs[1:]:
            mac_red = dense.macs / v.macs
            parts = []
            for q in quants:
                for t in threads:
                    speed = dense.latency[(q, t)] / v.latency[(q, t)]
                    parts.append(f"{q}/{t}t speed-up {speed:.2f}x eff {speed / mac_red:.2f}")
                    ratios[f"{name}|{v.label}|{q}/{t}"] = {"speedup": speed, "mac_reduction": mac_red,
                                                          "efficiency": speed / mac_red}
            removed = f" ({v.removed:.0%} of channels removed)" if v.removed is not None else ""
            lines.append(f"  {name:12} {v.label:28} MACs /{mac_red:.2f}{removed}: " + "; ".join(parts))
    mn = by_model.get("mobilenetv2")
    if mn:
        alpha = next((v for v in mn if v.label == "alpha=0.5"), None)
        match = next((v for v in mn if v.label.startswith("structured @alpha")), None)
        if alpha and match:
            lines.append("")
            lines.append(f"MobileNetV2 latency-per-MAC efficiency vs alpha=0.5 (target >= 0.95): "
                         f"pruned {match.macs / 1e6:.1f} MMACs vs alpha=0.5 {alpha.macs / 1e6:.1f} MMACs")
            for q in quants:
                for t in threads:
                    eff = (alpha.latency[(q, t)] / alpha.macs) / (match.latency[(q, t)] / match.macs)
                    ratios[f"alpha0.5_efficiency|{q}/{t}"] = eff
                    lines.append(f"  {q}/{t}t: pruned {match.latency[(q, t)]:.2f} ms, alpha=0.5 "
                                 f"{alpha.latency[(q, t)]:.2f} ms, efficiency {eff:.2f}")
    return "\n".join(lines), {"rows": rows, "ratios": ratios}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenetv2,resnet50", help="comma-separated: mobilenetv2, resnet50, vit")
    ap.add_argument("--ratios", default="0.25,0.5,0.75")
    ap.add_argument("--quant", default="float32,int8")
    ap.add_argument("--threads", default="1,2", help="this machine has 2 cores; a profile would say 4 on-device")
    ap.add_argument("--runs", type=int, default=10, help="invokes per model per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--statistic", default="median", choices=["median", "min"],
                    help="median of the rounds' mean invoke, or the fastest invoke (a busy, shared machine)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--cache-dir", help="keep converted .tflite files here and reuse them (re-measure cheaply)")
    ap.add_argument("--size", type=int, default=224, help="input size (smaller only for a quick smoke run)")
    ap.add_argument("--keras", default="keras3", choices=["keras3", "tf_keras"],
                    help="which Keras builds the applications (keras3: what TF 2.16+ users have)")
    ap.add_argument("--target", default="x86-64", help="device profile whose pruning.round_to/min_channels to use")
    ap.add_argument("--table-threads", default="1",
                    help="thread counts to measure latency tables with, one latency-aware variant per ratio "
                         "each ('' for none)")
    args = ap.parse_args(argv)
    FLAVOUR["keras"] = args.keras
    global SIZE
    SIZE = args.size
    from edgeprune.device.profiles import load_profile

    policy = load_profile(args.target).pruning
    POLICY.update(round_to=policy.round_to, min_channels=policy.min_channels)
    print(f"pruning policy from profile {args.target}: round_to={policy.round_to}, "
          f"min_channels={policy.min_channels}", file=sys.stderr)
    quants = [q for q in args.quant.split(",") if q]
    threads = [int(t) for t in args.threads.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    everything = []
    for name in args.models.split(","):
        table_threads = [int(t) for t in args.table_threads.split(",") if t]
        variants = make_variants(name, ratios, quants, log, args.cache_dir, table_threads)
        measure(variants, quants, threads, args.runs, args.rounds, log, args.statistic)
        everything.extend(variants)
    text, data = report(everything, quants, threads)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(data, fh, indent=2)


if __name__ == "__main__":
    main()
