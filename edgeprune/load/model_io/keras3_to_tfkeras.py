"""Rebuild a Keras 3 model as a functional tf_keras model with the same weights.

tf_keras cannot read Keras 3 files ("Unrecognized keyword arguments: ['batch_shape']") but
tfmot and our pruning code need tf_keras. The two functional config formats differ only in a
few places, so we translate the config, rebuild it with tf_keras, copy the weights layer by
layer (checking shapes) and compare the two models' outputs on a random batch.
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from edgeprune.base.errors import InputError

_CONTAINERS = ("Functional", "Model", "Sequential")
_DTYPE_POLICIES = ("DTypePolicy", "FloatDTypePolicy", "Policy")
# Keyword arguments every tf_keras Layer accepts through **kwargs (base_layer.Layer.__init__).
_BASE_LAYER_KW = {
    "trainable", "name", "dtype", "dynamic", "input_dim", "input_shape", "batch_input_shape",
    "batch_size", "weights", "activity_regularizer", "autocast", "implementation",
}
_OBJECT_MODULES = ("initializers", "regularizers", "constraints")


def tf_keras_custom(custom_objects: dict, tk) -> dict:
    """The tf_keras layer classes among ``custom_objects`` and its ``tf_keras`` twins."""
    found = {name: obj for name, obj in custom_objects.items()
             if inspect.isclass(obj) and issubclass(obj, tk.layers.Layer)}
    found.update(getattr(custom_objects, "tf_keras", {}) or {})
    return found


class _Ctx:
    """Translation state: tf_keras module, user-supplied tf_keras classes, dropped keys."""

    def __init__(self, tk, custom_objects: dict):
        self.tk = tk
        self.custom = tf_keras_custom(custom_objects, tk)
        self.dropped: list[str] = []

    def layer_class(self, class_name: str, layer_name: str):
        short = class_name.split(">")[-1]
        for key in (class_name, short):
            if key in self.custom:
                return self.custom[key]
        if short in _CONTAINERS:
            return self.tk.Sequential if short == "Sequential" else self.tk.Model
        cls = getattr(self.tk.layers, short, None)
        if isinstance(cls, type):
            return cls
        raise InputError(
            f"layer '{layer_name}' (class {class_name}) has no tf_keras equivalent; supply a "
            "tf_keras implementation under the same name with --custom-objects path.py"
        )


def _accepted_kwargs(cls) -> set[str] | None:
    """Constructor keywords ``cls`` accepts, following **kwargs up the MRO; None = anything."""
    names = set(_BASE_LAYER_KW)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
        if klass.__name__ == "Layer":
            return names
    return names


def _is_empty(value: Any) -> bool:
    return value is None or value is False or value == {} or value == [] or value == ()


def _object(value: dict, ctx: _Ctx, where: str) -> Any:
    """Translate a serialized Keras 3 object (initializer, regularizer, dtype policy...)."""
    cls = value.get("class_name")
    cfg = value.get("config")
    if cls in _DTYPE_POLICIES and isinstance(cfg, dict):
        return cfg.get("name", "float32")
    if cls == "function" and isinstance(cfg, str):  # a function referenced by name (activation)
        return cfg
    if cls == "__tensor__" or cls == "__numpy__":
        return cfg.get("value") if isinstance(cfg, dict) else cfg
    new_cfg = _value(cfg, ctx, where)
    if isinstance(new_cfg, dict):
        for mod in _OBJECT_MODULES:
            target = getattr(getattr(ctx.tk, mod), cls, None)
            if isinstance(target, type):
                allowed = _accepted_kwargs(target)
                if allowed is not None:
                    for key in list(new_cfg):
                        if key not in allowed:
                            if not _is_empty(new_cfg[key]):
                                ctx.dropped.append(f"{where}.{key}")
                            del new_cfg[key]
                break
    return {"class_name": cls, "config": new_cfg}


def _value(value: Any, ctx: _Ctx, where: str) -> Any:
    if isinstance(value, dict):
        if "class_name" in value and "config" in value:
            return _object(value, ctx, where)
        return {k: _value(v, ctx, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_value(v, ctx, where) for v in value]
    return value


def _layer_config(cls, class_name: str, cfg: dict, ctx: _Ctx, layer_name: str) -> dict:
    out = {}
    for key, val in cfg.items():
        if key == "batch_shape":
            key = "batch_input_shape"
        if class_name == "Lambda" and key == "function" and isinstance(val, dict):
            inner = val.get("config") or {}
            if val.get("class_name") == "__lambda__":
                out["function"] = [inner.get("code"), inner.get("defaults"), inner.get("closure")]
                out["function_type"] = "lambda"
                out["module"] = None
                continue
        out[key] = _value(val, ctx, f"{layer_name}.{key}")
    if class_name == "Lambda":  # tf_keras's Lambda.from_config reads these unconditionally
        for key, default in (("output_shape", None), ("output_shape_type", "raw"),
                             ("output_shape_module", None), ("arguments", {})):
            out.setdefault(key, default)
    allowed = _accepted_kwargs(cls)
    if allowed is not None:
        if class_name == "Lambda":
            allowed = allowed | {"function_type", "module", "output_shape_type",
                                 "output_shape_module"}
        for key in list(out):
            if key not in allowed:
                if not _is_empty(out[key]) and key != "optional":
                    ctx.dropped.append(f"{layer_name}.{key}")
                del out[key]
    return out


def _history(tensor: dict) -> list:
    hist = (tensor.get("config") or {}).get("keras_history")
    if not hist or len(hist) < 3:
        raise InputError("malformed Keras 3 config: a tensor without keras_history")
    return [hist[0], int(hist[1]), int(hist[2])]


def _is_tensor(value: Any) -> bool:
    return isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"


def _tensors_to_lists(value: Any) -> Any:
    if _is_tensor(value):
        return _history(value)
    if isinstance(value, dict):
        return {k: _tensors_to_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tensors_to_lists(v) for v in value]
    return value


def _flat_tensors(value: Any) -> list | None:
    """The tensors of a call's first argument, or None if it is not tensors only."""
    if _is_tensor(value):
        return [value]
    if isinstance(value, (list, tuple)):
        flat = []
        for v in value:
            sub = _flat_tensors(v)
            if sub is None:
                return None
            flat += sub
        return flat
    return None


def _node(node: Any, cls, layer_name: str) -> list:
    """Keras 3 ``{"args": [...], "kwargs": {...}}`` → tf_keras ``[[layer, node, tensor, kwargs], ...]``."""
    if isinstance(node, list):  # already the old form
        return node
    args = list(node.get("args") or [])
    kwargs = dict(node.get("kwargs") or {})
    if not args:
        first_key = next((k for k, v in kwargs.items() if _flat_tensors(v)), None)
        if first_key is None:
            raise InputError(f"layer '{layer_name}': call without tensor inputs is not supported")
        args = [kwargs.pop(first_key)]
    first, rest = args[0], args[1:]
    if rest:
        try:
            names = [p for p in inspect.signature(cls.call).parameters if p != "self"][1:]
        except (TypeError, ValueError):
            names = []
        if len(names) < len(rest):
            raise InputError(f"layer '{layer_name}': cannot map {len(rest)} extra positional call arguments")
        kwargs = {**dict(zip(names, rest)), **kwargs}
    extra = _tensors_to_lists(kwargs)
    tensors = _flat_tensors(first)
    if tensors is None:
        raise InputError(f"layer '{layer_name}': non-tensor first call argument is not supported")
    return [_history(t) + [extra] for t in tensors]


def _io_layers(value: Any) -> list:
    if isinstance(value, list) and value and isinstance(value[0], str):
        return [value]
    if isinstance(value, dict):
        raise InputError("models with dict inputs/outputs are not supported")
    return value


# Keras 3 operations (``x * gate``, ``x + 3.0`` in a functional graph) -> the TF function a
# tf_keras ``TFOpLambda`` wraps; binary ones take their second operand as ``y``.
_OPS_AS_TF = {
    "Add": "math.add", "Subtract": "math.subtract", "Multiply": "math.multiply",
    "Divide": "math.truediv", "TrueDivide": "math.truediv", "Maximum": "math.maximum",
    "Minimum": "math.minimum", "Relu": "nn.relu", "Relu6": "nn.relu6", "Sigmoid": "math.sigmoid",
    "Tanh": "math.tanh", "Silu": "nn.silu", "Exp": "math.exp", "Negative": "math.negative",
    "Square": "math.square", "Abs": "math.abs", "Absolute": "math.abs",
}
_COMMUTATIVE = {"math.add", "math.multiply", "math.maximum", "math.minimum"}


def _op_entry(entry: dict, name: str) -> dict:
    """A Keras 3 operation node as a tf_keras TFOpLambda entry, or InputError naming it."""
    fn = _OPS_AS_TF.get(entry["class_name"])
    if fn is None:
        raise InputError(f"layer '{name}' (Keras 3 operation {entry['class_name']}) has no tf_keras "
                         "equivalent; tfmot (QAT, gradual and M:N sparsity) needs tf_keras")
    calls = []
    for node in entry.get("inbound_nodes") or []:
        args = list(node.get("args") or [])
        tensors = [i for i, a in enumerate(args) if _is_tensor(a)]
        if not tensors or node.get("kwargs"):
            raise InputError(f"layer '{name}': Keras 3 operation call with keyword arguments cannot "
                             "be translated to tf_keras for tfmot")
        if tensors[0] != 0:
            if fn not in _COMMUTATIVE or len(args) != 2:
                raise InputError(f"layer '{name}': Keras 3 operation with a constant first operand "
                                 "cannot be translated to tf_keras for tfmot")
            args = [args[1], args[0]]
        extra = {"name": None}
        if len(args) == 2:
            extra["y"] = _tensors_to_lists(args[1])
        calls.append(_history(args[0]) + [extra])  # TFOpLambda: one entry per call, not a list
    return {"class_name": "TFOpLambda", "name": name,
            "config": {"name": name, "trainable": True, "dtype": "float32", "function": fn},
            "inbound_nodes": calls}


def _entry(entry: dict, ctx: _Ctx) -> dict:
    """Translate one layer entry of a functional/sequential config (recursively for models)."""
    if str(entry.get("module") or "").startswith("keras.src.ops"):
        return _op_entry(entry, entry.get("name") or entry["config"].get("name"))
    class_name = entry["class_name"]
    cfg = entry.get("config") or {}
    name = entry.get("name") or cfg.get("name")
    cls = ctx.layer_class(class_name, name)
    short = class_name.split(">")[-1]
    if short in ("Functional", "Model") and "layers" in cfg:
        new_cfg, out_name = _functional(cfg, ctx), "Functional"
    elif short == "Sequential":
        new_cfg, out_name = _sequential(cfg, ctx), "Sequential"
    else:
        new_cfg = _layer_config(cls, class_name, cfg, ctx, name)
        out_name = class_name if class_name in ctx.custom else short
    out = {"class_name": out_name, "config": new_cfg}
    if name is not None:
        out["name"] = name
    if "inbound_nodes" in entry:
        out["inbound_nodes"] = [_node(n, cls, name) for n in entry["inbound_nodes"]]
    return out


def _has_own_node(entry: dict) -> bool:
    """tf_keras gives a nested model built on an Input its own node 0; Keras 3 does not."""
    if entry["class_name"] == "Functional":
        return True
    if entry["class_name"] == "Sequential":
        cfg = entry["config"]
        layers = cfg.get("layers") or []
        return bool(cfg.get("build_input_shape")) or bool(layers and layers[0]["class_name"] == "InputLayer")
    return False


def _shift_nodes(value: Any, shifted: set[str], delta: int = 1) -> Any:
    """Add ``delta`` to the node index of every ``[layer, node, tensor(, kwargs)]`` naming ``shifted``."""
    if isinstance(value, list):
        if (len(value) in (3, 4) and isinstance(value[0], str) and isinstance(value[1], int)
                and isinstance(value[2], int)):
            out = [value[0], value[1] + (delta if value[0] in shifted else 0), value[2]]
            return out + [_shift_nodes(value[3], shifted, delta)] if len(value) == 4 else out
        return [_shift_nodes(v, shifted, delta) for v in value]
    if isinstance(value, dict):
        return {k: _shift_nodes(v, shifted, delta) for k, v in value.items()}
    return value


def to_keras3_node_indices(entry: dict) -> dict:
    """Undo tf_keras's extra node for nested models in a tf_keras model config (for Keras 3)."""
    cfg = entry.get("config") or {}
    if entry.get("class_name") not in ("Functional", "Model", "Sequential") or "layers" not in cfg:
        return entry
    layers = [to_keras3_node_indices(e) for e in cfg["layers"]]
    new_cfg = dict(cfg, layers=layers)
    if "input_layers" in cfg:  # functional: fix references to nested models
        shifted = {e.get("name") or e["config"].get("name") for e in layers if _has_own_node(e)}
        for e in layers:
            if "inbound_nodes" in e:
                e["inbound_nodes"] = _shift_nodes(e["inbound_nodes"], shifted, -1)
        for key in ("input_layers", "output_layers"):
            new_cfg[key] = _shift_nodes(cfg[key], shifted, -1)
    return dict(entry, config=new_cfg)


def _functional(cfg: dict, ctx: _Ctx) -> dict:
    layers = [_entry(e, ctx) for e in cfg["layers"]]
    shifted = {e["name"] for e in layers if _has_own_node(e)}
    for e in layers:
        if "inbound_nodes" in e:
            e["inbound_nodes"] = _shift_nodes(e["inbound_nodes"], shifted)
    return {
        "name": cfg.get("name"),
        "trainable": cfg.get("trainable", True),
        "layers": layers,
        "input_layers": _shift_nodes(_io_layers(cfg["input_layers"]), shifted),
        "output_layers": _shift_nodes(_io_layers(cfg["output_layers"]), shifted),
    }


def _sequential(cfg: dict, ctx: _Ctx) -> dict:
    out = {"name": cfg.get("name"), "layers": [_entry(e, ctx) for e in cfg["layers"]]}
    if cfg.get("build_input_shape") is not None:
        out["build_input_shape"] = cfg["build_input_shape"]
    return out


def translate_config(class_name: str, config: dict, *, tk, custom_objects: dict | None = None
                     ) -> tuple[dict, list[str]]:
    """Keras 3 model config → tf_keras ``{"class_name", "config"}``; also the dropped keys."""
    ctx = _Ctx(tk, custom_objects or {})
    entry = _entry({"class_name": class_name, "config": config}, ctx)
    entry.pop("name", None)
    return entry, ctx.dropped


def _copy_weights(src, dst, path: str = "") -> None:
    by_name = {layer.name: layer for layer in dst.layers}
    for s in src.layers:
        d = by_name.get(s.name)
        if d is None:
            raise InputError(f"translation lost layer '{path}{s.name}'")
        if hasattr(s, "layers") and hasattr(d, "layers") and s.layers:
            _copy_weights(s, d, f"{path}{s.name}/")
            continue
        sw, dw = s.get_weights(), d.get_weights()
        if len(sw) != len(dw) or any(a.shape != b.shape for a, b in zip(sw, dw)):
            raise InputError(
                f"layer '{path}{s.name}': Keras 3 weights {[a.shape for a in sw]} do not fit the "
                f"tf_keras rebuild {[b.shape for b in dw]}"
            )
        if sw:
            d.set_weights(sw)


def as_functional(model, tk, source: str = "model"):
    """A functional tf_keras model: Sequential becomes functional; subclassed models are refused."""
    if isinstance(model, tk.Sequential):
        if not model.inputs:
            raise InputError(f"{source}: Sequential model was never built (no input shape)")
        return tk.Model(model.inputs, model.outputs, name=model.name)
    if getattr(model, "_is_graph_network", False):
        return model
    raise InputError(
        f"{source}: a subclassed model ({type(model).__name__}) has no functional graph to prune; "
        "rebuild it with the functional API or Sequential"
    )


def sample_input(model, seed: int = 0):
    """A small deterministic batch matching the model's inputs (None dims → 32)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for t in model.inputs:
        shape = [2] + [d if d is not None else 32 for d in list(t.shape)[1:]]
        dtype = np.dtype(getattr(t.dtype, "as_numpy_dtype", t.dtype) if not isinstance(t.dtype, str) else t.dtype)
        if np.issubdtype(dtype, np.integer):
            arrays.append(np.zeros(shape, dtype))
        else:
            arrays.append(rng.random(shape, dtype=np.float32).astype(dtype))
    return arrays if len(arrays) > 1 else arrays[0]


def max_output_diff(a_model, b_model, batch) -> float:
    """Largest absolute output difference of two models on ``batch`` (inference mode)."""
    a = a_model(batch, training=False)
    b = b_model(batch, training=False)
    a = a if isinstance(a, (list, tuple)) else [a]
    b = b if isinstance(b, (list, tuple)) else [b]
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) if np.asarray(x).size else 0.0
               for x, y in zip(a, b))


def keras3_to_tfkeras(k3_model, *, custom_objects: dict | None = None, safe_mode: bool = True,
                      source: str = "model"):
    """Rebuild ``k3_model`` (a loaded Keras 3 model) in tf_keras; returns (model, info dict)."""
    from edgeprune.base.env import tf_keras

    tk = tf_keras()
    from edgeprune.base.env import keras3
    keras = keras3()
    from keras.src.models.functional import Functional

    if isinstance(k3_model, keras.Sequential):
        class_name = "Sequential"
    elif isinstance(k3_model, Functional):
        class_name = "Functional"
    else:
        raise InputError(
            f"{source}: a subclassed model ({type(k3_model).__name__}) has no functional graph "
            "to prune; rebuild it with the functional API or Sequential"
        )
    entry, dropped = translate_config(class_name, k3_model.get_config(), tk=tk,
                                      custom_objects=custom_objects)
    from tf_keras.src.saving import serialization_lib

    tk_custom = tf_keras_custom(custom_objects or {}, tk)
    try:
        with serialization_lib.SafeModeScope(safe_mode):
            model = tk.models.model_from_config(entry, custom_objects=tk_custom)
    except InputError:
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{source}: could not rebuild the Keras 3 model in tf_keras ({msg})") from None
    _copy_weights(k3_model, model)
    model = as_functional(model, tk, source)
    info = {"dropped_keys": dropped}
    try:
        batch = sample_input(model)
    except Exception:  # exotic inputs: skip the numeric check rather than refuse the model
        batch = None
    if batch is not None:
        diff = max_output_diff(k3_model, model, batch)
        info["max_abs_diff"] = diff
        scale = float(np.max(np.abs(np.asarray(_first(k3_model(batch, training=False)))))) + 1.0
        if not np.isfinite(diff) or diff > 1e-4 * scale:
            raise InputError(
                f"{source}: the tf_keras rebuild differs from the Keras 3 model (max |diff| "
                f"{diff:.3g}); dropped config keys: {', '.join(dropped) or 'none'}"
            )
    return model, info


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x
