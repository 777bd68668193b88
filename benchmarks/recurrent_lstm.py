"""Fused UNIDIRECTIONAL_SEQUENCE_LSTM vs a WHILE loop: the same LSTM model, two TFLite lowerings.

edgeprune converts every model from a batch-1 concrete function. For a tf_keras LSTM the
converter then produces the fused sequence op; a Keras 3 LSTM (or a tf_keras graph frozen
before conversion) becomes a WHILE loop over the time steps. This script builds one text
model per size in tf_keras, converts it both ways (``edgeprune.quantize.convert.convert(...,
fuse_lstm=True/False)``), rebuilds it in Keras 3 with the same weights, checks the three
outputs agree, and times all three in the LiteRT interpreter, interleaved round-robin so that
machine drift cancels. Latency: median of rounds of invokes, in microseconds.

    python benchmarks/recurrent_lstm.py [--seq 32,128] [--units 64,256] [--threads 1] [--rounds 7]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from edgeprune.base import env as _env
from edgeprune.quantize.convert import convert, op_counts


def build(K, seq: int, units: int, vocab: int = 1000, dim: int = 64):
    L = K.layers
    t = K.Input((seq,), dtype="int32", name="tokens")
    x = L.Embedding(vocab, dim, name="emb")(t)
    x = L.LSTM(units, name="lstm")(x)
    return K.Model(t, L.Dense(8, name="head")(x))


def interpreter(blob: bytes, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    with _env.quiet_native():
        it = Interpreter(model_content=blob, num_threads=threads)
        it.allocate_tensors()
    return it


def run_once(it, x) -> np.ndarray:
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def time_round(it, runs: int) -> float:
    t0 = time.perf_counter()
    for _ in range(runs):
        it.invoke()
    return (time.perf_counter() - t0) / runs * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", default="32,128")
    ap.add_argument("--units", default="64,256")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    tk, k3 = _env.tf_keras(), _env.keras3()
    rows = []
    for seq in (int(s) for s in args.seq.split(",")):
        for units in (int(u) for u in args.units.split(",")):
            tk.utils.set_random_seed(0)
            ref = build(tk, seq, units)
            twin = build(k3, seq, units)
            twin.set_weights(ref.get_weights())
            blobs = {"fused (tf_keras)": convert(ref, "float32"),
                     "WHILE (tf_keras, frozen)": convert(ref, "float32", fuse_lstm=False),
                     "WHILE (Keras 3)": convert(twin, "float32")}
            x = np.random.default_rng(1).integers(0, 1000, (1, seq)).astype(np.int32)
            expected = np.asarray(ref(x))
            its = {}
            for name, blob in blobs.items():
                it = interpreter(blob, args.threads)
                np.testing.assert_allclose(run_once(it, x), expected, rtol=1e-3, atol=1e-4)
                its[name] = it
            runs = max(3, int(0.05 / max(time_round(its["WHILE (Keras 3)"], 1) * 1e-6, 1e-6)))
            samples = {name: [] for name in its}
            for _ in range(args.rounds):  # interleaved
                for name, it in its.items():
                    samples[name].append(time_round(it, runs))
            med = {name: statistics.median(v) for name, v in samples.items()}
            fused = med["fused (tf_keras)"]
            for name in its:
                loop = [k for k in op_counts(blobs[name]) if k in ("WHILE", "UNIDIRECTIONAL_SEQUENCE_LSTM")]
                rows.append((seq, units, name, "+".join(loop), len(blobs[name]) // 1024, med[name], med[name] / fused))
    print(f"LiteRT, {args.threads} thread(s), median of {args.rounds} interleaved rounds; batch 1, float32")
    print(f"{'seq':>4} {'units':>5}  {'lowering':<26} {'loop op':<29} {'KB':>5} {'us/invoke':>10} {'vs fused':>8}")
    for seq, units, name, op, kb, us, ratio in rows:
        print(f"{seq:>4} {units:>5}  {name:<26} {op:<29} {kb:>5} {us:>10.1f} {ratio:>7.2f}x")


if __name__ == "__main__":
    main()
