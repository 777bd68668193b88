"""Refuse models that need code to load before any loader runs that code.

A Lambda layer carries marshalled Python bytecode and an unknown class means user code must be
imported; both are refused in safe mode with a message naming the layer and the way out.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

from edgeprune._pyfile import import_python_file
from edgeprune.errors import InputError, UnsafeModelError

_CONTAINERS = {"Functional", "Model", "Sequential"}
# tf_keras wraps raw TF ops used in a functional graph in these; they name TF API symbols only.
_TF_OP_LAYERS = {"TFOpLambda", "SlicingOpLambda"}
_HINT = (
    "pass --custom-objects path.py (a Python file whose module-level `custom_objects` dict, "
    "or its classes, supply the code) or --unsafe if you trust the file"
)


def iter_layers(config: dict, prefix: str = "") -> Iterator[tuple[str, str, dict]]:
    """Yield (qualified layer name, class_name, layer entry) for every layer, nested ones too."""
    body = config.get("config", config) if "class_name" in config else config
    for entry in body.get("layers", []) or []:
        if not isinstance(entry, dict):
            continue
        cls = entry.get("class_name", "?")
        name = entry.get("name") or (entry.get("config") or {}).get("name", "?")
        qual = f"{prefix}{name}"
        yield qual, cls, entry
        if cls in _CONTAINERS or "layers" in (entry.get("config") or {}):
            yield from iter_layers(entry.get("config") or {}, prefix=f"{qual}/")


def _is_known(class_name: str, flavour: str) -> bool:
    from edgeprune._env import tf_keras

    if class_name in _CONTAINERS or class_name in _TF_OP_LAYERS or class_name == "InputLayer":
        return True
    if isinstance(getattr(tf_keras().layers, class_name, None), type):
        return True
    if flavour == "keras3":
        from edgeprune._env import keras3
        keras = keras3()

        return isinstance(getattr(keras.layers, class_name, None), type)
    return False


def _is_registered(name: str, flavour: str) -> bool:
    """Whether the running process has registered ``name`` with Keras (decorated classes)."""
    try:
        if flavour == "keras3":
            from edgeprune._env import keras3
            keras = keras3()

            return keras.saving.get_registered_object(name) is not None
        from edgeprune._env import tf_keras

        return tf_keras().saving.get_registered_object(name) is not None
    except Exception:  # pragma: no cover - registry lookups are best effort
        return False


def check_config(path: Path, config: dict | None, flavour: str, *, custom_objects: dict,
                 safe_mode: bool) -> None:
    """Raise UnsafeModelError for a Lambda (safe mode) or a layer class nobody supplied."""
    if not config:
        return
    supplied = set(custom_objects)
    top = config.get("class_name")
    if top and top not in _CONTAINERS and top not in supplied and top.split(">")[-1] not in supplied:
        if not _is_registered(config.get("registered_name") or top, flavour):
            raise UnsafeModelError(f"{path}: the model is of unknown custom class '{top}'; {_HINT}")
    for qual, cls, _entry in iter_layers(config):
        short = cls.split(">")[-1]
        if cls == "Lambda":
            if safe_mode:
                raise UnsafeModelError(
                    f"{path}: layer '{qual}' is a Lambda layer, which runs arbitrary Python code "
                    f"when loaded; refused in safe mode ({_HINT})"
                )
            continue
        if cls in supplied or short in supplied:
            continue
        module = _entry.get("module") if isinstance(_entry, dict) else None
        own = "keras" if flavour == "keras3" else "tf_keras"
        if isinstance(module, str) and module.split(".")[0] == own:
            continue  # Keras's own layers and operations (keras.src.ops.numpy.Add, LayerScale, ...)
        registered = _entry.get("registered_name") if isinstance(_entry, dict) else None
        if not _is_known(short if ">" in cls else cls, flavour) and not (
                registered and _is_registered(registered, flavour)):
            raise UnsafeModelError(
                f"{path}: layer '{qual}' uses unknown custom class '{cls}'; {_HINT}"
            )


class CustomObjects(dict):
    """Name → object for the loaders, plus ``tf_keras``: tf_keras twins of Keras 3 classes.

    A Keras 3 model with a custom layer is loaded with the Keras 3 class and rebuilt with the
    tf_keras class of the same name, which the file lists in a ``tf_keras_objects`` dict.
    """

    def __init__(self, objects=(), tf_keras: dict | None = None):
        super().__init__(objects)
        self.tf_keras = dict(tf_keras or {})


def _register_pruning_rules(module, path: Path) -> None:
    """A module-level ``pruning_rules = {"MyLayer": LayerRule}`` makes custom layers prunable."""
    rules = getattr(module, "pruning_rules", None)
    if rules is None:
        return
    if not isinstance(rules, dict):
        raise InputError(f"--custom-objects {path}: `pruning_rules` must be a dict, found {type(rules).__name__}")
    from edgeprune.pruning.rules import register_rule

    for name, rule in rules.items():
        try:
            register_rule(name, rule)
        except InputError as exc:
            raise InputError(f"--custom-objects {path}: {exc}") from None


def load_custom_objects(path: str | Path | None) -> dict:
    """Import a user's ``--custom-objects`` file: its ``custom_objects`` dict, else its classes.

    An optional module-level ``tf_keras_objects`` dict supplies tf_keras versions of Keras 3
    custom layers (same names) for tfmot's door; an optional ``pruning_rules`` dict registers
    layer rules (:mod:`edgeprune.pruning.rules`) so those layers prune instead of locking.
    """
    if path is None:
        return CustomObjects()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--custom-objects {path}: no such file")
    if path.suffix != ".py":
        raise InputError(f"--custom-objects {path}: expected a Python .py file")
    module = import_python_file(path, f"--custom-objects {path}")
    _register_pruning_rules(module, path)
    twins = getattr(module, "tf_keras_objects", None)
    if twins is not None and not isinstance(twins, dict):
        raise InputError(f"--custom-objects {path}: `tf_keras_objects` must be a dict, found {type(twins).__name__}")
    objects = getattr(module, "custom_objects", None)
    if objects is not None:
        if not isinstance(objects, dict):
            raise InputError(f"--custom-objects {path}: `custom_objects` must be a dict, found {type(objects).__name__}")
        return CustomObjects(objects, twins)
    found = {
        name: obj for name, obj in vars(module).items()
        if inspect.isclass(obj) and obj.__module__ == module.__name__
    }
    if not found:
        raise InputError(f"--custom-objects {path}: defines no `custom_objects` dict and no classes")
    return CustomObjects(found, twins)
