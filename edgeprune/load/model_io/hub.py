"""keras-hub: an installed library whose registered classes a model file may name.

A keras-hub model saved as ``.keras`` names its class by ``registered_name``
(``"keras_hub>ResNetBackbone"``) and module (``keras_hub.src.models...``). That class is code the
user installed (``pip install 'edgeprune[hub]'``), not code carried by the file, so edgeprune
imports keras-hub when a config names it and lets keras-hub's own registered classes load in
safe mode without ``--custom-objects``. Nothing else widens: a keras-hub *function* named by a
config (``keras_hub>upload_preset``) is still refused by the function check of
:mod:`edgeprune.load.model_io.safety`, and the other names importing keras-hub registers
(``keras_nlp>`` aliases, tensorflow-text's ``Text>`` classes) get no pass either.
"""
from __future__ import annotations

from pathlib import Path

from edgeprune.base.errors import InputError

HUB_PREFIX = "keras_hub>"  # the package keras-hub registers its classes under
HUB_MODULE = "keras_hub"
HUB_EXTRA = "edgeprune[hub]"


def _names(config) -> list[str]:
    """Short names of the keras-hub classes ``config`` names, in order of first appearance."""
    found: list[str] = []
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
        elif isinstance(node, dict):
            registered, module = node.get("registered_name"), node.get("module")
            is_hub = (isinstance(registered, str) and registered.startswith(HUB_PREFIX)) or (
                isinstance(module, str) and module.split(".")[0] == HUB_MODULE)
            if is_hub and isinstance(node.get("class_name"), str) and node["class_name"] != "function":
                name = node["class_name"].split(">")[-1]
                if name not in found:
                    found.append(name)
            stack.extend(reversed(list(node.values())))
    return found


def require_hub_if_named(path: Path, config, flavour: str) -> None:
    """Import keras-hub when a Keras 3 ``config`` names its classes, so they are registered
    before the safety check and the loader look them up; without keras-hub, one line naming
    the extra to install."""
    if flavour != "keras3" or not config:
        return
    names = _names(config)
    if not names:
        return
    try:
        from edgeprune.base.env import quiet_import

        quiet_import("keras_hub")  # registers its classes with Keras
    except ImportError:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise InputError(f"{path}: this model uses keras-hub classes ({shown}); install them with "
                         f"pip install '{HUB_EXTRA}'") from None


def is_hub_class(registered_name: str, obj) -> bool:
    """Whether ``obj``, registered with Keras as ``registered_name``, is a class of keras-hub's own."""
    return (registered_name.startswith(HUB_PREFIX) and isinstance(obj, type)
            and str(getattr(obj, "__module__", "")).split(".")[0] == HUB_MODULE)


def is_hub_bundled(obj) -> bool:
    """Whether ``obj`` comes from a library importing keras-hub registers (keras-hub's
    ``keras_nlp>`` aliases, tensorflow-text): registered in this process, but not by the user."""
    return str(getattr(obj, "__module__", "")).split(".")[0] in (HUB_MODULE, "keras_nlp", "tensorflow_text")


# keras-hub 0.32 layers whose get_config() writes values the constructor derives and rejects
# (ViTPatchingAndEmbedding: num_patches, num_positions), so from_config of their own config
# fails. Rebuilding a model from its layer configs (flattening a Task, pruning) drops them.
DERIVED_CONFIG_KEYS = {"ViTPatchingAndEmbedding": ("num_patches", "num_positions")}


def drop_derived_keys(layer_config: dict) -> dict:
    """``layer_config`` (one entry of a model config's ``layers``) without the derived values
    its keras-hub class writes but does not accept; other layers are returned unchanged."""
    keys = DERIVED_CONFIG_KEYS.get(layer_config.get("class_name"))
    inner = layer_config.get("config")
    if not keys or not isinstance(inner, dict) or not any(k in inner for k in keys):
        return layer_config
    return {**layer_config, "config": {k: v for k, v in inner.items() if k not in keys}}
