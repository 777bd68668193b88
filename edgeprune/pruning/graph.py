"""Trace a tf_keras model into a flat layer graph that the pruning rules can reason about.

We work on ``model.get_config()`` (the functional wiring) plus the layer objects (weights,
output shapes), so the same code serves models that came from Keras 3 or tf_keras files.
Sequential models and nested sub-models are turned into one flat functional model first.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeprune.errors import InputError

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
    layer: Any  # the tf_keras layer object (weights)


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


def _is_entry(obj) -> bool:
    return (isinstance(obj, (list, tuple)) and len(obj) in (3, 4) and isinstance(obj[0], str)
            and isinstance(obj[1], int) and isinstance(obj[2], int))


def parse_call(call) -> tuple[list, dict]:
    """Inbound-node entries of one call -> (tensor refs, kwargs of the first entry)."""
    entries = [call] if _is_entry(call) else list(call)
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
        if _is_entry(obj) and obj[0] in names:
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
            shape = layers[0]["config"].get("batch_input_shape")
        shape = shape or cfg.get("build_input_shape") or input_shape
        if shape is None:
            raise InputError(f"Sequential model '{cfg.get('name')}' has no input shape; build it first")
        name = f"{cfg.get('name', 'sequential')}_input"
        layers.insert(0, {"class_name": "InputLayer",
                          "config": {"batch_input_shape": list(shape), "dtype": "float32",
                                     "sparse": False, "ragged": False, "name": name}})
    prev = None
    for layer in layers:
        layer = dict(layer)
        layer["config"] = dict(layer["config"])
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


def _inline(cfg: dict, taken: set) -> tuple[dict, bool]:
    """Inline nested model layers into ``cfg`` (recursively). Returns (config, changed)."""
    changed = False
    layers_out = []
    remap: dict = {}  # (nested_name, node, idx) -> inner ref
    for layer in cfg["layers"]:
        if layer["class_name"] not in _MODEL_CLASSES:
            layers_out.append(layer)
            continue
        changed = True
        outer_name = layer["config"]["name"] if "name" in layer["config"] else layer["name"]
        if len(layer["inbound_nodes"]) != 1:
            raise InputError(f"nested model '{outer_name}' is called {len(layer['inbound_nodes'])} "
                             "times; pruning supports sub-models used once")
        inner = _functional_config(layer["class_name"], layer["config"])
        inner, _ = _inline(inner, taken)
        outer_refs, _ = parse_call(layer["inbound_nodes"][0])
        rename = {}
        for il in inner["layers"]:
            if il["class_name"] == "InputLayer":
                continue
            name = il["name"]
            new = name
            if new in taken:
                new = f"{outer_name}/{name}"
            taken.add(new)
            rename[name] = new
        input_map = {}
        for k, ref in enumerate(inner["input_layers"]):
            input_map[ref[0]] = outer_refs[k]
        for il in inner["layers"]:
            if il["class_name"] == "InputLayer":
                continue
            il = copy.deepcopy(il)
            il["name"] = rename[il["name"]]
            il["config"]["name"] = il["name"]
            il["inbound_nodes"] = _rewrite_nodes(il["inbound_nodes"], rename, input_map)
            il["_origin"] = (outer_name, [k for k, v in rename.items() if v == il["name"]][0])
            layers_out.append(il)
        for k, ref in enumerate(inner["output_layers"]):
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

    for layer in layers_out:
        layer["inbound_nodes"] = _map_entries(layer["inbound_nodes"], fix)
    cfg = dict(cfg)
    cfg["layers"] = layers_out
    cfg["output_layers"] = [list(fix(list(r))) for r in cfg["output_layers"]]
    return cfg, True


def _map_entries(obj, fn):
    if _is_entry(obj):
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


def flatten_model(model):
    """Return a flat functional tf_keras model equivalent to ``model`` (same object if already flat).

    Sequential models become functional; nested models are inlined (inner layer names are
    kept unless they collide with an outer name, then prefixed with the sub-model's name).
    """
    from edgeprune._env import tf_keras

    keras = tf_keras()
    cfg = model.get_config()
    is_seq = isinstance(model, keras.Sequential)
    nested = any(l["class_name"] in _MODEL_CLASSES for l in cfg.get("layers", [])) if not is_seq else True
    if not is_seq and not nested:
        return model
    if is_seq:
        shape = getattr(model, "input_shape", None)
        cfg = _sequential_to_functional(cfg, shape)
    taken = {l["name"] for l in cfg["layers"]}
    cfg, _ = _inline(cfg, taken)
    origins = {}
    for l in cfg["layers"]:
        if "_origin" in l:
            origins[l["name"]] = l.pop("_origin")
    objects = custom_objects_of(model)
    with keras.utils.custom_object_scope(objects):
        flat = keras.Model.from_config(cfg)
    for layer in flat.layers:
        if layer.__class__.__name__ == "InputLayer":
            continue
        src = _find_source_layer(model, layer.name, origins, keras)
        if src is not None and src.weights:
            layer.set_weights(src.get_weights())
    return flat


def _find_source_layer(model, name, origins, keras):
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
    """Every layer class used in the model by its class name (lets from_config rebuild custom layers)."""
    found = {}

    def walk(m):
        for layer in getattr(m, "layers", []):
            found[layer.__class__.__name__] = layer.__class__
            if hasattr(layer, "layers"):
                walk(layer)

    walk(model)
    return found


def _node_map(model, layer) -> dict:
    """Config node index -> Node object (get_config renumbers the nodes a model uses)."""
    out, kept = {}, 0
    network_nodes = getattr(model, "_network_nodes", None)
    for original_index, node in enumerate(layer._inbound_nodes):
        key = f"{layer.name}_ib-{original_index}"
        if network_nodes is None or key in network_nodes:
            out[kept] = node
            kept += 1
    return out


def trace(model) -> LayerGraph:
    """Build the :class:`LayerGraph` of a (flattened) functional tf_keras model."""
    from edgeprune._env import tf

    tfm = tf()
    model = flatten_model(model)
    cfg = model.get_config()
    names = {l["name"] for l in cfg["layers"]}
    by_name = {l.name: l for l in model.layers}
    layers: dict = {}
    tensors: dict = {}
    for lc in cfg["layers"]:
        name = lc["name"]
        obj = by_name[name]
        nodes = _node_map(model, obj)
        calls = lc.get("inbound_nodes") or []
        inputs, kwargs = ([], {})
        if calls:
            inputs, kwargs = parse_call(calls[0])
            inputs = inputs + [r for r in kwarg_tensor_refs(kwargs, names) if r not in inputs]
        node_count = max(1, len(calls))
        outputs = []
        node = nodes.get(0)
        if node is None:
            raise InputError(f"layer '{name}' has no graph node; is the model built?")
        outs = tfm.nest.flatten(node.outputs)
        for t_idx, t in enumerate(outs):
            key = (name, 0, t_idx)
            shape = tuple(t.shape[1:]) if t.shape.rank else ()
            tensors[key] = TensorInfo(key=key, shape=shape, producer=name)
            outputs.append(key)
        for extra in range(1, node_count):  # further calls of a shared layer
            n = nodes.get(extra)
            if n is None:
                continue
            for t_idx, t in enumerate(tfm.nest.flatten(n.outputs)):
                key = (name, extra, t_idx)
                tensors[key] = TensorInfo(key=key, shape=tuple(t.shape[1:]), producer=name)
                outputs.append(key)
        layers[name] = LayerNode(name=name, class_name=lc["class_name"], config=lc["config"],
                                 inputs=inputs, outputs=outputs, kwargs=kwargs,
                                 calls=node_count, layer=obj)
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
    ins = [tuple(r[:3]) for r in cfg["input_layers"]]
    outs = [tuple(r[:3]) for r in cfg["output_layers"]]
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
