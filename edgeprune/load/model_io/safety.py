"""Refuse Keras configs that would run code, before any loader reads them.

A model file is data. Keras' own ``safe_mode`` covers the Keras 3 ``.keras`` format only;
tf_keras runs a ``Lambda``'s marshalled bytecode from an ``.h5`` config or a SavedModel's
``keras_metadata.pb`` at any nesting (``TimeDistributed``, ``Bidirectional``, inner models, RNN
cells), a ``TFOpLambda`` names any TensorFlow function (``tf.io.write_file`` included), and a
Keras 3 config may name any function or class by module. So every object in the config (every
dict with a ``class_name``, at every depth) is checked here against what edgeprune can vouch for:

- classes that carry or load code (``Lambda``, ``__lambda__``, ``TFSMLayer``, the Torch/JAX
  wrappers), a marshalled ``function``: refused in safe mode;
- a field a constructor would open as a file (:data:`FILE_FIELDS`: a vocabulary, BPE merges, a
  SentencePiece proto given as a path): refused in safe mode; the same data inline, or in the
  ``.keras`` file's own assets, loads;
- ``TFOpLambda`` functions: TensorFlow math, nn, image and friends only, no file, Python or
  printing functions, and no raw op on the SavedModel deny-list;
- objects naming a module: Keras' own modules of layers, ops, initializers and the like; a
  function only from Keras' activations, ops, losses and metrics; anything else only when the
  user supplied it (``--custom-objects``) or registered it with Keras;
- layers: a class Keras knows, one the user supplied, one the user's code registered with
  Keras, or a class of keras-hub's own (imported when the config names it; :mod:`.hub`),
  registered or, by its ``keras_hub.src`` module, a Layer keras-hub defines but leaves unregistered.

``--unsafe`` (``safe_mode=False``) lets Lambda and its kin through; unknown classes still need
their code from ``--custom-objects``. The graph of a SavedModel is scanned by
:mod:`edgeprune.load.model_io.graph_safety`.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from pathlib import Path

from edgeprune.base.errors import InputError, UnsafeModelError
from edgeprune.load.model_io.hub import unregistered_hub_class

_CONTAINERS = {"Functional", "Model", "Sequential"}
# tf_keras wraps raw TF ops used in a functional graph in these; they name a TF API symbol.
_TF_OP_LAYERS = {"TFOpLambda", "SlicingOpLambda"}
# Classes whose construction runs or loads code or another model (Keras 3 and tf_keras).
_CODE_CLASSES = {
    "Lambda": "runs marshalled Python code",
    "__lambda__": "is a marshalled Python function",
    "TFSMLayer": "loads another SavedModel from a path",
    "TorchModuleWrapper": "unpickles a Torch module",
    "JaxLayer": "wraps Python functions",
    "FlaxLayer": "wraps a Python module",
}
# What a model config carries for training only: edgeprune loads with compile=False, so no
# loader reads these (a custom loss named there is neither needed nor run).
_TRAINING_KEYS = {"compile_config", "training_config"}
# Keys under which a config nests a layer (wrappers, RNN cells, inner models).
_NESTED_LAYER_KEYS = ("layers", "layer", "backward_layer", "forward_layer", "cell", "cells")
# Keras's own modules whose classes edgeprune lets a config name (tf_keras writes "keras.*" too).
_CLASS_MODULES = re.compile(
    r"^(keras|tf_keras)(\.src)?(\.(layers|ops|models|initializers|regularizers|constraints|"
    r"dtype_policies|activations|losses|metrics|optimizers|quantizers|random|backend\.common|"
    r"engine|mixed_precision|saving\.serialization_lib))?(\.|$)"
    # TensorFlow's own initializers and shape/dtype classes, which tf_keras configs name.
    r"|^tensorflow\.python\.(ops\.init_ops(_v2)?|framework\.(tensor_shape|dtypes))$")
# Modules a function reference may come from (Keras 3 writes {"class_name": "function", ...}).
_FUNCTION_MODULES = re.compile(
    r"^(keras|tf_keras)(\.src)?\.(activations|ops|losses|metrics|backend\.(tensorflow\.)?"
    r"(nn|numpy|math|core))(\.|$)")
# TensorFlow namespaces a TFOpLambda may call: numbers in, numbers out.
_TF_NAMESPACES = ("math.", "nn.", "linalg.", "image.", "signal.", "bitwise.", "dtypes.", "random.",
                  "__operators__.", "compat.v1.math.", "compat.v1.nn.", "compat.v1.image.",
                  "compat.v1.linalg.", "experimental.numpy.", "sparse.", "ragged.", "raw_ops.")
# Top-level TensorFlow functions that reach Python, files or the process (no dot in the name).
_TF_TOPLEVEL_DENY = {"print", "py_function", "numpy_function", "py_func", "load_op_library",
                     "load_library", "function", "Module", "autograph", "init_scope", "device",
                     "control_dependencies", "get_logger", "debugging", "saved_model", "io"}
# Config fields whose *string* value a constructor opens as a file of this machine, so a model
# file could name any local file (/etc/passwd, ~/.ssh/id_rsa) and have its contents read into
# the model (a vocabulary becomes weights' row labels and may be written into the artifact).
# Surveyed in Keras 3, tf_keras and keras-hub 0.32 (every constructor and set_* method of
# keras_hub/src that calls open(), get_file or a preset loader):
# - vocabulary: Keras' TextVectorization, StringLookup and IntegerLookup (a text file);
#   keras-hub's WordPieceTokenizer (BERT, DistilBERT, ELECTRA, ESM, ...), BytePairTokenizer
#   (GPT-2, RoBERTa, BART, CLIP, Llama 3, Qwen, Whisper, ...: a JSON file), PARSeqTokenizer;
# - merges: BytePairTokenizer and its subclasses (a text file of merge rules);
# - proto: SentencePieceTokenizer and its subclasses (ALBERT, DeBERTa-v3, T5, Gemma, Llama,
#   Mistral, XLM-R, ...: a .spm model file);
# - special_tokens, language_tokens: WhisperTokenizer (JSON files; keras-hub has no safe-mode
#   check of its own for these, nor for PARSeq's vocabulary).
# Nothing else opens a file or reaches the network while a model loads: ``config_file``
# (``"tokenizer.json"``) names a member of a preset directory and is read only by
# ``from_preset``, which no constructor calls; keras-hub reads a saved tokenizer's data from the
# assets inside the ``.keras`` zip (``load_assets``), and its get_config writes these fields as
# None or leaves them out. Inline values (a list or dict vocabulary, a list of merges, proto
# bytes) are data and load.
FILE_FIELDS = {
    "vocabulary": "vocabulary",
    "merges": "BPE merge rules",
    "proto": "SentencePiece model",
    "special_tokens": "special tokens",
    "language_tokens": "language tokens",
}
_HINT = (
    "pass --custom-objects path.py (a Python file whose module-level `custom_objects` dict, "
    "or its classes, supply the code) or --unsafe if you trust the file"
)
_UNSAFE_HINT = "pass --unsafe only if you trust the file"


def _layer_name(entry: dict) -> str | None:
    config = entry.get("config")
    name = entry.get("name")
    if name is None and isinstance(config, dict):
        name = config.get("name")
    return name if isinstance(name, str) else None


def iter_objects(config, where: str = "") -> Iterator[tuple[str, dict]]:
    """Yield (where, object) for every dict with a ``class_name`` in ``config``, at any depth.

    ``where`` is the chain of layer names above the object ('outer/time_distributed/lambda'),
    so a refusal names the place a user can find in their model.
    """
    stack: list[tuple[str, object]] = [(where, config)]
    root = True
    while stack:
        here, node = stack.pop()
        if isinstance(node, list):
            stack.extend((here, item) for item in reversed(node))
            continue
        if not isinstance(node, dict):
            continue
        if "class_name" in node:
            name = _layer_name(node)
            if name and "config" in node and not (root and node.get("class_name") in _CONTAINERS):
                here = f"{here}/{name}" if here else name
            yield here, node
        root = False
        stack.extend((here, value) for key, value in reversed(list(node.items())) if key not in _TRAINING_KEYS)


def iter_layers(config: dict, prefix: str = "") -> Iterator[tuple[str, str, dict]]:
    """Yield (qualified layer name, class_name, layer entry) for every layer at every nesting:
    inner models' ``layers``, wrappers' ``layer``/``backward_layer`` and RNN ``cell``/``cells``."""
    body = config.get("config", config) if "class_name" in config else config
    if not isinstance(body, dict):
        return
    for key in _NESTED_LAYER_KEYS:
        value = body.get(key)
        entries = value if isinstance(value, list) else [value]
        for entry in entries:
            if not isinstance(entry, dict) or "class_name" not in entry:
                continue
            cls = entry.get("class_name")
            cls = cls if isinstance(cls, str) else "?"
            qual = f"{prefix}{_layer_name(entry) or '?'}"
            yield qual, cls, entry
            yield from iter_layers(entry, prefix=f"{qual}/")


def _is_known_layer(class_name: str, flavour: str) -> bool:
    from edgeprune.base.env import tf_keras

    if class_name in _CONTAINERS or class_name in _TF_OP_LAYERS or class_name == "InputLayer":
        return True
    if isinstance(getattr(tf_keras().layers, class_name, None), type):
        return True
    if flavour == "keras3":
        from edgeprune.base.env import keras3

        return isinstance(getattr(keras3().layers, class_name, None), type)
    return False


def _is_registered(name: str, flavour: str) -> bool:
    """Whether ``name`` is registered with Keras by the user's code (decorated classes of this
    process) or is a class of keras-hub's own (:mod:`edgeprune.load.model_io.hub`); not the other
    names that importing keras-hub registers (``keras_nlp>`` aliases, tensorflow-text)."""
    from edgeprune.load.model_io.hub import is_hub_bundled, is_hub_class

    try:
        if flavour == "keras3":
            from edgeprune.base.env import keras3

            obj = keras3().saving.get_registered_object(name)
        else:
            from edgeprune.base.env import tf_keras

            obj = tf_keras().saving.get_registered_object(name)
    except Exception:  # pragma: no cover - registry lookups are best effort
        return False
    if obj is None:
        return False
    return is_hub_class(name, obj) or not is_hub_bundled(obj)


def _refuse(path: Path, where: str, what: str, hint: str = _UNSAFE_HINT) -> UnsafeModelError:
    place = f"layer '{where}'" if where else "the model"
    return UnsafeModelError(f"{path}: {place} {what}; refused in safe mode ({hint})")


def _tf_function_problem(symbol: str) -> str | None:
    """Why a TFOpLambda's TensorFlow function is refused, or None when it only computes."""
    from edgeprune.load.model_io.graph_safety import denied_op

    if symbol.startswith("raw_ops."):
        reason = denied_op(symbol.split(".", 1)[1])
        return f"an op that {reason}" if reason else None
    if "." not in symbol:
        return "a TensorFlow function that reaches Python, files or the process" \
            if symbol in _TF_TOPLEVEL_DENY else None
    if symbol.startswith(_TF_NAMESPACES):
        return None
    return "a TensorFlow function outside the numeric namespaces (math, nn, image, linalg, ...)"


def _is_inline_proto(value: str) -> bool:
    """Whether keras-hub's SentencePieceTokenizer takes the string ``value`` as the proto itself
    (base64, over 2048 characters: its own test in ``set_proto``) rather than a file path."""
    if len(value) <= 2048:
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def file_field(config: dict) -> str | None:
    """The first field of one object's ``config`` that names a file to read (:data:`FILE_FIELDS`),
    or None when every such field is absent, None or inline data."""
    for field in FILE_FIELDS:
        value = config.get(field)
        if isinstance(value, str) and not (field == "proto" and _is_inline_proto(value)):
            return field
    return None


def _check_object(path: Path, where: str, obj: dict, supplied: set[str], flavour: str,
                  safe_mode: bool) -> None:
    cls = obj.get("class_name")
    if not isinstance(cls, str):
        return
    short = cls.split(">")[-1]
    config = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    if not safe_mode:  # --unsafe: the user trusts the file's code (SECURITY.md)
        return
    if short in _CODE_CLASSES:
        kind = "is a Lambda layer, which" if short == "Lambda" else f"is a {short}, which"
        hint = _HINT if short == "Lambda" else _UNSAFE_HINT
        raise _refuse(path, where, f"{kind} {_CODE_CLASSES[short]} when loaded", hint)
    marshalled = "function_type" in config or isinstance(config.get("function"), (list, dict))
    if marshalled and short not in _TF_OP_LAYERS:
        raise _refuse(path, where, f"({cls}) carries a marshalled Python function")
    field = file_field(config)
    if field:
        shown = config[field] if len(config[field]) <= 200 else config[field][:200] + "..."
        raise _refuse(path, where, f"({cls}) reads its {FILE_FIELDS[field]} ('{field}') from the file "
                                   f"{shown!r}, outside the model file")
    if short in _TF_OP_LAYERS:
        symbol = config.get("function")
        problem = _tf_function_problem(symbol) if isinstance(symbol, str) else "no TensorFlow function name"
        if problem:
            raise _refuse(path, where, f"calls tf.{symbol}, {problem}")
        return
    module = obj.get("module")
    if not isinstance(module, str) or cls in supplied or short in supplied:
        return
    registered = obj.get("registered_name")
    if cls == "function":
        name = obj.get("config") if isinstance(obj.get("config"), str) else None
        if name in supplied:
            return
        if module == "builtins":  # Keras looks the name up among its own functions...
            import builtins

            if not hasattr(builtins, str(name)):
                return
            # ...but tf_keras falls back to the module itself: builtins.exec, builtins.exit
            raise _refuse(path, where, f"refers to the Python built-in '{name}' as a function", _HINT)
        if not _FUNCTION_MODULES.match(module):
            raise _refuse(path, where, f"refers to the function '{module}.{name}', which edgeprune does "
                                       f"not allow in a model file", _HINT)
        return
    if _CLASS_MODULES.match(module):
        return
    if isinstance(registered, str) and _is_registered(registered, flavour):
        return
    if flavour == "keras3" and unregistered_hub_class(obj):
        return
    raise _refuse(path, where, f"uses the class '{cls}' from module '{module}', which is not Keras's own", _HINT)


def check_config(path: Path, config: dict | None, flavour: str, *, custom_objects: dict,
                 safe_mode: bool, known_layers_only: bool = True) -> None:
    """Raise UnsafeModelError for anything in ``config`` that would run code (see module doc).

    Called on the config of a ``.keras``/``.h5`` file and on every node of a SavedModel's
    ``keras_metadata.pb`` before any Keras loader sees the file. ``known_layers_only=False``
    lets unknown layer classes through: a SavedModel revives them from their traced graph
    (already scanned), without their Python code.
    """
    if not config:
        return
    from edgeprune.load.model_io.hub import require_hub_if_named

    require_hub_if_named(path, config, flavour)  # keras-hub's classes registered, or one line
    supplied = set(custom_objects)
    if not known_layers_only:
        for where, obj in iter_objects(config):
            _check_object(path, where, obj, supplied, flavour, safe_mode)
        return
    top = config.get("class_name")
    if top and top not in _CONTAINERS and top not in supplied and top.split(">")[-1] not in supplied:
        if not _is_registered(config.get("registered_name") or top, flavour):
            raise UnsafeModelError(f"{path}: the model is of unknown custom class '{top}'; {_HINT}")
    own = "keras" if flavour == "keras3" else "tf_keras"
    for qual, cls, entry in iter_layers(config):
        short = cls.split(">")[-1]
        if cls in supplied or short in supplied or short in _CODE_CLASSES:
            continue  # code classes are judged below, with safe mode
        module = entry.get("module")
        if isinstance(module, str) and module.split(".")[0] == own:
            continue  # Keras's own layers and operations (keras.src.ops.numpy.Add, LayerScale, ...)
        registered = entry.get("registered_name")
        if not _is_known_layer(short if ">" in cls else cls, flavour) and not (
                isinstance(registered, str) and _is_registered(registered, flavour)) and not (
                flavour == "keras3" and unregistered_hub_class(entry)):
            raise UnsafeModelError(f"{path}: layer '{qual}' uses unknown custom class '{cls}'; {_HINT}")
    for where, obj in iter_objects(config):
        _check_object(path, where, obj, supplied, flavour, safe_mode)


def check_keras_metadata(path: Path, *, custom_objects: dict, safe_mode: bool) -> None:
    """Scan every node of a tf_keras SavedModel's ``keras_metadata.pb`` with :func:`check_config`.

    tf_keras rebuilds each layer from its node's JSON metadata (a ``Lambda`` from its marshalled
    bytecode), so each node's metadata is a config like an ``.h5`` one. The file is parsed as a
    protocol buffer (no code runs); a file that does not parse is refused.
    """
    meta_path = Path(path) / "keras_metadata.pb"
    try:
        from tf_keras.protobuf import saved_metadata_pb2
    except ImportError:  # pragma: no cover - older tf_keras layouts
        from tf_keras.src.protobuf import saved_metadata_pb2
    from edgeprune.load.model_io.graph_safety import read_proto

    metadata = read_proto(meta_path, saved_metadata_pb2.SavedMetadata(), "keras_metadata.pb")
    for node in metadata.nodes:
        try:
            config = json.loads(node.metadata) if node.metadata else None
        except ValueError:
            raise InputError(f"{meta_path}: node '{node.node_path}' holds invalid JSON metadata") from None
        if not isinstance(config, dict):
            continue
        check_config(path, config, "tf_keras", custom_objects=custom_objects, safe_mode=safe_mode,
                     known_layers_only=False)


def _h5_storage_problem(h5) -> str | None:
    """The first object of an open HDF5 file that would make a reader open another file:
    an external link, a dataset stored in external raw files, a virtual dataset."""
    import h5py

    found: list[str] = []

    def visit(name, _obj=None):
        link = h5.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            found.append(f"'{name}' is an external link to '{link.filename}'")
            return True
        obj = h5.get(name)
        if isinstance(obj, h5py.Dataset):
            if obj.external:
                found.append(f"dataset '{name}' keeps its data in the outside file '{obj.external[0][0]}'")
                return True
            if obj.is_virtual:
                found.append(f"dataset '{name}' is a virtual dataset mapped from other files")
                return True
        return None

    h5.visit_links(visit) if hasattr(h5, "visit_links") else h5.visit(visit)
    return found[0] if found else None


def check_h5_storage(path: Path) -> None:
    """Refuse an ``.h5`` model (or a ``.keras`` file's ``model.weights.h5``) whose weights would be
    read from outside the file: loading it would copy another file of this machine into the model.
    """
    import zipfile

    import h5py

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                if "model.weights.h5" not in zf.namelist():
                    return
                with zf.open("model.weights.h5") as fh, h5py.File(fh, "r") as h5:
                    problem = _h5_storage_problem(h5)
                where = f"{path} (model.weights.h5)"
        else:
            with h5py.File(path, "r") as h5:
                problem = _h5_storage_problem(h5)
            where = str(path)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: unreadable HDF5 weights ({str(exc).splitlines()[0][:200]})") from None
    if problem:
        raise UnsafeModelError(f"{where}: {problem}; refused: weights must live inside the model file ({_UNSAFE_HINT})")


def check_savedmodel_files(path: Path) -> None:
    """Refuse a SavedModel directory holding symbolic links: a link to a file elsewhere would be
    read as the model's variables or assets."""
    for item in sorted(Path(path).rglob("*")):
        if item.is_symlink():
            raise UnsafeModelError(f"{path}: '{item.relative_to(path)}' is a symbolic link; refused: a "
                                   f"SavedModel must hold its own files ({_UNSAFE_HINT})")
