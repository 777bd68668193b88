"""Recurrent and sequence models (both Keras flavours) lower to TFLite builtins at batch 1.

Real converter, real LiteRT interpreter: each model's .tflite output is compared with Keras on
the same input, and the op list is checked to hold no Flex/custom op.
"""
from __future__ import annotations

import numpy as np
import pytest

from edgeprune.base import env as _env
from edgeprune.base.errors import InputError
from edgeprune.load.shapes import apply_input_shape, parse_input_shape, with_input_shape
from edgeprune.quantize.convert import convert, input_specs, io_details, loop_ops, op_counts

FLAVOURS = ("keras3", "tf_keras")


def _keras(flavour):
    return _env.keras3() if flavour == "keras3" else _env.tf_keras()


def build(flavour: str, kind: str, seq=None):
    """Tiny sequence models; ``seq`` None leaves the sequence length unknown."""
    K = _keras(flavour)
    L = K.layers
    K.utils.set_random_seed(0)
    if kind == "lstm_text":
        i = L.Input((seq,), dtype="int32", name="tokens")
        x = L.Embedding(30, 8)(i)
        x = L.LSTM(12)(x)
    elif kind == "gru_timedistributed":
        i = L.Input((seq, 5), name="frames")
        x = L.GRU(6, return_sequences=True)(i)
        x = L.TimeDistributed(L.Dense(4))(x)
        x = L.GlobalAveragePooling1D()(x)
    elif kind == "bidirectional":
        i = L.Input((seq, 5), name="frames")
        x = L.Bidirectional(L.LSTM(6))(i)
    elif kind == "conv1d_dilated":
        i = L.Input((seq, 3), name="signal")
        x = L.Conv1D(8, 3, dilation_rate=2, padding="causal", activation="relu")(i)
        x = L.Conv1D(8, 3, dilation_rate=4, padding="same")(x)
        x = L.GlobalMaxPooling1D()(x)
    else:
        raise ValueError(kind)
    return K.Model(i, L.Dense(3, name="head")(x))


def _sample(model, length=10, seed=0):
    rng = np.random.default_rng(seed)
    shape = [1] + [length if d is None else int(d) for d in model.inputs[0].shape[1:]]
    if "int" in str(model.inputs[0].dtype):
        return rng.integers(0, 30, shape).astype(np.int32)
    return rng.normal(size=shape).astype(np.float32)


def _run(tflite: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=tflite)
    detail = interp.get_input_details()[0]
    if list(detail["shape"]) != list(x.shape):
        interp.resize_tensor_input(detail["index"], list(x.shape))
    interp.allocate_tensors()
    interp.set_tensor(detail["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


@pytest.mark.slow  # eight conversions; a tf_keras recurrent model takes 10-30 s to convert
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("kind", ["lstm_text", "gru_timedistributed", "bidirectional", "conv1d_dilated"])
def test_sequence_models_convert_to_builtins_and_match_keras(flavour, kind):
    model = build(flavour, kind, seq=10)
    tflite = convert(model, "float32")
    ops = op_counts(tflite)
    assert not [op for op in ops if op.startswith(("CUSTOM", "FLEX"))], ops
    if kind != "conv1d_dilated":
        assert loop_ops(tflite), ops  # a WHILE loop or a fused sequence op
    ios = io_details(tflite)
    assert ios["inputs"][0]["shape"][0] == 1
    x = _sample(model)
    expected = np.asarray(model(x, training=False))
    np.testing.assert_allclose(_run(tflite, x), expected, rtol=1e-4, atol=1e-5)


def test_tf_keras_lstm_becomes_the_fused_sequence_op():
    tflite = convert(build("tf_keras", "lstm_text", seq=10), "float32")
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in op_counts(tflite)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_unknown_sequence_length_stays_dynamic_in_float(flavour):
    model = build(flavour, "lstm_text")
    assert input_specs(model)[0].shape == (1, None)
    tflite = convert(model, "dynamic")
    for length in (7, 13):
        x = _sample(model, length, seed=length)
        np.testing.assert_allclose(_run(tflite, x), np.asarray(model(x, training=False)), rtol=1e-2, atol=1e-2)


def test_calibration_with_unknown_dimension_names_it_and_the_fix():
    model = build("keras3", "conv1d_dilated")
    with pytest.raises(InputError) as err:
        convert(model, "int8", representative=np.zeros((4, 10, 3), np.float32))
    message = str(err.value)
    assert "input 'signal'" in message and "dimension(s) 1" in message and "--input-shape signal=" in message
    assert "\n" not in message
    fixed = with_input_shape(model, "signal=10x3")
    assert tuple(fixed.inputs[0].shape) == (None, 10, 3)
    tflite = convert(fixed, "int8", representative=np.random.default_rng(0).normal(size=(8, 10, 3)).astype(np.float32))
    assert io_details(tflite)["inputs"][0]["shape"] == [1, 10, 3]
    x = _sample(fixed)
    np.testing.assert_allclose(np.asarray(fixed(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_calibrating_recurrent_layers_is_refused_in_one_line(flavour):
    model = build(flavour, "bidirectional", seq=10)
    with pytest.raises(InputError, match=r"recurrent layer .*Bidirectional.*--quantize dynamic"):
        convert(model, "int8", representative=np.zeros((4, 10, 5), np.float32))


def test_input_shape_forms_and_errors():
    assert parse_input_shape("1x128") == [(None, (1, 128))]
    assert parse_input_shape(["tokens=128", "image=32,32,3"]) == [("tokens", (128,)), ("image", (32, 32, 3))]
    assert parse_input_shape((224, 224, 3)) == [(None, (224, 224, 3))]
    assert apply_input_shape([("t", (None, None))], "64") == [(None, 64)]
    assert apply_input_shape([("i", (None, None, None, 3))], "1x32x32x3") == [(None, 32, 32, 3)]
    with pytest.raises(InputError, match="positive dimensions"):
        apply_input_shape([("t", (None, None))], "0x3")
    with pytest.raises(InputError, match="no input 'a'"):
        apply_input_shape([("t", (None, None))], "a=12")
    with pytest.raises(InputError, match="1 dimension.s. besides the batch"):
        apply_input_shape([("t", (None, None))], "5x5x5")
    with pytest.raises(InputError, match="dimension 1 is 4 in the model"):
        apply_input_shape([("t", (None, 4))], "9")
    with pytest.raises(InputError, match="has 2 inputs"):
        apply_input_shape([("a", (None, None)), ("b", (None, None))], "5")
