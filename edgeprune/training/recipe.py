"""YAML recipe files: the training flags written down once, checked strictly."""
from __future__ import annotations

from pathlib import Path

from edgeprune.errors import InputError


def load_recipe(path: str | Path) -> dict:
    """Read a recipe into a settings dict; unknown keys or bad YAML -> InputError naming the file.

    Keys are the flag names with dashes or underscores (``finetune-epochs`` or
    ``finetune_epochs``); a top-level ``training:`` mapping is also accepted.
    """
    from edgeprune.training.options import TrainingOptions
    from edgeprune.yamlfile import read_yaml

    path = Path(path)
    data = read_yaml(path, f"--recipe {path}")
    if data is None:
        return {}
    if isinstance(data, dict) and set(data) == {"training"}:
        data = data["training"]
    if not isinstance(data, dict):
        raise InputError(f"--recipe {path}: expected a mapping of settings, found {type(data).__name__}")
    known = set(TrainingOptions.model_fields)
    values = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in known:
            raise InputError(
                f"--recipe {path}: unknown key '{raw_key}' (known: {', '.join(sorted(k.replace('_', '-') for k in known))})"
            )
        if key == "sparsity_m_by_n" and value is not None and not isinstance(value, (list, tuple)):
            from edgeprune.training.options import parse_m_by_n

            value = parse_m_by_n(str(value))
        values[key] = value
    return values
