"""The user's ``--custom-objects`` file: the one way code enters edgeprune besides ``--unsafe``.

The file is the user's own Python, imported on purpose; it supplies classes and functions a
model names (``custom_objects``), their tf_keras twins (``tf_keras_objects``) and pruning rules
for them (``pruning_rules``).
"""
from __future__ import annotations

import inspect
from pathlib import Path

from edgeprune.base.errors import InputError
from edgeprune.base.pyfile import import_python_file


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
    if not found and getattr(module, "pruning_rules", None) is None:  # a rules-only file is fine
        raise InputError(f"--custom-objects {path}: defines no `custom_objects` dict and no classes")
    return CustomObjects(found, twins)
