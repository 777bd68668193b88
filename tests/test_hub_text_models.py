"""keras-hub text models through edgeprune's loader and graph flattening.

A keras-hub causal LM ties its token embedding: the backbone embeds with it, and the Task's head
calls the same layer in reverse to produce logits. Seen as a graph, the Task is an outer model
holding ``token_embedding`` and a nested backbone holding the very same layer. Flattening used to
copy the inner one under ``gpt2_backbone/token_embedding``, a name Keras 3 refuses, so a normally
saved ``GPT2CausalLM`` ended ``edgeprune inspect`` in an internal error; it also would have untied
the weights. These tests build tiny models from keras-hub's classes (presets need Kaggle).
"""
from __future__ import annotations

import json

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



# ---------------------------------------------------------------- prune, per keras-hub text model
# Each tiny model is built from keras-hub's classes without a preprocessor (the graph edgeprune
# reads starts at token ids), saved, then pruned by the real command. A model edgeprune can prune
# is written and loads; one it cannot is one line naming why, exit 2.

def _hub_text_model(name: str):
    """A tiny keras-hub text Task of ``name`` (presets need Kaggle, so built from the classes)."""
    keras_hub = pytest.importorskip("keras_hub")
    m = keras_hub.models
    if name == "gpt2":
        return m.GPT2CausalLM(m.GPT2Backbone(vocabulary_size=len(GPT2_VOCAB), num_layers=1, num_heads=2,
                                             hidden_dim=16, intermediate_dim=32, max_sequence_length=16),
                              preprocessor=None)
    if name == "bert":
        return m.BertTextClassifier(m.BertBackbone(vocabulary_size=8, num_layers=1, num_heads=2, hidden_dim=8,
                                                   intermediate_dim=16, max_sequence_length=SEQ),
                                    num_classes=2, preprocessor=None)
    if name == "albert":
        return m.AlbertTextClassifier(m.AlbertBackbone(vocabulary_size=14, num_layers=1, num_heads=2, embedding_dim=8,
                                                       hidden_dim=8, intermediate_dim=16, max_sequence_length=SEQ),
                                      num_classes=2, preprocessor=None)
    if name == "bert_mlm":
        return m.BertMaskedLM(m.BertBackbone(vocabulary_size=8, num_layers=1, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, max_sequence_length=SEQ), preprocessor=None)
    if name == "gemma":
        return m.GemmaCausalLM(m.GemmaBackbone(vocabulary_size=16, num_layers=1, num_query_heads=2,
                                               num_key_value_heads=1, hidden_dim=16, intermediate_dim=32, head_dim=8),
                               preprocessor=None)
    if name == "llama":
        return m.LlamaCausalLM(m.LlamaBackbone(vocabulary_size=16, num_layers=1, num_query_heads=2,
                                               num_key_value_heads=1, hidden_dim=16, intermediate_dim=32),
                               preprocessor=None)
    raise ValueError(name)


def _text_inputs(model) -> dict:
    """One batch of token ids (and the other inputs the model names) for ``model``."""
    rng = np.random.default_rng(0)
    x = {}
    for t in model.inputs:
        name = t.name.split(":")[0]
        if name == "padding_mask":
            x[name] = np.ones((2, SEQ), bool)
        elif name == "mask_positions":
            x[name] = np.tile(np.arange(2), (2, 1))
        else:
            x[name] = rng.integers(0, 6, (2, SEQ)) if name == "token_ids" else np.zeros((2, SEQ), "int32")
    return x


def _node_counts(model) -> dict:
    """How many calls Keras has recorded for each layer of ``model`` (nested ones included)."""
    return {layer.name: len(layer._inbound_nodes)
            for layer in model._flatten_layers(include_self=True, recursive=True)}


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_trace_and_mac_count_leave_the_live_model_as_it_was(name):
    """Tracing and counting MACs (one Keras Model per layer, between intermediate tensors) used
    to record extra calls in the user's model: GPT-2's padding mask gained a call, its saved
    pruned model then failed with ``could not find node key ..._ib-1``. Counts before == after,
    and the model still saves."""
    from edgeprune.load.graph import trace
    from edgeprune.pruning.macs import summarize

    model = _hub_text_model(name)
    before = _node_counts(model)
    graph = trace(model)
    macs = sum(v["macs"] for v in summarize(graph).values())
    trace(model)
    assert macs > 0
    assert _node_counts(model) == before
    model.get_config()  # what saving reads: every tensor's call is one the model knows


@pytest.mark.parametrize("name", ["gpt2", "bert", "albert", "gemma"])
def test_keras_hub_text_model_prunes(name, tmp_path):
    """GPT-2 (ended at save), BERT and ALBERT classifiers (0 MACs: the Backbone's dict output
    was inlined positionally, so the head read an input) and Gemma (RMSNormalization has no
    config) prune, and the pruned file loads and computes; what pruning left whole computes
    what the original did."""
    keras = keras3()
    model = _hub_text_model(name)
    src, out = tmp_path / f"{name}.keras", tmp_path / f"{name}_pruned.keras"
    model.save(src)
    code, result = invoke_cli(["inspect", src, "--json"])
    assert code == 0, (result.output, result.exception)
    assert json.loads(result.stdout)["macs"] > 0, result.output
    code, result = invoke_cli(["prune", src, "--ratio", "0.3", "-o", out, "--json"])
    assert code == 0, (result.output, result.exception)
    report = json.loads(result.stdout)
    assert report["macs_before"] > 0
    pruned = keras.saving.load_model(out)
    x = _text_inputs(model)
    y, y_pruned = np.asarray(model(x)), np.asarray(pruned(x))
    assert y_pruned.shape == y.shape and np.isfinite(y_pruned).all()
    if report["pruned_groups"] == 0:
        np.testing.assert_allclose(y_pruned, y, rtol=1e-5, atol=1e-5)
    else:
        assert report["macs_after"] < report["macs_before"]


def test_llama_is_refused_in_one_line(tmp_path):
    """Llama's decoder cannot describe itself (keras-hub's get_config reads an attribute it never
    set): one line naming the class, exit 2, and no output file."""
    model = _hub_text_model("llama")
    src, out = tmp_path / "llama.keras", tmp_path / "llama_pruned.keras"
    model.save(src)
    code, result = invoke_cli(["prune", src, "--ratio", "0.3", "-o", out])
    assert isinstance(result.exception, InputError) and code == 2, (result.output, result.exception)
    message = str(result.exception)
    assert "\n" not in message and "LlamaTransformerDecoder.get_config() fails" in message, message
    assert not out.exists()


def test_failure_in_surgery_is_one_line_and_writes_nothing(tmp_path, capsys):
    """Whatever goes wrong while pruning, the command's own entry point prints one line (a
    refusal, exit 2, or an internal error, exit 1, with -v for the traceback) and the -o file is
    not half-written. BertMaskedLM's head ties its output to the token embedding it holds, a
    tie no functional config can carry."""
    from edgeprune.cli import main

    model = _hub_text_model("bert_mlm")
    src, out = tmp_path / "mlm.keras", tmp_path / "mlm_pruned.keras"
    model.save(src)
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", str(src), "--ratio", "0.3", "-o", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("edgeprune:")]
    assert "Traceback" not in err
    if exit_info.value.code == 0:
        assert out.exists()
        return
    assert exit_info.value.code == 2 and len(lines) == 1, err  # a refusal that says why, not an internal error
    assert "shares weights its config cannot describe" in lines[0] and "internal error" not in lines[0], lines[0]
    assert not out.exists() and not list(tmp_path.glob(".mlm_pruned*")), list(tmp_path.iterdir())
