"""Model input and output: every Keras flavour in, the same flavour inside and out.

``load_model`` accepts a Keras 3 ``.keras`` file, a tf_keras ``.keras``/``.h5`` file or a Keras
SavedModel directory. A Keras 3 file gives a Keras 3 model and a tf_keras file a tf_keras model:
the pruning engine, training and conversion work on either. The one place a Keras 3 model is
translated to tf_keras is tfmot's door (QAT, gradual sparsity): :func:`to_tf_keras`.
``save_model`` writes back in the flavour the user gave us.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.base.errors import EdgepruneError, InputError
from edgeprune.load.model_io.custom_objects import CustomObjects, load_custom_objects
from edgeprune.load.model_io.detect import ModelFormat, detect, model_sha256, sha256_file
from edgeprune.load.model_io.messages import cause_line
from edgeprune.load.model_io.safety import check_config, check_h5_storage
from edgeprune.load.model_io.save import save_model
from edgeprune.load.model_io.subclass import saved_as_note

__all__ = ["CustomObjects", "LoadedModel", "load_model", "save_model", "load_custom_objects", "detect",
           "model_sha256", "sha256_file", "to_tf_keras", "saved_as_note"]


@dataclass
class LoadedModel:
    """A model ready for edgeprune: the functional tf_keras model and where it came from."""

    model: object  # functional keras.Model (Keras 3) or tf_keras.Model, as in the file;
    # a SavedModelGraph for kind "savedmodel_bare" (no Keras graph)
    flavour: str  # "keras3" | "tf_keras"
    path: Path
    sha256: str  # model_sha256: of the file, or of a SavedModel's graph, Keras metadata and variables
    kind: str = "keras_zip"  # keras_zip | h5 | savedmodel
    keras_version: str | None = None
    translation: dict = field(default_factory=dict)  # notes of a translation, when one happened
    # A keras.Model subclass built functionally (model_io.subclass): the class the file's model
    # is (now seen as its functional graph), or the class edgeprune saved this file from.
    subclass: str | None = None
    saved_from: str | None = None

    @property
    def origin_class(self) -> str | None:
        """The subclass whose graph this is; a pruned model saved from it records it again."""
        return self.subclass or self.saved_from

    @property
    def note(self) -> str | None:
        """One sentence for people about the subclass, when there is one."""
        from edgeprune.load.model_io.subclass import saved_as_note, traced_note

        if self.saved_from:
            return saved_as_note(self.saved_from)
        return traced_note(self.subclass) if self.subclass else None


def _split_custom(custom_objects: dict, tk) -> tuple[dict, dict]:
    """(objects for tf_keras, objects for Keras 3): a tf_keras Layer subclass goes to tf_keras."""
    tk_objs, k3_objs = {}, {}
    for name, obj in custom_objects.items():
        if not inspect.isclass(obj):  # functions (activations, losses) serve both loaders
            tk_objs[name] = k3_objs[name] = obj
        elif issubclass(obj, tk.layers.Layer):
            tk_objs[name] = obj
        else:
            k3_objs[name] = obj
    tk_objs.update(getattr(custom_objects, "tf_keras", {}) or {})
    return tk_objs, k3_objs


def _load_keras3(path: Path, k3_objects: dict, safe_mode: bool, config=None):
    from edgeprune.base.env import keras3
    from edgeprune.load.model_io.hub import loadable_keras_file
    keras = keras3()

    try:
        with loadable_keras_file(path, config) as readable:  # keras-hub's derived keys dropped
            k3 = keras.saving.load_model(readable, custom_objects=k3_objects or None, compile=False,
                                         safe_mode=safe_mode)
    except EdgepruneError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: Keras 3 could not load the model ({cause_line(exc)})") from None
    return as_functional_keras3(k3, keras, str(path))


def as_functional_keras3(model, keras, source: str):
    """A functional Keras 3 model: Sequential becomes functional; a functional subclass is seen
    as its graph by the caller (``model_io.subclass.functional_view``); other subclasses are refused."""
    from keras.src.models.functional import Functional

    if isinstance(model, keras.Sequential):
        try:
            inputs, outputs = model.inputs, model.outputs
        except (AttributeError, ValueError):
            inputs = None
        if not inputs:
            raise InputError(f"{source}: Sequential model was never built (no input shape)")
        return keras.Model(inputs, outputs, name=model.name)
    if isinstance(model, Functional):
        return model
    raise InputError(
        f"{source}: a subclassed model ({type(model).__name__}) has no functional graph to prune; "
        "rebuild it with the functional API or Sequential"
    )


def to_tf_keras(model, *, custom_objects=None, source: str = "model"):
    """``model`` as a tf_keras model, for tfmot (QAT, gradual and M:N sparsity) only.

    tf_keras models pass through. A Keras 3 model is rebuilt in tf_keras with the same weights
    (checked numerically); a layer with no tf_keras equivalent raises InputError naming it.
    """
    from edgeprune.base.env import is_keras3_model

    if not is_keras3_model(model):
        return model
    from edgeprune.load.model_io.keras3_to_tfkeras import keras3_to_tfkeras

    rebuilt, _ = keras3_to_tfkeras(model, custom_objects=custom_objects or {}, safe_mode=True,
                                   source=source)
    return rebuilt


def _load_tf_keras(path: Path, tk_objects: dict, safe_mode: bool):
    from edgeprune.base.env import tf_keras

    tk = tf_keras()
    kwargs = {"custom_objects": tk_objects or None, "compile": False}
    if path.suffix == ".keras":
        kwargs["safe_mode"] = safe_mode
    try:
        return tk.models.load_model(str(path), **kwargs)
    except EdgepruneError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: tf_keras could not load the model ({cause_line(exc)})") from None


def check_savedmodel(path: Path, fmt: ModelFormat, *, custom_objects: dict, safe_mode: bool) -> None:
    """Refuse a SavedModel whose graph reaches outside the model (safe mode), or whose Keras
    metadata would run code, before TensorFlow loads any of it."""
    if safe_mode:
        from edgeprune.load.model_io.graph_safety import check_savedmodel_graph
        from edgeprune.load.model_io.safety import check_savedmodel_files

        check_savedmodel_files(path)
        check_savedmodel_graph(path)
    if fmt.kind == "savedmodel":
        from edgeprune.load.model_io.safety import check_keras_metadata

        check_keras_metadata(path, custom_objects=custom_objects, safe_mode=safe_mode)


def load_model(path, *, custom_objects=None, safe_mode: bool = True) -> LoadedModel:
    """Load any supported Keras model as a functional tf_keras model.

    ``custom_objects`` is a dict or the path of a ``--custom-objects`` Python file. Raises
    InputError (one line naming the file) for anything unreadable, unsafe or unsupported.
    """
    from edgeprune.base.env import tf_keras

    path = Path(path)
    if not isinstance(custom_objects, dict):
        custom_objects = load_custom_objects(custom_objects)
    fmt: ModelFormat = detect(path)
    if fmt.kind in ("savedmodel", "savedmodel_bare"):
        check_savedmodel(path, fmt, custom_objects=custom_objects, safe_mode=safe_mode)
    if fmt.kind == "savedmodel_bare":  # no Keras graph: compile (quantize and lower) only
        from edgeprune.load.model_io.savedmodel import SavedModelGraph

        return LoadedModel(model=SavedModelGraph(path), flavour=fmt.flavour, path=path,
                           sha256=model_sha256(path), kind=fmt.kind)
    check_config(path, fmt.config, fmt.flavour, custom_objects=custom_objects, safe_mode=safe_mode)
    if safe_mode and fmt.kind != "savedmodel":
        check_h5_storage(path)
    tk = tf_keras()
    tk_objects, k3_objects = _split_custom(custom_objects, tk)
    translation: dict = {}
    if fmt.flavour == "keras3":
        model = _load_keras3(path, k3_objects, safe_mode, fmt.config)
    elif fmt.kind == "h5_legacy":  # Keras 1.x-2.3: config translated by detect, weights by tf_keras
        from edgeprune.load.model_io import legacy_h5
        from edgeprune.load.model_io.keras3_to_tfkeras import as_functional

        model = as_functional(legacy_h5.load(path, fmt.config, tk_objects), tk, str(path))
    else:
        from edgeprune.load.model_io.keras3_to_tfkeras import as_functional

        model = as_functional(_load_tf_keras(path, tk_objects, safe_mode), tk, str(path))
    from edgeprune.base.limits import check_model
    from edgeprune.load.model_io.subclass import functional_view, read_origin, traced_note

    # The one place a functional subclass (keras-hub Backbone, a user's Net) becomes its graph:
    # every command below the loader then reads a plain functional model.
    model, subclass = functional_view(model, str(path))
    if subclass:
        translation["functional_view"] = {"class": subclass, "note": traced_note(subclass)}
    check_model(model, str(path))  # before calibration or training allocate per-sample buffers
    return LoadedModel(model=model, flavour=fmt.flavour, path=path, sha256=model_sha256(path),
                       kind=fmt.kind, keras_version=fmt.keras_version, translation=translation,
                       subclass=subclass, saved_from=None if subclass else read_origin(path))
