"""Surgery, allocation, criteria and MAC counting on tiny models."""
import numpy as np
import pytest
from pruning_helpers import randomize_bn

import edgeprune.base.env  # noqa: F401
from edgeprune.base.env import tf, tf_keras
from edgeprune.base.errors import InputError
from edgeprune.load.graph import trace
from edgeprune.pruning import macs, prune_model
from edgeprune.pruning.allocation import keep_count
from edgeprune.pruning.groups import build_groups
from edgeprune.pruning.importance import CRITERIA


@pytest.fixture(autouse=True)
def _fresh_session():
    tf_keras().backend.clear_session()
    yield


def small_cnn(width=16, seed=0):
    K = tf_keras()
    L = K.layers
    K.utils.set_random_seed(seed)
    i = K.Input((8, 8, 3))
    x = L.Conv2D(width, 3, padding="same", name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="r1")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = L.BatchNormalization(name="bn2")(y)
    y = L.ReLU(name="r2")(y)
    y = L.Conv2D(width, 1, name="pw")(y)
    x = L.Add(name="add")([x, y])
    x = L.Conv2D(width * 2, 3, strides=2, padding="same", name="c3")(x)
    x = L.ReLU(name="r3")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(12, activation="relu", name="fc")(x)
    m = K.Model(i, L.Dense(4, activation="softmax", name="out")(x))
    randomize_bn(m, seed)
    return m


def ch(model, name):
    return model.get_layer(name).output_shape[-1]


def data(n=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 3)).astype(np.float32)


@pytest.mark.parametrize("n,ratio,r,mn,expected", [
    (64, 0.5, 1, 1, 32), (64, 0.3, 8, 1, 40), (64, 0.9, 8, 1, 8), (64, 0.99, 8, 16, 16),
    (20, 0.5, 8, 1, 8), (6, 0.5, 8, 1, 6), (4, 0.5, 1, 8, 4), (10, 0.0, 8, 1, 10), (3, 0.9, 1, 1, 1),
    (100, 0.25, 4, 1, 72),
])
def test_keep_count_rounds_remaining_channels(n, ratio, r, mn, expected):
    assert keep_count(n, ratio, r, mn) == expected


def test_round_to_and_min_channels_in_a_real_model():
    m = small_cnn(width=32)
    r = prune_model(m, ratio=0.3, round_to=8, min_channels=8)
    assert ch(r.model, "c1") == 16 and ch(r.model, "c3") == 40 and ch(r.model, "fc") == 8
    r = prune_model(m, ratio=0.9, round_to=1, min_channels=16)
    assert ch(r.model, "c1") == 16 and ch(r.model, "fc") == 12  # fc has 12 <= 16: left alone


def test_weights_are_sliced_consistently():
    m = small_cnn()
    r = prune_model(m, ratio=0.5, criterion="l1")
    new = r.model
    k_old = m.get_layer("c1").kernel.numpy()
    k_new = new.get_layer("c1").kernel.numpy()
    kept = [int(np.flatnonzero(np.all(np.isclose(k_old, k_new[..., j:j + 1]), axis=(0, 1, 2)))[0])
            for j in range(k_new.shape[-1])]
    assert kept == sorted(kept) and len(kept) == 8
    for w_old, w_new in zip(m.get_layer("bn1").get_weights(), new.get_layer("bn1").get_weights()):
        np.testing.assert_array_equal(w_new, w_old[kept])
    np.testing.assert_array_equal(new.get_layer("dw").depthwise_kernel.numpy(),
                                  m.get_layer("dw").depthwise_kernel.numpy()[:, :, kept])
    np.testing.assert_array_equal(new.get_layer("pw").bias.numpy(), m.get_layer("pw").bias.numpy()[kept])
    assert new.get_layer("c3").kernel.shape[2] == 8


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_pruned_model_saves_and_loads_without_custom_objects(tmp_path, suffix):
    m = small_cnn()
    r = prune_model(m, ratio=0.5)
    path = tmp_path / f"p{suffix}"
    r.model.save(path)
    back = tf_keras().models.load_model(path, compile=False)
    x = data(2)
    np.testing.assert_allclose(back(x).numpy(), r.model(x).numpy(), atol=1e-6)
    assert [l.name for l in back.layers] == [l.name for l in m.layers]
    assert back.input_shape == m.input_shape and back.output_shape == m.output_shape


def test_pruned_model_converts_and_runs_in_tflite():
    from ai_edge_litert.interpreter import Interpreter

    m = small_cnn()
    r = prune_model(m, ratio=0.5, round_to=4)
    blob = tf().lite.TFLiteConverter.from_keras_model(r.model).convert()
    it = Interpreter(model_content=blob)
    it.allocate_tensors()
    x = data(1)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, r.model(x).numpy(), atol=1e-4)


def test_per_layer_ratios_override_the_global_ratio():
    m = small_cnn()
    r = prune_model(m, ratio=0.25, per_layer={"c3": 0.75, "f.*": 0.5})
    assert ch(r.model, "c1") == 12 and ch(r.model, "c3") == 8 and ch(r.model, "fc") == 6
    with pytest.raises(InputError, match="--per-layer 'nope'"):
        prune_model(m, ratio=0.25, per_layer={"nope": 0.5})
    with pytest.raises(InputError, match="must be in"):
        prune_model(m, ratio=0.25, per_layer={"c3": 1.5})


def test_global_ranking_prunes_unevenly_and_respects_the_cap():
    m = small_cnn(width=16)
    w = m.get_layer("c3").get_weights()  # make c3's filters tiny except four: global ranking finds them
    w[0][..., 4:] *= 1e-3
    m.get_layer("c3").set_weights(w)
    r = prune_model(m, ratio=0.4, global_ranking=True, criterion="l2", max_ratio=0.75)
    assert ch(r.model, "c3") == 8  # 75% cap of 32
    local = prune_model(m, ratio=0.4, criterion="l2")
    assert ch(local.model, "c3") == 20
    assert ch(r.model, "c1") > ch(local.model, "c1")


@pytest.mark.parametrize("target", [0.7, 0.5, 0.3])
def test_target_macs_is_met(target):
    m = small_cnn(width=32)
    r = prune_model(m, target_macs=target, round_to=4)
    assert r.report["macs_after"] <= target * r.report["macs_before"]
    assert r.report["macs_after"] >= 0.6 * target * r.report["macs_before"]  # not grossly over-pruned
    assert r.report["target_macs"] == target
    assert macs.count(r.model)["macs"] == r.report["macs_after"]


def test_unreachable_target_and_bad_options_are_input_errors():
    m = small_cnn()
    with pytest.raises(InputError, match="unreachable"):
        prune_model(m, target_macs=0.001)
    for bad in (-0.1, 1.0, 1.5, "x"):
        with pytest.raises(InputError, match="ratio"):
            prune_model(m, ratio=bad)
    with pytest.raises(InputError, match="exactly one"):
        prune_model(m, ratio=0.5, target_macs=0.5)
    with pytest.raises(InputError, match="exactly one"):
        prune_model(m)
    with pytest.raises(InputError, match="unknown criterion 'magic'"):
        prune_model(m, ratio=0.5, criterion="magic")
    for crit in ("taylor", "mean_activation", "apoz", "entropy"):
        with pytest.raises(InputError, match=f"'{crit}' needs calibration data"):
            prune_model(m, ratio=0.5, criterion=crit)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_prunes(criterion):
    m = small_cnn()
    x = data(16)
    r = prune_model(m, ratio=0.5, criterion=criterion, data=x)
    assert ch(r.model, "c1") == 8 and ch(r.model, "c3") == 16
    assert r.report["criterion"] == criterion
    assert r.model(x).shape == (16, 4)


def test_random_criterion_is_seeded():
    m = small_cnn()
    a = prune_model(m, ratio=0.5, criterion="random", seed=3).model.get_layer("c3").kernel.numpy()
    b = prune_model(m, ratio=0.5, criterion="random", seed=3).model.get_layer("c3").kernel.numpy()
    c = prune_model(m, ratio=0.5, criterion="random", seed=4).model.get_layer("c3").kernel.numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def _chain(width=8):
    K = tf_keras()
    L = K.layers
    i = K.Input((8, 8, 3))
    x = L.Conv2D(width, 3, padding="same", name="a")(i)
    x = L.ReLU(name="ra")(x)
    x = L.Conv2D(width, 3, padding="same", name="b")(x)
    x = L.GlobalAveragePooling2D()(x)
    return K.Model(i, L.Dense(3, name="out")(x))


def _kept_filters(old, new, name):
    ko, kn = old.get_layer(name).kernel.numpy(), new.get_layer(name).kernel.numpy()
    return {int(np.flatnonzero([np.allclose(ko[..., j], kn[..., k]) for j in range(ko.shape[-1])])[0])
            for k in range(kn.shape[-1])}


def test_criteria_drop_the_channel_that_matters_least():
    m = _chain()
    w = m.get_layer("a").get_weights()
    w[0][..., 2] *= 0.01  # tiny filter
    w[0][..., 5] = -np.abs(w[0][..., 5]) - 1.0  # always negative -> always zero after ReLU
    w[1][5] = -10.0
    m.get_layer("a").set_weights(w)
    x = np.abs(data(16))
    assert 2 not in _kept_filters(m, prune_model(m, ratio=1 / 8, criterion="l1").model, "a")
    assert 2 not in _kept_filters(m, prune_model(m, ratio=1 / 8, criterion="l2").model, "a")
    for crit in ("apoz", "mean_activation", "taylor"):
        kept = _kept_filters(m, prune_model(m, ratio=1 / 8, criterion=crit, data=x).model, "a")
        assert 5 not in kept, crit


def test_bn_criterion_uses_gamma_and_reports_its_l1_fallback():
    m = small_cnn()
    bn = m.get_layer("bn1")
    w = bn.get_weights()
    w[0][:] = 1.0
    w[0][3] = 1e-4
    bn.set_weights(w)
    r = prune_model(m, ratio=1 / 16, criterion="bn")
    kept_gamma = r.model.get_layer("bn1").gamma.numpy()
    assert kept_gamma.min() == 1.0  # the 1e-4 channel went
    assert any("scored by l1" in n and "c3" in n for n in r.report["notes"])


def test_taylor_uses_labels_or_pseudo_labels():
    m = small_cnn()
    x = data(16)
    y = np.arange(16) % 4
    a = prune_model(m, ratio=0.5, criterion="taylor", data=x, labels=y)
    b = prune_model(m, ratio=0.5, criterion="taylor", data=x)
    assert ch(a.model, "c1") == ch(b.model, "c1") == 8


def test_mac_counter_matches_hand_counts_and_count_params():
    K = tf_keras()
    L = K.layers
    i = K.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="conv")(i)  # 3*3*3*4*64 = 6912
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)  # 9*8*64 = 4608
    x = L.SeparableConv2D(6, 3, strides=2, padding="same", name="sep")(x)  # 9*8*16 + 8*6*16 = 1920
    x = L.Conv2D(6, 3, groups=3, padding="same", name="grp")(x)  # 9*2*6*16 = 1728
    x = L.Conv2DTranspose(2, 3, strides=2, padding="same", name="tconv")(x)  # 9*6*2*16 = 1728
    x = L.BatchNormalization()(x)
    x = L.Flatten()(x)
    out = L.Dense(5, name="fc")(x)  # 128*5 = 640
    m = K.Model(i, out)
    c = macs.count(m)
    per = {k: v["macs"] for k, v in c["layers"].items() if v["macs"]}
    assert per == {"conv": 6912, "dw": 4608, "sep": 1920, "grp": 1728, "tconv": 1728, "fc": 640}
    assert c["params"] == m.count_params()


def test_report_layout_and_totals():
    m = small_cnn()
    r = prune_model(m, ratio=0.5)
    rep = r.report
    for key in ("layers", "macs_before", "macs_after", "params_before", "params_after", "criterion", "ratio"):
        assert key in rep
    row = next(l for l in rep["layers"] if l["name"] == "c1")
    assert row["channels_before"] == 16 and row["channels_after"] == 8
    assert sum(l["params_after"] for l in rep["layers"]) == rep["params_after"] == r.model.count_params()
    assert sum(l["macs_after"] for l in rep["layers"]) == rep["macs_after"]
    assert rep["params_before"] == m.count_params()
    gs = build_groups(trace(m))
    assert rep["groups"] == len(gs.groups)


def test_rounding_counts_channels_for_grouped_convs():
    K = tf_keras()
    L = K.layers
    i = K.Input((8, 8, 3))
    x = L.Conv2D(64, 1, name="a")(i)  # 16 groups of 4 input channels
    x = L.Conv2D(64, 3, groups=16, padding="same", name="g")(x)
    x = L.GlobalAveragePooling2D()(x)
    m = K.Model(i, L.Dense(2)(x))
    r = prune_model(m, ratio=0.3, round_to=8)
    g = r.model.get_layer("g")
    assert g.filters % 8 == 0 and ch(r.model, "a") % 8 == 0 and g.filters == 48 and g.groups == 12
    r = prune_model(m, ratio=0.9, round_to=1, min_channels=16)
    assert r.model.get_layer("g").filters == 16
