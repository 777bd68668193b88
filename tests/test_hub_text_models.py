"""keras-hub text models through edgeprune's loader and graph flattening.

A keras-hub causal LM ties its token embedding: the backbone embeds with it, and the Task's head
calls the same layer in reverse to produce logits. Seen as a graph, the Task is an outer model
holding ``token_embedding`` and a nested backbone holding the very same layer. Flattening used to
copy the inner one under ``gpt2_backbone/token_embedding``, a name Keras 3 refuses, so a normally
saved ``GPT2CausalLM`` ended ``edgeprune inspect`` in an internal error; it also would have untied
the weights. These tests build tiny models from keras-hub's classes (presets need Kaggle).
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers_models import invoke_cli
from hostile_models import edit_keras_config

from edgeprune.base.env import keras3
from edgeprune.base.errors import InputError

SEQ = 8
GPT2_VOCAB = {"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3, "Ġ": 4, "Ġa": 5}
GPT2_MERGES = ["a b", "Ġ a"]


@pytest.fixture(scope="module")
def gpt2_file(tmp_path_factory):
    """A normally saved tiny GPT2CausalLM with its BPE tokenizer kept in the file's assets."""
    keras_hub = pytest.importorskip("keras_hub")
    models = keras_hub.models
    backbone = models.GPT2Backbone(vocabulary_size=len(GPT2_VOCAB), num_layers=1, num_heads=2, hidden_dim=16,
                                   intermediate_dim=32, max_sequence_length=16)
    tokenizer = models.GPT2Tokenizer(vocabulary=GPT2_VOCAB, merges=GPT2_MERGES)
    lm = models.GPT2CausalLM(backbone, preprocessor=models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=SEQ))
    path = tmp_path_factory.mktemp("hub_text") / "gpt2.keras"
    lm.save(path)
    return path, lm.count_params()


def test_saved_gpt2_causal_lm_is_inspected(gpt2_file):
    """The file that ended in an internal error loads and is inspected, exit 0, and counts its
    tied embedding once (as keras-hub itself does), not twice."""
    path, params = gpt2_file
    code, result = invoke_cli(["inspect", path])
    assert code == 0, (result.output, result.exception)
    assert "internal error" not in result.output and "Traceback" not in result.output
    assert f"{params:,} params" in result.output, result.output


def test_gpt2_tied_embedding_stays_one_shared_layer(gpt2_file):
    """Flattened, the Task's graph has one ``token_embedding`` called twice (forward in the
    backbone, reverse in the head), and computes what the loaded model computes."""
    from edgeprune.load.graph import flatten_model
    from edgeprune.load.model_io import load_model

    path, params = gpt2_file
    model = load_model(path).model
    flat = flatten_model(model)
    names = [layer.name for layer in flat.layers]
    assert names.count("token_embedding") == 1 and not any("/" in n for n in names), names
    assert len(flat.get_layer("token_embedding")._inbound_nodes) == 2
    assert flat.count_params() == params
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(0, len(GPT2_VOCAB), (2, SEQ)), "padding_mask": np.ones((2, SEQ), bool)}
    np.testing.assert_allclose(np.asarray(flat(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)


def test_inner_layer_named_like_an_outer_one_gets_a_keras3_legal_name():
    """Two different layers both named ``dense`` (one in a nested model) stay two layers; the
    inner one is renamed without ``/``, which Keras 3 refuses in a layer name."""
    from edgeprune.load.graph import flatten_model

    keras = keras3()
    i = keras.Input((4,))
    inner = keras.Model(i, keras.layers.Dense(3, name="dense")(i), name="inner")
    j = keras.Input((4,))
    model = keras.Model(j, keras.layers.Dense(2, name="dense")(inner(j)))
    flat = flatten_model(model)
    names = [layer.name for layer in flat.layers]
    assert "inner_dense" in names and "dense" in names, names
    x = np.random.default_rng(1).random((3, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(flat(x)), np.asarray(model(x)), rtol=1e-6)


def test_keras_deserialization_failure_is_one_line_naming_its_cause(tmp_path):
    """A file Keras itself cannot rebuild (here a layer named with ``/``) is refused in one line
    naming the file and Keras' own complaint, not its generic ``from_config`` advice."""
    keras = keras3()
    i = keras.Input((4,))
    keras.Model(i, keras.layers.Dense(2, name="head")(i)).save(tmp_path / "ok.keras")
    bad = tmp_path / "bad.keras"

    def edit(config):
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Dense":
                layer["config"]["name"] = "outer/head"

    edit_keras_config(tmp_path / "ok.keras", bad, edit)
    code, result = invoke_cli(["inspect", bad])
    exc = result.exception
    assert isinstance(exc, InputError) and code == 2, (result.output, exc)
    message = str(exc)
    assert "\n" not in message and str(bad) in message and "Keras 3 could not load" in message, message
    assert "cannot contain character `/`" in message and "from_config" not in message, message

