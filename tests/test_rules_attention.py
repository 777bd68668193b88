"""Attention and transformer layers prune: MultiHeadAttention (per-head dims or whole heads),
EinsumDense, LayerNormalization and Embedding in residual streams, in Keras 3 and tf_keras."""
from __future__ import annotations

import numpy as np
import pytest

import edgeprune.base.env  # noqa: F401
from edgeprune.base.env import keras3, tf_keras
from edgeprune.device.api import evaluate_tflite
from edgeprune.load.graph import trace
from edgeprune.load.model_io import load_model, save_model
from edgeprune.pruning import macs as macs_mod
from edgeprune.pruning import prune_model, rules
from edgeprune.pruning.group_params import unit_parameters
from edgeprune.pruning.groups import build_groups
from edgeprune.pruning.importance import FixedScores
from edgeprune.pruning.rules import MultiHeadAttentionRule, register_rule
from edgeprune.quantize.convert import convert

D, HEADS, KEY_DIM = 32, 4, 8


def vit(K, seed=0):
    """A two-block ViT of plain layers: patch conv, 2 x (LN, MHA, Add, LN, MLP, Add), head."""
    K.utils.set_random_seed(seed)
    inp = K.Input((16, 16, 3))
    x = K.layers.Conv2D(D, 4, strides=4, name="patches")(inp)
    x = K.layers.Reshape((16, D), name="tokens")(x)
    for b in range(2):
        h = K.layers.LayerNormalization(name=f"ln{b}a")(x)
        h = K.layers.MultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM, name=f"mha{b}")(h, h)
        x = K.layers.Add(name=f"res{b}a")([x, h])
        h = K.layers.LayerNormalization(name=f"ln{b}b")(x)
        h = K.layers.Dense(2 * D, activation="gelu", name=f"mlp{b}a")(h)
        h = K.layers.Dense(D, name=f"mlp{b}b")(h)
        x = K.layers.Add(name=f"res{b}b")([x, h])
    x = K.layers.LayerNormalization(name="ln_out")(x)
    x = K.layers.GlobalAveragePooling1D(name="pool")(x)
    return K.Model(inp, K.layers.Dense(10, name="head")(x))


def text_transformer(K, seed=0):
    """Keyword-spotting-sized text classifier: Embedding, one attention block, EinsumDense MLP."""
    K.utils.set_random_seed(seed)
    inp = K.Input((12,), dtype="int32")
    x = K.layers.Embedding(50, 24, name="embed")(inp)
    h = K.layers.LayerNormalization(name="ln_a")(x)
    h = K.layers.MultiHeadAttention(num_heads=3, key_dim=8, value_dim=6, name="mha")(h, h)
    x = K.layers.Add(name="res_a")([x, h])
    h = K.layers.LayerNormalization(name="ln_b")(x)
    h = K.layers.EinsumDense("abc,cd->abd", output_shape=(None, 48), bias_axes="d", activation="relu",
                             name="mlp_in")(h)
    h = K.layers.Dense(24, name="mlp_out")(h)
    x = K.layers.Add(name="res_b")([x, h])
    x = K.layers.GlobalAveragePooling1D(name="pool")(x)
    return K.Model(inp, K.layers.Dense(4, name="head")(x))


def images(n=4, seed=0):
    return np.random.default_rng(seed).normal(0, 1, (n, 16, 16, 3)).astype(np.float32)


def tokens(n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 50, (n, 12)).astype(np.int32)


def mha_config(model, name):
    cfg = model.get_layer(name).get_config()
    return cfg["num_heads"], cfg["key_dim"], cfg["value_dim"]


@pytest.fixture
def heads_mode():
    """Whole heads instead of per-head dims, for one test (the registry is global)."""
    before = rules.registered()["MultiHeadAttention"]
    register_rule("MultiHeadAttention", MultiHeadAttentionRule("heads"))
    yield
    register_rule("MultiHeadAttention", before)


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_vit_attention_and_residual_stream_prune(flavour, tmp_path):
    K = keras3() if flavour == "keras3" else tf_keras()
    model = vit(K)
    gs = build_groups(trace(model))
    inside = [g for g in gs.prunable if any(k[1] == "internal" for k in g.tensors)]
    assert len(inside) == 4  # qk_dim and v_dim of both attention layers
    stream = next(g for g in gs.groups if ("patches", 0, 0) in g.tensors)
    assert stream.locked is None and {"mha0", "mha1", "patches", "mlp0b"} <= set(stream.producers)

    result = prune_model(model, ratio=0.5, criterion="l1")
    pruned = result.model
    assert mha_config(pruned, "mha0") == (HEADS, KEY_DIM // 2, KEY_DIM // 2)  # dims fall, heads stay
    assert pruned.get_layer("patches").get_config()["filters"] == D // 2  # the residual stream narrows
    assert pruned.get_layer("ln0a").get_weights()[0].shape == (D // 2,)
    assert result.report["macs_after"] < 0.5 * result.report["macs_before"]
    x = images()
    assert pruned.predict(x, verbose=0).shape == (4, 10)

    path = save_model(pruned, tmp_path / ("vit.keras" if flavour == "keras3" else "vit.h5"))
    back = load_model(path).model
    np.testing.assert_allclose(back.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5)
    out = np.asarray(evaluate_tflite(convert(back, "float32"), x[:2])["outputs"])
    np.testing.assert_allclose(out.reshape(2, 10), pruned.predict(x[:2], verbose=0), atol=1e-3)


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_zero_ratio_is_the_original(flavour):
    K = keras3() if flavour == "keras3" else tf_keras()
    model = vit(K)
    pruned = prune_model(model, ratio=0.0, criterion="l1").model
    for layer in model.layers:
        for a, b in zip(layer.get_weights(), pruned.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    x = images()
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def _zero_dims(layer, qk_dead, v_dead):
    """Make query/key dims ``qk_dead`` and value dims ``v_dead`` of every head carry nothing."""
    q, qb, k, kb, v, vb, o, ob = layer.get_weights()
    q[:, :, qk_dead] = k[:, :, qk_dead] = 0
    qb[:, qk_dead] = kb[:, qk_dead] = 0
    v[:, :, v_dead] = vb[:, v_dead] = 0
    o[:, v_dead, :] = 0
    layer.set_weights([q, qb, k, kb, v, vb, o, ob])


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_removing_dead_head_dims_keeps_the_function(flavour):
    """Keras scales queries by 1/sqrt(key_dim): the surviving dims must score as before."""
    K = keras3() if flavour == "keras3" else tf_keras()
    model = vit(K)
    for name in ("mha0", "mha1"):
        layer = model.get_layer(name)
        b = layer.get_weights()[1]
        layer.set_weights([w + 0.3 if w.shape == b.shape else w for w in layer.get_weights()])  # non-zero biases
        _zero_dims(layer, [1, 4, 6, 7], [0, 2, 3, 5])
    gs = build_groups(trace(model))
    scores = np.ones(int(gs.labels.max()) + 1)
    for g in gs.prunable:
        key = next((k for k in g.tensors if k[1] == "internal"), None)
        if key is not None:
            dead = [1, 4, 6, 7] if key[2] == "qk_dim" else [0, 2, 3, 5]
            scores[gs.units_of(key)[dead]] = 0.0
    pruned = prune_model(model, ratio=0.0, per_layer={"mha.": 0.5}, protect=("patches",),
                          criterion=FixedScores(scores)).model
    assert mha_config(pruned, "mha1") == (HEADS, 4, 4)
    assert pruned.get_layer("patches").get_config()["filters"] == D  # only the attention insides went
    x = images()
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4)


def test_heads_mode_removes_whole_heads(heads_mode):
    K = keras3()
    model = vit(K)
    layer = model.get_layer("mha0")
    w = layer.get_weights()
    for i in (0, 2, 4):  # heads 1 and 2 of mha0 carry nothing
        w[i][:, [1, 2], :] = 0
        w[i + 1][[1, 2], :] = 0
    w[6][[1, 2], :, :] = 0
    layer.set_weights(w)
    result = prune_model(model, ratio=0.0, per_layer={"mha.": 0.5}, protect=("patches",), criterion="l2")
    pruned = result.model
    assert mha_config(pruned, "mha0") == (HEADS // 2, KEY_DIM, KEY_DIM)  # heads fall, dims stay
    assert mha_config(pruned, "mha1") == (HEADS // 2, KEY_DIM, KEY_DIM)
    x = images()
    ref = model.predict(x, verbose=0)
    two_heads_left = K.Model(model.inputs, model.get_layer("res0a").output).predict(x, verbose=0)
    np.testing.assert_allclose(K.Model(pruned.inputs, pruned.get_layer("res0a").output).predict(x, verbose=0),
                               two_heads_left, atol=1e-4)  # the dead heads of mha0 went, nothing else
    assert pruned.predict(x, verbose=0).shape == ref.shape
    out = np.asarray(evaluate_tflite(convert(pruned, "float32"), x[:1])["outputs"])
    np.testing.assert_allclose(out.reshape(1, 10), pruned.predict(x[:1], verbose=0), atol=1e-3)


def test_text_transformer_prunes_and_converts(tmp_path):
    K = keras3()
    model = text_transformer(K)
    result = prune_model(model, ratio=0.5, criterion="l1")
    pruned = result.model
    assert pruned.get_layer("embed").get_config()["output_dim"] == 12  # Embedding feeds the stream
    assert pruned.get_layer("mlp_in").get_config()["output_shape"][-1] == 24  # EinsumDense units
    assert mha_config(pruned, "mha") == (3, 4, 3)
    x = tokens()
    assert pruned.predict(x, verbose=0).shape == (4, 4)
    back = load_model(save_model(pruned, tmp_path / "text.keras")).model
    out = np.asarray(evaluate_tflite(convert(back, "float32"), x[:2])["outputs"])
    np.testing.assert_allclose(out.reshape(2, 4), pruned.predict(x[:2], verbose=0), atol=1e-3)
    assert macs_mod.count(pruned)["macs"] == result.report["macs_after"]


def test_mac_count_matches_hand_computation():
    K = keras3()
    inp = K.Input((8, 16))
    h = K.layers.MultiHeadAttention(num_heads=4, key_dim=6, value_dim=5, name="mha")(inp, inp)
    x = K.layers.Add()([inp, h])
    x = K.layers.EinsumDense("abc,cd->abd", output_shape=(None, 12), bias_axes="d", name="ed")(x)
    model = K.Model(inp, K.layers.Dense(3)(x))  # the input, hence the residual stream, is locked
    t, d = 8, 16

    def attention(h, dq, dv, width):
        # q/k/v projections, Q K^T, scores x V, output projection back to the width
        return t * d * h * dq * 2 + t * d * h * dv + h * dq * t * t + h * dv * t * t + t * h * dv * width

    per = macs_mod.count(model)["layers"]
    assert per["mha"]["macs"] == attention(4, 6, 5, 16) == 14080
    assert per["ed"]["macs"] == t * d * 12
    pruned = prune_model(model, ratio=0.5, criterion="l1").model
    assert mha_config(pruned, "mha") == (4, 3, 3)
    assert macs_mod.count(pruned)["layers"]["mha"]["macs"] == attention(4, 3, 3, 16)
    assert macs_mod.count(pruned)["layers"]["ed"]["macs"] == t * d * 6


def test_criteria_that_read_tensors_rank_heads_by_weights():
    model = vit(keras3())
    result = prune_model(model, ratio=0.5, criterion="taylor", data=images(8))
    assert mha_config(result.model, "mha0")[1] == KEY_DIM // 2
    assert any("attention heads" in n for n in result.report["notes"])
    gn = prune_model(model, ratio=0.5, criterion="group_norm").model
    assert mha_config(gn, "mha1")[1] == KEY_DIM // 2


def test_head_dims_own_their_parameters():
    gs = build_groups(trace(vit(keras3())))
    owned = {(p.layer, p.index) for p in unit_parameters(gs)}
    assert {("mha0", i) for i in range(8)} <= owned  # q/k/v/o kernels and biases


def test_einsum_dense_locks_what_it_cannot_slice():
    K = keras3()
    inp = K.Input((8, 16))
    x = K.layers.EinsumDense("abc,bd->adc", output_shape=(5, 16), name="mix")(inp)
    model = K.Model(inp, K.layers.Dense(4)(K.layers.Dense(8, name="after")(x)))
    gs = build_groups(trace(model))
    locked = {g.locked for g in gs.groups if ("mix", 0, 0) in g.tensors}
    assert any("EinsumDense 'abc,bd->adc'" in (r or "") for r in locked)


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_cross_attention_key_value_inputs_prune_with_their_kernels(flavour):
    """Key/value from another tensor than the query: its channels go from both kernels' inputs."""
    K = keras3() if flavour == "keras3" else tf_keras()
    K.utils.set_random_seed(0)
    q_in, c_in = K.Input((6, 8)), K.Input((5, 10))
    x = K.layers.Dense(16, name="query_proj")(q_in)
    ctx = K.layers.Dense(12, name="ctx")(c_in)
    h = K.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="cross")(x, ctx)
    x = K.layers.Add()([x, h])
    model = K.Model([q_in, c_in], K.layers.Dense(3)(K.layers.GlobalAveragePooling1D()(x)))
    w = model.get_layer("ctx").get_weights()
    w[0][:, ::2] = 0  # half of the context channels carry nothing
    w[1][::2] = 0
    model.get_layer("ctx").set_weights(w)
    pruned = prune_model(model, ratio=0.0, per_layer={"ctx": 0.5}, criterion="l1").model
    assert pruned.get_layer("ctx").get_config()["units"] == 6
    kernels = [a.shape for a in pruned.get_layer("cross").get_weights()]
    assert kernels[0] == (16, 2, 4) and kernels[2] == (6, 2, 4) and kernels[4] == (6, 2, 4)
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(3, 6, 8)).astype(np.float32), rng.normal(size=(3, 5, 10)).astype(np.float32)]
    np.testing.assert_allclose(pruned.predict(xs, verbose=0), model.predict(xs, verbose=0), atol=1e-5)


def test_round_to_applies_to_head_dims_not_to_head_counts(heads_mode):
    model = vit(keras3())
    pruned = prune_model(model, ratio=0.5, round_to=8, criterion="l1").model
    assert mha_config(pruned, "mha0") == (2, KEY_DIM, KEY_DIM)  # 4 heads -> 2 although round_to=8
    assert pruned.get_layer("patches").get_config()["filters"] == 16  # channels stay multiples of 8


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_layer_norm_over_positions_locks_its_stream(flavour):
    K = keras3() if flavour == "keras3" else tf_keras()
    inp = K.Input((6, 8))
    x = K.layers.Dense(16, name="proj")(inp)
    x = K.layers.LayerNormalization(axis=1, name="ln_positions")(x)
    model = K.Model(inp, K.layers.Dense(2)(K.layers.Flatten()(x)))
    group = next(g for g in build_groups(trace(model)).groups if ("proj", 0, 0) in g.tensors)
    assert group.locked and "ln_positions" in group.locked and "not channels" in group.locked


def test_attention_over_one_axis_of_an_image_counts_its_pairs():
    """attention_axes=(2,): each pixel attends to its row only (W keys), not to all H*W."""
    K = keras3()
    inp = K.Input((4, 6, 8))
    x = K.layers.Dense(8)(inp)
    h = K.layers.MultiHeadAttention(num_heads=2, key_dim=3, attention_axes=(2,), name="rows")(x, x)
    model = K.Model(inp, K.layers.Dense(2)(K.layers.Add()([x, h])))
    t, d = 4 * 6, 8
    expected = t * d * 2 * 3 * 3 + 2 * (3 + 3) * t * 6 + t * 2 * 3 * d
    assert macs_mod.count(model)["layers"]["rows"]["macs"] == expected
    pruned = prune_model(model, ratio=0.5, criterion="l1").model
    x0 = np.random.default_rng(0).normal(size=(2, 4, 6, 8)).astype(np.float32)
    assert pruned.predict(x0, verbose=0).shape == (2, 4, 6, 2)


def test_protected_or_score_returning_attention_keeps_its_insides():
    K = keras3()
    model = vit(K)
    pruned = prune_model(model, ratio=0.5, protect=("mha0",), criterion="l1").model
    assert mha_config(pruned, "mha0") == (HEADS, KEY_DIM, KEY_DIM)
    assert mha_config(pruned, "mha1") == (HEADS, KEY_DIM // 2, KEY_DIM // 2)
    inp = K.Input((5, 8))
    mha = K.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")
    out, scores = mha(inp, inp, return_attention_scores=True)
    model = K.Model(inp, [K.layers.Dense(2)(K.layers.Dense(6)(out)), scores])
    gs = build_groups(trace(model))
    assert not [k for g in gs.groups for k in g.tensors if k[1] == "internal"]  # no heads to prune
    assert next(g for g in gs.groups if ("mha", 0, 0) in g.tensors).locked


def test_a_rules_only_custom_objects_file_switches_the_cli_to_whole_heads(tmp_path):
    """The README's way to prune whole heads from the CLI: a --custom-objects file holding only
    ``pruning_rules`` (no classes of its own) is accepted."""
    from helpers_models import invoke_cli

    src, dst = tmp_path / "vit.keras", tmp_path / "pruned.keras"
    vit(keras3()).save(src)
    rules_file = tmp_path / "heads.py"
    rules_file.write_text("from edgeprune.pruning.rules import MultiHeadAttentionRule\n"
                          "pruning_rules = {'MultiHeadAttention': MultiHeadAttentionRule('heads')}\n")
    before = rules.registered()["MultiHeadAttention"]
    try:
        code, result = invoke_cli(["prune", str(src), "--ratio", "0.5", "--custom-objects", str(rules_file),
                                   "-o", str(dst)])
    finally:
        register_rule("MultiHeadAttention", before)
    assert code == 0, result.output
    heads, key_dim, _ = mha_config(load_model(str(dst)).model, "mha0")
    assert heads < HEADS and key_dim == KEY_DIM


def test_a_class_token_slice_passes_the_stream_and_a_channel_slice_locks():
    """``x[:, 0]`` (a ViT's class token) keeps the last axis whole: the stream before it prunes;
    ``x[..., :8]`` cuts channels: its producer keeps them."""
    K = keras3()
    inp = K.Input((6, 4))
    x = K.layers.Dense(16, name="stream")(inp)
    token = K.layers.Dense(4, name="head")(x[:, 0])
    cut = K.layers.Dense(16, name="stream2")(inp)
    side = K.layers.Dense(4, name="side")(cut[..., :8])
    model = K.Model(inp, [token, side])
    result = prune_model(model, ratio=0.5, criterion="l1")
    assert result.model.get_layer("stream").units == 8
    assert result.model.get_layer("stream2").units == 16
    assert any("stream2" in r or "GetItem" in r for r in result.report["locked"])
