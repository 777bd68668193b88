"""Refuse SavedModel graphs holding ops that reach files, processes, the network or Python.

A SavedModel is a TensorFlow graph, and loading, tracing, calibrating or evaluating it runs
that graph: a ``WriteFile``, ``PyFunc`` or ``PrintV2`` to a file in the serving function, its
init op or any library function would act on this machine. ``saved_model.pb`` is parsed here
as a protocol buffer (nothing runs) and every node, in the top-level graph and in every
function of the library, is checked against a deny-list *before* TensorFlow loads the model.

Checkpoint ops are the one exception every SavedModel needs: ``SaveV2``/``MergeV2Checkpoints``
inside the ``__inference__traced_save_*`` function and ``RestoreV2`` inside
``__inference__traced_restore_*`` (TF2), or in the saver's own scope (TF1). A traced-save
function may be called only from the top-level graph, never on the path that a load runs (the
restore op, the init ops, the signatures), so no load writes a file.
"""
from __future__ import annotations

import re
from pathlib import Path

from edgeprune.base.errors import InputError, UnsafeModelError

_WHY_FILES = "reads or writes files"
_WHY_PYTHON = "runs Python code"
# Exact op names and what they do that a model must not.
_DENY_EXACT = {
    "PyFunc": _WHY_PYTHON, "PyFuncStateless": _WHY_PYTHON, "EagerPyFunc": _WHY_PYTHON,
    "ReadFile": _WHY_FILES, "WriteFile": _WHY_FILES, "MatchingFiles": _WHY_FILES,
    "DeleteRecursively": _WHY_FILES, "ImmutableConst": "maps a file into memory",
    "LoadAndRemapMatrix": _WHY_FILES, "GenerateVocabRemapping": _WHY_FILES,
    "InitializeTableFromTextFile": _WHY_FILES, "InitializeTableFromTextFileV2": _WHY_FILES,
    "FileSystemSetConfiguration": "reconfigures file systems", "RecordInput": _WHY_FILES,
    "ImportEvent": _WHY_FILES, "Abort": "aborts the process", "Send": "talks to other processes",
    "Recv": "talks to other processes", "_Send": "talks to other processes",
    "_Recv": "talks to other processes", "_HostSend": "talks to other processes",
    "_HostRecv": "talks to other processes", "Copy": "runs debugger hooks",
    "CopyHost": "runs debugger hooks", "DistributedSave": _WHY_FILES,
}
# Checkpoint ops, allowed only where a SavedModel keeps its own save/restore functions.
_SAVE_OPS = {"Save", "SaveV2", "SaveSlices", "MergeV2Checkpoints"}
_RESTORE_OPS = {"Restore", "RestoreV2", "RestoreSlice"}
# Families recognised by name.
_DENY_PATTERNS = [
    (re.compile(r"Dataset|Iterator"), "runs a tf.data pipeline (which can read files and run Python)"),
    (re.compile(r"Reader"), _WHY_FILES),
    (re.compile(r"^Write|SummaryWriter|SummaryDbWriter"), _WHY_FILES),
    (re.compile(r"^Debug"), "writes debugger dumps"),
    (re.compile(r"^Collective|Rpc|^(Send|Recv)TPU|^_?Xla.*(Send|Recv)"), "talks to other processes"),
    (re.compile(r"^LoadTPU"), _WHY_FILES),
]
_SAFE_PRINT_STREAMS = {"stderr", "stdout", "log(info)", "log(warning)", "log(error)"}
_TRACED_SAVE = re.compile(r"^__inference__traced_save_\d+$")
_TRACED_RESTORE = re.compile(r"^__inference__traced_restore_\d+$")
_INIT_SIGNATURE = "__saved_model_init_op"
_INIT_COLLECTIONS = ("saved_model_main_op", "legacy_init_op", "table_initializer", "init_op")


def denied_op(op: str) -> str | None:
    """What ``op`` does that a model may not (a phrase), or None when it only computes.

    Checkpoint ops count as denied here; :func:`check_savedmodel_graph` allows them only in a
    SavedModel's own save and restore functions.
    """
    if op in _DENY_EXACT:
        return _DENY_EXACT[op]
    if op in _SAVE_OPS or op in _RESTORE_OPS:
        return _WHY_FILES
    for pattern, why in _DENY_PATTERNS:
        if pattern.search(op):
            return why
    return None


def _attr_problem(node) -> str | None:
    """Ops that are fine unless an attribute points them at a file."""
    if node.op == "PrintV2":
        stream = node.attr["output_stream"].s.decode("utf-8", "replace") if "output_stream" in node.attr else "stderr"
        if stream not in _SAFE_PRINT_STREAMS:
            return f"prints to '{stream}'"
    if node.op in ("DecodeProtoV2", "EncodeProto"):
        source = node.attr["descriptor_source"].s.decode("utf-8", "replace") if "descriptor_source" in node.attr \
            else "local://"
        if source != "local://":
            return f"reads a descriptor from '{source}'"
    return None


def _called_functions(node) -> set[str]:
    """Names of the library functions a node calls (``f``, ``body``, ``then_branch``, lists)."""
    names: set[str] = set()
    for value in node.attr.values():
        if value.HasField("func"):
            names.add(value.func.name)
        if value.HasField("list"):
            names.update(f.name for f in value.list.func)
    return names


def _node_name(ref: str) -> str:
    """'^name' / 'name:0' / 'name' → 'name'."""
    return ref.lstrip("^").split(":")[0]


def _ancestors(nodes: dict, roots: set[str]) -> set[str]:
    seen: set[str] = set()
    stack = [r for r in roots if r in nodes]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(_node_name(i) for i in nodes[name].input if _node_name(i) in nodes)
    return seen


def _run_on_load(meta_graph, nodes: dict) -> set[str]:
    """Top-level nodes a load or a call runs: restore op, init ops, signatures, and their inputs."""
    roots: set[str] = set()
    if meta_graph.saver_def.restore_op_name:
        roots.add(_node_name(meta_graph.saver_def.restore_op_name))
    for key, signature in meta_graph.signature_def.items():
        tensors = list(signature.inputs.values()) + list(signature.outputs.values())
        roots.update(_node_name(t.name) for t in tensors if t.name)
        if key == _INIT_SIGNATURE:
            roots.update(_node_name(t.name) for t in signature.outputs.values())
    for key in _INIT_COLLECTIONS:
        if key in meta_graph.collection_def:
            roots.update(_node_name(n) for n in meta_graph.collection_def[key].node_list.value)
    return _ancestors(nodes, roots)


def _saver_scope(meta_graph) -> str | None:
    """TF1's saver scope ('save/') when its restore op lives in one, else None."""
    restore = meta_graph.saver_def.restore_op_name
    return restore.split("/", 1)[0] + "/" if "/" in restore else None


def _refuse(path: Path, where: str, op: str, why: str) -> UnsafeModelError:
    return UnsafeModelError(
        f"{path}: the SavedModel graph holds a {op} op ({where}), which {why}; refused before "
        f"TensorFlow loads it (pass --unsafe only if you trust the file)")


def read_proto(path: Path, message, what: str):
    """Parse ``path`` into the protocol buffer ``message`` (parsing runs no code), or InputError."""
    try:
        message.ParseFromString(Path(path).read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(f"{path}: not a valid {what} ({type(exc).__name__})") from None
    return message


def check_savedmodel_graph(path: Path) -> None:
    """Raise UnsafeModelError naming the first op that reaches outside the model (see module doc)."""
    path = Path(path)
    pb = path / "saved_model.pb"
    from edgeprune.base.env import tf

    tf()  # the protocol buffer classes come with TensorFlow; importing it runs no model
    from tensorflow.core.protobuf import saved_model_pb2

    saved = read_proto(pb, saved_model_pb2.SavedModel(), "SavedModel")
    for meta_graph in saved.meta_graphs:
        _check_meta_graph(path, meta_graph)


def _check_meta_graph(path: Path, meta_graph) -> None:
    graph = meta_graph.graph_def
    functions = {f.signature.name: f for f in graph.library.function}
    for name, function in functions.items():
        save_fn, restore_fn = bool(_TRACED_SAVE.match(name)), bool(_TRACED_RESTORE.match(name))
        for node in function.node_def:
            where = f"node '{node.name}' of function '{name}'"
            allowed = (save_fn and node.op in _SAVE_OPS) or (restore_fn and node.op in _RESTORE_OPS)
            why = None if allowed else denied_op(node.op) or _attr_problem(node)
            if why:
                raise _refuse(path, where, node.op, why)
            for callee in _called_functions(node):
                if _TRACED_SAVE.match(callee):
                    raise _refuse(path, where, f"call of {callee}", "writes a checkpoint from inside the model")
    nodes = {node.name: node for node in graph.node}
    on_load = _run_on_load(meta_graph, nodes)
    scope = _saver_scope(meta_graph)
    for node in graph.node:
        where = f"node '{node.name}'"
        in_saver = scope is not None and node.name.startswith(scope)
        allowed = in_saver and ((node.op in _SAVE_OPS and node.name not in on_load) or node.op in _RESTORE_OPS)
        why = None if allowed else denied_op(node.op) or _attr_problem(node)
        if why:
            raise _refuse(path, where, node.op, why)
        for callee in _called_functions(node):
            if callee not in functions:
                raise InputError(f"{path}: node '{node.name}' calls the function '{callee}', which the "
                                 f"SavedModel does not define")
            if _TRACED_SAVE.match(callee) and node.name in on_load:
                raise _refuse(path, where, f"call of {callee}", "writes a checkpoint while the model loads")
