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

import contextlib
import json
import re
import shutil
import sys
import tempfile
import zipfile
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


# A module a file may name for a class keras-hub defines but does not register: keras-hub's own
# source tree, as dotted identifiers (no "..", no other package that merely starts alike).
_HUB_SOURCE_MODULE = re.compile(r"^keras_hub\.src(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def unregistered_hub_class(entry: dict):
    """The keras-hub layer or model class a config ``entry`` names by module, or None.

    keras-hub 0.32 leaves some of the layers its Backbones are built from unregistered
    (``ViTPatchingAndEmbedding``, ``ViTEncoder``): a Backbone file never names them, but a pruned
    Backbone saved as a plain functional Model does, by ``module`` and ``class_name``, and Keras
    resolves them by importing that module. Such a class is keras-hub's code, installed by the
    user, so it gets the pass its registered classes get, under narrow conditions: the module is
    inside ``keras_hub.src`` and already imported (importing keras-hub imports its whole source
    tree, so nothing a file names is ever imported here), the class is defined in keras-hub (not
    re-exported from elsewhere), it is a Keras Layer or Model, and the ``registered_name`` Keras
    would look up first names nothing else.
    """
    module, name = entry.get("module"), entry.get("class_name")
    if not (isinstance(module, str) and isinstance(name, str) and _HUB_SOURCE_MODULE.match(module)
            and name.isidentifier()):
        return None
    loaded = sys.modules.get(module)
    obj = vars(loaded).get(name) if loaded is not None else None
    if not isinstance(obj, type) or not str(getattr(obj, "__module__", "")).startswith("keras_hub.src."):
        return None
    from edgeprune.base.env import keras3

    keras = keras3()
    if not issubclass(obj, keras.layers.Layer):  # keras.Model is a Layer too
        return None
    registered = entry.get("registered_name")
    if registered is not None:
        if not isinstance(registered, str):
            return None
        other = keras.saving.get_registered_object(registered)
        if other is not None and other is not obj:
            return None  # Keras would load the registered object, not this class
    return obj


# keras-hub 0.32 layers whose get_config() writes values the constructor derives and rejects
# (ViTPatchingAndEmbedding: num_patches, num_positions), so from_config of their own config
# fails. Rebuilding a model from its layer configs (flattening a Task, pruning) drops them.
DERIVED_CONFIG_KEYS = {"ViTPatchingAndEmbedding": ("num_patches", "num_positions"),
                       "DeiTEmbeddings": ("num_patches", "num_positions")}


def without_derived_keys(config):
    """``config`` (a whole model config) with :data:`DERIVED_CONFIG_KEYS` dropped at every
    nesting, or None when it holds none: Keras can then rebuild the layers from it."""
    changed = False

    def clean(node):
        nonlocal changed
        if isinstance(node, list):
            return [clean(item) for item in node]
        if not isinstance(node, dict):
            return node
        node = {key: clean(value) for key, value in node.items()}
        if "class_name" in node and "config" in node:
            fixed = drop_derived_keys(node)
            changed = changed or fixed is not node
            node = fixed
        return node

    cleaned = clean(config)
    return cleaned if changed else None


def drop_derived_keys(layer_config: dict) -> dict:
    """``layer_config`` (one entry of a model config's ``layers``) without the derived values
    its keras-hub class writes but does not accept; other layers are returned unchanged."""
    keys = DERIVED_CONFIG_KEYS.get(layer_config.get("class_name"))
    inner = layer_config.get("config")
    if not keys or not isinstance(inner, dict) or not any(k in inner for k in keys):
        return layer_config
    return {**layer_config, "config": {k: v for k, v in inner.items() if k not in keys}}


@contextlib.contextmanager
def loadable_keras_file(path: Path, config):
    """The ``.keras`` file to hand Keras for ``path``: ``path`` itself, or, when its ``config``
    holds derived keys keras-hub's constructors reject (a pruned ViT saved as a functional
    Model), a temporary copy whose config.json has them dropped, so the file loads again.
    The copy keeps every other member (weights, assets) as it is."""
    cleaned = without_derived_keys(config) if isinstance(config, dict) else None
    if cleaned is None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="edgeprune-hub-") as tmp:
        copy = Path(tmp) / path.name
        _copy_with_config(path, copy, cleaned)
        yield copy


def _copy_with_config(src_path: Path, dst_path: Path, config: dict) -> None:
    """Copy the ``.keras`` zip ``src_path`` to ``dst_path`` with ``config`` as its config.json."""
    with zipfile.ZipFile(src_path) as src, zipfile.ZipFile(dst_path, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename == "config.json":
                dst.writestr(item, json.dumps(config))
                continue
            with src.open(item) as fin, dst.open(item, "w") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)


def _hub_entries(node, found: dict) -> dict:
    """name -> layer entry for every keras-hub layer entry of a config, at any nesting."""
    if isinstance(node, list):
        for item in node:
            _hub_entries(item, found)
    elif isinstance(node, dict):
        inner = node.get("config")
        if (isinstance(inner, dict) and isinstance(inner.get("name"), str) and "class_name" in node
                and str(node.get("module", "")).startswith(HUB_MODULE + ".")):
            found.setdefault(inner["name"], node)
        for value in node.values():
            _hub_entries(value, found)
    return found


def repair_saved_config(path: Path, model) -> None:
    """Make the ``.keras`` file Keras just wrote from ``model`` load again: every keras-hub layer
    entry gets the config its constructor accepts, described from the live layer
    (:func:`edgeprune.load.model_io.hub_configs.model_config`: MiT's encoder loses ``sr_ratio``
    otherwise) and without :data:`DERIVED_CONFIG_KEYS`. A pruned keras-hub Backbone is saved as a
    plain functional Model naming these layers, whose own ``get_config`` does not round-trip.
    Files without keras-hub layers are left untouched."""
    with zipfile.ZipFile(path) as zf:
        written = json.loads(zf.read("config.json"))
    entries = _hub_entries(written, {})
    if not entries:
        return
    from edgeprune.load.model_io.hub_configs import model_config

    described = _hub_entries(model_config(model), {})
    changed = False
    for name, entry in entries.items():
        fixed = drop_derived_keys({**entry, "config": (described.get(name) or entry)["config"]})["config"]
        if json.dumps(fixed, sort_keys=True, default=str) != json.dumps(entry["config"], sort_keys=True, default=str):
            entry["config"] = fixed
            changed = True
    if changed:
        fixed_path = path.with_name(path.name + ".hub")
        try:
            _copy_with_config(path, fixed_path, written)
            fixed_path.replace(path)
        finally:
            if fixed_path.exists():
                fixed_path.unlink()
