"""keras-hub's TransformerDecoder prunes through its rule (edgeprune/pruning/rules/keras_hub.py,
TransformerDecoderRule): the decoder's residual width (its head size following it) and
``intermediate_dim``, decoder-only and with cross-attention, whose keys and values read the
encoder's stream (another channel group).

Real keras-hub layers, real converter and interpreter; tiny models (a conversion ~1 s).
"""
import numpy as np
import pytest
from hub_models import seq2seq_transformer

import edgeprune.base.env  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from edgeprune import prune_model
from edgeprune.base.env import keras3
from edgeprune.device.api import evaluate_tflite
from edgeprune.load.graph import trace
from edgeprune.load.model_io import load_model, save_model
from edgeprune.pruning.macs import total_macs
from edgeprune.quantize.convert import convert
from edgeprune.quantize.inspection import inspect_tflite

keras_hub = pytest.importorskip("keras_hub")

TOLERANCE = 0.02  # pruner MACs vs the artifact's (tests/test_macs_agreement.py)
SEQ, VOCAB, DIM, HEADS, FFN = 16, 50, 32, 4, 64
SOURCE_DIM = 24  # the encoder's stream in seq2seq_transformer (tests/hub_models.py)


def decoder_lm():
    """A GPT-style decoder-only LM: token + position embedding, a post-norm and a pre-norm
    TransformerDecoder (causal self-attention, no cross-attention), a vocabulary head."""
    K = keras3()
    x_in = K.Input((SEQ,), dtype="int32")
    x = keras_hub.layers.TokenAndPositionEmbedding(VOCAB, SEQ, DIM, name="embed")(x_in)
    x = keras_hub.layers.TransformerDecoder(FFN, HEADS, name="dec0")(x)
    x = keras_hub.layers.TransformerDecoder(FFN, HEADS, normalize_first=True, name="dec1")(x)
    return K.Model(x_in, K.layers.Dense(VOCAB, name="vocab")(x))


MODELS = {"decoder-only": decoder_lm, "encoder-decoder": seq2seq_transformer}


def tokens(model, n=2, seed=0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, (n, *t.shape[1:])).astype("int32") for t in model.inputs]


def keras_feed(model, xs):
    return xs[0] if len(xs) == 1 else xs


def tflite_feed(model, xs):
    return xs[0] if len(xs) == 1 else {t.name: x for t, x in zip(model.inputs, xs)}


def assert_macs_agree(model) -> None:
    pruner = total_macs(trace(model))
    artifact = inspect_tflite(convert(model, "float32"))["macs"]
    assert artifact > 0
    assert abs(pruner - artifact) / artifact <= TOLERANCE, (pruner, artifact)


def assert_artifact_agrees(model, xs) -> None:
    first = [x[:1] for x in xs]
    out = np.asarray(evaluate_tflite(convert(model, "float32"), tflite_feed(model, first), trusted=True)["outputs"])
    keras_out = model.predict(keras_feed(model, first), verbose=0)
    np.testing.assert_allclose(out.reshape(keras_out.shape), keras_out, atol=1e-4)


def decoder_sizes(model, name) -> dict:
    """Widths of a built TransformerDecoder: residual, intermediate_dim, head size, and the
    cross-attention's key/value input width (None without one)."""
    layer = model.get_layer(name)
    cross = layer._cross_attention_layer
    return {"width": int(layer.input[0].shape[-1]) if isinstance(layer.input, list) else int(layer.input.shape[-1]),
            "ffn": int(layer.get_config()["intermediate_dim"]),
            "head": int(layer._self_attention_layer.get_config()["key_dim"]),
            "source": None if cross is None else int(cross._key_dense.kernel.shape[0])}


def test_decoder_only_lm_prunes_converts_and_reloads(tmp_path):
    model = decoder_lm()
    result = prune_model(model, ratio=0.5)
    pruned, report = result.model, result.report
    assert report["locked"] == ["vocab: model output"]  # nothing locked for want of a rule
    assert pruned.get_layer("embed").get_config()["embedding_dim"] == DIM // 2
    for name in ("dec0", "dec1"):
        assert decoder_sizes(pruned, name) == {"width": DIM // 2, "ffn": FFN // 2, "head": DIM // 2 // HEADS,
                                               "source": None}
        assert pruned.get_layer(name).get_config()["decoder_sequence_shape"][-1] == DIM // 2
    x = tokens(model)
    assert pruned.predict(x[0], verbose=0).shape == (2, SEQ, VOCAB)
    assert report["macs_after"] < report["macs_before"] / 2
    assert report["macs_after"] == total_macs(trace(pruned))
    assert_artifact_agrees(pruned, x)
    assert_macs_agree(model)
    assert_macs_agree(pruned)
    back = load_model(save_model(pruned, tmp_path / "lm.keras")).model  # safe mode, no custom objects
    np.testing.assert_allclose(back.predict(x[0], verbose=0), pruned.predict(x[0], verbose=0), atol=1e-5)


def test_encoder_decoder_prunes_both_streams_converts_and_reloads(tmp_path):
    model = seq2seq_transformer()
    result = prune_model(model, ratio=0.5)
    pruned, report = result.model, result.report
    assert report["locked"] == ["vocab: model output"]
    assert decoder_sizes(pruned, "decoder") == {"width": DIM // 2, "ffn": FFN // 2, "head": DIM // 2 // HEADS,
                                                "source": SOURCE_DIM // 2}
    config = pruned.get_layer("decoder").get_config()
    assert (config["decoder_sequence_shape"][-1], config["encoder_sequence_shape"][-1]) == (DIM // 2, SOURCE_DIM // 2)
    assert pruned.get_layer("source_embed").get_config()["embedding_dim"] == SOURCE_DIM // 2
    assert pruned.get_layer("encoder").get_config()["intermediate_dim"] == SOURCE_DIM
    x = tokens(model)
    assert pruned.predict(x, verbose=0).shape == (2, SEQ, VOCAB)
    assert report["macs_after"] < report["macs_before"] / 2
    assert report["macs_after"] == total_macs(trace(pruned))
    assert_artifact_agrees(pruned, x)
    assert_macs_agree(model)
    assert_macs_agree(pruned)
    back = load_model(save_model(pruned, tmp_path / "seq2seq.keras")).model
    np.testing.assert_allclose(back.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_zero_ratio_is_the_original(name):
    model = MODELS[name]()
    x = keras_feed(model, tokens(model))
    np.testing.assert_array_equal(prune_model(model, ratio=0.0).model.predict(x, verbose=0),
                                  model.predict(x, verbose=0))


def test_cross_attention_keys_follow_the_encoders_stream_not_the_decoders():
    """The encoder's stream is its own group: protected, it keeps all its channels (and the
    cross-attention all its key/value rows) while the decoder's width is halved."""
    model = seq2seq_transformer()
    pruned = prune_model(model, ratio=0.5, protect=["source_embed"]).model
    assert decoder_sizes(pruned, "decoder") == {"width": DIM // 2, "ffn": FFN // 2, "head": DIM // 2 // HEADS,
                                                "source": SOURCE_DIM}
    assert pruned.get_layer("decoder").get_config()["encoder_sequence_shape"][-1] == SOURCE_DIM
    x = tokens(model)
    assert_artifact_agrees(pruned, x)


def test_sequences_by_keyword_and_a_padding_mask():
    """``decoder(x, encoder_sequence=e, decoder_padding_mask=m)``: the rule tells the encoder's
    stream from the mask by keyword (the mask, positions not channels, is locked), and prunes."""
    K = keras3()
    source = K.Input((12,), dtype="int32")
    target = K.Input((SEQ,), dtype="int32")
    mask = K.Input((SEQ,), dtype="bool")
    encoded = keras_hub.layers.TokenAndPositionEmbedding(VOCAB, 12, SOURCE_DIM, name="source_embed")(source)
    x = keras_hub.layers.TokenAndPositionEmbedding(VOCAB, SEQ, DIM, name="target_embed")(target)
    x = keras_hub.layers.TransformerDecoder(FFN, HEADS, name="decoder")(
        x, encoder_sequence=encoded, decoder_padding_mask=mask)
    model = K.Model([source, target, mask], K.layers.Dense(VOCAB, name="vocab")(x))
    pruned = prune_model(model, ratio=0.5).model
    assert decoder_sizes(pruned, "decoder") == {"width": DIM // 2, "ffn": FFN // 2, "head": DIM // 2 // HEADS,
                                                "source": SOURCE_DIM // 2}
    xs = tokens(model)[:2] + [np.tile(np.arange(SEQ) < 10, (2, 1))]
    assert pruned.predict(xs, verbose=0).shape == (2, SEQ, VOCAB)
