"""SavedModels without Keras metadata: no layer graph, but a ``serving_default`` signature.

``compile`` can quantize and lower such a model (calibration, budgets, bench, the accuracy
gate) because the TFLite converter reads the SavedModel itself; pruning and training need a
Keras layer graph and refuse with one line (:func:`require_keras`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeprune.base.errors import InputError
from edgeprune.load.model_io.messages import cause_line

SIGNATURE = "serving_default"


@dataclass(frozen=True)
class TensorInfo:
    """A signature input or output: what compile reads from a Keras tensor (name, shape, dtype)."""

    name: str
    shape: tuple
    dtype: str


class SavedModelGraph:
    """The ``serving_default`` signature of a SavedModel, shaped like what compile uses of a model.

    ``inputs``/``outputs`` (name, shape, dtype), ``count_params()``, ``predict()`` (the gate's
    reference run) and ``converter()`` (TFLiteConverter.from_saved_model).
    """

    def __init__(self, saved_model_dir):
        from edgeprune.base.env import tf

        self.saved_model_dir = Path(saved_model_dir)
        self.name = self.saved_model_dir.name
        tf = tf()
        try:
            self._obj = tf.saved_model.load(str(self.saved_model_dir))
        except Exception as exc:
            raise InputError(f"{self.saved_model_dir}: TensorFlow could not load the SavedModel "
                             f"({cause_line(exc)})") from None
        signatures = getattr(self._obj, "signatures", {}) or {}
        if SIGNATURE not in signatures:
            have = ", ".join(sorted(signatures)) or "none"
            raise InputError(f"{self.saved_model_dir}: the SavedModel has no '{SIGNATURE}' signature "
                             f"(signatures: {have}); export it with a serving signature")
        self._fn = signatures[SIGNATURE]
        args, kwargs = self._fn.structured_input_signature
        if args:
            raise InputError(f"{self.saved_model_dir}: '{SIGNATURE}' takes positional arguments; "
                             "expected named inputs")
        self._input_keys = sorted(kwargs)
        self.inputs = [TensorInfo(k, _shape(kwargs[k].shape), kwargs[k].dtype.name) for k in self._input_keys]
        outputs = self._fn.structured_outputs
        outputs = outputs if isinstance(outputs, dict) else {"output_0": outputs}
        self._output_keys = sorted(outputs)
        self.outputs = [TensorInfo(k, _shape(outputs[k].shape), outputs[k].dtype.name) for k in self._output_keys]
        self.output_names = list(self._output_keys)
        self.layers: list = []

    @property
    def input_shape(self):
        return self.inputs[0].shape if len(self.inputs) == 1 else [i.shape for i in self.inputs]

    def count_params(self) -> int:
        """Numbers stored in the SavedModel's variables (optimizer slots and counters excluded)."""
        from edgeprune.base.env import tf

        try:
            listed = tf().train.list_variables(str(self.saved_model_dir / "variables" / "variables"))
        except Exception:  # no variables at all (constants only)
            return 0
        return int(sum(int(np.prod(shape)) for name, shape in listed
                       if "OPTIMIZER_SLOT" not in name and "save_counter" not in name
                       and not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")))

    def __call__(self, x, training=False):
        from edgeprune.base.env import tf

        tf = tf()
        xs = x if isinstance(x, (list, tuple)) else [x]
        feeds = {k: tf.convert_to_tensor(np.asarray(v), dtype=i.dtype) for k, v, i in zip(self._input_keys, xs, self.inputs)}
        out = self._fn(**feeds)
        values = [out[k] for k in self._output_keys]
        return values[0] if len(values) == 1 else values

    def predict(self, x, batch_size: int = 256, verbose: int = 0):
        """Outputs on ``x`` in batches (numpy), as ``keras.Model.predict`` returns them."""
        x = np.asarray(x)
        chunks = []
        fixed = self.inputs[0].shape[0]
        step = int(fixed) if fixed else batch_size
        for begin in range(0, len(x), step):
            part = x[begin:begin + step]
            n = len(part)
            if fixed and n != step:
                part = np.concatenate([part, np.repeat(part[-1:], step - n, axis=0)])
            out = self(part)
            chunks.append(np.asarray(out[0] if isinstance(out, list) else out)[:n])
        return np.concatenate(chunks)

    def converter(self, tf, specs):
        """The TFLiteConverter: ``from_saved_model`` on the serving signature; with fixed input
        shapes (``--input-shape``) the signature is traced again at those shapes."""
        if all(tuple(s.shape[1:]) == tuple(i.shape[1:]) for s, i in zip(specs, self.inputs)):
            return tf.lite.TFLiteConverter.from_saved_model(str(self.saved_model_dir), signature_keys=[SIGNATURE])
        tf_specs = [tf.TensorSpec(list(s.shape), tf.as_dtype(s.dtype), name=k) for s, k in zip(specs, self._input_keys)]
        keys, fn = self._input_keys, self._fn

        def call(*xs):
            out = fn(**dict(zip(keys, xs)))
            return [out[k] for k in self._output_keys]

        concrete = tf.function(call, input_signature=tf_specs).get_concrete_function()
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete], self._obj)


def is_bare(model) -> bool:
    """True for a SavedModel without a Keras graph (:class:`SavedModelGraph`)."""
    return isinstance(model, SavedModelGraph)


def require_keras(model, what: str, path=None) -> None:
    """Refuse ``what`` (pruning, training, ...) on a model without a Keras graph, in one line."""
    if is_bare(model):
        where = path or model.saved_model_dir
        raise InputError(f"{where}: {what} needs a Keras graph, and this SavedModel has no Keras metadata "
                         "(keras_metadata.pb); save the model from Keras (.keras or .h5), or compile it "
                         "without pruning or training")


def _shape(shape) -> tuple:
    dims = getattr(shape, "as_list", lambda: None)()
    return tuple(dims) if dims is not None else ()
