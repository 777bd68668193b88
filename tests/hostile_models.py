"""Hostile model files for the safety tests: each tries to run code or touch files when loaded.

Every builder writes its model under ``root`` and returns ``(model path, canary path)``: the
canary is the file the model's code would create if edgeprune ran it. Files are made with the
real Keras / TensorFlow writers and then, where no writer would produce the attack, edited the
way an attacker would (config JSON inside the ``.h5`` or ``.keras``, nodes of ``saved_model.pb``).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

import edgeprune.base.env as _env


def _canary_lambda(canary: Path):
    """A lambda whose marshalled bytecode creates ``canary`` when Keras calls it."""
    return eval(f"lambda t: (open({str(canary)!r}, 'w').close(), t)[1]")  # noqa: S307 - the attack


def _tk():
    return _env.tf_keras()


def h5_lambda(root: Path, where: str = "top") -> tuple[Path, Path]:
    """A tf_keras ``.h5`` with a canary Lambda at the top, in TimeDistributed (once or twice),
    in an inner Sequential or in an inner functional model."""
    tk = _tk()
    canary = root / f"canary_h5_{where}"
    lam = tk.layers.Lambda(_canary_lambda(canary), name="evil")
    if where == "top":
        inputs = tk.Input((3, 4))
        out = lam(inputs)
    elif where == "time_distributed":
        inputs = tk.Input((3, 4))
        out = tk.layers.TimeDistributed(lam, name="td")(inputs)
    elif where == "time_distributed_twice":
        inputs = tk.Input((2, 3, 4))
        out = tk.layers.TimeDistributed(tk.layers.TimeDistributed(lam, name="td_in"), name="td_out")(inputs)
    elif where == "inner_sequential":
        inputs = tk.Input((3, 4))
        out = tk.Sequential([tk.Input((3, 4)), lam], name="inner")(inputs)
    elif where == "inner_functional":
        inner_in = tk.Input((3, 4))
        inner = tk.Model(inner_in, lam(tk.layers.Dense(4)(inner_in)), name="inner")
        inputs = tk.Input((3, 4))
        out = inner(inputs)
    else:
        raise ValueError(where)
    model = tk.Model(inputs, tk.layers.Dense(2, name="head")(out))
    canary.unlink(missing_ok=True)  # building the model called the lambda once
    path = root / f"lambda_{where}.h5"
    model.save(path)
    return path, canary


def savedmodel_lambda(root: Path) -> tuple[Path, Path]:
    """A tf_keras SavedModel whose keras_metadata.pb holds a canary Lambda in TimeDistributed."""
    tk = _tk()
    canary = root / "canary_savedmodel_lambda"
    inputs = tk.Input((3, 4))
    out = tk.layers.TimeDistributed(tk.layers.Lambda(_canary_lambda(canary), name="evil"), name="td")(inputs)
    model = tk.Model(inputs, tk.layers.Dense(2)(out))
    path = root / "lambda_savedmodel"
    model.save(path, save_format="tf")
    canary.unlink(missing_ok=True)  # building and tracing the model called the lambda
    return path, canary


def _edit_h5_config(path: Path, edit) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)


def _layer(config: dict, name: str) -> dict:
    from edgeprune.load.model_io.safety import iter_layers

    for _qual, _cls, entry in iter_layers(config):
        if (entry.get("config") or {}).get("name") == name or entry.get("name") == name:
            return entry
    raise KeyError(name)


def h5_tf_op(root: Path, function: str) -> tuple[Path, Path]:
    """A tf_keras ``.h5`` whose TFOpLambda calls ``tf.<function>`` (edited from tf.math.sqrt)."""
    tk = _tk()
    tf = _env.tf()
    inputs = tk.Input((4,))
    out = tf.math.sqrt(tk.layers.Dense(4, activation="relu", name="dense")(inputs))
    path = root / f"tfop_{function.replace('.', '_')}.h5"
    tk.Model(inputs, out).save(path)

    def edit(config):
        for entry in config["config"]["layers"]:
            if entry["class_name"] == "TFOpLambda":
                entry["config"]["function"] = function

    _edit_h5_config(path, edit)
    return path, root / "canary_tf_op"


def evil_module(root: Path) -> Path:
    """A Python module on disk that creates a canary when imported (put ``root`` on PYTHONPATH)."""
    canary = root / "canary_evil_module"
    (root / "evil_mod.py").write_text(
        f"open({str(canary)!r}, 'w').close()\n"
        "class Evil:\n    def __init__(self, **kw):\n        pass\n"
        "def evil(x):\n    return x\n")
    return canary


def h5_module_initializer(root: Path) -> tuple[Path, Path]:
    """A tf_keras ``.h5`` whose kernel initializer names a class in ``evil_mod``. tf_keras 2.21's
    legacy path looks the name up without importing it, but its serialization_lib imports the
    module a config names: refused before any loader decides which path it takes."""
    tk = _tk()
    canary = evil_module(root)
    inputs = tk.Input((4,))
    path = root / "module_initializer.h5"
    tk.Model(inputs, tk.layers.Dense(2, name="dense")(inputs)).save(path)

    def edit(config):
        _layer(config, "dense")["config"]["kernel_initializer"] = {
            "module": "evil_mod", "class_name": "Evil", "config": {}, "registered_name": None}

    _edit_h5_config(path, edit)
    return path, canary


def keras3_zip(root: Path, name: str, edit, *, build=None) -> Path:
    """A Keras 3 ``.keras`` file (a tiny Dense model unless ``build`` makes another) whose
    config.json is passed through ``edit``."""
    import keras

    if build is None:
        inputs = keras.Input((4,), name="x")
        model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
    else:
        model = build(keras)
    clean = root / f"{name}.clean.keras"
    model.save(clean)
    path = root / f"{name}.keras"
    edit_keras_config(clean, path, edit)
    clean.unlink()
    return path


def keras3_attacks(root: Path) -> dict[str, tuple[Path, Path]]:
    """Keras 3 configs that name code: a function from an outside module, Keras' own file
    download function, a marshalled ``__lambda__``, a TFSMLayer, a Lambda in TimeDistributed,
    a file-path vocabulary."""
    canary = evil_module(root)
    out = {}

    def set_activation(value):
        def edit(config):
            _layer(config, "dense")["config"]["activation"] = value
        return edit

    out["keras3_module_function"] = keras3_zip(root, "module_function", set_activation(
        {"module": "evil_mod", "class_name": "function", "config": "evil", "registered_name": "function"})), canary
    out["keras3_get_file"] = keras3_zip(root, "get_file", set_activation(
        {"module": "keras.src.utils.file_utils", "class_name": "function", "config": "get_file",
         "registered_name": None})), canary
    out["keras3_marshalled_lambda"] = keras3_zip(root, "marshalled", set_activation(
        {"module": None, "class_name": "__lambda__", "config": {"code": "4wEAAAAA", "defaults": None,
                                                                  "closure": None}})), canary

    def tfsm(config):
        entry = _layer(config, "dense")
        entry.update({"module": "keras.layers", "class_name": "TFSMLayer", "registered_name": None})
        entry["config"] = {"name": "dense", "filepath": str(root / "elsewhere"), "call_endpoint": "serve"}

    out["keras3_tfsm_layer"] = keras3_zip(root, "tfsm", tfsm), canary

    def td_lambda(keras):
        inputs = keras.Input((3, 4))
        td = keras.layers.TimeDistributed(keras.layers.Dense(4, name="dense"), name="td")(inputs)
        return keras.Model(inputs, td)

    def to_lambda(config):
        inner = _layer(config, "td")["config"]["layer"]
        inner.update({"module": "keras.layers", "class_name": "Lambda", "registered_name": None})
        inner["config"] = {"name": "evil", "function": {"class_name": "__lambda__", "config": {
            "code": "4wEAAAAA", "defaults": None, "closure": None}}, "arguments": {}}

    out["keras3_lambda_in_time_distributed"] = keras3_zip(root, "td_lambda", to_lambda, build=td_lambda), canary

    def lookup(keras):
        inputs = keras.Input((1,), dtype="string")
        return keras.Model(inputs, keras.layers.StringLookup(vocabulary=["a", "b"], name="lookup")(inputs))

    def file_vocabulary(config):
        _layer(config, "lookup")["config"]["vocabulary"] = "/etc/hostname"

    out["keras3_vocabulary_file"] = keras3_zip(root, "vocab", file_vocabulary, build=lookup), canary
    return out


def _module_savedmodel(path: Path, body) -> Path:
    """A SavedModel of a ``tf.Module`` whose serving function runs ``body(tf, x)``."""
    tf = _env.tf()

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": body(tf, x)}

    module = Module()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})
    return path


def savedmodel_graph_attacks(root: Path) -> dict[str, tuple[Path, Path]]:
    """Bare SavedModels whose graph writes, reads, lists files, prints to a file or runs Python,
    one hidden in a tf.cond branch (a library function only an If op calls)."""
    canary = root / "canary_graph"

    def write(tf, x):
        with tf.control_dependencies([tf.io.write_file(str(canary), "pwned")]):
            return x * 2.0

    def read(tf, x):
        return x + tf.cast(tf.strings.length(tf.io.read_file("/etc/hostname")), tf.float32)

    def listing(tf, x):
        return x + tf.cast(tf.size(tf.io.matching_files("/etc/*")), tf.float32)

    def print_to_file(tf, x):
        with tf.control_dependencies([tf.print(x, output_stream=f"file://{canary}")]):
            return x * 1.0

    def python(tf, x):
        return tf.py_function(lambda t: t, [x], tf.float32)

    def in_branch(tf, x):
        def evil():
            with tf.control_dependencies([tf.io.write_file(str(canary), "pwned")]):
                return x * 2.0
        return tf.cond(tf.reduce_sum(x) > 1e9, evil, lambda: x)

    cases = {"graph_write_file": write, "graph_read_file": read, "graph_matching_files": listing,
             "graph_print_to_file": print_to_file, "graph_py_function": python,
             "graph_write_in_cond_branch": in_branch}
    return {name: (_module_savedmodel(root / name, body), canary) for name, body in cases.items()}


def savedmodel_save_on_load(root: Path) -> tuple[Path, Path]:
    """A plain SavedModel whose saver is edited so that loading runs the traced *save* function
    (a checkpoint written where the attacker's graph says)."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = _module_savedmodel(root / "save_on_load", lambda tf, x: x * 2.0)
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    saver = saved.meta_graphs[0].saver_def
    saver.restore_op_name = saver.save_tensor_name.split(":")[0]
    (path / "saved_model.pb").write_bytes(saved.SerializeToString())
    return path, root / "canary_save_on_load"


def _secret(root: Path) -> Path:
    """A file of this machine that a hostile model tries to read into its weights."""
    import numpy as np

    secret = root / "secret.bin"
    np.full(64, 7, np.float32).tofile(secret)
    return secret


def _externalize_first_dataset(h5, secret: Path, link: bool) -> None:
    import h5py

    names: list[str] = []
    h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    name = names[0]
    shape, dtype = h5[name].shape, h5[name].dtype
    del h5[name]
    if link:
        with h5py.File(secret.with_suffix(".h5"), "w") as other:
            other.create_dataset("w", data=np.zeros(shape, dtype))
        h5[name] = h5py.ExternalLink(str(secret.with_suffix(".h5")), "w")
    else:
        h5.create_dataset(name, shape=shape, dtype=dtype, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])


def h5_outside_weights(root: Path, link: bool) -> tuple[Path, Path]:
    """A tf_keras ``.h5`` whose first weight is read from another file of the machine: external
    raw storage or an HDF5 external link."""
    import h5py

    tk = _tk()
    inputs = tk.Input((4,))
    path = root / f"outside_weights_{'link' if link else 'storage'}.h5"
    tk.Model(inputs, tk.layers.Dense(2, name="dense")(inputs)).save(path)
    with h5py.File(path, "r+") as h5:
        _externalize_first_dataset(h5, _secret(root), link)
    return path, root / "canary_outside_weights"


def keras3_outside_weights(root: Path) -> tuple[Path, Path]:
    """A Keras 3 ``.keras`` whose model.weights.h5 keeps a weight in an outside raw file."""
    import io

    import h5py

    path = keras3_zip(root, "outside_weights", lambda config: None)
    edited = root / "outside_weights.edited.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(edited, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "model.weights.h5":
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "r+") as h5:
                    _externalize_first_dataset(h5, _secret(root), link=False)
                data = buffer.getvalue()
            dst.writestr(item, data)
    edited.replace(path)
    return path, root / "canary_outside_weights"


def savedmodel_symlinked_variables(root: Path) -> tuple[Path, Path]:
    """A plain SavedModel whose variables data file is a symbolic link to another file."""
    path = _module_savedmodel(root / "symlinked", lambda tf, x: x * 2.0)
    variables = path / "variables"
    variables.mkdir(exist_ok=True)
    target = variables / "variables.data-00000-of-00001"
    target.unlink(missing_ok=True)
    target.symlink_to(_secret(root))
    return path, root / "canary_symlink"


def edit_keras_config(src, dst, edit) -> None:
    """Copy the ``.keras`` file ``src`` to ``dst`` with ``edit(config)`` applied to its config.json."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            zout.writestr(item, data)
