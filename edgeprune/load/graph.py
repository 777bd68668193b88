"""Trace a Keras model (Keras 3 or tf_keras) into a flat layer graph the pruning rules reason about.

We work on the functional config (the wiring) plus the layer objects (weights, output shapes).
The two Keras flavours write a call differently (Keras 3: ``{"args", "kwargs"}`` holding
``__keras_tensor__`` records; tf_keras: ``[layer, node, tensor, kwargs]`` lists), so the config is
first put in one *neutral* form (the list form; a Keras 3 call keeps its positional structure
under ``"__args__"`` in the first entry's kwargs). Everything downstream reads only that form.
Rebuilding goes back through :func:`model_from_neutral`, which each flavour does with its own
``from_config``: a Keras 3 model stays Keras 3 and a tf_keras model stays tf_keras.
Sequential models and nested sub-models are turned into one flat functional model first.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeprune.base.errors import InputError

TensorKey = tuple  # (layer_name, node_index, tensor_index)
_MODEL_CLASSES = {"Functional", "Model", "Sequential"}


@dataclass
class TensorInfo:
    """One symbolic tensor: its shape (without batch) and who makes and reads it."""

    key: TensorKey
    shape: tuple
    producer: str
    consumers: list = field(default_factory=list)
    spatial: int = 1  # >1 after Flatten: channel c sits at c, c+C, c+2C, ... (NHWC)
    symbolic: Any = None  # the model's own symbolic tensor (to build feature extractors)

    @property
    def width(self) -> int:
        """Size of the last axis (0 for scalars)."""
        return int(self.shape[-1]) if self.shape and self.shape[-1] is not None else 0

    @property
    def channels(self) -> int:
        """Size of the channel space (the last axis divided by the flatten factor)."""
        return self.width // self.spatial if self.spatial else self.width


@dataclass
class LayerNode:
    """One layer of the flat graph (called ``calls`` times; pruning assumes one call)."""

    name: str
    class_name: str
    config: dict
    inputs: list  # tensor keys of the first call, in call order (kwargs tensors last)
    outputs: list
    kwargs: dict
    calls: int
    layer: Any  # the layer (or Keras 3 operation) object: weights
    args: list = field(default_factory=list)  # Keras 3 positional call structure (refs, constants)
    is_op: bool = False  # a Keras 3 operation (``x + 3.0``), not a layer
    registered_name: str | None = None

    def weights(self) -> list:
        """The layer's weight arrays ([] for weightless layers and operations)."""
        get = getattr(self.layer, "get_weights", None)
        return list(get()) if get is not None and getattr(self.layer, "weights", None) else []

    @property
    def params(self) -> int:
        return int(sum(np.prod(w.shape) for w in self.weights()))


@dataclass
class LayerGraph:
    """The flat functional model as layers and tensors, in topological order."""

    model: Any
    config: dict
    layers: dict  # name -> LayerNode, topological order
    tensors: dict  # key -> TensorInfo
    inputs: list
    outputs: list

    def producer(self, key: TensorKey) -> LayerNode:
        return self.layers[self.tensors[key].producer]


def is_entry(obj) -> bool:
    """A tensor reference of the neutral form: ``[layer, node, tensor]`` (+ kwargs)."""
    return (isinstance(obj, (list, tuple)) and len(obj) in (3, 4) and isinstance(obj[0], str)
            and isinstance(obj[1], int) and not isinstance(obj[1], bool) and isinstance(obj[2], int))


def io_refs(struct) -> list:
    """The tensor references of an ``input_layers``/``output_layers`` structure, in order."""
    if is_entry(struct):
        return [tuple(struct[:3])]
    if isinstance(struct, dict):
        return [r for v in struct.values() for r in io_refs(v)]
    if isinstance(struct, (list, tuple)):
        return [r for v in struct for r in io_refs(v)]
    return []


# ---------------------------------------------------------------- Keras 3 <-> neutral form

def _is_k3_tensor(value) -> bool:
    return isinstance(value, dict) and value.get("class_name") == "__keras_tensor__"


def _k3_to_refs(value):
    """Replace ``__keras_tensor__`` records by ``[layer, node, tensor]`` references."""
    if _is_k3_tensor(value):
        hist = (value.get("config") or {}).get("keras_history")
        if not hist or len(hist) < 3:
            raise InputError("malformed Keras 3 config: a tensor without keras_history")
        return [hist[0], int(hist[1]), int(hist[2])]
    if isinstance(value, dict):
        return {k: _k3_to_refs(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_k3_to_refs(v) for v in value]
    return value


def _refs_in(value) -> list:
    if is_entry(value):
        return [list(value[:3])]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs_in(v)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in _refs_in(v)]
    return []


def _k3_call_to_neutral(call, layer_name: str) -> list:
    if isinstance(call, list):  # already the list form (legacy files)
        return call
    args = _k3_to_refs(list(call.get("args") or []))
    kwargs = _k3_to_refs(dict(call.get("kwargs") or {}))
    tensors = _refs_in(args) or _refs_in(kwargs)
    if not tensors:
        raise InputError(f"layer '{layer_name}': a call without tensor inputs is not supported")
    extra = dict(kwargs, __args__=args)
    return [ref + [extra if i == 0 else {}] for i, ref in enumerate(tensors)]


def k3_to_neutral(cfg: dict) -> dict:
    """A Keras 3 functional/sequential config in the neutral form (nested models too)."""
    cfg = copy.deepcopy(cfg)
    for layer in cfg.get("layers", []):
        inner = layer.get("config") or {}
        if layer.get("class_name") in _MODEL_CLASSES and "layers" in inner:
            layer["config"] = k3_to_neutral(inner)
        if "inbound_nodes" in layer:
            name = layer.get("name") or inner.get("name")
            layer["inbound_nodes"] = [_k3_call_to_neutral(c, name) for c in layer["inbound_nodes"]]
    return cfg


def _refs_to_k3(value):
    if is_entry(value) and len(value) == 3:
        return {"class_name": "__keras_tensor__",
                "config": {"shape": [None], "dtype": "float32", "keras_history": list(value)}}
    if isinstance(value, dict):
        return {k: _refs_to_k3(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_refs_to_k3(v) for v in value]
    return value


def _neutral_call_to_k3(call) -> dict:
    refs, extra = parse_call(call)
    extra = dict(extra)
    args = extra.pop("__args__", None)
    if args is None:  # a call we wrote ourselves (Sequential chain): the tensors are the input
        args = [list(refs[0])] if len(refs) == 1 else [[list(r) for r in refs]]
    # Keras 3 serialises the first call argument of Add/Concatenate as one list of tensors
    return {"args": _refs_to_k3(args), "kwargs": _refs_to_k3(extra)}


def neutral_to_k3(cfg: dict) -> dict:
    """The neutral form back to a Keras 3 functional config (flat models only)."""
    cfg = copy.deepcopy(cfg)
    for layer in cfg["layers"]:
        layer["inbound_nodes"] = [_neutral_call_to_k3(c) for c in layer.get("inbound_nodes") or []]
        layer.setdefault("module", None)
    return cfg


def neutral_config(model) -> dict:
    """``model.get_config()`` in the neutral form, whatever the flavour."""
    from edgeprune.base.env import is_keras3_model
    from edgeprune.load.model_io.hub_configs import model_config

    cfg = model_config(model)  # keras-hub layers whose own get_config fails are described
    return k3_to_neutral(cfg) if is_keras3_model(model) else cfg


def model_from_neutral(cfg: dict, like):
    """Build a functional model of ``like``'s flavour from a flat neutral config."""
    from edgeprune.base.env import is_keras3_model, keras_of
    from edgeprune.load.model_io.hub import drop_derived_keys

    keras = keras_of(like)
    objects = custom_objects_of(like)
    cfg = {**cfg, "layers": [drop_derived_keys(layer) for layer in cfg["layers"]]}
    if is_keras3_model(like):
        with keras.saving.custom_object_scope(objects):
            return keras.Model.from_config(neutral_to_k3(cfg))
    with keras.utils.custom_object_scope(objects):
        return keras.Model.from_config(cfg)


def model_layers(model) -> list:
    """Layers and (Keras 3) operations of a functional model."""
    return list(getattr(model, "operations", None) or model.layers)


def parse_call(call) -> tuple[list, dict]:
    """Inbound-node entries of one call -> (tensor refs, kwargs of the first entry)."""
    entries = [call] if is_entry(call) else list(call)
    refs, kwargs = [], {}
    for i, entry in enumerate(entries):
        refs.append((entry[0], int(entry[1]), int(entry[2])))
        if i == 0 and len(entry) > 3 and isinstance(entry[3], dict):
            kwargs = entry[3]
    return refs, kwargs


def kwarg_tensor_refs(kwargs: dict, names: set) -> list:
    """Tensors passed as keyword arguments (``tf.math.multiply(x, y=tensor)``)."""
    found = []

    def walk(obj):
        if is_entry(obj) and obj[0] in names:
            found.append((obj[0], int(obj[1]), int(obj[2])))
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(kwargs)
    return found


def _sequential_to_functional(cfg: dict, input_shape=None) -> dict:
    """A Sequential config as the equivalent functional config (a chain)."""
    layers = copy.deepcopy(cfg["layers"])
    out = []
    if not layers or layers[0]["class_name"] != "InputLayer":
        shape = None
        if layers:
            first = layers[0]["config"]
            shape = first.get("batch_input_shape") or first.get("batch_shape")
        shape = shape or cfg.get("build_input_shape") or input_shape
        if shape is None:
            raise InputError(f"Sequential model '{cfg.get('name')}' has no input shape; build it first")
        name = f"{cfg.get('name', 'sequential')}_input"
        if layers and "module" in layers[0]:  # Keras 3 form
            layers.insert(0, {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
                              "config": {"batch_shape": list(shape), "dtype": "float32",
                                         "sparse": False, "name": name}})
        else:
            layers.insert(0, {"class_name": "InputLayer",
                              "config": {"batch_input_shape": list(shape), "dtype": "float32",
                                         "sparse": False, "ragged": False, "name": name}})
    prev = None
    for layer in layers:
        layer = dict(layer)
        layer["config"] = dict(layer["config"])
        layer.pop("build_config", None)
        layer["name"] = layer["config"]["name"]
        layer["inbound_nodes"] = [] if prev is None else [[[prev, 0, 0, {}]]]
        prev = layer["name"]
        out.append(layer)
    first = out[0]["name"]
    return {"name": cfg.get("name", "sequential"), "layers": out,
            "input_layers": [[first, 0, 0]], "output_layers": [[prev, 0, 0]]}


def _functional_config(class_name: str, cfg: dict, input_shape=None) -> dict:
    if class_name == "Sequential":
        return _sequential_to_functional(cfg, input_shape)
    return copy.deepcopy(cfg)


def _flat_refs(struct) -> list:
    """The tensor references of a model's ``input_layers``/``output_layers`` (or of a call's
    argument) in the order Keras flattens that structure: a single ref (Keras 3 writes one for a
    model built on one tensor), a list in order, a dict by sorted key. A keras-hub Backbone takes
    and returns dicts (``{"token_ids", "padding_mask"}`` -> ``{"sequence_output",
    "pooled_output"}``), and a call reads its output ``k`` in that order (``pooled_output`` is 0)."""
    if is_entry(struct):
        return [tuple(struct[:3])]
    if isinstance(struct, dict):
        return [r for key in sorted(struct) for r in _flat_refs(struct[key])]
    if isinstance(struct, (list, tuple)):
        return [r for v in struct for r in _flat_refs(v)]
    return []


def _call_inputs(call) -> list:
    """The tensors a sub-model call passes, in the order of :func:`_flat_refs` of its inputs: a
    Keras 3 call keeps the argument's structure (``__args__``; a dict matches by key), a tf_keras
    call lists them flat."""
    refs, kwargs = parse_call(call)
    args = kwargs.get("__args__") if isinstance(kwargs, dict) else None
    if args and len(args) == 1 and _flat_refs(args[0]):
        return _flat_refs(args[0])
    return refs


def _renamed(outer_name: str, name: str, taken: set) -> str:
    """A name for an inner layer whose own name an outer layer has: the sub-model's name joined
    with ``_`` (Keras 3 refuses ``/`` in a layer name), numbered until it is free."""
    new, n = f"{outer_name}_{name}", 1
    while new in taken:
        new, n = f"{outer_name}_{name}_{n}", n + 1
    return new


def _inline(cfg: dict, taken: set, shared: frozenset = frozenset()) -> tuple[dict, bool]:
    """Inline nested model layers into ``cfg`` (recursively). Returns (config, changed).

    ``shared`` names outer layers that are the very object a sub-model also calls (GPT-2's tied
    token embedding: the backbone embeds with it, the Task's head calls it in reverse). Such an
    inner layer is not copied under a new name, which would untie the weights: its calls join
    the outer layer's, first, so the outer calls' node indices move up by as many.
    """
    changed = False
    layers_out = []
    own: list = []  # this level's own layers, whose references to a shared layer are shifted
    here = {layer["name"] for layer in cfg["layers"]}
    joined: dict = {}  # shared layer name -> the sub-model's calls of it (rewritten)
    remap: dict = {}  # (nested_name, node, idx) -> inner ref
    for layer in cfg["layers"]:
        if layer["class_name"] not in _MODEL_CLASSES:
            layers_out.append(layer)
            own.append(layer)
            continue
        changed = True
        outer_name = layer["config"]["name"] if "name" in layer["config"] else layer["name"]
        if len(layer["inbound_nodes"]) != 1:
            raise InputError(f"nested model '{outer_name}' is called {len(layer['inbound_nodes'])} "
                             "times; pruning supports sub-models used once")
        inner = _functional_config(layer["class_name"], layer["config"])
        inner, _ = _inline(inner, taken, shared)
        outer_refs = _call_inputs(layer["inbound_nodes"][0])
        rename = {}
        for il in inner["layers"]:
            if il["class_name"] == "InputLayer":
                continue
            name = il["name"]
            new = name
            if new in taken and not (name in shared and name in here):
                new = _renamed(outer_name, name, taken)
            taken.add(new)
            rename[name] = new
        input_map = {}
        for k, ref in enumerate(_flat_refs(inner["input_layers"])):
            input_map[ref[0]] = outer_refs[k]
        for il in inner["layers"]:
            if il["class_name"] == "InputLayer":
                continue
            if il["name"] in shared and il["name"] in here:
                joined[il["name"]] = joined.get(il["name"], []) + _rewrite_nodes(
                    il["inbound_nodes"], rename, input_map)
                continue
            il = copy.deepcopy(il)
            il["name"] = rename[il["name"]]
            il["config"]["name"] = il["name"]
            il["inbound_nodes"] = _rewrite_nodes(il["inbound_nodes"], rename, input_map)
            il["_origin"] = (outer_name, [k for k, v in rename.items() if v == il["name"]][0])
            layers_out.append(il)
        for k, ref in enumerate(_flat_refs(inner["output_layers"])):
            src = input_map.get(ref[0]) or (rename[ref[0]], ref[1], ref[2])
            remap[(outer_name, k)] = tuple(src)  # any node index: a sub-model's own node shifts them
    if not changed:
        return cfg, False

    def fix(ref):
        key = (ref[0], int(ref[2]))
        if key in remap:
            new = remap[key]
            return [new[0], new[1], new[2]] + list(ref[3:])
        return ref

    def shift(ref):  # this level's reference to a shared layer's own call, now after the joined ones
        if ref[0] in joined:
            return [ref[0], int(ref[1]) + len(joined[ref[0]]), ref[2]] + list(ref[3:])
        return ref

    for layer in own:
        layer["inbound_nodes"] = _map_entries(layer["inbound_nodes"], shift)
    for layer in layers_out:
        if layer["name"] in joined:
            layer["inbound_nodes"] = joined[layer["name"]] + layer["inbound_nodes"]
        layer["inbound_nodes"] = _map_entries(layer["inbound_nodes"], fix)
    cfg = dict(cfg)
    cfg["layers"] = layers_out
    cfg["output_layers"] = _map_entries(_map_entries(cfg["output_layers"], shift), fix)
    return cfg, True


def _map_entries(obj, fn):
    if is_entry(obj):
        entry = list(fn(list(obj)))
        if len(entry) > 3 and isinstance(entry[3], dict):
            entry[3] = _map_entries(entry[3], fn)
        return entry
    if isinstance(obj, dict):
        return {k: _map_entries(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_entries(v, fn) for v in obj]
    return obj


def _rewrite_nodes(nodes, rename, input_map):
    def fix(ref):
        if ref[0] in input_map:
            src = input_map[ref[0]]
            return [src[0], src[1], src[2]] + list(ref[3:])
        if ref[0] in rename:
            return [rename[ref[0]]] + list(ref[1:])
        return ref

    return _map_entries(copy.deepcopy(nodes), fix)


def _operations_within(model) -> list:
    """``model`` and every layer/operation it holds, nested models' included, each once."""
    found, stack, seen = [], [model], set()
    while stack:
        op = stack.pop()
        if id(op) in seen:
            continue
        seen.add(id(op))
        found.append(op)
        stack.extend(model_layers(op) if hasattr(op, "layers") else [])
    return found


@contextmanager
def graph_untouched(model):
    """Leave ``model``'s graph as it was, whatever Keras records in it inside the block.

    Two Keras calls edgeprune needs write into the live graph they are given: a Model built
    between intermediate tensors (``keras.Model(hidden, out)``, the MAC count of one layer) copies
    every call in between onto the live layers (Keras' ``clone_graph_nodes``) and re-points the
    model's own Input tensors at the copies, and ``clone_model`` over reused layers (a keras-hub
    Task seen through its Backbone's functional view) adds a call to each. The user's model then
    has calls no model of it knows: saving it fails (``could not find node key ..._ib-1``) and a
    second trace sees a shared layer. This drops the calls added inside the block and restores
    each tensor's record of the call that made it.
    """
    saved = []
    for op in _operations_within(model):
        inbound = list(getattr(op, "_inbound_nodes", None) or [])
        outbound = list(getattr(op, "_outbound_nodes", None) or [])
        made = [(t, getattr(t, "_keras_history", None)) for node in inbound for t in _flat_outputs(node)]
        saved.append((op, len(inbound), len(outbound), made))
    try:
        yield
    finally:
        for op, n_in, n_out, made in saved:
            for attr, n in (("_inbound_nodes", n_in), ("_outbound_nodes", n_out)):
                nodes = getattr(op, attr, None)
                if isinstance(nodes, list) and len(nodes) > n:
                    del nodes[n:]
            for tensor, history in made:
                if history is not None and getattr(tensor, "_keras_history", None) is not history:
                    tensor._keras_history = history


def flatten_model(model):
    """Return a flat functional model equivalent to ``model`` (same object if already flat).

    Sequential models become functional; nested models are inlined (inner layer names are
    kept unless they collide with an outer name, then prefixed with the sub-model's name; an
    inner layer that is the outer layer itself stays one shared layer).
    The result has ``model``'s flavour (Keras 3 or tf_keras) and its weights.
    """
    from edgeprune.load.model_io.subclass import functional_view

    # The functional view of a keras-hub Task re-calls its layers (clone_model): those calls are
    # dropped once the flat model (new layers, from the config) is built. A view returned as it
    # is was not cloned (no nested model), so it needs no call the guard drops.
    with graph_untouched(model):
        return _flattened(functional_view(model)[0])


def _flattened(model):
    """:func:`flatten_model` of a model that is not a subclass (its functional view)."""
    from edgeprune.base.env import keras_of

    keras = keras_of(model)
    cfg = neutral_config(model)
    is_seq = isinstance(model, keras.Sequential)
    nested = any(l["class_name"] in _MODEL_CLASSES for l in cfg.get("layers", [])) if not is_seq else True
    if not is_seq and not nested:
        return model
    if is_seq:
        shape = None
        try:
            shape = model.input_shape
        except (AttributeError, ValueError):
            pass
        cfg = _sequential_to_functional(cfg, shape)
    taken = {l["name"] for l in cfg["layers"]}
    cfg, _ = _inline(cfg, taken, _shared_with_submodels(model, keras))
    origins = {}
    for l in cfg["layers"]:
        if "_origin" in l:
            origins[l["name"]] = l.pop("_origin")
    flat = model_from_neutral(cfg, model)
    for layer in model_layers(flat):
        if layer.__class__.__name__ == "InputLayer" or not getattr(layer, "weights", None):
            continue
        src = _find_source_layer(model, layer.name, origins)
        if src is not None and src.weights:
            layer.set_weights(src.get_weights())
    return flat


def _shared_with_submodels(model, keras) -> frozenset:
    """Names of ``model``'s layers that a nested sub-model also holds, as the same object and
    name (a tied embedding): :func:`_inline` keeps each one layer instead of two copies."""
    top = {layer.name: layer for layer in model.layers}
    found = set()

    def walk(sub):
        for layer in sub.layers:
            if top.get(layer.name) is layer:
                found.add(layer.name)
            if isinstance(layer, keras.Model):
                walk(layer)

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            walk(layer)
    return frozenset(found)


def _find_source_layer(model, name, origins):
    path = []
    while name in origins:
        outer, inner = origins[name]
        path.insert(0, inner)
        name = outer
    path.insert(0, name)
    obj = model
    for part in path:
        obj = _get_layer(obj, part)
        if obj is None:
            return None
    return obj


def _get_layer(model, name):
    for layer in model.layers:
        if layer.name == name:
            return layer
    return None


def custom_objects_of(model) -> dict:
    """The model's layer classes by class name (lets from_config rebuild custom layers).

    For a Keras 3 model, Keras's own classes are left out: Keras 3 finds them by module, and its
    operations share class names with layers (``Add``), so a scope entry would shadow one with
    the other. tf_keras needs its non-exported built-ins (ConvNeXt's ``LayerScale``) in scope.
    """
    from edgeprune.base.env import is_keras3_model

    k3 = is_keras3_model(model)
    found = {}

    def walk(m):
        for layer in getattr(m, "layers", []):
            cls = layer.__class__
            if not (k3 and cls.__module__.split(".")[0] == "keras"):
                found[cls.__name__] = cls
            if hasattr(layer, "layers"):
                walk(layer)

    walk(model)
    return found


def _node_map(model, layer) -> dict:
    """Config node index -> Node object (get_config renumbers the nodes a model uses)."""
    out, kept = {}, 0
    network_nodes = getattr(model, "_network_nodes", None)
    prefix = layer.name
    if network_nodes is None:  # Keras 3 keys nodes by the operation's id
        network_nodes = getattr(model, "_nodes", None)
        prefix = str(id(layer))
    for original_index, node in enumerate(layer._inbound_nodes):
        key = f"{prefix}_ib-{original_index}"
        if network_nodes is None or key in network_nodes:
            out[kept] = node
            kept += 1
    return out


def _flat_outputs(node) -> list:
    outs = node.outputs
    if isinstance(outs, dict):
        return list(outs.values())
    if isinstance(outs, (list, tuple)):
        flat = []
        for o in outs:
            flat.extend(_flat_outputs_value(o))
        return flat
    return [outs]


def _flat_outputs_value(value) -> list:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flat_outputs_value(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flat_outputs_value(v)]
    return [value]


def _shape_of(t) -> tuple:
    shape = getattr(t, "shape", None)
    if shape is None:
        return ()
    try:
        dims = list(shape)
    except (TypeError, ValueError):  # unknown rank
        return ()
    return tuple(None if d is None else int(d) for d in dims[1:])


def trace(model) -> LayerGraph:
    """Build the :class:`LayerGraph` of a functional model (flattened first) of either flavour."""
    from edgeprune.base.env import is_keras3_model

    model = flatten_model(model)
    k3 = is_keras3_model(model)
    cfg = neutral_config(model)
    names = {l["name"] for l in cfg["layers"]}
    by_name = {l.name: l for l in model_layers(model)}
    layers: dict = {}
    tensors: dict = {}
    for lc in cfg["layers"]:
        name = lc["name"]
        obj = by_name.get(name)
        if obj is None:
            raise InputError(f"layer '{name}' of the config is not in the model")
        nodes = _node_map(model, obj)
        calls = lc.get("inbound_nodes") or []
        inputs, kwargs = ([], {})
        if calls:
            inputs, kwargs = parse_call(calls[0])
            inputs = inputs + [r for r in kwarg_tensor_refs(kwargs, names) if r not in inputs]
        node_count = max(1, len(calls))
        outputs = []
        for index in range(node_count):
            node = nodes.get(index)
            if node is None:
                if index == 0:
                    raise InputError(f"layer '{name}' has no graph node; is the model built?")
                continue
            for t_idx, t in enumerate(_flat_outputs(node)):
                key = (name, index, t_idx)
                tensors[key] = TensorInfo(key=key, shape=_shape_of(t), producer=name, symbolic=t)
                outputs.append(key)
        args = list(kwargs.get("__args__", [])) if isinstance(kwargs, dict) else []
        module = str(lc.get("module") or "")
        layers[name] = LayerNode(
            name=name, class_name=lc["class_name"], config=lc.get("config") or {}, inputs=inputs,
            outputs=outputs,
            kwargs={k: v for k, v in (kwargs or {}).items() if k != "__args__"}, calls=node_count,
            layer=obj, args=args, registered_name=lc.get("registered_name"),
            is_op=k3 and (module.startswith("keras.src.ops") or module.startswith("keras.ops")))
    # all calls' inputs are consumers (shared layers get locked by the rules)
    for lc in cfg["layers"]:
        for call in lc.get("inbound_nodes") or []:
            refs, kw = parse_call(call)
            for ref in refs + kwarg_tensor_refs(kw, names):
                if ref not in tensors:
                    raise InputError(f"layer '{lc['name']}' reads unknown tensor {ref}")
                if lc["name"] not in tensors[ref].consumers:
                    tensors[ref].consumers.append(lc["name"])
    order = _toposort(layers, tensors)
    layers = {n: layers[n] for n in order}
    ins = io_refs(cfg["input_layers"])
    outs = io_refs(cfg["output_layers"])
    return LayerGraph(model=model, config=cfg, layers=layers, tensors=tensors, inputs=ins, outputs=outs)


def _toposort(layers: dict, tensors: dict) -> list:
    deps = {n: {tensors[k].producer for k in l.inputs if tensors[k].producer != n} for n, l in layers.items()}
    done, order = set(), []
    pending = list(layers)
    while pending:
        progressed = False
        rest = []
        for n in pending:
            if deps[n] <= done:
                done.add(n)
                order.append(n)
                progressed = True
            else:
                rest.append(n)
        if not progressed:
            raise InputError(f"model graph has a cycle around layer '{rest[0]}'")
        pending = rest
    return order


def spatial_size(shape: tuple) -> int:
    """Product of the non-channel axes of a (batchless) shape (1 for vectors)."""
    dims = [d for d in shape[:-1]]
    if any(d is None for d in dims):
        return 1
    return int(np.prod(dims)) if dims else 1
