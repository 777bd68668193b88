"""Keras 1.x and 2.0-2.3 ``.h5`` files: translate the old model config so tf_keras can build it.

Keras 2.0-2.2 wrote a Sequential model's config as a bare list of layers, and Keras 1 (still
read by Keras 2.0-2.3 through its legacy interfaces) named arguments differently (``output_dim``,
``nb_filter``, ``init``, ``border_mode``, ``W_regularizer``...). tf_keras reads neither. Here
the config is rewritten to the current form; the weights are then read by tf_keras' own HDF5
weight loader, which already converts Keras 1 weight layouts (``original_keras_version``).
What cannot be translated is refused with one line naming the layer and the argument.
"""
from __future__ import annotations

import copy

from edgeprune.base.errors import InputError
from edgeprune.load.model_io.messages import cause_line

# Keras 1 class names -> current ones.
_CLASS_RENAMES = {
    "Convolution1D": "Conv1D", "Convolution2D": "Conv2D", "Convolution3D": "Conv3D",
    "AtrousConvolution1D": "Conv1D", "AtrousConvolution2D": "Conv2D",
    "Deconvolution2D": "Conv2DTranspose", "SeparableConvolution2D": "SeparableConv2D",
}
# Keras 1 argument names -> current ones, for every layer.
_COMMON = {
    "init": "kernel_initializer", "W_regularizer": "kernel_regularizer", "b_regularizer": "bias_regularizer",
    "W_constraint": "kernel_constraint", "b_constraint": "bias_constraint", "bias": "use_bias",
    "border_mode": "padding", "subsample": "strides", "subsample_length": "strides",
    "pool_length": "pool_size", "stride": "strides", "atrous_rate": "dilation_rate",
    "output_dim": "units", "nb_filter": "filters", "filter_length": "kernel_size",
    "inner_init": "recurrent_initializer", "inner_activation": "recurrent_activation",
    "U_regularizer": "recurrent_regularizer", "U_constraint": "recurrent_constraint",
    "dropout_W": "dropout", "dropout_U": "recurrent_dropout", "forget_bias_init": None,
    "consume_less": None, "input_dtype": "dtype", "depthwise_init": "depthwise_initializer",
    "pointwise_init": "pointwise_initializer", "beta_init": "beta_initializer",
    "gamma_init": "gamma_initializer", "p": "rate",
}
# Per-class exceptions to _COMMON (Embedding keeps output_dim; its init is embeddings_initializer).
_PER_CLASS = {
    "Embedding": {"output_dim": "output_dim", "init": "embeddings_initializer",
                  "W_regularizer": "embeddings_regularizer", "W_constraint": "embeddings_constraint",
                  "dropout": None},
    "BatchNormalization": {"mode": None, "gamma_regularizer": "gamma_regularizer",
                           "beta_regularizer": "beta_regularizer"},
    "Reshape": {},
}
_RECURRENT = {"LSTM", "GRU", "SimpleRNN"}
_CONTAINERS = {"Sequential", "Model", "Functional"}


def is_legacy(config, keras_version: str | None) -> bool:
    """Whether the config needs translating (list-style Sequential, Keras 1 names or version < 2.4)."""
    if isinstance(config, dict) and isinstance(config.get("config"), list):
        return True
    major_minor = _version(keras_version)
    if major_minor is not None and major_minor < (2, 4):
        return True
    return _has_old_names(config)


def _version(text):
    try:
        parts = str(text).split(".")
        return int(parts[0]), int(parts[1])
    except (TypeError, ValueError, IndexError):
        return None


_OLD_NAMES = {"init", "nb_filter", "nb_row", "border_mode", "subsample", "W_regularizer", "inner_init",
              "dropout_W", "dim_ordering", "p"}


def _has_old_names(config) -> bool:
    for _, entry in _iter_entries(config):
        cfg = entry.get("config")
        if entry.get("class_name") in _CLASS_RENAMES:
            return True
        if isinstance(cfg, dict) and (_OLD_NAMES & set(cfg) or (
                "output_dim" in cfg and entry.get("class_name") != "Embedding")):
            return True
    return False


def _iter_entries(config, prefix=""):
    body = config.get("config") if isinstance(config, dict) else None
    layers = body if isinstance(body, list) else (body or {}).get("layers", []) if isinstance(body, dict) else []
    for entry in layers or []:
        if not isinstance(entry, dict):
            continue
        name = (entry.get("config") or {}).get("name") or entry.get("name") or "?"
        yield prefix + name, entry
        if entry.get("class_name") in _CONTAINERS:
            yield from _iter_entries(entry, prefix + name + "/")


def modernize(config: dict, path, keras_version: str | None) -> dict:
    """The config in the form tf_keras builds; InputError naming what cannot be translated."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise InputError(f"{path}: HDF5 model_config is not a Keras model config")
    config = copy.deepcopy(config)
    _modernize_model(config, path, "")
    return config


def _modernize_model(model: dict, path, prefix: str) -> None:
    cls = model.get("class_name")
    body = model.get("config")
    if cls == "Sequential" and isinstance(body, list):
        body = model["config"] = {"name": "sequential", "layers": body}
    if not isinstance(body, dict):
        raise InputError(f"{path}: model config of class '{cls}' has no layer list")
    layers = body.get("layers") or []
    for entry in layers:
        if not isinstance(entry, dict) or "class_name" not in entry:
            raise InputError(f"{path}: a layer entry of '{prefix or body.get('name', 'model')}' is not a Keras layer config")
        name = (entry.get("config") or {}).get("name") or entry.get("name") or "?"
        if entry["class_name"] in _CONTAINERS:
            _modernize_model(entry, path, f"{prefix}{name}/")
        else:
            _modernize_layer(entry, path, prefix + name)
    if cls == "Sequential" and layers and not any(e.get("class_name") == "InputLayer" for e in layers):
        first = layers[0].get("config") or {}
        if "batch_input_shape" not in first:
            raise InputError(f"{path}: the Sequential model's first layer '{first.get('name', '?')}' records no "
                             "input shape (batch_input_shape); the model cannot be rebuilt")
        # Keras 2.0 stored the *input* dtype on the first layer (int32 token ids for an
        # Embedding); today a layer's dtype is its weights' dtype, so it moves to an InputLayer.
        dtype = first.pop("dtype", None) or "float32"
        layers.insert(0, {"class_name": "InputLayer", "config": {
            "batch_input_shape": first.pop("batch_input_shape"), "dtype": dtype,
            "name": f"{first.get('name', 'input')}_input", "sparse": False}})
        if not str(dtype).startswith(("float", "bfloat")):
            first["dtype"] = "float32"
        elif dtype:
            first["dtype"] = dtype


def _modernize_layer(entry: dict, path, qual: str) -> None:
    cls = entry["class_name"]
    cfg = entry.setdefault("config", {})
    if cls == "Merge":
        raise InputError(f"{path}: layer '{qual}' is a Keras 1 Merge layer, which no current Keras has; "
                         "rebuild the model with Add/Concatenate and save it again")
    if cls in ("MaxoutDense", "Highway", "TimeDistributedDense", "ThresholdedLinear", "SReLU"):
        raise InputError(f"{path}: layer '{qual}' is a Keras 1 {cls} layer, which no current Keras has")
    if cfg.get("dim_ordering") == "th" or cfg.get("data_format") == "channels_first" and cls.startswith(("Conv", "Convolution")):
        raise InputError(f"{path}: layer '{qual}' uses Theano/channels-first ordering ({cls}); only "
                         "channels-last models are supported")
    renames = dict(_COMMON)
    renames.update(_PER_CLASS.get(cls, {}))
    cls = entry["class_name"] = _CLASS_RENAMES.get(cls, cls)
    if cls == "BatchNormalization" and cfg.get("mode", 0) not in (0, None):
        raise InputError(f"{path}: layer '{qual}' is a BatchNormalization with mode={cfg['mode']} "
                         "(Keras 1 feature-wise/sample-wise mode), which current Keras lacks")
    for old in list(cfg):
        if old in renames:
            new = renames[old]
            value = cfg.pop(old)
            if new is not None and new not in cfg:
                cfg[new] = value
    cfg.pop("dim_ordering", None)
    if "nb_row" in cfg or "nb_col" in cfg:
        cfg["kernel_size"] = [cfg.pop("nb_row", 1), cfg.pop("nb_col", 1)]
    if cls in ("Conv1D",) and "kernel_size" in cfg and not isinstance(cfg["kernel_size"], list):
        cfg["kernel_size"] = [cfg["kernel_size"]]
    if "input_dim" in cfg and cls != "Embedding" and "batch_input_shape" not in cfg:
        cfg["batch_input_shape"] = [None, cfg.pop("input_dim")]
    elif cls != "Embedding":
        cfg.pop("input_dim", None)
    if cls == "Embedding" and "input_length" in cfg and "batch_input_shape" not in cfg:
        cfg["batch_input_shape"] = [None, cfg.get("input_length")]
    for key in ("kernel_initializer", "recurrent_initializer", "embeddings_initializer", "beta_initializer",
                "gamma_initializer", "depthwise_initializer", "pointwise_initializer"):
        if isinstance(cfg.get(key), str):
            cfg[key] = _initializer(cfg[key])
    for key in ("kernel_regularizer", "bias_regularizer", "recurrent_regularizer", "activity_regularizer",
                "embeddings_regularizer"):
        reg = cfg.get(key)
        if isinstance(reg, dict) and "name" in reg and "class_name" not in reg:  # Keras 1 {"name": "L1L2Regularizer", "l1":..}
            cfg[key] = {"class_name": "L1L2", "config": {"l1": float(reg.get("l1", 0.0)), "l2": float(reg.get("l2", 0.0))}}
    if cls in _RECURRENT:
        cfg.setdefault("use_bias", True)
        if cls == "GRU":
            cfg.setdefault("reset_after", False)  # Keras 2.0-2.2 GRUs have one bias vector
    if cls == "Dropout" and "rate" not in cfg:
        raise InputError(f"{path}: layer '{qual}' (Dropout) has no rate")


def _initializer(name: str) -> dict:
    """Keras 1 initializer names ('glorot_uniform', 'orthogonal', 'one', 'zero') as configs."""
    name = {"zero": "zeros", "one": "ones", "uniform": "random_uniform", "normal": "random_normal"}.get(name, name)
    from edgeprune.base.env import tf_keras

    try:
        init = tf_keras().initializers.get(name)
    except ValueError:
        return {"class_name": "GlorotUniform", "config": {}}  # only affects re-initialisation, never loading
    return {"class_name": type(init).__name__, "config": init.get_config()}


def load(path, config: dict, custom_objects: dict | None = None):
    """Build a tf_keras model from the translated ``config`` and load the file's weights."""
    import h5py

    from edgeprune.base.env import tf_keras

    tk = tf_keras()
    try:
        model = tk.models.model_from_config(config, custom_objects=custom_objects or None)
    except Exception as exc:
        raise InputError(f"{path}: the Keras 2.0-2.3 model config cannot be rebuilt ({cause_line(exc)})") from None
    try:
        from tf_keras.src.saving.legacy import hdf5_format

        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
            hdf5_format.load_weights_from_hdf5_group(group, model)
    except Exception as exc:
        raise InputError(f"{path}: the weights do not fit the rebuilt model ({cause_line(exc)})") from None
    return model
