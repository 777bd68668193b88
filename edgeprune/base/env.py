"""Process-wide TensorFlow settings that must be in place before TensorFlow is imported.

tfmot only works on Keras 2, which TensorFlow serves as ``tf.keras`` only when
``TF_USE_LEGACY_KERAS=1`` is set *before* the first ``import tensorflow``. Every module
that needs TensorFlow imports it through :func:`tf` so the order can never go wrong.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")

_verbose = False
_LOG_LEVELS = ("TF_CPP_MIN_LOG_LEVEL", "ABSL_MIN_LOG_LEVEL")
_quiet_levels: dict = {}  # the values -v replaced, put back by the next quiet command


def set_verbose(verbose: bool) -> None:
    """Let TensorFlow's own logging through (``-v``) or keep it quiet (default).

    The levels live in the environment, which child processes (the runner, the probe, TFLM)
    inherit; a quiet command after a verbose one in the same process (the Python API, tests)
    puts back what ``-v`` replaced, so the children are quiet again.
    """
    global _verbose
    _verbose = verbose
    if verbose:
        for name in _LOG_LEVELS:
            _quiet_levels.setdefault(name, os.environ.get(name))
            os.environ[name] = "0"
        return
    for name, value in _quiet_levels.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _quiet_levels.clear()


@contextlib.contextmanager
def quiet_native():
    """Hide native (C++) stderr lines such as the TFLite delegate banner, unless ``-v``."""
    if _verbose:
        yield
    else:
        with _silenced_stderr_fd():
            yield


@contextlib.contextmanager
def _silenced_stderr_fd():
    """Hide C++ log lines (absl, oneDNN, cudart) that TF writes to fd 2 before its log level applies."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2 (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def tf():
    """Import TensorFlow with legacy Keras and quiet logs; return the module."""
    if not _verbose:
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    if _verbose:
        import tensorflow as _tf
    else:
        with _silenced_stderr_fd():
            import tensorflow as _tf

    if not _verbose:
        _tf.get_logger().setLevel(logging.ERROR)
        try:
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_logging.ERROR)
        except ImportError:  # pragma: no cover - absl ships with TF
            pass
    return _tf


def quiet_import(module_name: str):
    """Import a library that loads native TensorFlow code of its own (keras-hub pulls in
    tensorflow-text) with its start-up C++ log lines hidden, as :func:`tf` does; -v shows them."""
    import importlib

    tf()
    if _verbose:
        return importlib.import_module(module_name)
    with _silenced_stderr_fd():
        return importlib.import_module(module_name)


def tf_keras():
    """The Keras 2 module (``tf_keras``) that edgeprune uses as its internal representation."""
    tf()
    import tf_keras as _tf_keras

    return _tf_keras


def keras3():
    """The Keras 3 module (used only to read and write Keras 3 files), imported quietly."""
    tf()
    with quiet_native():
        import keras as _keras

    return _keras


def is_keras3_model(model) -> bool:
    """True for a Keras 3 model (or layer), False for a tf_keras one.

    edgeprune keeps the flavour the user gave it: a Keras 3 file stays a Keras 3 model through
    pruning, training and conversion. Code that needs Keras APIs for a model asks it here.

    The whole class hierarchy is asked, not only the model's own class: a keras-hub model
    (``keras_hub.src.models...ResNetBackbone``) or a user's ``keras.Model`` subclass is Keras 3
    too. Taken for tf_keras, such a model was converted with itself as the trackable object,
    which leaves its weights as uninitialised resource variables: an artifact that gives NaN.
    """
    return any(_is_keras3_module(cls.__module__) for cls in type(model).__mro__)


def _is_keras3_module(module: str) -> bool:
    return module == "keras" or module.startswith("keras.")


def keras_of(model):
    """The Keras module (Keras 3 ``keras`` or ``tf_keras``) that ``model`` belongs to."""
    return keras3() if is_keras3_model(model) else tf_keras()


@contextlib.contextmanager
def capture_fds() -> Iterator[list[str]]:
    """Collect what C++ code writes to fds 1 and 2 (Python's sys.std* are flushed first)."""
    sink: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield sink
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:  # pragma: no cover - a closed stream must not hide the result
                pass
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))
