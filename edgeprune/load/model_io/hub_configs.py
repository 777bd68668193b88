"""keras-hub 0.32 layers that cannot describe themselves, described from the live layer.

The pruning engine reads a model as its functional config and rebuilds it with ``from_config``
(:mod:`edgeprune.load.graph`). Two keras-hub layer classes break that round trip, each in a way
only the layer object can mend:

- ``DeiTEncoder.get_config`` reads ``self.key_dim``, which its ``__init__`` never sets (its
  blocks do): the call raises AttributeError, so a model holding DeiT could not be traced at
  all. The missing attribute is set on that one instance (``hidden_dim // num_heads``, what each
  of its blocks holds), never on the class, and the ``key_dim`` it then writes, which the
  constructor rejects, is left out of the config, as are ``DeiTEmbeddings``' derived
  ``num_patches``/``num_positions``.
- ``HierarchicalTransformerEncoder`` (MiT, SegFormer) writes ``mlp`` (a serialized sub-layer) and
  ``drop_prop`` (sic), which its constructor rejects, and leaves out ``sr_ratio``, so even a
  config Keras accepted would rebuild the block without its sequence-reduction convolution.
  Its config is rewritten from the live layer: ``project_dim``, ``num_heads``, ``sr_ratio``,
  ``drop_prob`` and ``layer_norm_epsilon``, exactly what its constructor takes.

A keras-hub layer whose ``get_config`` fails in a way no instance repair mends (Swin's
``PatchEmbedding`` and ``SwinTransformerStage`` serialize the *classes* they are given,
``LayerNormalization`` and ``PatchMerging``, which Keras cannot do) makes :func:`model_config`
raise one InputError naming that class, instead of Keras' traceback.

Nothing here patches keras-hub: each repair touches one layer instance or one config entry, and
only of keras-hub's own classes (by class and module), so a user's class of the same name is left
alone.
"""
from __future__ import annotations

from contextlib import contextmanager

from edgeprune.base.errors import InputError


def _is_hub(layer, class_name: str) -> bool:
    cls = type(layer)
    return cls.__name__ == class_name and str(cls.__module__).startswith("keras_hub.")


def _hierarchical_encoder_config(layer, written: dict) -> dict:
    """The constructor arguments of a live MiT ``HierarchicalTransformerEncoder``."""
    base = {k: written[k] for k in ("name", "trainable", "dtype") if k in written}
    return {**base, "project_dim": int(layer.project_dim), "num_heads": int(layer.num_heads),
            "sr_ratio": int(layer.attn.sr_ratio), "drop_prob": float(layer.drop_path.rate),
            "layer_norm_epsilon": float(layer.norm1.epsilon)}


def _rms_normalization_config(layer) -> dict:
    """What Keras would have written for a live Gemma ``RMSNormalization``: its constructor takes
    ``epsilon`` alone, but a Gemma block hands it its dtype *policy object*, which stops Keras from
    recording the constructor arguments, so ``get_config`` raises NotImplementedError. The policy
    is written by name (``"float32"``, ``"mixed_bfloat16"``): a layer rebuilt from that config
    records its arguments and describes itself."""
    return {"epsilon": float(layer.epsilon), "dtype": layer.dtype_policy.name}


def _without(*keys):
    return lambda layer, written: {k: v for k, v in written.items() if k not in keys}


# class name -> (attribute get_config reads but __init__ never sets, its value) for the instance
_MISSING_ATTRIBUTES = {"DeiTEncoder": ("key_dim", lambda layer: int(layer.hidden_dim) // int(layer.num_heads))}
# class name -> the constructor arguments of a layer whose get_config raises (Keras' own
# argument record, ``_auto_config``, is missing), from the live layer; given for the config read only
_AUTO_CONFIGS = {"RMSNormalization": _rms_normalization_config}
# class name -> the config its constructor accepts, from the live layer and what get_config wrote
_CONFIG_REPAIRS = {
    "HierarchicalTransformerEncoder": _hierarchical_encoder_config,
    "DeiTEncoder": _without("key_dim"),
    "DeiTEmbeddings": _without("num_patches", "num_positions"),
}


def _hub_layers(model) -> dict:
    """name -> layer for every keras-hub layer the model holds, nested models included."""
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is None:
        return {}
    return {layer.name: layer for layer in flatten(include_self=False, recursive=True)
            if str(type(layer).__module__).startswith("keras_hub.")}


def _fails_to_describe(layer) -> bool:
    try:
        layer.get_config()
    except Exception:  # noqa: BLE001 - any failure is the one to name
        return True
    return False


@contextmanager
def _described(layers):
    """Give each layer of :data:`_AUTO_CONFIGS` whose ``get_config`` fails the argument record
    Keras reads (``_auto_config``) for the block, then take it away: the user's layers are left
    as they were."""
    from keras.src.saving.serialization_lib import SerializableDict

    lent = [layer for layer in layers if type(layer).__name__ in _AUTO_CONFIGS
            and _is_hub(layer, type(layer).__name__) and getattr(layer, "_auto_config", None) is None
            and _fails_to_describe(layer)]
    for layer in lent:
        object.__setattr__(layer, "_auto_config", SerializableDict(**_AUTO_CONFIGS[type(layer).__name__](layer)))
    try:
        yield
    finally:
        for layer in lent:
            object.__setattr__(layer, "_auto_config", None)


def model_config(model) -> dict:
    """``model.get_config()``, with the keras-hub layers above described so that the config
    rebuilds the same layers (see the module docs)."""
    hub = _hub_layers(model)
    for layer in hub.values():
        missing = _MISSING_ATTRIBUTES.get(type(layer).__name__)
        if missing and _is_hub(layer, type(layer).__name__) and not hasattr(layer, missing[0]):
            setattr(layer, missing[0], missing[1](layer))
    try:
        with _described(hub.values()):
            config = model.get_config()
    except (AttributeError, TypeError, ValueError, NotImplementedError) as exc:
        broken = next((layer for layer in hub.values() if _fails_to_describe(layer)), None)
        if broken is None:
            raise
        from edgeprune.base.env import quiet_import

        version = getattr(quiet_import("keras_hub"), "__version__", "?")
        raise InputError(f"{model.name}: keras-hub {version}'s {type(broken).__name__}.get_config() fails "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}), so edgeprune cannot read this model's graph "
                         "(no pruning, MAC count or conversion through edgeprune)") from None
    if not any(type(layer).__name__ in _CONFIG_REPAIRS for layer in hub.values()):
        return config

    def repair(node):
        if isinstance(node, list):
            return [repair(item) for item in node]
        if not isinstance(node, dict):
            return node
        node = {k: repair(v) for k, v in node.items()}
        inner, name = node.get("config"), node.get("class_name")
        layer = hub.get(inner.get("name")) if isinstance(inner, dict) else None
        if name in _CONFIG_REPAIRS and layer is not None and _is_hub(layer, name):
            node["config"] = _CONFIG_REPAIRS[name](layer, inner)
        return node

    return repair(config)
