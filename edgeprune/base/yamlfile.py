"""Read a user's YAML file (profile, fleet, recipe) with one-line errors naming it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeprune.base.errors import InputError


def read_yaml(path: str | Path, label: str) -> Any:
    """Parsed YAML of ``path``; unreadable or invalid files raise InputError starting with ``label``."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"{label}: cannot read the file ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{label}: not valid YAML ({str(exc).splitlines()[0]})") from None
