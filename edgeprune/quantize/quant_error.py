"""Per-layer quantization error measured on the artifact itself.

TensorFlow's QuantizationDebugger and ai-edge-quantizer compare layers inside the converter's
own debug model. Here the shipped .tflite runs in the LiteRT interpreter with
``experimental_preserve_all_tensors=True`` (builtin kernels, the default delegate off, because
a delegate fuses its partition and its intermediates cannot be read), and so does a float
.tflite of the reference model. Every op output of the artifact is matched to the float tensor
of the same name (the converter keeps the Keras op names through quantization), or failing
that to the same op type at the same position with the same shape, dequantized, and compared:

- RMSE, and RMSE over the tensor's quantization scale (how many quantization steps off);
- cosine similarity of the flattened tensors;
- SQNR in dB: 10 log10(sum ref^2 / sum (q - ref)^2);
- RMSE over the float reference's range (max - min over the samples): the error as a fraction
  of what the tensor spans, comparable across tensors whatever their scale.

Tensors are ranked worst first by that normalised error. Tensors it cannot describe are
degenerate, flagged with the reason and listed after the ranking (``rank`` null): a float
reference that is constant on the samples (no range to normalise by), or an integer grid that
spans less than ``DEGENERATE_SPAN`` (scale x (levels - 1); the converter picks such scales,
~1e-8 for int8, only for tensors that were (nearly) constant on the calibration data, dead
activations of an untrained or collapsed layer). Ranked by SQNR or RMSE/scale they came first
and hid the layers that lose accuracy. Errors accumulate, so a layer's figure includes
what the layers before it lost; the first layer where SQNR drops sharply is the one to keep in
float (``compile --keep-float auto`` does this by measurement, edgeprune.quantize.selective).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeprune.base.errors import InputError

_SKIP_OPS = ("DEQUANTIZE",)  # its output is its input dequantized: already measured
# A quantized tensor whose whole integer grid spans less than this (in real units) carries no
# usable signal: see the module docstring. int8: scale below ~3.9e-7; int16: below ~1.5e-9.
DEGENERATE_SPAN = 1e-4
_LEVELS = {"int8": 255, "uint8": 255, "int16": 65535}  # activation dtypes


def _interp(tflite: bytes):
    from edgeprune.quantize.inspection import interpreter

    return interpreter(tflite, delegates=False, experimental_preserve_all_tensors=True)


def _op_outputs(it) -> list[tuple[str, int, list[int]]]:
    """(op name, first output tensor, input tensors) of every node, in execution order."""
    from edgeprune.quantize.inspection import node_list

    return [(name, outs[0], ins) for name, ins, outs in node_list(it) if outs]


def match_tensors(q_it, f_it) -> tuple[list[dict], list[str]]:
    """Pairs of (quantized tensor, float tensor) per op output, and the names left unmatched.

    A QUANTIZE of a float input is compared with that float input (the input's own error).
    """
    fd = {d["index"]: d for d in f_it.get_tensor_details()}
    qd = {d["index"]: d for d in q_it.get_tensor_details()}
    f_by_name = {d["name"]: d["index"] for d in fd.values()}
    f_by_type: dict[str, list[int]] = {}
    for op, t, _ in _op_outputs(f_it):
        f_by_type.setdefault(op, []).append(t)
    seen: dict[str, int] = {}
    pairs, unmatched = [], []
    for op, t, ins in _op_outputs(q_it):
        k = seen.get(op, 0)
        seen[op] = k + 1
        if op in _SKIP_OPS:
            continue
        q = qd[t]
        shape = list(q["shape"])
        if op == "QUANTIZE":
            src = qd[ins[0]] if ins else None
            f = f_by_name.get(src["name"]) if src is not None and np.dtype(src["dtype"]).kind == "f" else None
        else:
            f = f_by_name.get(q["name"])
            if f is None or list(fd[f]["shape"]) != shape:
                cands = f_by_type.get(op, [])
                f = cands[k] if k < len(cands) and list(fd[cands[k]]["shape"]) == shape else None
        if f is None or list(fd[f]["shape"]) != shape:
            unmatched.append(q["name"])
            continue
        pairs.append({"op": op, "tensor": q["name"], "float_tensor": fd[f]["name"], "q": t, "f": f,
                      "inputs": ins, "shape": shape, "dtype": np.dtype(q["dtype"]).name})
    return pairs, unmatched


def _dequant(value: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(value.dtype, np.integer) and scale:
        return (value.astype(np.float64) - zero) * scale
    return value.astype(np.float64)


def _set_input(it, x: np.ndarray) -> None:
    from edgeprune.device import runner

    detail = it.get_input_details()[0]
    it.set_tensor(detail["index"], runner.to_input_dtype(np.ascontiguousarray(x), detail, np))


def measure(quantized: bytes, reference_float: bytes, x: np.ndarray, *, progress=None,
            device_values: dict | None = None) -> dict:
    """Compare every intermediate tensor of ``quantized`` with ``reference_float`` on ``x``.

    ``device_values`` (tensor index -> array of one row per sample, from the runner's
    ``dump_tensors`` on a device) replaces running the artifact here.
    """
    q_it, f_it = _interp(quantized), _interp(reference_float)
    if len(q_it.get_input_details()) != 1:
        raise InputError("--quant-error supports models with one input")
    pairs, unmatched = match_tensors(q_it, f_it)
    if not pairs:
        raise InputError("--reference: no tensor of the artifact matches the reference model "
                         "(is it the float model the artifact was compiled from, after pruning?)")
    want = list(q_it.get_input_details()[0]["shape"])
    if list(x.shape[1:]) != want[1:]:
        raise InputError(f"--data: samples have shape {list(x.shape[1:])}, the artifact expects {want[1:]}")
    qdet = {d["index"]: d for d in q_it.get_tensor_details()}
    acc = {p["q"]: np.zeros(4) for p in pairs}  # sum err^2, sum ref^2, dot, sum q^2
    counts = {p["q"]: 0 for p in pairs}
    lo = {p["q"]: np.inf for p in pairs}  # the float reference's range over all samples
    hi = {p["q"]: -np.inf for p in pairs}
    for i in range(len(x)):
        sample = x[i:i + 1]
        _set_input(f_it, sample)
        f_it.invoke()
        if device_values is None:
            _set_input(q_it, sample)
            q_it.invoke()
        for p in pairs:
            raw = q_it.get_tensor(p["q"]) if device_values is None else device_values[p["q"]][i]
            qv = _dequant(raw, qdet[p["q"]]).ravel()
            fv = f_it.get_tensor(p["f"]).astype(np.float64).ravel()
            a = acc[p["q"]]
            a += (float(np.sum((qv - fv) ** 2)), float(np.sum(fv * fv)), float(np.dot(qv, fv)), float(np.sum(qv * qv)))
            counts[p["q"]] += qv.size
            if fv.size:
                lo[p["q"]] = min(lo[p["q"]], float(fv.min()))
                hi[p["q"]] = max(hi[p["q"]], float(fv.max()))
        if progress is not None:
            progress.advance()
    rows = []
    for p in pairs:
        err2, ref2, dot, q2 = acc[p["q"]]
        n = max(counts[p["q"]], 1)
        rmse = float(np.sqrt(err2 / n))
        scale = float(qdet[p["q"]].get("quantization", (0.0, 0))[0] or 0.0)
        cosine = float(dot / np.sqrt(ref2 * q2)) if ref2 > 0 and q2 > 0 else (1.0 if err2 == 0 else 0.0)
        # None when the tensor is exact (no error) or the reference is all zeros.
        sqnr = float(10 * np.log10(ref2 / err2)) if err2 > 0 and ref2 > 0 else None
        span = hi[p["q"]] - lo[p["q"]] if np.isfinite(hi[p["q"]]) else 0.0
        rows.append({"op": p["op"], "tensor": p["tensor"], "float_tensor": p["float_tensor"],
                     "shape": p["shape"], "dtype": p["dtype"],
                     "scale": scale or None, "rmse": rmse, "rmse_over_scale": rmse / scale if scale else None,
                     "float_range": [lo[p["q"]], hi[p["q"]]] if np.isfinite(hi[p["q"]]) else None,
                     "rmse_over_range": rmse / span if span > 0 else None,
                     "cosine": cosine, "sqnr_db": sqnr, "exact": err2 == 0,
                     "degenerate": degenerate_reason(scale, p["dtype"], span)})
    # Error added by this op: SQNR of its (measured) inputs minus its own. Cumulative SQNR alone
    # blames every layer after the culprit; the local drop points at the culprit itself.
    by_q = {p["q"]: r for p, r in zip(pairs, rows)}
    for p, r in zip(pairs, rows):
        before = [by_q[j]["sqnr_db"] for j in p["inputs"] if j in by_q and by_q[j]["sqnr_db"] is not None]
        own = r["sqnr_db"] if r["sqnr_db"] is not None else (1e9 if r["exact"] else -1e9)
        r["local_drop_db"] = max(0.0, min(before) - own) if before and own < 1e8 else (
            0.0 if r["exact"] else None)
        r["inputs"] = [by_q[j]["float_tensor"] for j in p["inputs"] if j in by_q]
    for i, r in enumerate(rows):
        r["position"] = i
    ranked = sorted((r for r in rows if r["degenerate"] is None),
                    key=lambda r: (-r["rmse_over_range"], r["position"]))  # worst first, then graph order
    for rank, r in enumerate(ranked, 1):
        r["rank"] = rank
    degenerate = [r for r in rows if r["degenerate"] is not None]
    for r in degenerate:
        r["rank"] = None
    note = None
    if unmatched and len(unmatched) >= len(rows):
        note = (f"{len(unmatched)} of {len(unmatched) + len(rows)} tensors have no float counterpart of the same "
                "shape: is --reference the model before pruning? Pass the pruned float model for a per-layer view")
    return {"samples": int(len(x)), "compared": len(rows), "unmatched": unmatched, "note": note,
            "method": "LiteRT builtin kernels, experimental_preserve_all_tensors; float reference = "
                      "the reference model converted to float32 .tflite",
            "ranking": "rmse_over_range: RMSE / (max - min) of the float reference over the samples, worst first",
            "degenerate_span": DEGENERATE_SPAN, "degenerate_count": len(degenerate),
            "layers": ranked + degenerate}


def degenerate_reason(scale: float, dtype: str, float_span: float) -> str | None:
    """Why a tensor's error cannot be ranked (see the module docstring), or None when it can."""
    if float_span <= 0:
        return "constant float reference on the samples (no range to normalise by)"
    levels = _LEVELS.get(dtype)
    if scale and levels and scale * levels < DEGENERATE_SPAN:
        return f"quantization scale {scale:.3g}: the {dtype} grid spans under {DEGENERATE_SPAN:g}"
    return None


def float_reference(reference, *, custom_objects=None, unsafe: bool = False) -> bytes:
    """Float32 .tflite bytes of the reference: a float .tflite as is, else a Keras model converted."""
    from edgeprune.quantize.inspection import is_tflite

    p = Path(reference)
    if not p.exists():
        raise InputError(f"--reference {p}: no such file")
    if p.is_file() and is_tflite(p):
        return p.read_bytes()
    from edgeprune.load.model_io import load_model
    from edgeprune.quantize.convert import convert

    model = load_model(p, custom_objects=custom_objects, safe_mode=not unsafe).model
    return convert(model, "float32")


def run_on_device(artifact: Path, x: np.ndarray, *, target=None, host=None, remote_python=None) -> tuple[dict, str]:
    """Intermediate tensors of the artifact computed by the runner on a device (or locally in the
    runner's own process with ``host='local'``): ({tensor index: array}, device label)."""
    import base64
    import io
    import tempfile

    from edgeprune.device.api import _resolve_devices
    from edgeprune.device.artifact import sha256_of
    from edgeprune.device.jobs import EVAL_X, RunRequest
    from edgeprune.device.local import run_local
    from edgeprune.device.profiles import load_profile
    from edgeprune.device.remote import SshSettings, run_remote

    profile = load_profile(target) if target is not None else None
    devices = _resolve_devices(profile, [host] if host else [], None, remote_python)
    device = devices[0]
    with tempfile.TemporaryDirectory(prefix="edgeprune-qerr-") as work:
        ex = Path(work) / EVAL_X
        np.save(ex, x, allow_pickle=False)
        request = RunRequest(artifact=Path(artifact).resolve(), sha256=sha256_of(Path(artifact).read_bytes()),
                             threads=(1,), runs=1, warmup=0, eval_x=ex, extra={"dump_tensors": True})
        if device.is_local:
            raw = run_local(request, python=device.python, label=device.label)
        else:
            raw = run_remote(request, device.ssh, python=device.python or "python3", settings=SshSettings.from_env())
    dump = raw.get("dump") or {}
    with np.load(io.BytesIO(base64.b64decode(dump.get("npz_b64", ""))), allow_pickle=False) as npz:
        values = {int(k[1:]): np.asarray(npz[k]) for k in npz.files}
    return values, device.label


def quant_error(artifact, reference, data, *, num_samples: int = 32, seed: int = 0,
                custom_objects=None, unsafe: bool = False, output=None, target=None, host=None,
                remote_python=None) -> dict:
    """Python API of ``edgeprune inspect ART --quant-error [--reference MODEL] --calibration X``.

    ``reference`` None: the pruned float model compile kept beside the artifact
    (:func:`kept_pruned_reference`), said in ``reference_note``; InputError naming --reference
    when there is none.

    ``host`` (an ssh spec, or 'local' for the runner in its own process) or an ssh ``target``
    profile: the artifact runs there through the bench runner; the float reference runs here.
    """
    from edgeprune.device.artifact import resolve_artifact
    from edgeprune.load.datasets import load_arrays

    art = resolve_artifact(artifact)
    quantized = art.read_bytes()
    given, reference, swapped = reference, *kept_pruned_reference(art, reference)
    if reference is None:
        raise InputError(f"{artifact}: no float model to compare with (an artifact directory keeps the pruned one "
                         f"when compile pruned); pass --reference MODEL, the float model it was compiled from")
    ref = float_reference(reference, custom_objects=custom_objects, unsafe=unsafe)
    q_it = _interp(quantized)
    shape = tuple(int(d) for d in q_it.get_input_details()[0]["shape"])
    x, _ = load_arrays(str(data), input_shape=(None, *shape[1:]), num_samples=num_samples, seed=seed)
    x = np.asarray(x, np.float32)
    values, where = None, "this machine (in process)"
    remote = host is not None or (target is not None and _is_ssh(target))
    if remote:
        from contextlib import nullcontext

        ctx = output.progress(f"Running the artifact on {host or target}") if output is not None else nullcontext()
        with ctx:
            values, where = run_on_device(art, x, target=target, host=host, remote_python=remote_python)
    if output is not None:
        with output.progress("Comparing every tensor with the float reference", total=len(x)) as bar:
            result = measure(quantized, ref, x, progress=bar, device_values=values)
    else:
        result = measure(quantized, ref, x, device_values=values)
    result.update(artifact=str(art), reference=str(reference), data=str(data), device=where)
    if swapped:  # said apart from measure's note, which is about the tensors matched
        result["reference_given"] = None if given is None else str(given)
        result["reference_note"] = (f"compared with {reference}, the pruned float model compile kept" + (
            " (pass --reference to compare with another model)" if given is None
            else f", not with --reference {given} (the model before pruning)"))
    return result


def kept_pruned_reference(art: Path, reference) -> tuple[Path, bool]:
    """(the float model to compare with, whether it replaced ``reference``).

    A pruned artifact's directory keeps the pruned float model (manifest ``pruned_model``): its
    tensors have the artifact's shapes, the unpruned model's do not. It replaces ``reference``
    when that is missing or is the artifact's own source model (same sha256); any other
    reference the user names is kept."""
    import json

    from edgeprune.load.model_io import model_sha256

    try:
        manifest = json.loads((art.parent / "manifest.json").read_text())
        kept = art.parent / Path(str(manifest["pruned_model"]["file"])).name
        source_sha = manifest["source"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return reference, False
    if not kept.is_file():
        return reference, False
    if reference is None:
        return kept, True
    given = Path(reference)
    if given.exists() and given.resolve() != kept.resolve() and model_sha256(given) == source_sha:
        return kept, True
    return reference, False


def _is_ssh(target) -> bool:
    from edgeprune.device.profiles import load_profile

    return load_profile(target).connection.kind == "ssh"
