"""``--attention-unit dims|heads`` / ``prune_model(attention_unit=)``: what pruning removes inside a
MultiHeadAttention, chosen per prune call (issue #23), and "MLP width only" through --protect."""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgeprune.base.env  # noqa: F401
from edgeprune.base.env import keras3, tf_keras
from edgeprune.base.errors import InputError
from edgeprune.cli import main
from edgeprune.load.model_io import load_model
from edgeprune.pruning import prune_model, rules
from edgeprune.pruning.rules import MultiHeadAttentionRule, register_rule
from edgeprune.quantize.convert import convert

D, HEADS, KEY_DIM, BLOCKS = 32, 4, 8, 2
MLP_ONLY = r"(?!mlp\d+a$).*"  # every layer but the MLP hidden layers


def vit(K, seed=0):
    """A two-block ViT of stock layers: patch conv, 2 x (LN, MHA(4 heads), Add, LN, MLP, Add), head."""
    K.utils.set_random_seed(seed)
    inp = K.Input((16, 16, 3))
    x = K.layers.Conv2D(D, 4, strides=4, name="patches")(inp)
    x = K.layers.Reshape((16, D), name="tokens")(x)
    for b in range(BLOCKS):
        h = K.layers.LayerNormalization(name=f"ln{b}a")(x)
        h = K.layers.MultiHeadAttention(num_heads=HEADS, key_dim=KEY_DIM, name=f"mha{b}")(h, h)
        x = K.layers.Add(name=f"res{b}a")([x, h])
        h = K.layers.LayerNormalization(name=f"ln{b}b")(x)
        h = K.layers.Dense(2 * D, activation="gelu", name=f"mlp{b}a")(h)
        h = K.layers.Dense(D, name=f"mlp{b}b")(h)
        x = K.layers.Add(name=f"res{b}b")([x, h])
    x = K.layers.GlobalAveragePooling1D(name="pool")(x)
    return K.Model(inp, K.layers.Dense(10, name="head")(x))


def images(n=8, seed=0):
    return np.random.default_rng(seed).normal(0, 1, (n, 16, 16, 3)).astype(np.float32)


def heads_and_key_dim(model) -> list[tuple[int, int]]:
    return [(model.get_layer(f"mha{b}").get_config()["num_heads"], model.get_layer(f"mha{b}").get_config()["key_dim"])
            for b in range(BLOCKS)]


def registered_mode() -> str:
    return rules.registered()["MultiHeadAttention"].prune


def assert_converts_and_agrees(model):
    """The pruned model converts, and the .tflite computes what the Keras model does."""
    x = images()
    blob = convert(model, "float32")
    np.testing.assert_allclose(run_tflite(blob, x), np.asarray(model(x)), rtol=1e-3, atol=1e-3)


def run_tflite(blob: bytes, x):
    """The float32 .tflite's outputs on ``x``, one image an invocation (the batch is fixed at 1)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=blob)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    rows = []
    for image in x:
        interp.set_tensor(inp, image[None])
        interp.invoke()
        rows.append(interp.get_tensor(out)[0].copy())
    return np.stack(rows)


@pytest.mark.parametrize("K", [keras3, tf_keras], ids=["keras3", "tf_keras"])
def test_heads_removes_whole_heads_dims_shrinks_key_dim(K):
    model = vit(K())
    heads = prune_model(model, ratio=0.5, attention_unit="heads")
    assert registered_mode() == "dims"  # nothing left behind by the call
    dims = prune_model(model, ratio=0.5, attention_unit="dims")
    for h, k in heads_and_key_dim(heads.model):
        assert h < HEADS and k == KEY_DIM
    for h, k in heads_and_key_dim(dims.model):
        assert h == HEADS and k < KEY_DIM
    assert heads.report["attention_unit"] == "heads" and dims.report["attention_unit"] == "dims"
    assert heads.report["macs_after"] < heads.report["macs_before"]
    assert_converts_and_agrees(heads.model)
    assert_converts_and_agrees(dims.model)


def test_registry_restored_after_a_failed_call_and_a_users_rule_kept():
    model = vit(keras3())
    with pytest.raises(InputError, match="unreachable"):
        prune_model(model, target_macs=1e-4, attention_unit="heads")
    assert registered_mode() == "dims"
    before = rules.registered()["MultiHeadAttention"]
    register_rule("MultiHeadAttention", MultiHeadAttentionRule("heads"))  # as a --custom-objects file does
    try:
        kept = prune_model(model, ratio=0.5)  # None: the registered rule decides
        assert all(h < HEADS and k == KEY_DIM for h, k in heads_and_key_dim(kept.model))
        prune_model(model, ratio=0.5, attention_unit="dims")
        assert registered_mode() == "heads"  # the user's rule is back
    finally:
        register_rule("MultiHeadAttention", before)
    with pytest.raises(InputError, match="--attention-unit: expected one of dims, heads"):
        prune_model(model, ratio=0.5, attention_unit="tokens")


def test_mlp_width_only_through_protect():
    """One negative-lookahead --protect regex leaves only the MLP hidden layers prunable."""
    model = vit(keras3())
    cut = prune_model(model, ratio=0.5, protect=(MLP_ONLY,))
    assert heads_and_key_dim(cut.model) == [(HEADS, KEY_DIM)] * BLOCKS
    for b in range(BLOCKS):
        assert cut.model.get_layer(f"mlp{b}a").units == D  # 2 * D halved
        assert cut.model.get_layer(f"mlp{b}b").units == D  # the residual stream keeps its width
    assert cut.model.get_layer("patches").filters == D
    assert_converts_and_agrees(cut.model)


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


@pytest.fixture
def vit_file(tmp_path):
    path = tmp_path / "vit.keras"
    vit(keras3()).save(path)
    return path


def test_cli_prune_and_compile_heads(vit_file, tmp_path, capsys):
    out = tmp_path / "heads.keras"
    code, stdout, _ = run(["prune", str(vit_file), "--ratio", "0.5", "--attention-unit", "heads", "-o", str(out),
                           "--json"], capsys)
    assert code in (0, None)
    assert json.loads(stdout)["attention_unit"] == "heads"
    pruned = load_model(out).model
    assert all(h < HEADS and k == KEY_DIM for h, k in heads_and_key_dim(pruned))
    assert registered_mode() == "dims"

    art = tmp_path / "art"
    code, stdout, _ = run(["compile", str(vit_file), "--ratio", "0.5", "--round-to", "1", "--attention-unit", "heads",
                           "-o", str(art), "--json"], capsys)
    assert code in (0, None)
    summary = json.loads(stdout)
    assert summary["pruning"]["macs_after"] < summary["pruning"]["macs_before"]
    report = json.loads((art / "report.json").read_text())
    assert report["pruning"]["attention_unit"] == "heads"
    assert run_tflite((art / "model.tflite").read_bytes(), images()).shape == (8, 10)


@pytest.mark.parametrize("command", ["prune", "compile"])
def test_cli_bad_attention_unit_is_one_line(vit_file, tmp_path, capsys, command):
    out = tmp_path / ("o.keras" if command == "prune" else "art")
    code, _, err = run([command, str(vit_file), "--ratio", "0.5", "--attention-unit", "tokens", "-o", str(out)],
                       capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("edgeprune: error: --attention-unit") and "dims, heads" in lines[0]
    assert not out.exists()
