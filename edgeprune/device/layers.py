"""Cut each conv/dense op of a .tflite artifact into a single-op model, for per-layer timing.

Why: a user who pruned a model needs to see where the time goes *on the device*, layer by
layer, to understand why it did or did not speed up. LiteRT's Python interpreter exposes no
op profiler, and the device has no TensorFlow, so the cutting happens here (flatbuffer
editing with ai-edge-litert's own schema, no TensorFlow) and only the small single-op
files travel; the runner times them with the device's runtime exactly like latency-table
points (``runner.time_model``). Each op keeps its weights and quantization parameters, so
it runs the same kernel as inside the artifact; an op timed alone misses the cache effects
of its neighbours, which is why the bench reports the sum of the layers next to the
whole-model latency.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from edgeprune.base.errors import InputError

# builtin operator codes (tflite schema) of the ops pruning changes
TIMED_OPS = {3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 9: "FULLY_CONNECTED", 67: "TRANSPOSE_CONV",
             128: "CONV_3D"}


@dataclass
class LayerOp:
    index: int          # operator index in the artifact's main subgraph
    op: str             # CONV_2D, DEPTHWISE_CONV_2D, ...
    name: str           # the layer name recovered from the output tensor's name
    tensor: str         # the output tensor's full name
    macs: int
    path: Path | None   # the single-op model (None when it could not be cut)


def _layer_name(tensor_name: str) -> str:
    """'model/conv1/Relu;model/conv1/BiasAdd;...' -> 'conv1' (the Keras layer's scope)."""
    first = tensor_name.split(";")[0]
    parts = [p for p in first.split("/") if p]
    return parts[1] if len(parts) >= 3 else parts[0] if parts else tensor_name


def _macs(op: str, tensors, inputs, outputs) -> int:
    def shape(i):
        return [int(d) for d in tensors[i].shape] if i >= 0 and tensors[i].shape is not None else []

    out = shape(outputs[0])
    weights = shape(inputs[1]) if len(inputs) > 1 else []
    n_out = 1
    for d in out:
        n_out *= max(d, 1)
    if op == "CONV_2D" and len(weights) == 4:       # weights [cout, kh, kw, cin]
        return n_out * weights[1] * weights[2] * weights[3]
    if op == "DEPTHWISE_CONV_2D" and len(weights) == 4:  # weights [1, kh, kw, cout]
        return n_out * weights[1] * weights[2]
    if op == "FULLY_CONNECTED" and len(weights) == 2:   # weights [cout, cin]
        return n_out * weights[1]
    if op == "TRANSPOSE_CONV" and len(inputs) > 2:      # inputs: output_shape, weights, input
        w, x = shape(inputs[1]), shape(inputs[2])
        if len(w) == 4 and len(x) == 4:
            return x[0] * x[1] * x[2] * x[3] * w[0] * w[1] * w[2]
    if op == "CONV_3D" and len(weights) == 5:           # weights [kd, kh, kw, cin, cout]
        return n_out * weights[0] * weights[1] * weights[2] * weights[3]
    return 0


def cut_layers(artifact: Path, dest: Path) -> list[LayerOp]:
    """Write one single-op .tflite per conv/dense op of ``artifact`` into ``dest``."""
    try:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils as fb
    except ImportError as exc:
        raise InputError(f"--per-layer needs ai-edge-litert on this machine ({exc})") from None
    try:
        model = fb.read_model_from_bytearray(bytearray(Path(artifact).read_bytes()))
    except Exception as exc:  # a flatbuffer the schema cannot read
        raise InputError(f"{artifact}: cannot read the TFLite flatbuffer for --per-layer ({exc})") from None
    graph = model.subgraphs[0]
    tensors = graph.tensors
    layers = []
    for index, op in enumerate(graph.operators):
        code = fb.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
        if code not in TIMED_OPS:
            continue
        name = TIMED_OPS[code]
        out_name = tensors[op.outputs[0]].name
        out_name = out_name.decode() if isinstance(out_name, bytes) else str(out_name)
        layer = LayerOp(index, name, _layer_name(out_name), out_name, _macs(name, tensors, op.inputs, op.outputs),
                        None)
        layers.append(layer)
        try:
            single = _single_op_model(model, schema, op, tensors)
            path = dest / f"layer-{index:04d}.tflite"
            path.write_bytes(bytes(fb.convert_object_to_bytearray(single)))
            layer.path = path
        except Exception:  # an op whose inputs cannot stand alone: reported as untimed
            layer.path = None
    return layers


def _single_op_model(model, schema, op, tensors):
    """A model whose only op is ``op``: its non-constant inputs become the model inputs."""
    used = [i for i in list(op.inputs) + list(op.outputs) if i >= 0]
    remap = {old: new for new, old in enumerate(dict.fromkeys(used))}
    buffers = [schema.BufferT()]
    new_tensors = []
    for old in remap:
        t = copy.copy(tensors[old])
        data = model.buffers[t.buffer].data if t.buffer else None
        if data is not None and len(data):
            buf = schema.BufferT()
            buf.data = data
            t.buffer = len(buffers)
            buffers.append(buf)
        else:
            t.buffer = 0
        new_tensors.append(t)
    single_op = copy.copy(op)
    single_op.inputs = [remap[i] if i >= 0 else -1 for i in op.inputs]
    single_op.outputs = [remap[i] for i in op.outputs]
    single_op.opcodeIndex = 0
    graph = schema.SubGraphT()
    graph.tensors = new_tensors
    graph.inputs = [remap[i] for i in op.inputs if i >= 0 and not new_tensors[remap[i]].buffer]
    graph.outputs = [remap[i] for i in op.outputs]
    graph.operators = [single_op]
    graph.name = "layer"
    single = schema.ModelT()
    single.version = model.version
    single.operatorCodes = [model.operatorCodes[op.opcodeIndex]]
    single.subgraphs = [graph]
    single.buffers = buffers
    single.description = "edgeprune single-op model"
    return single


def per_layer_report(layers: list[LayerOp], timings: dict[str, dict], total_ms: float | None, threads: int,
                     emulated: bool) -> dict:
    """Per conv/dense layer: time on the device, share of the whole-model p50, MACs per µs."""
    rows = []
    for layer in layers:
        t = timings.get(layer.path.name) if layer.path is not None else None
        us = t.get("us") if t else None
        rows.append({"layer": layer.name, "op": layer.op, "index": layer.index, "macs": layer.macs,
                     "us": None if us is None else round(us, 3),
                     "share": None if us is None or not total_ms else us / (total_ms * 1000.0),
                     "macs_per_us": None if not us else layer.macs / us,
                     **({"error": t["error"]} if t and "error" in t else {}),
                     **({"error": "could not be cut into a single-op model"} if layer.path is None else {})})
    timed = sum(r["us"] for r in rows if r["us"] is not None)
    return {"threads": threads, "layers": rows, "sum_us": round(timed, 3),
            "total_us": None if total_ms is None else round(total_ms * 1000.0, 3),
            "method": "each conv/dense op cut into a single-op model with its weights and timed alone "
                      "by the device's runtime (min of 5 rounds)",
            "emulated": emulated}
