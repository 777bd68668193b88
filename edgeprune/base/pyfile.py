"""Import a user's Python file (custom objects, data generators) under a private module name."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from edgeprune.base.errors import InputError


def import_python_file(path: str | Path, what: str) -> ModuleType:
    """Execute ``path`` as a module; any failure is the user's input, reported in one line.

    ``what`` names the flag or source in the message (e.g. ``--custom-objects x.py``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: no such file {path}")
    name = f"_edgeprune_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code
        del sys.modules[name]
        raise InputError(f"{what}: failed to import {path.name} ({type(exc).__name__}: {exc})") from None
    return module
