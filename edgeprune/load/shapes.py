"""``--input-shape``: fix the unknown dimensions of model inputs (sequence length, image size).

One parser and one place that applies the fix, shared by compile, prune, latency-table and
the conversion, so that conversion, calibration and MAC counting all see the same shapes.

Forms: ``128`` or ``1x128`` (one input; with or without the batch dimension), ``tokens=1x128``
(a named input; repeat the option for several inputs); ``x`` or ``,`` separate dimensions.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from edgeprune.base.errors import InputError

FLAG = "--input-shape"


def parse_input_shape(value) -> list[tuple[str | None, tuple[int, ...]]]:
    """Normalize every accepted form to ``[(input name or None, dims), ...]``.

    Accepts None, a string, a tuple/list of ints (one input), an iterable of strings (the
    repeatable CLI option) or a dict ``{name: dims}``.
    """
    if value is None or value == () or value == []:
        return []
    if isinstance(value, dict):
        return [(str(k), _dims(v, f"{k}={v}")) for k, v in value.items()]
    if isinstance(value, str):
        return [_one(value)]
    items = list(value)
    if items and all(isinstance(v, int) for v in items):
        return [(None, _dims(items, str(value)))]
    return [_one(v) if isinstance(v, str) else (None, _dims(v, str(v))) for v in items]


def _one(text: str) -> tuple[str | None, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    return (name.strip() or None) if sep else None, _dims(dims, text)


def _dims(dims, text: str) -> tuple[int, ...]:
    parts = [p for p in re.split(r"[x,*\s]+", dims.strip().strip("()[]")) if p] if isinstance(dims, str) else list(dims)
    try:
        out = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        out = ()
    if not out or any(d < 1 for d in out):
        raise InputError(f"{FLAG} {text}: expected positive dimensions such as 1x128 or tokens=1x128")
    return out


def apply_input_shape(inputs: Iterable[tuple[str, tuple]], input_shape) -> list[tuple]:
    """The full shapes (batch first) of ``inputs`` [(name, shape)] after ``input_shape``.

    Only unknown dimensions may be fixed; a fixed dimension given a different value, a wrong
    rank or an unknown input name is one InputError line. The batch dimension is kept as is.
    """
    inputs = [(str(n), tuple(s)) for n, s in inputs]
    shapes = [s for _, s in inputs]
    names = [n for n, _ in inputs]
    for name, dims in parse_input_shape(input_shape):
        if name is None:
            if len(inputs) != 1:
                raise InputError(f"{FLAG}: the model has {len(inputs)} inputs ({', '.join(names)}); "
                                 f"name each one, e.g. {FLAG} {names[0]}={'x'.join(map(str, dims))}")
            index = 0
        else:
            matches = [i for i, n in enumerate(names) if n == name or n.split(":")[0] == name]
            if not matches:
                raise InputError(f"{FLAG} {name}=...: the model has no input '{name}' "
                                 f"(inputs: {', '.join(names)})")
            index = matches[0]
        shape = shapes[index]
        rank = len(shape)
        if len(dims) == rank - 1:
            dims = (shape[0],) + dims
        elif len(dims) != rank:
            raise InputError(f"{FLAG} {'x'.join(map(str, dims))}: input '{names[index]}' has {rank - 1} "
                             f"dimension(s) besides the batch (shape {format_shape(shape)})")
        for axis, (have, want) in enumerate(zip(shape[1:], dims[1:]), start=1):
            if have is not None and have != want:
                raise InputError(f"{FLAG}: input '{names[index]}' dimension {axis} is {have} in the model "
                                 f"(shape {format_shape(shape)}), got {want}")
        shapes[index] = (shape[0],) + tuple(dims[1:])
    return shapes


def format_shape(shape) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def unknown_dims(model) -> list[tuple[str, int, tuple]]:
    """(input name, axis, shape) for every unknown non-batch dimension of ``model``'s inputs."""
    out = []
    for name, tensor in zip(input_names(model), model.inputs):
        shape = tuple(None if d is None else int(d) for d in tensor.shape)
        out += [(name, axis, shape) for axis, d in enumerate(shape) if axis and d is None]
    return out


def input_names(model) -> list[str]:
    """The names users know the inputs by: the Input layers' names (Keras 3 tensors are
    called ``keras_tensor_N``), else the tensor names (a bare SavedModel's signature keys)."""
    names = []
    for i, tensor in enumerate(model.inputs):
        history = getattr(tensor, "_keras_history", None)
        layer = getattr(history, "layer", None) or (history[0] if isinstance(history, tuple) and history else None)
        name = getattr(layer, "name", None) or getattr(tensor, "name", None) or f"input_{i}"
        names.append(str(name).split(":")[0])
    return names


def _layer_classes(model) -> dict:
    """{class name: class} of every layer, so ``from_config`` finds custom classes again."""
    found: dict = {}
    stack = list(getattr(model, "layers", []) or [])
    while stack:
        layer = stack.pop()
        found.setdefault(type(layer).__name__, type(layer))
        stack += [x for x in (getattr(layer, "layers", None) or []) if x is not layer]
        inner = getattr(layer, "layer", None)
        if inner is not None and inner is not layer:
            stack.append(inner)
    return found


def with_input_shape(model, input_shape):
    """A copy of the Keras ``model`` (either flavour) whose inputs have ``input_shape`` applied.

    The model is rebuilt from its config with the InputLayer shapes changed and the same
    weights, so every later stage (calibration checks, MAC counting, conversion) sees static
    dimensions. Returns ``model`` itself when there is nothing to change.
    """
    if not parse_input_shape(input_shape):
        return model
    names = input_names(model)
    current = [tuple(None if d is None else int(d) for d in t.shape) for t in model.inputs]
    shapes = apply_input_shape(list(zip(names, current)), input_shape)
    if shapes == current:
        return model
    return rebuild_with_shapes(model, shapes)


def rebuild_with_shapes(model, shapes: list[tuple]):
    """``model`` rebuilt from its config with its Input layers set to ``shapes`` (input order),
    and the same weights."""
    config = model.get_config()
    layers = config.get("layers") or []
    input_layers = [layer for layer in layers if layer.get("class_name") == "InputLayer"]
    if type(model).__name__ == "Sequential" and not input_layers:
        raise InputError(f"{FLAG}: this Sequential model has no Input layer to reshape; "
                         "add keras.Input(shape) as its first layer")
    order = config.get("input_layers")
    if isinstance(order, list) and order and isinstance(order[0], str):  # Keras 3: [name, 0, 0]
        order = [order]
    by_name = {layer.get("name") or layer["config"].get("name"): layer for layer in input_layers}
    if isinstance(order, list) and len(order) == len(shapes):
        targets = [by_name.get(o[0] if isinstance(o, (list, tuple)) else o) for o in order]
    else:
        targets = input_layers[:len(shapes)]
    if len(targets) != len(shapes) or any(t is None for t in targets):
        raise InputError(f"{FLAG}: cannot find the Input layers of '{model.name}' to reshape")
    for layer, shape in zip(targets, shapes):
        cfg = layer["config"]
        key = "batch_shape" if "batch_shape" in cfg else "batch_input_shape"
        cfg[key] = [None] + list(shape[1:])
    objects = _layer_classes(model)
    new = type(model).from_config(config, custom_objects=objects) if objects else type(model).from_config(config)
    new.set_weights(model.get_weights())
    return new
