"""`edgeprune inspect`: what is inside a .tflite artifact or a Keras model, as one dict.

For a .tflite file (or an artifact directory) it reads the flatbuffer (edgeprune.quantize.convert) and
asks the LiteRT interpreter for tensor details, so the figures are the runtime's own: ops and
counts, tensors with dtype and quantization parameters, constant bytes by op and by dtype, MACs
per op, the arena (estimate, or TFLM's exact figure for a TFLM artifact), and which ops the
XNNPACK delegate takes. That last part compares the interpreter's node list with the default
delegate applied against the same model without it: each DELEGATE node replaced a connected
partition of the original nodes, recovered by walking back from its outputs to its inputs.

For a Keras model it reports the channel groups the pruning engine sees
(edgeprune.load.graph.trace + groups.build_groups): size, layers, and why a group is locked.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeprune.base.errors import InputError
from edgeprune.pruning.macs import ARTIFACT_MAC_OPS


def display_name(name: str, width: int | None = 48) -> str:
    """A tensor name short enough for a table cell or a plot label; JSON keeps the full name.

    The converter names the output of a fused op after every op it fused, joined by ``;``
    (MobileNetV2's run to 255 characters). The first part names the op that writes the tensor,
    so it is kept; its leading component is the model's own name, the same on every tensor, so
    it is dropped; "+N" says how many fused names were left out. What is still over ``width``
    keeps its end (the layer and op), not its start; ``width=None`` (terminal tables, which wrap)
    never cuts the op's own name.
    """
    parts = [p for p in str(name).split(";") if p] or [str(name)]
    head = parts[0]
    components = head.split("/")
    if len(components) >= 3:
        head = "/".join(components[1:])
    extra = f" +{len(parts) - 1}" if len(parts) > 1 else ""
    room = None if width is None else max(width - len(extra), 8)
    if room is not None and len(head) > room:
        head = "…" + head[-(room - 1):]
    return head + extra


def is_tflite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:8] == b"TFL3"


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= max(int(d), 1)
    return n


def op_macs(op: str, ins: list[int], outs: list[int], tensors) -> int:
    """Multiply-accumulates of one TFLite op from its tensor shapes (NHWC, TFLite weight layouts).

    Only :data:`edgeprune.pruning.macs.ARTIFACT_MAC_OPS` count (that module says what a MAC is
    and why ADD, MUL, MEAN, SOFTMAX... do not); each is (output elements) x (input elements
    summed per output), the pruner's definition, so ``inspect`` and ``--target-macs`` agree.
    """
    if op not in ARTIFACT_MAC_OPS or not outs or len(ins) < 2:
        return 0
    out = tensors[outs[0]].shape
    w = tensors[ins[1]].shape
    if op == "CONV_2D" and len(w) == 4:  # weights [cout, kh, kw, cin / groups]
        return _prod(out) * int(w[1]) * int(w[2]) * int(w[3])
    if op == "DEPTHWISE_CONV_2D" and len(w) == 4:  # [1, kh, kw, cout]
        return _prod(out) * int(w[1]) * int(w[2])
    if op == "FULLY_CONNECTED" and len(w) == 2:  # [units, in]; leading dims are in the output
        return _prod(out) * int(w[1])
    if op == "TRANSPOSE_CONV" and len(ins) >= 3:  # ins: output_shape, weights [cout,kh,kw,cin], input
        x = tensors[ins[2]].shape
        return _prod(x) * int(w[0]) * int(w[1]) * int(w[2]) if len(w) == 4 else 0
    if op == "CONV_3D_TRANSPOSE" and len(ins) >= 3:  # output_shape, weights [kd,kh,kw,cout,cin], input
        x = tensors[ins[2]].shape
        return _prod(x) * int(w[0]) * int(w[1]) * int(w[2]) * int(w[3]) if len(w) == 5 else 0
    if op == "BATCH_MATMUL":  # a [..., M, K] (or [..., K, M] with adj_x) x b; out [..., M, N]
        a = tensors[ins[0]].shape
        if len(a) < 2 or len(out) < 2:
            return 0
        k = a[-1] if int(a[-2]) == int(out[-2]) else a[-2]  # M == K: either reading is right
        return _prod(out) * max(int(k), 1)  # out carries the broadcast batch dims
    if op == "CONV_3D" and len(w) == 5:  # [kd, kh, kw, cin, cout]
        return _prod(out) * int(w[0]) * int(w[1]) * int(w[2]) * int(w[3])
    if op in ("UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "UNIDIRECTIONAL_SEQUENCE_RNN"):
        # every 2-D constant is a gate kernel [units, in] or a recurrent kernel [units, units]
        # applied once per (batch, step): input 0 is [batch, time, in] (or time-major)
        steps = _prod(tensors[ins[0]].shape[:-1])
        kernels = [tensors[j] for j in ins[1:] if tensors[j].constant and len(tensors[j].shape) == 2]
        return steps * sum(_prod(t.shape) for t in kernels)
    return 0


def _quant(detail: dict) -> dict | None:
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", []), np.float64)
    zeros = np.asarray(qp.get("zero_points", []), np.int64)
    if not scales.size:
        return None
    out = {"scale": float(scales[0]) if scales.size == 1 else None,
           "zero_point": int(zeros[0]) if zeros.size == 1 else None,
           "channels": int(scales.size), "quantized_dimension": int(qp.get("quantized_dimension", 0))}
    if scales.size > 1:
        out.update(scale_min=float(scales.min()), scale_max=float(scales.max()))
    return out


def interpreter(tflite: bytes, delegates: bool, **kw):
    """A LiteRT interpreter, allocated; ``delegates=False`` runs builtin kernels only."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgeprune.base.env import quiet_native

    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        with quiet_native():
            interp = Interpreter(model_content=tflite, experimental_op_resolver_type=resolver, **kw)
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"the LiteRT interpreter cannot load the model ({first})") from None
    return interp


def node_list(interp) -> list[tuple[str, list[int], list[int]]]:
    """(op name, input tensors, output tensors) of every node in the interpreter's node list
    (after delegation, DELEGATE nodes are appended to the original ones)."""
    raw = interp._interpreter  # the wrapper: NumNodes/NodeName/NodeInputs/NodeOutputs
    return [(raw.NodeName(i), [int(j) for j in raw.NodeInputs(i) if j >= 0],
             [int(j) for j in raw.NodeOutputs(i) if j >= 0]) for i in range(raw.NumNodes())]


def xnnpack_partition(tflite: bytes, ops: list[tuple[str, list[int], list[int]]]) -> dict:
    """Which original op indices the default XNNPACK delegate took, and which run on builtins."""
    nodes = node_list(interpreter(tflite, delegates=True))
    n = len(ops)
    producer = {}
    for i, (_, _, outs) in enumerate(ops):
        for t in outs:
            producer[t] = i
    delegated: set[int] = set()
    partitions = []
    for name, ins, outs in nodes[n:]:
        if name != "DELEGATE":
            continue
        stop, seen, stack = set(ins), set(), [t for t in outs]
        while stack:
            t = stack.pop()
            if t in stop or t not in producer:
                continue
            i = producer[t]
            if i in seen:
                continue
            seen.add(i)
            stack.extend(ops[i][1])
        partitions.append(sorted(seen))
        delegated |= seen
    return {"delegate": "XNNPACK (LiteRT default CPU delegate)", "partitions": len(partitions),
            "delegated_ops": sorted(delegated),
            "fallback_ops": [i for i in range(n) if i not in delegated]}


def inspect_tflite(data: bytes, *, name: str = "model.tflite", tflm: bool = False) -> dict:
    """Everything about a .tflite flatbuffer that the runtime can tell (see module docstring)."""
    from edgeprune.base.artifacts import sha256_bytes
    from edgeprune.device.tflite_check import verify_flatbuffer
    from edgeprune.quantize.convert import estimate_arena_bytes, read_graph

    verify_flatbuffer(data, name)  # the walk below follows the file's indices
    graph = read_graph(data)
    tensors, ops = graph["tensors"], graph["ops"]
    interp = interpreter(data, delegates=False)
    details = {d["index"]: d for d in interp.get_tensor_details()}
    xnn = xnnpack_partition(data, ops)
    delegated = set(xnn["delegated_ops"])

    tensor_rows, by_dtype = [], {}
    for j, t in enumerate(tensors):
        d = details.get(j, {})
        row = {"index": j, "name": t.name, "shape": [int(s) for s in t.shape], "dtype": t.type.lower(),
               "constant": t.constant, "bytes": t.nbytes, "quantization": _quant(d) if d else None}
        tensor_rows.append(row)
        if t.constant:
            by_dtype[row["dtype"]] = by_dtype.get(row["dtype"], 0) + t.nbytes

    owner: dict[int, int] = {}
    op_rows, counts, by_op, macs_by_op = [], {}, {}, {}
    for i, (op, ins, outs) in enumerate(ops):
        const = [j for j in ins if tensors[j].constant and owner.setdefault(j, i) == i]
        wbytes = sum(tensors[j].nbytes for j in const)
        macs = op_macs(op, ins, outs, tensors)
        counts[op] = counts.get(op, 0) + 1
        by_op[op] = by_op.get(op, 0) + wbytes
        macs_by_op[op] = macs_by_op.get(op, 0) + macs
        op_rows.append({"index": i, "op": op, "inputs": ins, "outputs": outs,
                        "output": tensors[outs[0]].name if outs else None,
                        "output_dtype": tensors[outs[0]].type.lower() if outs else None,
                        "constant_bytes": wbytes, "macs": macs, "xnnpack": i in delegated})
    fallback_counts: dict[str, int] = {}
    for i in xnn["fallback_ops"]:
        fallback_counts[ops[i][0]] = fallback_counts.get(ops[i][0], 0) + 1
    result = {
        "kind": "tflite", "file": name, "bytes": len(data), "sha256": sha256_bytes(data),
        "subgraphs": graph["subgraphs"],
        "inputs": [tensor_rows[j] for j in graph["inputs"]],
        "outputs": [tensor_rows[j] for j in graph["outputs"]],
        "op_counts": counts, "ops": op_rows, "tensors": tensor_rows,
        "macs": int(sum(r["macs"] for r in op_rows)), "macs_by_op": macs_by_op,
        "constant_bytes": int(sum(by_dtype.values())),
        "size_by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        "size_by_dtype": dict(sorted(by_dtype.items(), key=lambda kv: -kv[1])),
        "largest_tensors": sorted(({"name": r["name"], "bytes": r["bytes"], "dtype": r["dtype"]}
                                   for r in tensor_rows if r["constant"]), key=lambda r: -r["bytes"])[:20],
        "arena": {"bytes": estimate_arena_bytes(data),
                  "method": "estimate: peak bytes of live non-constant tensors"},
        "xnnpack": {**xnn, "delegated_count": len(xnn["delegated_ops"]),
                    "fallback_count": len(xnn["fallback_ops"]), "fallback_op_counts": fallback_counts},
    }
    if tflm:
        from edgeprune.quantize import tflm as tflm_mod

        micro = tflm_mod.check(data)
        result["arena"] = {"bytes": micro["arena_bytes"], "method": "tflm (exact, RecordingMicroAllocator)"}
    from edgeprune.quantize import metadata

    meta = metadata.read_metadata(data)
    if meta is not None:
        result["metadata"] = meta
    return result


def inspect_keras(path: Path, *, custom_objects=None, unsafe: bool = False) -> dict:
    """Layers, MACs, params and the pruning groups of a Keras model file."""
    from edgeprune.load.graph import trace
    from edgeprune.load.model_io import load_model
    from edgeprune.pruning import macs as macs_mod
    from edgeprune.pruning.groups import build_groups

    loaded = load_model(path, custom_objects=custom_objects, safe_mode=not unsafe)
    model = loaded.model
    graph = trace(model)
    per = macs_mod.summarize(graph)
    gs = build_groups(graph)
    layers = [{"name": name, "class_name": graph.layers[name].class_name, **v} for name, v in per.items()]
    groups = [{"id": g.id, "name": g.name, "channels": g.size, "producers": list(g.producers),
               "layers": list(g.layers), "prunable": g.locked is None, "locked": g.locked}
              for g in gs.groups]
    return {
        "kind": "keras", "file": str(path), "flavour": loaded.flavour, "sha256": loaded.sha256,
        "inputs": [{"name": t.name, "shape": [None if d is None else int(d) for d in t.shape]} for t in model.inputs],
        "outputs": [{"name": t.name, "shape": [None if d is None else int(d) for d in t.shape]} for t in model.outputs],
        "params": int(model.count_params()),
        "macs": int(sum(v["macs"] for v in per.values())),
        "layers": layers,
        "groups": groups,
        "prunable_groups": sum(1 for g in groups if g["prunable"]),
        "prunable_channels": sum(g["channels"] for g in groups if g["prunable"]),
        "locked_groups": sum(1 for g in groups if not g["prunable"]),
        "model_class": loaded.note,  # a keras.Model subclass traced as, or saved as, functional
    }


def inspect(path, *, custom_objects=None, unsafe: bool = False) -> dict:
    """Python API of ``edgeprune inspect``: a .tflite file, an artifact directory or a Keras model.

    A .tflite passes edgeprune.device.tflite_check first: the interpreter below runs in this process.
    """
    from edgeprune.device.tflite_check import check_untrusted_tflite

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory")
    if p.is_dir() and not (p / "saved_model.pb").exists():
        from edgeprune.device.artifact import check_manifest, resolve_artifact, sha256_of

        art = resolve_artifact(p)
        data = art.read_bytes()
        facts = check_manifest(art, sha256_of(data))
        check_untrusted_tflite(data, str(art))
        manifest = _read_json(p / "manifest.json")
        tflm = (manifest or {}).get("runtime") == "tflm"
        result = inspect_tflite(data, name=str(art), tflm=tflm)
        result["directory"] = str(p)
        if facts is not None:
            result["manifest"] = {"sha256_checked": facts.get("sha256_checked"),
                                  "quantization": (manifest or {}).get("quantization"),
                                  "target": ((manifest or {}).get("profile") or {}).get("name")}
        return result
    if p.is_file() and (is_tflite(p) or p.suffix.lower() == ".tflite"):
        data = p.read_bytes()
        check_untrusted_tflite(data, str(p))
        return inspect_tflite(data, name=str(p))
    if p.suffix in (".keras", ".h5", ".hdf5") or p.is_dir():
        return inspect_keras(p, custom_objects=custom_objects, unsafe=unsafe)
    raise InputError(f"{p}: expected a .tflite file, an artifact directory or a Keras model (.keras/.h5/SavedModel)")


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    return value if isinstance(value, dict) else None
