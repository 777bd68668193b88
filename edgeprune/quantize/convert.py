"""Lower a Keras model (either flavour) or a bare SavedModel to TFLite bytes in one quantization mode, and inspect the result.

Inspection reads the flatbuffer directly (ops, tensor types, constant buffers) so the compile
can prove an int8-only target really got an all-integer graph, and estimate the tensor arena.
"""
from __future__ import annotations

import contextlib
import io as _io
from dataclasses import dataclass

import numpy as np

from edgeprune.base.errors import InputError, VerificationError

QUANT_MODES = ("float32", "dynamic", "float16", "int8", "int16x8")
IO_TYPES = ("float", "int8", "uint8")
NEEDS_DATA = ("int8", "int16x8")
_FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")
_ITEMSIZE = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1, "INT16": 2,
             "INT8": 1, "FLOAT64": 8, "COMPLEX64": 8, "UINT64": 8, "UINT32": 4, "UINT16": 2,
             "BFLOAT16": 2, "COMPLEX128": 16, "INT4": 1, "INT2": 1, "UINT4": 1}


def check_options(quantization: str, io: str, representative, int8_only: bool) -> None:
    """Refuse impossible combinations before spending seconds in the converter."""
    if quantization not in QUANT_MODES:
        raise InputError(f"--quantize: unknown mode '{quantization}' (choose from {', '.join(QUANT_MODES)})")
    if io not in IO_TYPES:
        raise InputError(f"--io: unknown type '{io}' (choose from {', '.join(IO_TYPES)})")
    if int8_only and quantization != "int8":
        raise InputError(
            f"--quantize {quantization}: the target runs int8 builtins only (operators.int8_only); use int8"
        )
    if io != "float" and quantization != "int8":
        raise InputError(f"--io {io} needs --quantize int8 (found {quantization})")
    if quantization in NEEDS_DATA and (representative is None or len(representative) == 0):
        raise InputError(
            f"--quantize {quantization} needs representative data: pass --calibration "
            "(.npy/.npz, an image folder or module:function)"
        )


# Keras layer classes that become a WHILE loop or a fused sequence op in TFLite. Calibrating
# them (int8, int16x8) crashes the TFLite converter of TensorFlow 2.21 with a segfault that
# takes the whole process down (tensorflow/tensorflow#41305), so they are refused up front.
_RECURRENT = {"LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D",
              "ConvLSTM3D", "CuDNNLSTM", "CuDNNGRU", "LSTMV1", "GRUV1"}
_LOOP_OPS = ("WHILE", "UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM",
             "UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_RNN")


@dataclass(frozen=True)
class InputSpec:
    """One model input as the converter sees it: batch fixed to 1, other dims as known."""

    name: str
    shape: tuple  # full shape, batch first; None for a dimension left dynamic
    dtype: str  # numpy dtype name

    @property
    def unknown(self) -> list[int]:
        return [i for i, d in enumerate(self.shape) if d is None]


def _clean_name(name: str, index: int) -> str:
    """A TensorFlow-valid op name for a signature argument (Keras names may hold ':' or spaces)."""
    import re

    name = re.sub(r"[^A-Za-z0-9_.\-/]", "_", str(name).split(":")[0]).lstrip("_-/") or f"input_{index}"
    return name if name[0].isalnum() or name[0] == "." else f"x{name}"


def input_specs(model, input_shape=None) -> list[InputSpec]:
    """The inputs of ``model`` (Keras of either flavour, or a bare SavedModel) with batch 1.

    ``input_shape`` (see :mod:`edgeprune.load.shapes`) fixes unknown dimensions; without it they
    stay None (dynamic) and the caller decides whether that is allowed.
    """
    from edgeprune.load.shapes import apply_input_shape, input_names

    raw = []
    for i, (name, tensor) in enumerate(zip(input_names(model), model.inputs)):
        dtype = getattr(tensor, "dtype", "float32")
        dtype = getattr(dtype, "name", dtype)
        raw.append((_clean_name(name, i), tuple(None if d is None else int(d) for d in tensor.shape), str(dtype)))
    shapes = apply_input_shape([(n, s) for n, s, _ in raw], input_shape)
    return [InputSpec(n, (1,) + tuple(shape[1:]), d) for (n, _, d), shape in zip(raw, shapes)]


def recurrent_layers(model) -> list[str]:
    """'name (Class)' of every recurrent layer in ``model``, nested models and wrappers included."""
    found, seen = [], set()

    def walk(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if type(layer).__name__ in _RECURRENT:
            found.append(f"{layer.name} ({type(layer).__name__})")
            return
        for sub in list(getattr(layer, "layers", None) or []) + [getattr(layer, "layer", None)]:
            if sub is not None and sub is not layer:
                walk(sub)

    for layer in getattr(model, "layers", None) or []:
        walk(layer)
    return found


def _check_calibration_possible(model, specs, quantization: str) -> None:
    """Refuse a calibrated conversion that cannot work, in one line, before the converter runs."""
    if quantization not in NEEDS_DATA:
        return
    for spec in specs:
        if spec.unknown:
            dims = ", ".join(str(i) for i in spec.unknown)
            raise InputError(
                f"--quantize {quantization}: input '{spec.name}' has unknown dimension(s) {dims} "
                f"(shape {_fmt(spec.shape)}) and calibration needs fixed shapes; pass --input-shape "
                f"{spec.name}={_fmt(spec.shape, example=True)}"
            )
    rnn = recurrent_layers(model)
    if rnn:
        raise InputError(
            f"--quantize {quantization}: the model has recurrent layer {rnn[0]}; calibrating recurrent "
            "layers crashes the TFLite converter of this TensorFlow (tensorflow#41305): use "
            "--quantize dynamic, float16 or float32"
        )


def _fmt(shape, example: bool = False) -> str:
    return "x".join(("N" if example else "?") if d is None else str(d) for d in shape)


def _converter(tf, model, specs: list[InputSpec], fuse_lstm: bool = True):
    """A TFLiteConverter for ``model``: a batch-1 concrete function, or the SavedModel itself.

    Tracing the Keras call with a batch-1 signature (either Keras flavour) gives recurrent
    layers the static shapes the converter needs to lower them to builtins (a WHILE loop, or
    tf_keras' fused UNIDIRECTIONAL_SEQUENCE_LSTM), where ``from_keras_model``'s dynamic batch
    fails on ``tf.TensorListReserve``.
    """
    saved = getattr(model, "saved_model_dir", None)
    if saved is not None:
        return model.converter(tf, specs)
    tf_specs = [tf.TensorSpec(list(s.shape), tf.as_dtype(s.dtype), name=s.name) for s in specs]
    several = len(specs) > 1

    def call(*xs):
        out = model(list(xs) if several else xs[0], training=False)
        if isinstance(out, dict):
            out = [out[k] for k in _output_keys(model, out)]
        return list(out) if isinstance(out, (list, tuple)) else out

    concrete = tf.function(call, input_signature=tf_specs).get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], _trackable(model, fuse_lstm))


def _output_keys(model, out: dict) -> list:
    """The order of a model's dict outputs in the artifact: its ``output_names`` when they are the
    dict's keys, else the keys sorted, which is how Keras flattens a dict (``model.outputs``).

    A Keras 3 functional model whose dict outputs all come from one multi-output layer (keras-hub
    HGNetV2's ``{"stem", "stage1", "stage2"}``, all made by its encoder) names every output after
    that layer, so ``output_names`` are not keys of the dict it returns."""
    names = list(getattr(model, "output_names", None) or [])
    if names and len(set(names)) == len(names) and set(names) == set(out):
        return names
    return sorted(out)


def _trackable(model, fuse_lstm: bool = True):
    """The object the converter reads variables from, or None to freeze them from the graph.

    With the tf_keras model as trackable object the converter keeps the functions Keras marks
    as ``lstm`` and fuses them into UNIDIRECTIONAL_SEQUENCE_LSTM. A Keras 3 model there would
    keep its variables as resource variables (VAR_HANDLE ops), so Keras 3 graphs are frozen.
    ``fuse_lstm=False`` freezes tf_keras graphs too, which keeps LSTMs as WHILE loops (the
    benchmark compares both).
    """
    from edgeprune.base.env import is_keras3_model

    return None if is_keras3_model(model) or not fuse_lstm else model


def _representative(representative, specs: list[InputSpec]):
    """A representative_dataset generator: one sample per step, cast to each input's dtype.

    ``representative`` is one array (one input), a list/tuple of arrays (one per input, in
    order) or a dict keyed by input name.
    """
    if isinstance(representative, dict):
        arrays = [representative[s.name] if s.name in representative else list(representative.values())[i]
                  for i, s in enumerate(specs)]
    elif isinstance(representative, (list, tuple)) and len(specs) > 1:
        arrays = list(representative)
    else:
        arrays = [representative]
    arrays = [np.asarray(a).astype(s.dtype if s.dtype != "bool" else "bool", copy=False)
              for a, s in zip(arrays, specs)]
    n = min(len(a) for a in arrays)

    def representative_dataset():
        for i in range(n):
            yield [a[i:i + 1] for a in arrays]

    return representative_dataset


def _conversion_error(exc, printed, quantization, specs) -> VerificationError:
    """One line from the converter's many: the first error, plus a hint where we know one."""
    text = str(exc) + "\n" + "".join(printed)
    lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()]
    detail = (lines or [str(exc).strip() or type(exc).__name__])[0]
    if "error:" in detail:
        detail = detail[detail.rindex("error:") + 6:].strip() or detail
    hint = ""
    unknown = [(s.name, i) for s in specs for i in s.unknown]
    if unknown:
        name, dim = unknown[0]
        spec = next(s for s in specs if s.name == name)
        hint = (f"; input '{name}' dimension {dim} is unknown: pass --input-shape "
                f"{name}={_fmt(spec.shape, example=True)}")
    elif "TensorListReserve" in text:
        hint = ("; a recurrent loop needs static shapes: export the SavedModel with a batch-1 "
                "input signature (tf.TensorSpec([1, ...]))")
    return VerificationError(f"TFLite conversion ({quantization}) failed: {detail[:300]}{hint}")


def convert(model, quantization: str, *, representative=None, io: str = "float",
            int8_only: bool = False, input_shape=None, fuse_lstm: bool = True) -> bytes:
    """``model`` (Keras 3 or tf_keras, or a bare SavedModel) → ``.tflite`` bytes, batch 1.

    int8 is full-integer (TFLITE_BUILTINS_INT8, io as asked); int16x8 uses int16 activations and
    int8 weights. With ``int8_only`` any float op left in the graph fails (VerificationError).
    ``input_shape`` fixes unknown input dimensions (``--input-shape``); unknown dimensions are
    otherwise kept dynamic, which calibration cannot do (InputError naming the dimension).
    ``fuse_lstm=False`` keeps tf_keras LSTMs as WHILE loops instead of the fused op.
    """
    from edgeprune.base.env import tf

    check_options(quantization, io, representative, int8_only)
    tf = tf()
    specs = input_specs(model, input_shape)
    _check_calibration_possible(model, specs, quantization)
    from edgeprune.base.env import capture_fds

    error = None
    with capture_fds() as printed:  # tracing prints from C++ too; keep the console clean
        try:
            converter = _converter(tf, model, specs, fuse_lstm)
        except Exception as exc:  # tracing the model failed (bad shape, broken layer)
            error = exc
    if error is not None:
        raise _conversion_error(error, printed, quantization, specs) from None
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization in NEEDS_DATA:
        converter.representative_dataset = _representative(representative, specs)
    if quantization == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io != "float":
            converter.inference_input_type = tf.int8 if io == "int8" else tf.uint8
            converter.inference_output_type = converter.inference_input_type
    elif quantization == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    try:
        # the converter prints from C++, and Keras 3 may print "Saved artifact at ..." to
        # Python's stdout: keep the console (and --json output) clean
        with capture_fds() as printed, contextlib.redirect_stdout(_io.StringIO()):
            tflite = converter.convert()
    except Exception as exc:  # ConverterError and friends: keep the first meaningful line
        raise _conversion_error(exc, printed, quantization, specs) from None
    if int8_only:
        bad = float_ops(tflite)
        if bad:
            raise VerificationError(
                f"int8-only target: the {quantization} graph still has {len(bad)} float op(s), "
                f"first {bad[0]}"
            )
    check_finite(tflite, model, specs, representative, f"TFLite conversion ({quantization})")
    return tflite


def _probe(representative, specs: list[InputSpec]) -> tuple[dict, str]:
    """One batch-1 input per model input, keyed by input name, and how to name it in a message:
    the first calibration sample when there is one, else a fixed probe (uniform [0, 1) floats
    from seed 0, zeros for integer and bool inputs; unknown dimensions as 1)."""
    if representative is not None and len(representative):
        sample = next(iter(_representative(representative, specs)()))
        return {s.name: a for s, a in zip(specs, sample)}, "the first calibration sample"
    rng = np.random.default_rng(0)
    probe = {}
    for s in specs:
        shape = tuple(1 if d is None else d for d in s.shape)
        kind = np.dtype(s.dtype).kind
        probe[s.name] = rng.random(shape).astype(s.dtype) if kind == "f" else np.zeros(shape, s.dtype)
    return probe, "a probe input (uniform [0, 1), seed 0)"


def _all_finite(outputs) -> bool:
    values = outputs.values() if isinstance(outputs, dict) else outputs if isinstance(outputs, (list, tuple)) \
        else [outputs]
    return all(np.isfinite(np.asarray(v, np.float64)).all() for v in values)


def check_finite(tflite: bytes, model, specs: list[InputSpec], representative=None,
                 what: str = "TFLite conversion") -> None:
    """Refuse an artifact whose outputs are NaN or infinite on one input, in one line.

    Why: a graph that reads uninitialised variables (a Keras 3 model converted as if it were
    tf_keras) or a broken weight converts without a word and then gives NaN on the device. The
    Keras model is run only when the artifact fails, to say whose fault it is: the converter's
    (VerificationError) or the model's own (InputError). An artifact the local interpreter
    cannot run on the probe is left to the later checks, which name that problem.
    """
    from edgeprune.device.api import evaluate_tflite

    x, where = _probe(representative, specs)
    try:
        outputs = evaluate_tflite(tflite, x if len(specs) > 1 else next(iter(x.values())), trusted=True)["outputs"]
    except (InputError, RuntimeError, ValueError):
        return
    if _all_finite(outputs):
        return
    try:
        arrays = [x[s.name] for s in specs]
        reference = model(arrays if len(arrays) > 1 else arrays[0], training=False)
        keras_finite = _all_finite(list(reference.values()) if isinstance(reference, dict) else reference)
    except Exception:  # a bare SavedModel or a model that cannot run eagerly: say what is known
        keras_finite = None
    if keras_finite is False:
        raise InputError(f"{what}: the Keras model itself gives NaN/Inf on {where}, and so does the converted "
                         "model: check its weights (e.g. a BatchNormalization moving variance) or the input")
    said = "finite outputs" if keras_finite else "outputs that could not be computed here"
    raise VerificationError(f"{what}: the converted model gives NaN/Inf on {where}; the Keras model gives {said}")


def loop_ops(tflite: bytes) -> dict[str, int]:
    """Recurrent loop ops of a converted graph (WHILE, fused sequence LSTM/RNN) and their counts."""
    return {k: v for k, v in op_counts(tflite).items() if k in _LOOP_OPS}


# --- flatbuffer inspection -----------------------------------------------------------------

@dataclass
class _Tensor:
    name: str
    type: str
    shape: tuple
    constant: bool

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= max(int(d), 1)
        return n * _ITEMSIZE.get(self.type, 4)


def _schema():
    from edgeprune.base.env import tf

    tf()
    from tensorflow.lite.python import schema_py_generated as schema_fb

    return schema_fb


def _names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_")}


def read_graph(tflite: bytes) -> dict:
    """Ops and tensors of the main subgraph: {"ops": [(op name, inputs, outputs)], "tensors": [...]}."""
    fb = _schema()
    model = fb.Model.GetRootAsModel(tflite, 0)
    op_names, type_names = _names(fb.BuiltinOperator), _names(fb.TensorType)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        name = op_names.get(code, str(code))
        if name == "CUSTOM" and oc.CustomCode():
            name = f"CUSTOM:{oc.CustomCode().decode()}"
        codes.append(name)
    sub = model.Subgraphs(0)
    tensors = []
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        buf = model.Buffers(t.Buffer()) if t.Buffer() < model.BuffersLength() else None
        constant = bool(t.Buffer()) and buf is not None and (buf.DataLength() > 0 or buf.Offset() > 1)
        tensors.append(_Tensor((t.Name() or b"").decode(), type_names.get(t.Type(), str(t.Type())),
                               tuple(t.ShapeAsNumpy()) if t.ShapeLength() else (), constant))
    ops = []
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        ins = [j for j in (op.InputsAsNumpy() if op.InputsLength() else []) if j >= 0]
        outs = [j for j in (op.OutputsAsNumpy() if op.OutputsLength() else []) if j >= 0]
        ops.append((codes[op.OpcodeIndex()], [int(j) for j in ins], [int(j) for j in outs]))
    inputs = [int(j) for j in sub.InputsAsNumpy()] if sub.InputsLength() else []
    outputs = [int(j) for j in sub.OutputsAsNumpy()] if sub.OutputsLength() else []
    return {"ops": ops, "tensors": tensors, "inputs": inputs, "outputs": outputs,
            "subgraphs": model.SubgraphsLength()}


def float_ops(tflite: bytes) -> list[str]:
    """Ops reading or writing a float tensor, as "#i OPNAME (tensor 'name' FLOAT32)"."""
    graph = read_graph(tflite)
    bad = []
    for i, (name, ins, outs) in enumerate(graph["ops"]):
        for j in ins + outs:
            t = graph["tensors"][j]
            if t.type in _FLOAT_TYPES:
                bad.append(f"#{i} {name} (tensor '{t.name}' {t.type.lower()})")
                break
    return bad


def op_counts(tflite: bytes) -> dict[str, int]:
    """How many of each op the graph has (for the report)."""
    counts: dict[str, int] = {}
    for name, _, _ in read_graph(tflite)["ops"]:
        counts[name] = counts.get(name, 0) + 1
    return counts


def estimate_arena_bytes(tflite: bytes) -> int:
    """Peak bytes of simultaneously live non-constant tensors over the op order.

    A lower bound on what a memory-planning runtime (LiteRT, TFLM) needs for activations; it
    ignores alignment and fragmentation (TFLM's exact figure comes from ``edgeprune.quantize.tflm``).
    """
    graph = read_graph(tflite)
    tensors, ops = graph["tensors"], graph["ops"]
    n_ops = len(ops)
    first, last = {}, {}
    for j in graph["inputs"]:
        first[j] = 0
    for i, (_, ins, outs) in enumerate(ops):
        for j in outs:
            first.setdefault(j, i)
            last[j] = max(last.get(j, i), i)
        for j in ins:
            first.setdefault(j, i)
            last[j] = i
    for j in graph["outputs"]:
        last[j] = n_ops
    peak = 0
    for i in range(max(n_ops, 1)):
        live = sum(tensors[j].nbytes for j in first
                   if not tensors[j].constant and first[j] <= i <= last.get(j, first[j]))
        peak = max(peak, live)
    return int(peak)


def io_details(tflite: bytes) -> dict:
    """Inputs/outputs as the runtime sees them: name, shape, dtype, scale, zero_point."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeprune.base.env import capture_fds

    with capture_fds():  # LiteRT announces its delegate on stderr
        interp = Interpreter(model_content=tflite)

    def one(d):
        scale, zero = d.get("quantization", (0.0, 0))
        return {"name": d["name"], "shape": [int(s) for s in d["shape"]],
                "dtype": np.dtype(d["dtype"]).name, "scale": float(scale), "zero_point": int(zero)}

    return {"inputs": [one(d) for d in interp.get_input_details()],
            "outputs": [one(d) for d in interp.get_output_details()]}
