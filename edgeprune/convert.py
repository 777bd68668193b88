"""Lower a tf_keras model to TFLite bytes in one quantization mode, and inspect the result.

Inspection reads the flatbuffer directly (ops, tensor types, constant buffers) so the compile
can prove an int8-only target really got an all-integer graph, and estimate the tensor arena.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeprune.errors import InputError, VerificationError

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


def convert(model, quantization: str, *, representative: np.ndarray | None = None,
            io: str = "float", int8_only: bool = False) -> bytes:
    """``model`` (functional Keras 3 or tf_keras) → ``.tflite`` bytes.

    int8 is full-integer (TFLITE_BUILTINS_INT8, io as asked); int16x8 uses int16 activations and
    int8 weights. With ``int8_only`` any float op left in the graph fails (VerificationError).
    """
    from edgeprune._env import tf

    check_options(quantization, io, representative, int8_only)
    tf = tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization in NEEDS_DATA:
        data = np.asarray(representative, np.float32)

        def representative_dataset():
            for i in range(len(data)):
                yield [data[i:i + 1]]

        converter.representative_dataset = representative_dataset
    if quantization == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io != "float":
            converter.inference_input_type = tf.int8 if io == "int8" else tf.uint8
            converter.inference_output_type = converter.inference_input_type
    elif quantization == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    from edgeprune.tflm import capture_fds

    import contextlib
    import io as _io

    try:
        # the converter prints from C++, and Keras 3's export prints "Saved artifact at ..." to
        # Python's stdout: keep the console (and --json output) clean
        with capture_fds() as printed, contextlib.redirect_stdout(_io.StringIO()):
            tflite = converter.convert()
    except Exception as exc:  # ConverterError and friends: keep the first meaningful line
        text = str(exc) + "\n" + "".join(printed)
        lines = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()]
        detail = (lines or [str(exc).strip() or type(exc).__name__])[0][:300]
        raise VerificationError(f"TFLite conversion ({quantization}) failed: {detail}") from None
    if int8_only:
        bad = float_ops(tflite)
        if bad:
            raise VerificationError(
                f"int8-only target: the {quantization} graph still has {len(bad)} float op(s), "
                f"first {bad[0]}"
            )
    return tflite


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
    from edgeprune._env import tf

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
    ignores alignment and fragmentation (TFLM's exact figure comes from ``edgeprune.tflm``).
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

    from edgeprune.tflm import capture_fds

    with capture_fds():  # LiteRT announces its delegate on stderr
        interp = Interpreter(model_content=tflite)

    def one(d):
        scale, zero = d.get("quantization", (0.0, 0))
        return {"name": d["name"], "shape": [int(s) for s in d["shape"]],
                "dtype": np.dtype(d["dtype"]).name, "scale": float(scale), "zero_point": int(zero)}

    return {"inputs": [one(d) for d in interp.get_input_details()],
            "outputs": [one(d) for d in interp.get_output_details()]}
