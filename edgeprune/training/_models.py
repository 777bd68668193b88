"""Small graph helpers shared by the training modules (functional config surgery)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgeprune.base.errors import InputError


def as_functional(model):
    """A functional view of ``model`` (Sequential models are re-wrapped, weights shared)."""
    from edgeprune.base.env import is_keras3_model, keras_of

    keras = keras_of(model)
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if is_keras3_model(model):
        from keras.src.models.functional import Functional

        functional = isinstance(model, Functional)
    else:
        functional = getattr(model, "_is_graph_network", False)
    if not functional:
        raise InputError(
            f"model '{model.name}' is a subclassed Keras model; training-aware compression "
            "needs a functional or Sequential model"
        )
    return model


def copy_model(model, *, scope=None):
    """A fresh clone of ``model`` with the same weights, built inside ``scope`` if given."""
    from contextlib import nullcontext

    from edgeprune.base.env import keras_of

    model = as_functional(model)
    keras = keras_of(model)
    with scope or nullcontext():
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
    return clone


def rebuild(config: dict, source_model, weights_for: Callable[[str], list | None] | None = None):
    """Build a functional model from a neutral ``config`` (:func:`edgeprune.load.graph.neutral_config`)
    in ``source_model``'s flavour and copy weights by layer name from ``source_model``.

    ``weights_for(name)`` may return replacement weights for a layer (e.g. folded kernels).
    """
    from edgeprune.load.graph import model_from_neutral

    new = model_from_neutral(config, source_model)
    by_name = {layer.name: layer for layer in source_model.layers}
    for layer in new.layers:
        weights = weights_for(layer.name) if weights_for else None
        if weights is None and layer.name in by_name:
            weights = by_name[layer.name].get_weights()
        if weights:
            layer.set_weights(weights)
    return new


def replace_refs(obj: Any, mapping: dict[tuple[str, int, int], tuple[str, int, int]]) -> Any:
    """Rewrite inbound-node references ``[layer, node, tensor, kwargs]`` anywhere in a config."""
    if isinstance(obj, list):
        if (
            len(obj) >= 3
            and isinstance(obj[0], str)
            and isinstance(obj[1], int)
            and isinstance(obj[2], int)
            and (obj[0], obj[1], obj[2]) in mapping
        ):
            name, node, tensor = mapping[(obj[0], obj[1], obj[2])]
            return [name, node, tensor, *obj[3:]]
        return [replace_refs(item, mapping) for item in obj]
    if isinstance(obj, dict):
        return {key: replace_refs(value, mapping) for key, value in obj.items()}
    return obj


def consumers(config: dict) -> dict[str, list[str]]:
    """Layer name -> names of layers that read any of its outputs (plus '__output__')."""
    names = {layer["name"] for layer in config["layers"]}
    found: dict[str, list[str]] = {name: [] for name in names}

    def walk(obj, reader):
        if isinstance(obj, list):
            if len(obj) >= 3 and isinstance(obj[0], str) and obj[0] in names and isinstance(obj[1], int):
                found[obj[0]].append(reader)
                return
            for item in obj:
                walk(item, reader)
        elif isinstance(obj, dict):
            for value in obj.values():
                walk(value, reader)

    for layer in config["layers"]:
        walk(layer.get("inbound_nodes", []), layer["name"])
    walk(config.get("output_layers", []), "__output__")
    return found


def output_layers(model) -> list[tuple[str, Any]]:
    """(output name, producing layer) for every output of the model, in output order."""
    names = list(getattr(model, "output_names", None) or [t.name for t in model.outputs])
    return [(name, t._keras_history[0]) for name, t in zip(names, model.outputs)]


def single_output_layer(model):
    """The layer producing the model's only output; multi-output models are refused."""
    if len(model.outputs) != 1:
        raise InputError(
            f"model '{model.name}' has {len(model.outputs)} outputs; this step needs a single-output model"
        )
    layer, _, _ = model.outputs[0]._keras_history
    return layer


def layer_is_softmax(layer) -> bool:
    """True when ``layer``'s output is a softmax (its activation, or an Activation/Softmax layer)."""
    cls = type(layer).__name__
    if cls == "Softmax":
        return True
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", "") == "softmax"


def ends_in_softmax(model) -> bool:
    """True when the model's (only) output is a softmax."""
    return layer_is_softmax(single_output_layer(model))


def logits_model(model, *, all_outputs: bool = False):
    """A copy of ``model`` whose softmax outputs give pre-softmax logits, or None if none does.

    With ``all_outputs`` every output of a model with several is considered (outputs that are
    not softmax stay as they are); otherwise the model must have one output. The copy has the
    same weights in the same order, so training it and calling
    ``model.set_weights(logits.get_weights())`` carries the result back.
    """
    model = as_functional(model)
    heads = output_layers(model) if all_outputs else [(None, single_output_layer(model))]
    soft = [layer for _, layer in heads if layer_is_softmax(layer)]
    if not soft:
        return None
    from edgeprune.load.graph import neutral_config

    config = neutral_config(model)
    for layer in soft:
        entry = next(item for item in config["layers"] if item["name"] == layer.name)
        if type(layer).__name__ in ("Softmax", "Activation"):
            inbound = entry["inbound_nodes"][0]
            ref = inbound[0] if isinstance(inbound, list) else None
            if not ref or not isinstance(ref, list):
                raise InputError(f"cannot find the input of softmax layer '{layer.name}'")
            config["layers"] = [item for item in config["layers"] if item["name"] != layer.name]
            config["output_layers"] = [[ref[0], ref[1], ref[2]] if out[0] == layer.name else out
                                       for out in config["output_layers"]]
        else:
            entry["config"]["activation"] = "linear"
    return rebuild(config, model)
