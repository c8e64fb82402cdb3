"""FlexUNet: the reference's configurable UNet, rebuilt as a Keras 3 functional model.

With the reference's knobs (512x512x3, base_filters 16, base_kernels 9, num_layers 8, dropout
0.05, dilation 1, no BatchNorm, no input normalisation) this builds the reference's exact layer
structure and parameter count (124,996,883). The default in params.yaml is a smaller, faster
configuration chosen by measurement (see README and benchmarks/train_speed.py).

Only `keras` layers and `keras.ops` are used here, so the model runs on any Keras backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras
from keras import layers

if TYPE_CHECKING:  # type names only: the builder itself needs nothing but Keras
    from pipeline.params import ModelParams, Params

NUM_CLASSES = 3  # 0 background, 1 Hemorrhagic, 2 Ischemic (the order of rgb_map)


@dataclass(frozen=True)
class UNetConfig:
    """Everything the builder needs; `from_params` maps params.yaml onto it."""

    image_size: int
    base_filters: int = 16
    base_kernels: int = 3
    num_layers: int = 5
    dropout_rate: float = 0.05
    dilation: int = 1
    batch_norm: bool = True
    batch_norm_from_level: int = 0
    input_normalize: bool = True
    residual: bool = False
    stem_stride: int = 1
    num_classes: int = NUM_CLASSES

    @classmethod
    def from_params(cls, model: ModelParams, image_size: int) -> UNetConfig:
        return cls(image_size=image_size, **model.model_dump())


# The reference's own configuration, kept reproducible as one point of the search space.
REFERENCE_CONFIG = UNetConfig(
    image_size=512,
    base_filters=16,
    base_kernels=9,
    num_layers=8,
    dropout_rate=0.05,
    dilation=1,
    batch_norm=False,
    input_normalize=False,
    residual=False,
)


def level_kernel(base_kernel: int, level: int) -> int:
    """Kernel side at encoder/decoder level `level`: shrinks by 2 per level, never below 3."""
    return max(3, base_kernel - 2 * level)


def _conv(filters: int, kernel: int, dilation: int, name: str, activation: str | None = "relu"):
    return layers.Conv2D(
        filters,
        kernel,
        padding="same",
        dilation_rate=dilation,
        kernel_initializer="he_normal",
        activation=activation,
        name=name,
    )


def _normalized(config: UNetConfig, level: int) -> bool:
    """BatchNorm at `level` (0 = full resolution)? Full-resolution BN costs the most memory
    traffic per image, so `batch_norm_from_level` 1 keeps it to the coarser levels."""
    return config.batch_norm and level >= config.batch_norm_from_level


def _conv_block(x, filters: int, level: int, config: UNetConfig, name: str):
    """The reference block: Conv(relu) -> [BN] -> Dropout -> Conv(relu) -> [BN].

    Dropout rate is dropout_rate * level, the kernel `level_kernel(base_kernels, level)`.

    With `residual`, the second conv's activation moves after the sum with a 1x1-projected
    shortcut of the block input (a pre-sum ReLU would make the block's output non-negative
    on one branch only).
    """
    kernel = level_kernel(config.base_kernels, level)
    normalize = _normalized(config, level)
    shortcut = x
    x = _conv(filters, kernel, config.dilation, f"{name}_conv1")(x)
    if normalize:
        x = layers.BatchNormalization(name=f"{name}_bn1")(x)
    x = layers.Dropout(config.dropout_rate * level, name=f"{name}_dropout")(x)
    if not config.residual:
        x = _conv(filters, kernel, config.dilation, f"{name}_conv2")(x)
        if normalize:
            x = layers.BatchNormalization(name=f"{name}_bn2")(x)
        return x
    x = _conv(filters, kernel, config.dilation, f"{name}_conv2", activation=None)(x)
    if normalize:
        x = layers.BatchNormalization(name=f"{name}_bn2")(x)
    shortcut = _conv(filters, 1, 1, f"{name}_shortcut", activation=None)(shortcut)
    if normalize:
        shortcut = layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _resampling(kind: type, config: UNetConfig, name: str):
    """Stride-s s x s (transposed) conv: the UNet then runs at 1/s of the input resolution."""
    return kind(
        config.base_filters,
        config.stem_stride,
        strides=config.stem_stride,
        kernel_initializer="he_normal",
        activation="relu",
        name=name,
    )


def build_unet(config: UNetConfig, name: str = "flexunet") -> keras.Model:
    """The FlexUNet for `config`: input (S, S, 3) float 0..255, output (S, S, classes) softmax.

    Encoder level i has base_filters * 2**i filters and kernel `level_kernel(k, i)`, dropout
    rate dropout_rate * i; a 2x2 max-pool follows every level but the last (the bridge). The
    decoder mirrors it with 2x2 stride-2 transposed convs and skip concatenation.
    """
    downsampling = config.stem_stride * 2 ** (config.num_layers - 1)
    if config.image_size % downsampling:
        raise ValueError(
            f"image_size {config.image_size} must be divisible by stem_stride * "
            f"2**(num_layers-1) = {downsampling} for {config.num_layers} levels"
        )
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    x = inputs
    if config.input_normalize:
        x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    if config.stem_stride > 1:
        x = _resampling(layers.Conv2D, config, "stem")(x)
        if _normalized(config, 0):
            x = layers.BatchNormalization(name="stem_bn")(x)
    skips = []
    for level in range(config.num_layers):
        x = _conv_block(x, config.base_filters * 2**level, level, config, f"encoder{level}")
        if level < config.num_layers - 1:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"encoder{level}_pool")(x)
    for level in range(config.num_layers - 2, -1, -1):
        filters = config.base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level}")(x)
        x = layers.Concatenate(name=f"decoder{level}_concat")([x, skips[level]])
        x = _conv_block(x, filters, level, config, f"decoder{level}")
    if config.stem_stride > 1:
        x = _resampling(layers.Conv2DTranspose, config, "unstem")(x)
        if _normalized(config, 0):
            x = layers.BatchNormalization(name="unstem_bn")(x)
    # float32 head: under the mixed_float16 policy the softmax must not run in half precision.
    outputs = layers.Conv2D(
        config.num_classes, 1, activation="softmax", dtype="float32", name="head"
    )(x)
    return keras.Model(inputs, outputs, name=name)


def build_model(params: Params) -> keras.Model:
    """The FlexUNet that params.yaml's `model` section and `image_size` describe."""
    return build_unet(UNetConfig.from_params(params.model, params.image_size))
