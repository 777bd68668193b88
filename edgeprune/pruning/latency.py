"""Per-layer latency lookup tables measured with the real interpreter (NetAdapt-style).

Why: MACs stop predicting latency once layers get thin. A depthwise conv or a 112x112
layer with 16 channels runs at a third of the MAC rate of a 1x1 conv at 14x14, so a pruner
that only counts MACs removes channels where they cost little time and keeps them where
they cost a lot. A table maps each MAC-carrying layer, at a grid of (input, output) channel
counts, to the microseconds that layer alone takes in the interpreter; the latency-target
allocator (:func:`edgeprune.pruning.allocation.solve_target_latency`) sums it.

Each grid point is one single-layer model: built from the layer's own config with the
channel counts changed, converted from a concrete function (~30 ms) and timed by LiteRT
with the target's thread count. Layers with the same signature (class, input size, kernel,
strides, ...) share their entries, and a table saved to JSON is reused and extended.

Building needs TensorFlow and happens here; timing needs only numpy and a runtime, so
``LayerTimer.time_blobs`` can be replaced: ``edgeprune.pruning.device_timer`` sends the
.tflite files to a device over SSH and the runner times them there.
"""
from __future__ import annotations

import contextlib
import io
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeprune.base.errors import InputError
from edgeprune.load.graph import LayerGraph
from edgeprune.pruning import rules

FORMAT = "edgeprune-latency-table/1"
# config keys that change a layer's cost but not its channel counts
_SHAPE_KEYS = ("kernel_size", "strides", "padding", "dilation_rate", "depth_multiplier", "groups",
               "use_bias", "activation", "data_format", "output_padding")


def _norm(value):
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):  # serialized activation objects
        return value.get("class_name", str(value))
    return value


def signature(node, graph: LayerGraph) -> str | None:
    """What a layer's latency depends on besides its channel counts (None: not timed)."""
    if not node.inputs or not node.outputs or node.calls != 1:
        return None
    if not rules.rule_for(node).latency_signature(node):
        return None  # not timed alone (e.g. grouped convs: whole groups go, cost follows MACs)
    tin = graph.tensors[node.inputs[0]]
    if any(d is None for d in tin.shape):
        return None  # unknown spatial size: nothing to time
    cfg = {k: _norm(node.config[k]) for k in _SHAPE_KEYS if k in node.config}
    cin, cout = layer_channels(node, graph, {})  # unpruned widths: the range the grid spans
    return json.dumps({"class": node.class_name, "in": list(tin.shape[:-1]), "spatial": tin.spatial,
                       "cin": cin, "cout": cout, **cfg}, sort_keys=True)


def layer_channels(node, graph: LayerGraph, counts: dict) -> tuple[int, int]:
    """(input channels, output channels) of a timed layer under ``counts``."""
    return rules.rule_for(node).latency_channels(node, graph, counts)


@dataclass
class LatencyTable:
    """signature -> {"cin": [...], "cout": [...], "us": [[...]]} measured on one runtime setup."""

    meta: dict
    entries: dict = field(default_factory=dict)

    # -- prediction -----------------------------------------------------------------------
    def layer_us(self, sig: str, cin: int, cout: int) -> float:
        e = self.entries[sig]
        return float(_bilinear(e["cin"], e["cout"], e["us"], cin, cout))

    def node_us(self, sig: str | None, node, graph: LayerGraph, counts: dict) -> float | None:
        """Microseconds of one layer (``sig`` its signature) under ``counts``; None if untimed."""
        if sig is None or sig not in self.entries:
            return None
        return self.layer_us(sig, *layer_channels(node, graph, counts))

    def predict(self, graph: LayerGraph, counts: dict) -> float:
        """Summed microseconds of every timed layer under ``counts`` (untimed layers count 0)."""
        return sum(self.node_us(signature(n, graph), n, graph, counts) or 0.0 for n in graph.layers.values())

    # -- persistence ----------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"format": FORMAT, "meta": self.meta, "entries": self.entries}

    def save(self, path: Path) -> None:
        from edgeprune.base.artifacts import write_json

        write_json(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read latency table ({exc})") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not a latency table (invalid JSON: {exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f"{path}: not a latency table (expected format '{FORMAT}')")
        return cls(meta=data.get("meta", {}), entries=data.get("entries", {}))


def _bilinear(xs, ys, grid, x, y) -> float:
    """Interpolate grid[i][j] (at xs[i], ys[j], both ascending); clamp outside the grid."""
    def locate(axis, v):
        if len(axis) == 1:
            return 0, 0, 0.0
        v = min(max(v, axis[0]), axis[-1])
        i = max(0, min(int(np.searchsorted(axis, v, side="right")) - 1, len(axis) - 2))
        span = axis[i + 1] - axis[i]
        return i, i + 1, (v - axis[i]) / span if span else 0.0

    i0, i1, tx = locate(xs, x)
    j0, j1, ty = locate(ys, y)
    top = grid[i0][j0] * (1 - ty) + grid[i0][j1] * ty
    bottom = grid[i1][j0] * (1 - ty) + grid[i1][j1] * ty
    return top * (1 - tx) + bottom * tx


def grid_points(full: int, variable: bool, step: int, minimum: int) -> list[int]:
    """Channel counts to measure along one axis: full width, 1/2, 1/4 and the minimum."""
    if not variable or full <= max(minimum, 1):
        return [full]
    lowest = min(full, max(minimum, step, 1))
    lowest = min(full, -(-lowest // step) * step)
    points = {full, lowest}
    for frac in (0.5, 0.25):
        p = int(full * frac) // step * step
        if lowest < p < full:
            points.add(p)
    return sorted(points)


def runtime_meta(threads: int, quant: str) -> dict:
    """What a table is only valid for: runtime, threads, quantization, CPU."""
    from edgeprune.device.runner import cpu_model, find_runtime

    name, version, _ = find_runtime()
    return {"runtime": f"{name} {version}", "threads": int(threads), "quantization": quant,
            "cpu": cpu_model(), "machine": platform.machine()}


def op_profiler_note(device: str, benchmark_model: str | None) -> str:
    """One line saying where per-layer times come from on ``device``.

    Why a note and not the profiler's numbers: LiteRT's native ``benchmark_model`` with
    ``--enable_op_profiling=true`` measures every op inside the whole model, but no package
    reachable here ships it (ai-edge-litert 2.3's ``litert-benchmark`` and its Python
    ``CompiledModel`` expose no per-op times), so its table format is unverified and not parsed:
    single-op models (this module) stay the method, and a device that has the binary is named.
    """
    if benchmark_model:
        return (f"op profiler: benchmark_model found on {device} ({benchmark_model}), but its op-profiling "
                "output is not parsed yet; per-layer times come from single-op models")
    return f"op profiler: benchmark_model not found on {device}; per-layer times come from single-op models"


def check_compatible(table: LatencyTable, meta: dict, path) -> None:
    """Threads and arithmetic must match what is asked; the device may differ (see ``is_foreign``)."""
    for key in ("threads", "quantization"):
        if table.meta.get(key) != meta.get(key):
            raise InputError(f"{path}: latency table was measured with {key}={table.meta.get(key)!r}, "
                             f"this run uses {meta.get(key)!r}; pass a different --latency-table file")


def is_foreign(table: LatencyTable, meta: dict) -> bool:
    """A table measured on another device or runtime: used as is, never extended here."""
    return any(table.meta.get(key) != meta.get(key) for key in ("runtime", "cpu", "machine"))


class LayerTimer:
    """Builds, converts and times single-layer models."""

    def __init__(self, threads: int = 1, quant: str = "float32", runs: int = 20, rounds: int = 5):
        if quant not in ("float32", "int8"):
            raise InputError(f"latency tables are measured in float32 or int8, not '{quant}'")
        self.threads, self.quant, self.runs, self.rounds = int(threads), quant, runs, rounds

    def _build(self, node, tin, cin, cout, K):
        cfg = rules.rule_for(node).latency_config(dict(node.config), cin, cout)
        cfg["name"] = "timed"
        for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer",
                    "kernel_constraint", "bias_constraint", "depthwise_constraint", "pointwise_constraint"):
            cfg.pop(key, None)
        layer = K.layers.deserialize({"class_name": node.class_name, "config": cfg,
                                      **({"module": "keras.layers"} if K.__name__ == "keras" else {})})
        shape = tuple(tin.shape[:-1]) + (int(cin) * max(1, tin.spatial),)
        x = K.Input(shape, batch_size=1)
        return K.Model(x, layer(x))

    def convert(self, model) -> bytes:
        from edgeprune.base.env import keras_of, quiet_native, tf

        t = tf()
        with quiet_native():
            if keras_of(model).__name__ == "keras":
                # Keras 3 layers traced in a tf.function keep their weights as resource
                # variables (VAR_HANDLE/READ_VARIABLE, uninitialised on a device) and lose the
                # fused kernels; the Keras converter path freezes them as a real model would be.
                conv = t.lite.TFLiteConverter.from_keras_model(model)
            else:
                spec = t.TensorSpec(model.inputs[0].shape, t.float32)
                fn = t.function(lambda a: model(a, training=False))
                concrete = fn.get_concrete_function(spec)
                conv = t.lite.TFLiteConverter.from_concrete_functions([concrete], model)
            if self.quant == "int8":
                rng = np.random.default_rng(0)
                shape = tuple(model.inputs[0].shape)

                def rep():
                    for _ in range(2):
                        yield [rng.uniform(-1, 1, shape).astype(np.float32)]

                conv.optimizations = [t.lite.Optimize.DEFAULT]
                conv.representative_dataset = rep
                conv.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
            with contextlib.redirect_stdout(io.StringIO()):  # Keras 3's export prints to stdout
                return conv.convert()

    def meta(self) -> dict:
        """What the timings are valid for (runtime, threads, quantization, CPU)."""
        return runtime_meta(self.threads, self.quant)

    def blob(self, node, graph, cin: int, cout: int) -> bytes:
        """The single-layer .tflite model of one grid point (built and converted here)."""
        from edgeprune.base.env import keras_of

        return self.convert(self._build(node, graph.tensors[node.inputs[0]], cin, cout, keras_of(graph.model)))

    def time_blobs(self, blobs: list[bytes], progress=None) -> list[float | str]:
        """Microseconds per invoke of each model (or an error line), in this process."""
        from edgeprune.base.env import quiet_native
        from edgeprune.device import runner

        _, _, Interpreter = runner.find_runtime()
        times = []
        for i, blob in enumerate(blobs):
            try:
                with quiet_native():
                    it = runner.load_interpreter(Interpreter, None, self.threads, blob)
                    runner.allocate(it, None)
                times.append(runner.time_model_interpreter(it, np, self.runs, self.rounds))
            except runner.RunnerFailure as exc:
                times.append(exc.message)
            except (RuntimeError, ValueError) as exc:  # the runtime cannot run this one
                times.append(f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}")
            if progress:
                progress(i + 1)
        return times

    def time_blob(self, blob: bytes) -> float:
        """Microseconds per invoke: the fastest of ``rounds`` rounds of ``runs`` invokes."""
        us = self.time_blobs([blob])[0]
        if isinstance(us, str):
            raise RuntimeError(us)
        return us

    def measure(self, node, graph, cin: int, cout: int) -> float:
        return self.time_blob(self.blob(node, graph, cin, cout))


def measure_table(graph: LayerGraph, gs, *, round_to: int = 1, min_channels: int = 1, threads: int = 1,
                  quant: str = "float32", table: LatencyTable | None = None, progress=None,
                  timer: LayerTimer | None = None) -> LatencyTable:
    """Measure (or complete) the table for every timed layer of ``graph``.

    An axis is measured at several widths only when pruning can change it: a layer reading
    the model input keeps its input channels, a model output keeps its output channels.
    """
    timer = timer or LayerTimer(threads, quant)
    meta = timer.meta()
    if table is None:
        table = LatencyTable(meta=meta)
    else:
        check_compatible(table, meta, "latency table")
    foreign = is_foreign(table, meta)
    variable = set()
    for g in gs.prunable:
        variable.update(g.tensors)
    jobs = {}  # signature -> (first layer with it, input widths, output widths)
    for node in graph.layers.values():
        sig = signature(node, graph)
        if sig is None or sig in table.entries or sig in jobs:
            continue
        tin, tout = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        cin, cout = layer_channels(node, graph, {})
        cins = grid_points(cin, tin.key in variable, round_to, min_channels)
        # a depthwise layer's output width follows its input: one column, axis value 0
        couts = [0] if rules.rule_for(node).output_follows_input else \
            grid_points(cout, tout.key in variable, round_to, min_channels)
        jobs[sig] = (node, cins, couts)
    if jobs and foreign:
        first = next(iter(jobs.values()))[0].name
        raise InputError(f"the latency table was measured on {table.meta.get('cpu')} "
                         f"({table.meta.get('runtime')}) and lacks {len(jobs)} layer shape(s) of this model "
                         f"(first: '{first}'); measure it on that device with "
                         f"`edgeprune latency-table MODEL -o TABLE.json`")
    total = sum(len(c) * len(o) for _, c, o in jobs.values())
    started = time.perf_counter()
    skipped = []
    # 1. build every point's model here (needs TensorFlow) ...
    points, blobs = [], []
    for sig, (node, cins, couts) in jobs.items():
        try:
            built = [(ci, co, timer.blob(node, graph, ci, co or ci)) for ci in cins for co in couts]
        except Exception as exc:  # a layer the converter cannot take alone: leave it untimed
            first_line = (str(exc).splitlines() or [""])[0][:120]
            skipped.append(f"{node.name}: {type(exc).__name__}: {first_line}")
            built = []
        for ci, co, blob in built:
            points.append((sig, ci, co))
            blobs.append(blob)
        if progress:
            progress(len(points) // 2, total)
    # 2. ... and time them all where the table is for (this process, or a device)
    times = timer.time_blobs(blobs, progress=(lambda k: progress((len(points) + k) // 2, total)) if progress else None)
    grids: dict = {}
    for (sig, ci, co), us in zip(points, times):
        grids.setdefault(sig, {})[(ci, co)] = us
    for sig, (node, cins, couts) in jobs.items():
        got = grids.get(sig)
        if not got:
            continue
        bad = next((us for us in got.values() if isinstance(us, str)), None)
        if bad is not None:
            skipped.append(f"{node.name}: {bad[:120]}")
            continue
        table.entries[sig] = {"layer": node.name, "cin": cins, "cout": couts,
                              "us": [[round(got[(ci, co)], 3) for co in couts] for ci in cins]}
    if progress:
        progress(total, total)
    if skipped:
        table.meta["skipped"] = sorted(set(table.meta.get("skipped", [])) | set(skipped))
    table.meta["measure_s"] = round(table.meta.get("measure_s", 0.0) + time.perf_counter() - started, 2)
    table.meta["points"] = int(table.meta.get("points", 0)) + total
    return table

