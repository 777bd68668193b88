"""Whether bytes that claim to be a .tflite may be handed to the native LiteRT interpreter.

The interpreter is C++: a malformed flatbuffer can crash it (SIGSEGV) and take the whole
edgeprune process with it, or make it try to allocate terabytes. A file that a user gives
edgeprune (``inspect``, ``bench``, ``verify``, ``evaluate_tflite``) passes two checks before
edgeprune's own process loads it, :func:`check_untrusted_tflite`:

1. :func:`verify_flatbuffer`, pure Python, before any native code sees the bytes: size, the
   ``TFL3`` identifier, the root table and its vtable inside the buffer, a bounded walk of the
   big vectors (no shared tables or strings that would make a small file expand into millions
   of objects), a full walk with the schema's object API, then the indices the interpreter
   trusts (opcodes, tensors, buffers, subgraphs), constant data that matches its shape and
   dtype, data stored outside the flatbuffer (models over 2 GB) inside the file, and caps on
   counts and declared tensor bytes (the ``MAX_*`` constants below).
2. :func:`probe_in_child`: load, ``allocate_tensors`` and one ``invoke`` on zero inputs in a
   child process (the bench runner's ``probe`` job, :mod:`edgeprune.device.runner`), with the
   default delegate and with builtin kernels only, as edgeprune itself will use it. A crash or
   a hang kills the child, and becomes one line here.

Each failure is ``InputError("<file>: ...")`` (exit 2). Results are cached by sha256 for the
life of the process: the second look at the same bytes costs a hash. Compile's own converter
output is trusted and skips the child (the accuracy gate runs :func:`verify_flatbuffer` only).

The probe is evidence, not proof: a kernel that reads memory it should not may crash one
process and not another (the heap differs), so the structural checks refuse what fuzzing
showed to crash (absent weights, an op writing into constant data) instead of relying on it.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from edgeprune.base.errors import InputError

FILE_IDENTIFIER = b"TFL3"
# Root offset, identifier, a vtable and a table: nothing smaller is a model.
MIN_BYTES = 16
# Caps on what a model may declare. Edge models have tens to a few thousand of each; the caps
# only stop a file whose numbers were made up from making the walk or the interpreter run away.
MAX_SUBGRAPHS = 1_000
MAX_OPERATORS = 200_000      # all subgraphs together
MAX_TENSORS = 500_000        # all subgraphs together
MAX_BUFFERS = 500_000
MAX_RANK = 16
# Declared bytes of all non-constant tensors together (an upper bound of the arena the
# interpreter allocates); constant tensors are bounded by the file itself.
MAX_DECLARED_TENSOR_BYTES = 16 << 30
# Load + allocate + one invoke of an edge model takes well under a second; this only stops a hang.
PROBE_TIMEOUT_S = 120.0

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
# Byte size of one element per TensorType name; None: no fixed size (strings, resources,
# variants), and the sub-byte types pack several elements into a byte (either layout is accepted).
_ITEMSIZE = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "STRING": None, "BOOL": 1,
             "INT16": 2, "COMPLEX64": 8, "INT8": 1, "FLOAT64": 8, "COMPLEX128": 16, "UINT64": 8,
             "RESOURCE": None, "VARIANT": None, "UINT32": 4, "UINT16": 2, "BFLOAT16": 2,
             "FLOAT8_E4M3FN": 1, "FLOAT8_E5M2": 1}
_SUB_BYTE_BITS = {"INT4": 4, "UINT4": 4, "INT2": 2}
# Ops whose kernels (and the XNNPACK delegate) read their first inputs without checking for an
# absent (-1) tensor: data, weights (and TRANSPOSE_CONV's output shape). Fuzzing found these.
_REQUIRED_INPUTS = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3,
                    "CONV_3D": 2, "CONV_3D_TRANSPOSE": 3}
# vtable offsets of the string fields read while bounding the walk. Flatbuffers never moves a
# field (schema evolution appends), so these hold for every version of the TFLite schema.
_STRING_SLOTS = {"Tensor.name": 10, "OperatorCode.custom_code": 6, "SubGraph.name": 12,
                 "TensorMap.name": 4, "Metadata.name": 4, "SignatureDef.signature_key": 8}

# sha256 -> None (passed both checks) or the reason it failed (without the file name).
_CHECKED: dict[str, str | None] = {}


class _Bad(Exception):
    """One reason the bytes are not a valid model (becomes the InputError's parenthesis)."""


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _shown(raw, limit: int = 60) -> str:
    """A tensor name from the file, safe for a one-line message."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw or "")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + "…"


# --------------------------------------------------------------------------- structure

class _Bounds:
    """Bounds checks of the raw flatbuffer while the accessor API walks the big vectors.

    The object API reads without bounds checks of its own (a negative vtable offset wraps
    around, a string is silently cut) and expands shared tables and strings once per
    reference; this walk refuses both before the object API runs.
    """

    def __init__(self, data: bytes):
        self.data, self.n = data, len(data)
        self.tables = self.n // 4 + 16  # no table is smaller than its 4-byte vtable offset
        self.strings = self.n

    def u32(self, pos: int) -> int:
        if pos < 0 or pos + 4 > self.n:
            raise _Bad(f"offset {pos} lies outside the {self.n}-byte file")
        return _U32.unpack_from(self.data, pos)[0]

    def table(self, obj, what: str) -> None:
        """The table at obj._tab.Pos, its vtable and every field offset lie inside the file."""
        pos, n = obj._tab.Pos, self.n
        if pos < 0 or pos % 4 or pos + 4 > n:
            raise _Bad(f"{what}: table at byte {pos} lies outside the file or is misaligned")
        vt = pos - _I32.unpack_from(self.data, pos)[0]
        if vt < 0 or vt % 2 or vt + 4 > n:
            raise _Bad(f"{what}: the vtable of the table at byte {pos} lies outside the file")
        size, obj_size = _U16.unpack_from(self.data, vt)[0], _U16.unpack_from(self.data, vt + 2)[0]
        if size < 4 or size % 2 or vt + size > n or obj_size < 4 or pos + obj_size > n:
            raise _Bad(f"{what}: the table at byte {pos} has a vtable that does not fit the file")
        for k in range(4, size, 2):
            field = _U16.unpack_from(self.data, vt + k)[0]
            if field and (field < 4 or field >= obj_size):
                raise _Bad(f"{what}: a field of the table at byte {pos} lies outside the table")

    def count(self, length: int, what: str) -> int:
        """Spend ``length`` tables of the budget (a file of n bytes holds at most n/4 tables)."""
        self.tables -= length
        if self.tables < 0:
            raise _Bad(f"{what}: more tables than the file can hold (shared or overlapping tables)")
        return length

    def string(self, obj, slot: str, what: str) -> None:
        """The string field lies inside the file; all strings together fit the file."""
        tab = obj._tab
        off = tab.Offset(_STRING_SLOTS[slot])
        if not off:
            return
        start = tab.Pos + off
        start += self.u32(start)
        length = self.u32(start)
        if start + 4 + length > self.n:
            raise _Bad(f"{what}: a string runs past the end of the file")
        self.strings -= length
        if self.strings < 0:
            raise _Bad(f"{what}: the strings add up to more than the file (shared strings)")


def _check_layout(data: bytes, schema) -> None:
    """Header, root table, and a bounded walk of every vector the object API will expand."""
    n = len(data)
    if n < MIN_BYTES:
        raise _Bad(f"{n} bytes, fewer than the {MIN_BYTES} of the smallest flatbuffer")
    if data[4:8] != FILE_IDENTIFIER:
        raise _Bad("no 'TFL3' file identifier at bytes 4..8")
    root = _U32.unpack_from(data, 0)[0]
    if root < 8 or root + 4 > n:
        raise _Bad(f"the root table offset {root} lies outside the {n}-byte file")
    b = _Bounds(data)
    model = schema.Model.GetRootAs(data, 0)
    b.table(model, "model")
    subgraphs = b.count(model.SubgraphsLength(), "subgraphs")
    if subgraphs == 0:
        raise _Bad("no subgraph")
    if subgraphs > MAX_SUBGRAPHS:
        raise _Bad(f"{subgraphs} subgraphs, more than the limit of {MAX_SUBGRAPHS}")
    for name, length, cap in (("operator codes", model.OperatorCodesLength(), MAX_OPERATORS),
                              ("buffers", model.BuffersLength(), MAX_BUFFERS)):
        if length > cap:
            raise _Bad(f"{length} {name}, more than the limit of {cap}")
    ops = tensors = 0
    for i in range(subgraphs):
        sub = model.Subgraphs(i)
        b.table(sub, f"subgraph {i}")
        b.string(sub, "SubGraph.name", f"subgraph {i}")
        ops += b.count(sub.OperatorsLength(), f"subgraph {i} operators")
        tensors += b.count(sub.TensorsLength(), f"subgraph {i} tensors")
        if ops > MAX_OPERATORS:
            raise _Bad(f"more than {MAX_OPERATORS} operators")
        if tensors > MAX_TENSORS:
            raise _Bad(f"more than {MAX_TENSORS} tensors")
        for j in range(sub.TensorsLength()):
            t = sub.Tensors(j)
            b.table(t, f"tensor {j} of subgraph {i}")
            b.string(t, "Tensor.name", f"tensor {j} of subgraph {i}")
            sparsity = t.Sparsity()
            if sparsity is not None:
                b.table(sparsity, f"tensor {j} of subgraph {i}")
                if b.count(sparsity.DimMetadataLength(), "sparsity") > MAX_RANK:
                    raise _Bad(f"tensor {j} of subgraph {i}: sparsity of more than {MAX_RANK} dimensions")
        for j in range(sub.OperatorsLength()):
            b.table(sub.Operators(j), f"operator {j} of subgraph {i}")
    for i in range(b.count(model.OperatorCodesLength(), "operator codes")):
        code = model.OperatorCodes(i)
        b.table(code, f"operator code {i}")
        b.string(code, "OperatorCode.custom_code", f"operator code {i}")
    for i in range(b.count(model.BuffersLength(), "buffers")):
        b.table(model.Buffers(i), f"buffer {i}")
    for i in range(b.count(model.MetadataLength(), "metadata")):
        meta = model.Metadata(i)
        b.table(meta, f"metadata {i}")
        b.string(meta, "Metadata.name", f"metadata {i}")
    for i in range(b.count(model.SignatureDefsLength(), "signatures")):
        sig = model.SignatureDefs(i)
        b.table(sig, f"signature {i}")
        b.string(sig, "SignatureDef.signature_key", f"signature {i}")
        for kind, length, get in (("input", sig.InputsLength(), sig.Inputs), ("output", sig.OutputsLength(), sig.Outputs)):
            for j in range(b.count(length, f"signature {i} {kind}s")):
                entry = get(j)
                b.table(entry, f"signature {i} {kind} {j}")
                b.string(entry, "TensorMap.name", f"signature {i} {kind} {j}")


# --------------------------------------------------------------------------- semantics

def _ints(values) -> list[int]:
    return [] if values is None else [int(v) for v in values]


def _check_index(j: int, count: int, what: str) -> None:
    if j != -1 and not 0 <= j < count:
        raise _Bad(f"{what} is tensor {j}, the subgraph has {count} tensors")


def _subgraph_refs(options, subgraphs: int, what: str) -> None:
    """Subgraph indices in control-flow options (WHILE, IF, CALL_ONCE, StableHLO regions)."""
    if options is None:
        return
    for key, value in vars(options).items():
        low = key.lower()
        if low == "subgraph" or low.endswith(("subgraphindex", "subgraphindices")):
            for k in (_ints(value) if low.endswith("indices") else [value]):
                if not 0 <= int(k) < subgraphs:
                    raise _Bad(f"{what} refers to subgraph {int(k)}, the model has {subgraphs}")


def _inside(offset: int, size: int, n: int, what: str) -> None:
    """Data stored outside the flatbuffer (models over 2 GB): its bytes lie inside the file."""
    if offset > 1 and (offset < 8 or offset + size > n):
        raise _Bad(f"{what} lies at bytes {offset}..{offset + size}, outside the {n}-byte file")


def _check_semantics(model, n: int, schema) -> None:
    """Every index the interpreter follows lies in range; shapes, dtypes and data agree."""
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = [None if c is None else op_names.get(max(c.builtinCode, c.deprecatedBuiltinCode))
             for c in model.operatorCodes or []]
    buffers, subgraphs = model.buffers or [], model.subgraphs or []
    if model.externalBuffers or model.externalBufferGroups:
        raise _Bad("it refers to external weight files (external_buffers), which edgeprune does not load")
    for i, buf in enumerate(buffers):
        if buf is None:
            continue
        if buf.offset > 1 and buf.data is not None and len(buf.data):
            raise _Bad(f"buffer {i} has inline data and an offset into the file")
        _inside(int(buf.offset), int(buf.size), n, f"buffer {i}")
    for k, meta in enumerate(model.metadata or []):
        if meta is not None and not 0 <= meta.buffer < len(buffers):
            raise _Bad(f"metadata {k} uses buffer {meta.buffer}, the model has {len(buffers)} buffers")
    for k in _ints(model.metadataBuffer):
        if not 0 <= k < len(buffers):
            raise _Bad(f"metadata_buffer lists buffer {k}, the model has {len(buffers)} buffers")
    declared = 0
    for i, sub in enumerate(subgraphs):
        if sub is None:
            raise _Bad(f"subgraph {i} is empty")
        tensors = sub.tensors or []
        nt = len(tensors)
        for j, t in enumerate(tensors):
            if t is None:
                raise _Bad(f"tensor {j} of subgraph {i} is empty")
            declared += _check_tensor(t, f"tensor {j} ('{_shown(t.name)}') of subgraph {i}", buffers, type_names)
            if declared > MAX_DECLARED_TENSOR_BYTES:
                raise _Bad(f"its tensors declare more than {MAX_DECLARED_TENSOR_BYTES >> 30} GiB "
                           "(edgeprune.device.tflite_check.MAX_DECLARED_TENSOR_BYTES)")
        for k in _ints(sub.inputs):
            _check_index(k, nt, f"an input of subgraph {i}")
        for k in _ints(sub.outputs):
            _check_index(k, nt, f"an output of subgraph {i}")
        for j, op in enumerate(sub.operators or []):
            _check_operator(op, f"operator {j} of subgraph {i}", tensors, buffers, codes, len(subgraphs), n)
    for k, sig in enumerate(model.signatureDefs or []):
        if sig is None:
            continue
        if not 0 <= sig.subgraphIndex < len(subgraphs):
            raise _Bad(f"signature {k} refers to subgraph {sig.subgraphIndex}, the model has {len(subgraphs)}")
        nt = len(subgraphs[sig.subgraphIndex].tensors or [])
        for entry in (sig.inputs or []) + (sig.outputs or []):
            if entry is not None and not 0 <= entry.tensorIndex < nt:
                raise _Bad(f"signature {k} maps '{_shown(entry.name)}' to tensor {entry.tensorIndex}, "
                           f"its subgraph has {nt} tensors")


def _check_operator(op, what: str, tensors: list, buffers: list, codes: list, subgraphs: int, n: int) -> None:
    """Opcode, tensor and subgraph indices of one operator; it writes no constant."""
    if op is None:
        raise _Bad(f"{what} is empty")
    if not 0 <= op.opcodeIndex < len(codes):
        raise _Bad(f"{what} uses opcode index {op.opcodeIndex}, the model has {len(codes)} operator codes")
    required = _REQUIRED_INPUTS.get(codes[op.opcodeIndex], 0)
    if required and (len(_ints(op.inputs)) < required or -1 in _ints(op.inputs)[:required]):
        raise _Bad(f"{what} ({codes[op.opcodeIndex]}) lacks one of its first {required} inputs")
    for kind, values in (("an input", op.inputs), ("an output", op.outputs), ("an intermediate", op.intermediates)):
        for k in _ints(values):
            _check_index(k, len(tensors), f"{kind} of {what}")
    for k in _ints(op.outputs):  # the kernel would write into the model's own bytes
        if k >= 0 and _stored_bytes(tensors[k], buffers) is not None:
            raise _Bad(f"{what} writes into tensor {k}, a constant")
    _subgraph_refs(op.builtinOptions, subgraphs, what)
    _subgraph_refs(op.builtinOptions2, subgraphs, what)
    _inside(int(op.largeCustomOptionsOffset), int(op.largeCustomOptionsSize), n, f"{what}'s custom options")


def _stored_bytes(t, buffers: list) -> int | None:
    """Bytes of the constant data behind tensor ``t`` (inline or at an offset), None if none."""
    buf = buffers[t.buffer] if 0 < t.buffer < len(buffers) else None
    if buf is None:
        return None
    if buf.data is not None and len(buf.data):
        return len(buf.data)
    return int(buf.size) if buf.offset > 1 else None


def _check_tensor(t, what: str, buffers: list, type_names: dict) -> int:
    """Shape, buffer index and constant data of one tensor; its declared bytes if non-constant."""
    shape, signature = _ints(t.shape), _ints(t.shapeSignature)
    if len(shape) > MAX_RANK or len(signature) > MAX_RANK:
        raise _Bad(f"{what} has more than {MAX_RANK} dimensions")
    if any(d < 0 for d in shape):
        raise _Bad(f"{what} has a negative dimension in its shape {shape}")
    if any(d < -1 for d in signature):
        raise _Bad(f"{what} has a dimension below -1 in its shape signature {signature}")
    dtype = type_names.get(t.type)
    if dtype is None:
        raise _Bad(f"{what} has the unknown tensor type {t.type}")
    if not 0 <= t.buffer < len(buffers):
        raise _Bad(f"{what} uses buffer {t.buffer}, the model has {len(buffers)} buffers")
    count = 1
    for d in shape:
        count *= d
    bits = _SUB_BYTE_BITS.get(dtype)
    itemsize = 1 if bits else _ITEMSIZE.get(dtype)
    stored = _stored_bytes(t, buffers)
    if stored is None:  # filled at run time: what the arena will hold
        return count * (itemsize or 1)
    if itemsize is not None and t.sparsity is None:
        allowed = {count * itemsize} | ({-(-count * bits // 8)} if bits else set())
        if stored not in allowed:
            raise _Bad(f"{what} has shape {shape} of {dtype.lower()} ({count * itemsize} bytes) but its buffer "
                       f"{t.buffer} holds {stored} bytes")
    return 0


def _problem(data: bytes) -> str | None:
    """Why ``data`` is not a valid TFLite model, or None."""
    try:
        schema = _schema()
    except ImportError as exc:  # pragma: no cover - ai-edge-litert is a dependency
        return f"cannot read TFLite flatbuffers without ai-edge-litert ({exc})"
    try:
        _check_layout(data, schema)
    except _Bad as exc:
        return str(exc)
    except Exception as exc:  # a read past the end: struct.error, IndexError, ...
        return _unreadable(exc, len(data))
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:
        return _unreadable(exc, len(data))
    try:
        _check_semantics(model, len(data), schema)
    except _Bad as exc:
        return str(exc)
    except Exception as exc:  # a field of an unexpected type (a union the object API left raw)
        return f"unexpected content: {type(exc).__name__}: {_first_line(exc)}"
    return None


def _unreadable(exc: Exception, n: int) -> str:
    if isinstance(exc, struct.error) or "buffer is smaller than requested" in str(exc):
        return f"the flatbuffer points past the end of the {n}-byte file; is it cut short?"
    return f"the flatbuffer cannot be read: {type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException, limit: int = 200) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def verify_flatbuffer(data: bytes, name: str) -> None:
    """Refuse bytes that are not a well-formed TFLite model, in pure Python (no native code).

    Raises ``InputError("<name>: not a valid TFLite model (<reason>)")``; see the module
    docstring for what is checked.
    """
    reason = _problem(bytes(data))
    if reason is not None:
        raise InputError(f"{name}: not a valid TFLite model ({reason})")


# --------------------------------------------------------------------------- child probe

def _probe_problem(path: Path, timeout: float) -> tuple[str | None, bool]:
    """(why the interpreter cannot run the file at ``path`` or None, whether to cache that)."""
    from edgeprune.device.jobs import RUNNER_PATH
    from edgeprune.device.proc import run_process
    from edgeprune.device.results import _signal_name, last_lines, parse_json_document

    job = {"artifact": str(path), "probe": True, "watch_stdin": True}
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the runner stands alone, as on a device
    with tempfile.TemporaryDirectory(prefix="edgeprune-probe-") as work:
        try:
            rc, out, err = run_process([sys.executable, str(RUNNER_PATH), json.dumps(job)], cwd=work, env=env,
                                       timeout=timeout)
        except subprocess.TimeoutExpired:
            return (f"the interpreter did not load and run this model within {timeout:g} s; "
                    "the file is malformed or the model too big for this check"), False
    if rc < 0 or 128 < rc < 128 + 65:
        sig = _signal_name(-rc if rc < 0 else rc - 128)
        return (f"the interpreter crashed on this model ({sig}); the file is malformed or needs ops "
                "this runtime lacks"), True
    doc = parse_json_document(out) or {}
    result = doc.get("probe")
    if isinstance(result, dict) and rc == 0:
        if result.get("ok"):
            return None, True
        verb = {"load": "load", "allocate": "allocate the tensors of", "invoke": "run"}.get(result.get("stage"), "run")
        return f"the LiteRT interpreter cannot {verb} this model ({result.get('error')})", True
    error = doc.get("error") if isinstance(doc.get("error"), dict) else {}
    return (f"the interpreter check failed ({error.get('message') or f'exit code {rc}: {last_lines(err)}'})",
            False)


def probe_in_child(data_or_path, name: str, *, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Load, allocate and invoke the model once on zero inputs in a child process.

    ``data_or_path``: the model's bytes, or the path of a .tflite file. A child killed by a
    signal, a timeout, or an interpreter error becomes ``InputError("<name>: ...")``. Only
    JSON comes back from the child.
    """
    reason, _ = _probe(data_or_path, timeout)
    if reason is not None:
        raise InputError(f"{name}: {reason}")


def _probe(data_or_path, timeout: float) -> tuple[str | None, bool]:
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        with tempfile.TemporaryDirectory(prefix="edgeprune-probe-") as tmp:
            path = Path(tmp) / "model.tflite"
            path.write_bytes(bytes(data_or_path))
            return _probe_problem(path, timeout)
    return _probe_problem(Path(data_or_path).resolve(), timeout)


def _read(data_or_path, name: str) -> bytes:
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        return bytes(data_or_path)
    path = Path(data_or_path)
    if not path.is_file():
        raise InputError(f"{name}: TFLite model not found")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{name}: cannot read it ({exc.strerror or exc})") from None


def check_untrusted_tflite(data_or_path, name: str, *, timeout: float = PROBE_TIMEOUT_S) -> None:
    """:func:`verify_flatbuffer`, then :func:`probe_in_child`; once per distinct content.

    Call this before a user-given .tflite reaches the interpreter in edgeprune's own process.
    A path is probed where it lies (no copy); bytes are written to a private temp file.
    """
    data = _read(data_or_path, name)
    sha = hashlib.sha256(data).hexdigest()
    if sha in _CHECKED:
        reason = _CHECKED[sha]
    else:
        reason, cache = _problem(data), True
        if reason is not None:
            reason = f"not a valid TFLite model ({reason})"
        else:
            reason, cache = _probe(data if isinstance(data_or_path, (bytes, bytearray, memoryview)) else data_or_path,
                                   timeout)
        if cache:
            _CHECKED[sha] = reason
    if reason is not None:
        raise InputError(f"{name}: {reason}")
