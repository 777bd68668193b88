"""Models for the keras-hub coverage table, built small and offline (presets need Kaggle), shared
by scripts/hub_coverage.py (the README table), tests/test_hub_coverage.py (which fails when a
row the table marks yes regresses) and tests/test_macs_agreement.py.

Each builder takes nothing and returns a fresh Keras 3 model with random weights. keras-hub is
imported inside the builders, so the Keras-layer models build without the ``hub`` extra.
"""
from __future__ import annotations

IMAGE = (32, 32, 3)


def _hub_models():
    import keras_hub

    return keras_hub.models


def _keras():
    from edgeprune.base.env import keras3

    return keras3()


# ------------------------------------------------------------------ keras-hub vision backbones

def resnet():
    return _hub_models().ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=IMAGE)


def mobilenet():
    return _hub_models().MobileNetBackbone(
        stackwise_expansion=[[16], [4]], stackwise_num_blocks=[1, 1], stackwise_num_filters=[[16], [24]],
        stackwise_kernel_size=[[3], [3]], stackwise_num_strides=[[2], [2]], stackwise_se_ratio=[[0.25], [None]],
        stackwise_activation=[["relu"], ["relu"]], stackwise_padding=[[1], [1]], output_num_filters=32,
        depthwise_filters=8, depthwise_stride=2, depthwise_residual=False, last_layer_filter=32,
        image_shape=IMAGE)


def efficientnet():
    return _hub_models().EfficientNetBackbone(
        stackwise_width_coefficients=[1.0, 1.0], stackwise_depth_coefficients=[1.0, 1.0],
        stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 1], stackwise_input_filters=[16, 16],
        stackwise_output_filters=[16, 24], stackwise_expansion_ratios=[1, 4],
        stackwise_squeeze_and_excite_ratios=[0.25, 0.25], stackwise_strides=[1, 2],
        stackwise_block_types=["v1", "v1"], num_features=64, input_shape=IMAGE)


def cspnet():
    return _hub_models().CSPNetBackbone(
        stem_filters=16, stem_kernel_size=3, stem_strides=2, stackwise_depth=[1, 1], stackwise_strides=2,
        stackwise_num_filters=[32, 64], block_type="dark_block", stage_type="csp", bottle_ratio=[0.5],
        block_ratio=[1.0], expand_ratio=[2.0], image_shape=IMAGE)


def vit():
    return _hub_models().ViTBackbone(image_shape=IMAGE, patch_size=8, num_layers=2, num_heads=2,
                                     hidden_dim=32, mlp_dim=64)


def deit():
    return _hub_models().DeiTBackbone(image_shape=IMAGE, patch_size=8, num_layers=2, num_heads=2,
                                      hidden_dim=32, intermediate_dim=64)


def mit():
    return _hub_models().MiTBackbone(
        layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2], layerwise_sr_ratios=[4, 2],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2],
        image_shape=IMAGE, hidden_dims=[16, 32])


def densenet():
    return _hub_models().DenseNetBackbone(stackwise_num_repeats=[1, 1], growth_rate=8, image_shape=IMAGE)


def vgg():
    return _hub_models().VGGBackbone(stackwise_num_repeats=[1, 1], stackwise_num_filters=[8, 16],
                                     image_shape=IMAGE)


def xception():
    return _hub_models().XceptionBackbone(
        stackwise_conv_filters=[[8, 16], [16, 16], [32, 32]], stackwise_pooling=[True, False, False],
        image_shape=IMAGE)


def hgnetv2():
    return _hub_models().HGNetV2Backbone(
        depths=[1, 1], embedding_size=16, hidden_sizes=[32, 64], stem_channels=[3, 8, 16],
        hidden_act="relu", use_learnable_affine_block=False,
        stackwise_stage_filters=[(16, 8, 32, 1, 1, 3), (32, 16, 64, 1, 1, 3)],
        apply_downsample=[False, True], use_lightweight_conv_block=[False, False], image_shape=IMAGE)


def dinov2():
    return _hub_models().DINOV2Backbone(
        patch_size=8, num_layers=2, hidden_dim=32, num_heads=2, intermediate_dim=64, image_shape=IMAGE,
        position_embedding_shape=IMAGE)


def swin():
    return _hub_models().SwinTransformerBackbone(
        image_shape=IMAGE, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4, patch_size=4,
        drop_path=0.0)


def mobilenetv5():
    return _hub_models().MobileNetV5Backbone(
        stackwise_block_types=[["er"], ["uir"]], stackwise_num_blocks=[1, 1],
        stackwise_num_filters=[[16], [24]], stackwise_strides=[[2], [2]],
        stackwise_act_layers=[["relu"], ["relu"]], stackwise_exp_ratios=[[4.0], [4.0]],
        stackwise_se_ratios=[[0.0], [0.0]], stackwise_dw_kernel_sizes=[[0], [3]],
        stackwise_dw_start_kernel_sizes=[[0], [0]], stackwise_dw_end_kernel_sizes=[[0], [0]],
        stackwise_exp_kernel_sizes=[[3], [0]], stackwise_pw_kernel_sizes=[[1], [0]],
        stackwise_num_heads=[[0], [0]], stackwise_key_dims=[[0], [0]], stackwise_value_dims=[[0], [0]],
        stackwise_kv_strides=[[0], [0]], stackwise_use_cpe=[[False], [False]], stem_size=8,
        num_features=32, use_msfa=False, image_shape=IMAGE)


def vitdet():
    return _hub_models().ViTDetBackbone(
        hidden_size=32, num_layers=2, intermediate_dim=64, num_heads=2, global_attention_layer_indices=[1],
        image_shape=IMAGE, patch_size=8, num_output_channels=16, window_size=2)


def resnet_image_classifier():
    """keras-hub's own Task (a functional subclass nesting the ResNet Backbone), 10 classes."""
    return _hub_models().ResNetImageClassifier(backbone=resnet(), num_classes=10)


# ------------------------------------------------------------------ models from Keras layers

def vit_layers(keras=None, size=32, patch=4, dim=32, heads=2, blocks=2, classes=10):
    """A two-block ViT: patch conv, pre-norm MultiHeadAttention and MLP blocks."""
    keras = keras or _keras()
    L = keras.layers
    x_in = keras.Input((size, size, 3))
    x = L.Conv2D(dim, patch, strides=patch)(x_in)
    x = L.Reshape(((size // patch) ** 2, dim))(x)
    for _ in range(blocks):
        h = L.LayerNormalization()(x)
        x = L.Add()([x, L.MultiHeadAttention(heads, dim // heads)(h, h)])
        h = L.LayerNormalization()(x)
        h = L.Dense(dim, activation="gelu")(L.Dense(2 * dim, activation="gelu")(h))
        x = L.Add()([x, h])
    x = L.GlobalAveragePooling1D()(L.LayerNormalization()(x))
    return keras.Model(x_in, L.Dense(classes)(x))


def kws_transformer(keras=None, frames=49, mfcc=40, dim=32, heads=4, blocks=2, words=12):
    """A keyword-spotting transformer (KWT-like): strided Conv1D over MFCC frames, attention
    blocks whose value/key widths differ from the query's, a pooled classifier."""
    keras = keras or _keras()
    L = keras.layers
    x_in = keras.Input((frames, mfcc))
    x = L.Conv1D(dim, 3, strides=2, padding="same", activation="relu")(x_in)
    for _ in range(blocks):
        h = L.LayerNormalization()(x)
        x = L.Add()([x, L.MultiHeadAttention(heads, 8, value_dim=12)(h, h)])
        h = L.LayerNormalization()(x)
        x = L.Add()([x, L.Dense(dim)(L.Dense(2 * dim, activation="relu")(h))])
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(x_in, L.Dense(words)(x))


def seq2seq_transformer(vocab=50, source_len=12, target_len=16, encoder_dim=24, decoder_dim=32, heads=4):
    """A translation-style encoder-decoder from keras-hub layers: token + position embeddings on
    two token inputs, a TransformerEncoder on the source, a TransformerDecoder on the target with
    cross-attention to the encoder's output (the two streams differ in width), a vocabulary head."""
    import keras_hub

    keras = _keras()
    layers = keras_hub.layers
    source = keras.Input((source_len,), dtype="int32", name="source")
    target = keras.Input((target_len,), dtype="int32", name="target")
    encoded = layers.TokenAndPositionEmbedding(vocab, source_len, encoder_dim, name="source_embed")(source)
    encoded = layers.TransformerEncoder(2 * encoder_dim, heads, name="encoder")(encoded)
    x = layers.TokenAndPositionEmbedding(vocab, target_len, decoder_dim, name="target_embed")(target)
    x = layers.TransformerDecoder(2 * decoder_dim, heads, name="decoder")(x, encoded)
    return keras.Model([source, target], keras.layers.Dense(vocab, name="vocab")(x))


def _functional_subclass_class():
    """A user's ``keras.Model`` subclass built functionally (``super().__init__(inputs, outputs)``),
    registered so that Keras (and edgeprune's safe mode) can load its file without its code file."""
    keras = _keras()

    @keras.saving.register_keras_serializable(package="edgeprune_coverage")
    class TinyNet(keras.Model):
        def __init__(self, width=16, classes=10, **kwargs):
            L = keras.layers
            x_in = keras.Input(IMAGE)
            x = L.Conv2D(width, 3, padding="same", activation="relu")(x_in)
            x = L.Conv2D(2 * width, 3, strides=2, padding="same", activation="relu")(x)
            x = L.GlobalAveragePooling2D()(x)
            super().__init__(x_in, L.Dense(classes)(x), **kwargs)
            self.width, self.classes = width, classes

        def get_config(self):
            return {"width": self.width, "classes": self.classes, "name": self.name}

    return TinyNet


_SUBCLASS = []


def functional_subclass():
    if not _SUBCLASS:  # one class per process: Keras' registry holds it by name
        _SUBCLASS.append(_functional_subclass_class())
    return _SUBCLASS[0]()


# name -> (builder, needs keras-hub)
MODELS = {
    "ResNetBackbone": (resnet, True),
    "MobileNetBackbone": (mobilenet, True),
    "EfficientNetBackbone": (efficientnet, True),
    "CSPNetBackbone": (cspnet, True),
    "ViTBackbone": (vit, True),
    "DeiTBackbone": (deit, True),
    "MiTBackbone": (mit, True),
    "DenseNetBackbone": (densenet, True),
    "VGGBackbone": (vgg, True),
    "XceptionBackbone": (xception, True),
    "HGNetV2Backbone": (hgnetv2, True),
    "DINOV2Backbone": (dinov2, True),
    "SwinTransformerBackbone": (swin, True),
    "MobileNetV5Backbone": (mobilenetv5, True),
    "ViTDetBackbone": (vitdet, True),
    "ResNetImageClassifier (Task)": (resnet_image_classifier, True),
    "ViT from Keras layers": (vit_layers, False),
    "KWS transformer from Keras layers": (kws_transformer, False),
    "encoder-decoder from keras-hub layers": (seq2seq_transformer, True),
    "functional subclass (user's)": (functional_subclass, False),
}
