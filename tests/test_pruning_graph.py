"""Dependency graph: which channels are removed together, which are locked, and why."""
import numpy as np
import pytest
from pruning_helpers import kill_units, max_abs_diff, randomize_bn

import edgeprune.base.env  # noqa: F401
from edgeprune.base.env import tf_keras
from edgeprune.base.errors import InputError
from edgeprune.load.graph import trace
from edgeprune.pruning import prune_model
from edgeprune.pruning.groups import build_groups
from edgeprune.pruning.importance import FixedScores


@pytest.fixture(autouse=True)
def _fresh_session():
    tf_keras().backend.clear_session()
    yield


def K():
    return tf_keras()


def groups_of(model, protect=()):
    return build_groups(trace(model), protect)


def group_with(gs, layer_name):
    """The group whose tensors include ``layer_name``'s output."""
    for g in gs.groups:
        if any(k[0] == layer_name for k in g.tensors):
            return g
    raise KeyError(layer_name)


def layer_names(group):
    return {k[0] for k in group.tensors}


def channels(model, name):
    return model.get_layer(name).output_shape[-1]


def assert_exact(model, ratio=0.5, x_shape=(2, 8, 8, 3), seed=0, **kw):
    scores, dead = kill_units(model, ratio, seed)
    result = prune_model(model, ratio=ratio, criterion=FixedScores(scores), **kw)
    x = np.random.default_rng(seed).normal(size=x_shape).astype(np.float32)
    diff, scale = max_abs_diff(model, result.model, x)
    assert diff <= 1e-4 * max(1.0, scale), diff
    return result


def test_bn_activations_pooling_pass_channels_through():
    L = K().layers
    i = K().Input((8, 8, 3))
    x = L.Conv2D(8, 3, name="c1")(i)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="r")(x)
    x = L.LeakyReLU(name="lr")(x)
    x = L.PReLU(shared_axes=[1, 2], name="pr")(x)
    x = L.Dropout(0.1, name="do")(x)
    x = L.SpatialDropout2D(0.1, name="sd")(x)
    x = L.ZeroPadding2D(1, name="zp")(x)
    x = L.Cropping2D(1, name="cr")(x)
    x = L.MaxPooling2D(name="mp")(x)
    x = L.UpSampling2D(name="up")(x)
    x = L.AveragePooling2D(name="ap")(x)
    x = L.LayerNormalization(name="ln")(x)
    x = L.Activation("swish", name="act")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(4, name="out")(x)
    gs = groups_of(K().Model(i, x))
    g = group_with(gs, "c1")
    assert layer_names(g) == {"c1", "bn", "r", "lr", "pr", "do", "sd", "zp", "cr", "mp", "up", "ap", "ln",
                              "act", "gap"}
    assert g.locked is None and g.producers == ["c1"] and g.size == 8
    assert group_with(gs, "out").locked and "model output" in group_with(gs, "out").locked


def test_conv_chain_groups_are_separate_and_consumers_shrink():
    L = K().layers
    i = K().Input((8, 8, 3))
    x = L.Conv2D(16, 3, name="a")(i)
    x = L.Conv2D(16, 3, name="b")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(8, name="fc")(x)
    out = L.Dense(3, name="out")(x)
    m = K().Model(i, out)
    gs = groups_of(m)
    assert len(gs.prunable) == 3  # a, b, fc
    r = prune_model(m, ratio=0.5)
    assert channels(r.model, "a") == 8 and channels(r.model, "b") == 8 and channels(r.model, "fc") == 4
    assert channels(r.model, "out") == 3
    assert r.model.get_layer("b").kernel.shape == (3, 3, 8, 8)


def test_depthwise_multiplier_couples_inputs_with_m_outputs():
    L = K().layers
    i = K().Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="pw")(i)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = L.Conv2D(6, 1, name="proj")(x)
    x = L.GlobalAveragePooling2D()(x)
    m = K().Model(i, L.Dense(2)(x))
    gs = groups_of(m)
    g = group_with(gs, "pw")
    assert layer_names(g) == {"pw", "dw"} and g.size == 8
    assert g.multiplicity[("dw", 0, 0)] == 2
    r = assert_exact(m, 0.5)
    assert r.model.get_layer("dw").depthwise_kernel.shape == (3, 3, 4, 2)
    assert r.model.get_layer("proj").kernel.shape[2] == 8


def test_separable_conv_input_slices_depthwise_and_pointwise():
    L = K().layers
    i = K().Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="a")(i)
    x = L.SeparableConv2D(12, 3, depth_multiplier=2, name="sep")(x)
    x = L.GlobalAveragePooling2D()(x)
    m = K().Model(i, L.Dense(2)(x))
    g = group_with(groups_of(m), "a")
    assert layer_names(g) == {"a"}
    r = assert_exact(m, 0.5)
    sep = r.model.get_layer("sep")
    assert sep.depthwise_kernel.shape == (3, 3, 4, 2) and sep.pointwise_kernel.shape == (1, 1, 8, 6)


def test_grouped_conv_prunes_whole_groups():
    L = K().layers
    i = K().Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="a")(i)
    x = L.ReLU()(x)
    x = L.Conv2D(12, 3, groups=4, padding="same", name="g")(x)  # 2 inputs -> 3 outputs per group
    x = L.Conv2D(8, 1, name="b")(x)
    x = L.GlobalAveragePooling2D()(x)
    m = K().Model(i, L.Dense(2)(x))
    gs = groups_of(m)
    ga = group_with(gs, "a")
    assert ga.locked is None and ga.size == 4 and ("g", 0, 0) in ga.tensors
    assert ga.multiplicity[("a", 0, 0)] == 2 and ga.multiplicity[("g", 0, 0)] == 3
    r = assert_exact(m, 0.5)
    g = r.model.get_layer("g")
    assert channels(r.model, "a") == 4 and g.filters == 6 and g.groups == 2
    assert g.kernel.shape == (3, 3, 2, 6)
    assert channels(r.model, "b") == 4


def test_conv_with_one_output_channel_is_not_depthwise():
    L = K().layers
    i = K().Input((8, 8, 3))
    a = L.Conv2D(8, 1, name="a")(i)
    one = L.Conv2D(1, 3, padding="same", name="one")(a)
    x = L.Multiply(name="mul")([a, one])  # spatial attention map broadcast over channels
    x = L.GlobalAveragePooling2D()(x)
    m = K().Model(i, L.Dense(2)(x))
    gs = groups_of(m)
    ga = group_with(gs, "a")
    assert ("one", 0, 0) not in ga.tensors and ("mul", 0, 0) in ga.tensors
    r = prune_model(m, ratio=0.5)
    assert channels(r.model, "a") == 4 and channels(r.model, "one") == 1
    assert r.model.get_layer("one").kernel.shape == (3, 3, 4, 1)


def test_residual_adds_form_one_group_across_the_stage():
    L = K().layers
    i = K().Input((8, 8, 3))
    stem = L.Conv2D(8, 3, padding="same", name="stem")(i)
    x = stem
    for b in range(3):
        y = L.Conv2D(4, 3, padding="same", name=f"b{b}_1")(x)
        y = L.ReLU()(y)
        y = L.Conv2D(8, 3, padding="same", name=f"b{b}_2")(y)
        x = L.Add(name=f"add{b}")([x, y])
    x = L.GlobalAveragePooling2D()(x)
    m = K().Model(i, L.Dense(2)(x))
    g = group_with(groups_of(m), "stem")
    assert set(g.producers) == {"stem", "b0_2", "b1_2", "b2_2"}
    assert {"add0", "add1", "add2"} <= layer_names(g)
    r = assert_exact(m, 0.5)
    assert all(channels(r.model, n) == 4 for n in ("stem", "b0_2", "add2"))


def test_merge_channel_mismatch_is_an_analysis_error_naming_layers():
    L = K().layers
    i = K().Input((8, 8, 3))
    a = L.Conv2D(8, 1, name="left")(i)
    b = L.Conv2D(8, 1, name="right")(i)
    m = K().Model(i, L.Add(name="join")([a, b]))
    g = trace(m)
    g.tensors[("right", 0, 0)].shape = (8, 8, 4)  # what a broken graph would look like
    with pytest.raises(InputError, match=r"Add layer 'join'.*'left' \(8 channels\).*'right' \(4 channels\)"):
        build_groups(g)


def test_concatenate_maps_offsets_back_to_each_input():
    L = K().layers
    i = K().Input((8, 8, 3))
    a = L.Conv2D(8, 1, name="a")(i)
    b = L.Conv2D(4, 1, name="b")(i)
    x = L.Concatenate(name="cat")([a, b])
    x = L.Conv2D(6, 1, name="c")(x)
    x = L.GlobalAveragePooling2D()(x)
    m = K().Model(i, L.Dense(2)(x))
    gs = groups_of(m)
    assert group_with(gs, "a") is not group_with(gs, "b")
    assert ("cat", 0, 0) in group_with(gs, "a").tensors
    r = prune_model(m, ratio=0.0, per_layer={"a": 0.5})
    assert channels(r.model, "a") == 4 and channels(r.model, "b") == 4 and channels(r.model, "cat") == 8
    assert r.model.get_layer("c").kernel.shape == (1, 1, 8, 6)
    assert_exact(m, 0.5)


def test_squeeze_excitation_branch_joins_the_feature_map_group():
    L = K().layers
    i = K().Input((8, 8, 3))
    f = L.Conv2D(8, 3, padding="same", name="feat")(i)
    s = L.GlobalAveragePooling2D(name="gap")(f)
    s = L.Reshape((1, 1, 8), name="rs")(s)
    s = L.Conv2D(2, 1, activation="relu", name="squeeze")(s)
    s = L.Conv2D(8, 1, activation="sigmoid", name="excite")(s)
    x = L.Multiply(name="scale")([f, s])
    x = L.Conv2D(4, 1, name="proj")(x)
    x = L.GlobalAveragePooling2D()(x)
    m = K().Model(i, L.Dense(2)(x))
    g = group_with(groups_of(m), "feat")
    assert {"feat", "gap", "rs", "excite", "scale"} <= layer_names(g)
    assert set(g.producers) == {"feat", "excite"}
    r = prune_model(m, ratio=0.5)
    assert r.model.get_layer("rs").target_shape == (1, 1, 4)
    assert channels(r.model, "excite") == 4 and channels(r.model, "squeeze") == 1


def test_flatten_dense_rows_follow_nhwc_layout():
    L = K().layers
    i = K().Input((4, 4, 3))
    x = L.Conv2D(6, 3, padding="same", name="c")(i)
    x = L.Flatten(name="fl")(x)
    out = L.Dense(5, name="fc")(x)
    m = K().Model(i, out)
    gs = groups_of(m)
    assert gs.graph.tensors[("fl", 0, 0)].spatial == 16
    scores = np.ones(int(gs.labels.max()) + 1)
    units = gs.units_of(("c", 0, 0))
    scores[units[[1, 4]]] = 0  # drop channels 1 and 4
    r = prune_model(m, ratio=2 / 6, criterion=FixedScores(scores))
    w = m.get_layer("fc").kernel.numpy()
    kept = [0, 2, 3, 5]
    rows = [p * 6 + c for p in range(16) for c in kept]
    np.testing.assert_array_equal(r.model.get_layer("fc").kernel.numpy(), w[rows])


@pytest.mark.parametrize("kind", ["conv1d", "conv3d", "conv2d_transpose", "dense"])
def test_other_producers_prune_filters_exactly(kind):
    L = K().layers
    if kind == "conv1d":
        i = K().Input((8, 3))
        x = L.Conv1D(8, 3, padding="same")(i)
        x = L.ReLU()(x)
        x = L.Conv1D(6, 3)(x)
        x = L.GlobalAveragePooling1D()(x)
        shape = (2, 8, 3)
    elif kind == "conv3d":
        i = K().Input((4, 4, 4, 2))
        x = L.Conv3D(8, 3, padding="same")(i)
        x = L.MaxPooling3D()(x)
        x = L.Conv3D(6, 1)(x)
        x = L.GlobalAveragePooling3D()(x)
        shape = (2, 4, 4, 4, 2)
    elif kind == "conv2d_transpose":
        i = K().Input((4, 4, 3))
        x = L.Conv2DTranspose(8, 3, strides=2, padding="same")(i)
        x = L.ReLU()(x)
        x = L.Conv2DTranspose(6, 3, padding="same")(x)
        x = L.Conv2D(4, 1)(x)
        x = L.GlobalAveragePooling2D()(x)
        shape = (2, 4, 4, 3)
    else:
        i = K().Input((10,))
        x = L.Dense(16, activation="relu")(i)
        x = L.Dense(12)(x)
        x = L.ReLU()(x)
        shape = (2, 10)
    m = K().Model(i, L.Dense(3)(x))
    r = assert_exact(m, 0.5, x_shape=shape)
    assert r.report["params_after"] < r.report["params_before"]


def test_prelu_per_channel_alpha_is_sliced():
    L = K().layers
    i = K().Input((6, 6, 3))
    x = L.Conv2D(8, 3, name="c")(i)
    x = L.PReLU(name="p")(x)
    x = L.Conv2D(4, 1)(x)
    x = L.GlobalAveragePooling2D()(x)
    m = K().Model(i, L.Dense(2)(x))
    m.get_layer("p").set_weights([np.random.default_rng(0).uniform(0.1, 0.5, (4, 4, 8)).astype("float32")])
    r = assert_exact(m, 0.5, x_shape=(2, 6, 6, 3))
    assert r.model.get_layer("p").alpha.shape == (4, 4, 4)


def test_channel_mixing_layers_are_locked_and_the_rest_prunes():
    L = K().layers
    i = K().Input((8, 8, 3))
    x = L.Conv2D(8, 3, name="before_reshape")(i)
    x = L.Reshape((6, 48), name="mix")(x)  # folds spatial into channels
    x = L.LSTM(6, name="rnn", return_state=True)(x)[0]
    x = L.Dense(6, name="fc")(x)
    x = L.Activation("softmax", name="sm")(x)
    m = K().Model(i, L.Dense(2, name="out")(x))
    gs = groups_of(m)
    assert "Reshape" in group_with(gs, "before_reshape").locked
    assert "several outputs" in group_with(gs, "rnn").locked
    assert "softmax" in group_with(gs, "fc").locked
    r = prune_model(m, ratio=0.5)
    assert channels(r.model, "before_reshape") == 8
    assert r.report["locked"]


class Scale(tf_keras().layers.Layer):
    """A custom layer with no pruning rule."""

    def call(self, x):
        return x * 2.0


def test_unknown_custom_layer_locks_its_group_only():
    L = K().layers
    i = K().Input((8, 8, 3))
    x = L.Conv2D(8, 3, name="a")(i)
    x = Scale(name="custom")(x)
    x = L.Conv2D(8, 3, name="b")(x)
    x = L.GlobalAveragePooling2D()(x)
    m = K().Model(i, L.Dense(2)(x))
    r = prune_model(m, ratio=0.5)
    assert channels(r.model, "a") == 8 and channels(r.model, "b") == 4
    assert any("no pruning rule for Scale" in s for s in r.report["locked"])


def test_tf_op_layers_are_element_wise():
    L = K().layers
    tf = edgeprune.base.env.tf()
    i = K().Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")(i)
    b = L.Conv2D(8, 3, padding="same", name="b")(i)
    x = tf.nn.relu6(a * b + 3.0) / 6.0
    x = L.Conv2D(4, 1, name="c")(x)
    x = L.GlobalAveragePooling2D()(x)
    m = K().Model(i, L.Dense(2)(x))
    g = group_with(groups_of(m), "a")
    assert set(g.producers) == {"a", "b"} and g.locked is None
    r = prune_model(m, ratio=0.5)
    assert channels(r.model, "a") == 4 and r.model.get_layer("c").kernel.shape[2] == 4


def test_protect_by_name_and_regex():
    L = K().layers
    i = K().Input((8, 8, 3))
    x = L.Conv2D(8, 3, name="conv1")(i)
    x = L.Conv2D(8, 3, name="block_1")(x)
    x = L.Conv2D(8, 1, name="block_2")(x)
    x = L.Conv2D(8, 1, name="tail")(x)
    x = L.GlobalAveragePooling2D()(x)
    m = K().Model(i, L.Dense(2)(x))
    r = prune_model(m, ratio=0.5, protect=("conv1", "block_.*"))
    assert [channels(r.model, n) for n in ("conv1", "block_1", "block_2", "tail")] == [8, 8, 8, 4]
    with pytest.raises(InputError, match="nothing_like_this"):
        prune_model(m, ratio=0.5, protect=("nothing_like_this.*",))


def test_nested_functional_and_sequential_submodels_are_inlined():
    L = K().layers
    inner_in = K().Input((8, 8, 8))
    y = L.Conv2D(8, 3, padding="same", name="inner_conv")(inner_in)
    y = L.BatchNormalization(name="inner_bn")(y)
    inner = K().Model(inner_in, L.ReLU(name="inner_relu")(y), name="inner")
    seq = K().Sequential([L.Conv2D(6, 1, name="seq_conv"), L.ReLU(name="seq_relu")], name="seq")
    i = K().Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(i)
    x = inner(x)
    x = seq(x)
    x = L.GlobalAveragePooling2D()(x)
    m = K().Model(i, L.Dense(2, name="out")(x))
    randomize_bn(inner)
    r = assert_exact(m, 0.5)
    names = {l.name for l in r.model.layers}
    assert {"stem", "inner_conv", "inner_bn", "seq_conv", "out"} <= names
    assert channels(r.model, "inner_conv") == 4 and channels(r.model, "seq_conv") == 3


def test_sequential_top_level_model():
    L = K().layers
    m = K().Sequential([K().Input((8, 8, 3)), L.Conv2D(8, 3, name="c1"), L.ReLU(), L.Conv2D(8, 3, name="c2"),
                        L.Flatten(), L.Dense(6, name="fc"), L.Dense(2, name="out")])
    r = assert_exact(m, 0.5)
    assert channels(r.model, "c1") == 4 and channels(r.model, "fc") == 3
    assert r.model.output_shape == m.output_shape


def test_shared_layer_is_locked():
    L = K().layers
    i = K().Input((8, 8, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")(i)
    shared = L.Conv2D(8, 1, name="shared")
    x = L.Add()([shared(a), shared(L.ReLU()(a))])
    x = L.Conv2D(4, 1, name="b")(x)
    x = L.GlobalAveragePooling2D()(x)
    m = K().Model(i, L.Dense(2)(x))
    gs = groups_of(m)
    assert "shared layer" in group_with(gs, "a").locked
    r = prune_model(m, ratio=0.5)
    assert channels(r.model, "b") == 2


def test_tf_op_with_constant_array_is_locked():
    L = K().layers
    i = K().Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(i)
    x = a * np.array([1.0, 2.0, 3.0, 4.0], dtype="float32")
    x = L.Conv2D(4, 1, name="b")(x)
    x = L.GlobalAveragePooling2D()(x)
    m = K().Model(i, L.Dense(2)(x))
    assert "constant" in (group_with(groups_of(m), "a").locked or "")
    r = prune_model(m, ratio=0.5)
    assert channels(r.model, "a") == 4 and channels(r.model, "b") == 2


_RULE_SRC = '''
import keras
from edgeprune.pruning.rules import PassRule


@keras.saving.register_keras_serializable(package="edgeprune_rules_test")
class Gain(keras.layers.Layer):
    """Multiplies every channel by one scalar: channel i in is channel i out."""

    def __init__(self, gain=2.0, **kwargs):
        super().__init__(**kwargs)
        self.gain = gain

    def call(self, x):
        return x * self.gain

    def get_config(self):
        return {**super().get_config(), "gain": self.gain}


custom_objects = {"Gain": Gain}
pruning_rules = {"Gain": PassRule()}
'''


def test_custom_layer_becomes_prunable_with_a_registered_rule(tmp_path):
    """Without a rule a custom layer locks its group; a rule from --custom-objects unlocks it."""
    import keras

    from edgeprune.load.model_io import load_custom_objects, load_model
    from edgeprune.pruning import rules

    (tmp_path / "objs.py").write_text(_RULE_SRC)
    rules._REGISTRY.pop("Gain", None)
    try:
        objects = load_custom_objects(tmp_path / "objs.py")
        assert isinstance(rules.registered()["Gain"], rules.PassRule)
        inp = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(8, 3, name="conv")(inp)
        x = objects["Gain"](name="gain")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inp, keras.layers.Dense(2, name="out")(x))
        model.save(tmp_path / "m.keras")
        loaded = load_model(tmp_path / "m.keras", custom_objects=objects)
        result = prune_model(loaded.model, ratio=0.5)
        assert result.model.get_layer("conv").filters == 4
        x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
        assert np.asarray(result.model(x)).shape == (2, 2)
        rules._REGISTRY.pop("Gain")
        locked = prune_model(loaded.model, ratio=0.5)
        assert locked.model.get_layer("conv").filters == 8
        assert any("no pruning rule for Gain" in reason for reason in locked.report["locked"])
    finally:
        rules._REGISTRY.pop("Gain", None)


def test_register_rule_refuses_non_rules():
    from edgeprune.base.errors import InputError
    from edgeprune.pruning.rules import register_rule

    with pytest.raises(InputError, match="must be a LayerRule"):
        register_rule("Thing", object())
