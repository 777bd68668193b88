"""Models that subclass ``keras.Model`` but are built functionally, seen as their functional graph.

keras-hub's Backbones and Tasks, and a user's ``class Net(keras.Model)`` whose ``__init__``
builds layers and calls ``super().__init__(inputs, outputs)``, are functional models whose
``get_config()`` holds constructor arguments (``stackwise_num_filters``), not the layer graph
the pruning engine reads. :func:`functional_view` turns one into a plain functional
``keras.Model`` over the same layers (same name, inputs, outputs and weights). The loader does it
once, so every command (inspect, prune, compile, verify, quantize, search) sees the graph; a
model built in Python and handed to the tracer goes through the same function there.

After pruning no constructor argument can describe the per-layer widths (a ResNet block's inner
convolution keeps its own count), so the pruned model is saved as a plain functional Model and
the file records which class it came from (:func:`write_origin`): ``edgeprune inspect`` of that
file says so, as the prune and compile output did.

A subclass with its own ``call`` is not a graph: it is refused, with the way out.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from edgeprune.base.errors import InputError

ORIGIN_MEMBER = "edgeprune.json"  # a .keras zip member; an .h5 file gets an attribute of this name
_MAX_ORIGIN_BYTES = 4096


def saved_as_note(class_name: str) -> str:
    """The one sentence prune, compile and inspect use for a subclass saved as functional."""
    return (f"saved as a functional Model: {class_name}'s config cannot describe the pruned widths "
            f"(load it with keras.saving.load_model; no {class_name} code is needed)")


def traced_note(class_name: str) -> str:
    return f"{class_name} is traced through its functional graph (a keras.Model subclass built functionally)"


def _own_call(cls, base) -> str | None:
    """The class between ``cls`` and ``base`` in the MRO that defines ``call``, if any."""
    for klass in cls.__mro__:
        if klass is base:
            return None
        if "call" in vars(klass):
            return klass.__name__
    return None


def functional_view(model, source: str = "model"):
    """``(model, class name)``: a functional subclass as a plain functional Model with the same
    name, inputs, outputs and layers, and the subclass's name; plain models pass as ``(model, None)``.

    Raises InputError for a subclass with its own ``call`` (Keras 3 or tf_keras): it has no
    graph to trace, whatever its ``__init__`` builds.
    """
    from edgeprune.base.env import keras3, tf_keras

    # By class, not by module name (base.env.is_keras3_model): a subclass lives in keras_hub or
    # in the user's module.
    keras = keras3()
    if isinstance(model, keras.Model):
        from keras.src.models.functional import Functional

        graph = isinstance(model, Functional)
        base = Functional
    else:
        keras = tf_keras()
        graph = bool(getattr(model, "_is_graph_network", False))
        base = keras.Model
    cls = type(model)
    if cls in (keras.Model, keras.Sequential) or cls.__name__ == "Functional" or isinstance(model, keras.Sequential):
        nested = _with_nested_views(keras, model, source) if graph else model
        return nested, None
    own_call = _own_call(cls, base) if graph else cls.__name__
    if own_call is not None:
        raise InputError(
            f"{source}: {cls.__name__} is a subclassed model with its own call() ({own_call}.call), "
            "so it has no functional graph to prune; rebuild it with the functional API "
            "(keras.Model(inputs, outputs)), Sequential, or a subclass whose __init__ calls "
            "super().__init__(inputs, outputs) without overriding call")
    return _with_nested_views(keras, _plain(keras, model), source), cls.__name__


def _plain(keras, model):
    """The same graph as a plain ``keras.Model``: the nested structures (a dict of inputs stays a
    dict), else the flat lists."""
    inputs = getattr(model, "_inputs_struct", None)
    outputs = getattr(model, "_outputs_struct", None)
    if inputs is None or outputs is None:
        inputs, outputs = model.inputs, model.outputs
    return keras.Model(inputs, outputs, name=model.name)


def _with_nested_views(keras, model, source: str):
    """``model`` with every nested functional subclass (a keras-hub Task's Backbone) replaced by
    its plain view, so the tracer can inline it like any nested model. The layers are reused,
    not copied (``clone_model`` with a function that returns them), so the weights are shared."""
    views = {}
    for layer in getattr(model, "layers", []):
        if not isinstance(layer, keras.Model):
            continue
        try:
            view, name = functional_view(layer, source)
        except InputError:  # a nested model with its own call stays one opaque (locked) layer
            continue
        if name is not None:
            views[id(layer)] = view
    if not views:
        return model
    return keras.models.clone_model(model, clone_function=lambda layer: views.get(id(layer), layer))


def write_origin(path: Path, class_name: str) -> None:
    """Record in a saved model file that it was ``class_name`` before edgeprune saved it as a
    plain functional Model: a ``.keras`` zip gets an extra member (Keras ignores it), an ``.h5``
    an attribute."""
    record = json.dumps({"class_name": class_name, "saved_as": "Functional"})
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(ORIGIN_MEMBER, record)
        return
    import h5py

    with h5py.File(path, "r+") as h5:
        h5.attrs[ORIGIN_MEMBER] = record


def read_origin(path: Path) -> str | None:
    """The class a model file was saved from by :func:`write_origin`, or None.

    The record is data from the file: a bounded read, a JSON string, a plain class name only.
    """
    path = Path(path)
    raw = None
    try:
        if path.is_dir():
            return None
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                if ORIGIN_MEMBER not in zf.namelist():
                    return None
                with zf.open(ORIGIN_MEMBER) as fh:
                    raw = fh.read(_MAX_ORIGIN_BYTES + 1)
        else:
            import h5py

            with h5py.File(path, "r") as h5:
                raw = h5.attrs.get(ORIGIN_MEMBER)
        if raw is None or len(raw) > _MAX_ORIGIN_BYTES:
            return None
        name = json.loads(raw).get("class_name")
    except (OSError, ValueError, AttributeError, zipfile.BadZipFile):
        return None
    return name if isinstance(name, str) and name.isidentifier() else None
