"""FlexUNet: the reference's configurable UNet, rebuilt as a Keras 3 functional model.

With the reference's knobs (512x512x3, base_filters 16, base_kernels 9, num_layers 8, dropout
0.05, dilation 1, no normalisation layers, no input normalisation, no working-size cap) this
builds the reference's exact layer structure and parameter count (124,996,883). The default in
params.yaml is a smaller, faster configuration chosen by measurement (see docs/stages.md#train and
benchmarks/train_speed.py).

Only `keras` layers and `keras.ops` are used here, so the model runs on any Keras backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import keras
import numpy as np
from keras import layers

from pipeline.params import stem_stride

if TYPE_CHECKING:  # type names only
    from pipeline.params import ModelParams, Params


@dataclass(frozen=True)
class UNetConfig:
    """Everything the builder needs; `from_params` maps params.yaml onto it."""

    image_size: int
    num_classes: int  # softmax outputs: one per rgb_map key (pipeline/classes.py)
    base_filters: int = 8
    base_kernels: int = 3
    num_layers: int = 5
    dropout_rate: float = 0.05
    dilation: int = 1
    normalization: str = "batch"  # batch | instance | none (NORMALIZATION_LAYER_TAGS)
    input_normalize: bool = True
    residual: bool = False
    max_working_size: int = 256
    head_foreground_prior: float = 0.0

    @classmethod
    def from_params(cls, model: ModelParams, image_size: int, num_classes: int) -> UNetConfig:
        return cls(image_size=image_size, num_classes=num_classes, **model.model_dump())

    @property
    def stem_stride(self) -> int:
        """Smallest power of two that brings image_size down to max_working_size or less
        (one rule, in pipeline/params.py, so params.yaml is checked against it at load time)."""
        return stem_stride(self.image_size, self.max_working_size)


# The reference's own configuration, kept reproducible as one point of the search space.
REFERENCE_CONFIG = UNetConfig(
    image_size=512,
    num_classes=3,  # background, Hemorrhagic, Ischemic
    base_filters=16,
    base_kernels=9,
    num_layers=8,
    dropout_rate=0.05,
    dilation=1,
    normalization="none",
    input_normalize=False,
    residual=False,
    max_working_size=512,
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


# Layer names end in the kind's tag: encoder0_bn1 (batch) or encoder0_in1 (instance).
NORMALIZATION_LAYER_TAGS = {"batch": "bn", "instance": "in"}


def _normalized(x, config: UNetConfig, name: str, index: str = ""):
    """`x` through the configured normalisation layer, named `{name}_{tag}{index}`.

    Instance normalisation is a GroupNormalization with one group per channel: each image's
    feature maps are standardised by their own mean and variance, so a prediction does not
    depend on the rest of the batch, nor on running statistics learned from the training images.
    """
    if config.normalization == "none":
        return x
    layer_name = f"{name}_{NORMALIZATION_LAYER_TAGS[config.normalization]}{index}"
    if config.normalization == "instance":
        return layers.GroupNormalization(groups=-1, name=layer_name)(x)
    return layers.BatchNormalization(name=layer_name)(x)


def _conv_block(x, filters: int, level: int, config: UNetConfig, name: str):
    """The reference block: Conv(relu) -> [norm] -> Dropout -> Conv(relu) -> [norm].

    Level `level` uses kernel `level_kernel(base_kernels, level)` and dropout
    dropout_rate * level. With `residual`, the second conv's activation moves after the sum
    with a 1x1-projected shortcut of the block input (a pre-sum ReLU would make the block's
    output non-negative on one branch only).
    """
    kernel = level_kernel(config.base_kernels, level)
    shortcut = x
    x = _conv(filters, kernel, config.dilation, f"{name}_conv1")(x)
    x = _normalized(x, config, name, "1")
    x = layers.Dropout(config.dropout_rate * level, name=f"{name}_dropout")(x)
    if not config.residual:
        x = _conv(filters, kernel, config.dilation, f"{name}_conv2")(x)
        return _normalized(x, config, name, "2")
    x = _conv(filters, kernel, config.dilation, f"{name}_conv2", activation=None)(x)
    x = _normalized(x, config, name, "2")
    shortcut = _conv(filters, 1, 1, f"{name}_shortcut", activation=None)(shortcut)
    shortcut = _normalized(shortcut, config, f"{name}_shortcut")
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _unet(x, config: UNetConfig):
    """Encoder level i: base_filters * 2**i filters, 2x2 max-pool after every level but the
    last (the bridge); the decoder mirrors it with 2x2 stride-2 transposed convs and skip
    concatenation."""
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
    return x


def build_unet(config: UNetConfig, name: str = "flexunet") -> keras.Model:
    """The FlexUNet for `config`: input (S, S, 3) float 0..255, output (S, S, classes) softmax.

    Inputs larger than `max_working_size` enter the UNet through a strided stem conv (stride
    `config.stem_stride`) and leave it through a transposed conv; one full-resolution conv over
    those features and the input then restores the edge detail the stem skipped. Most of a
    small UNet's time at 512 px goes to memory-bound passes over full-resolution maps, so the
    cap is what makes large inputs cheap; inputs at or below the cap see the plain UNet.
    """
    stride = config.stem_stride
    downsampling = stride * 2 ** (config.num_layers - 1)
    if config.image_size % downsampling:
        raise ValueError(
            f"image_size {config.image_size} must be divisible by {downsampling} "
            f"(stem stride {stride} x 2**(num_layers-1) for {config.num_layers} levels)"
        )
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    x = inputs
    if config.input_normalize:
        x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    full_resolution = x
    if stride > 1:
        x = layers.Conv2D(
            config.base_filters,
            stride,
            strides=stride,
            kernel_initializer="he_normal",
            activation="relu",
            name="stem",
        )(x)
        x = _normalized(x, config, "stem")
    x = _unet(x, config)
    if stride > 1:
        x = layers.Conv2DTranspose(
            config.base_filters,
            stride,
            strides=stride,
            kernel_initializer="he_normal",
            activation="relu",
            name="unstem",
        )(x)
        x = _normalized(x, config, "unstem")
        x = layers.Concatenate(name="refine_concat")([x, full_resolution])
        x = _conv(config.base_filters, 3, 1, "refine_conv")(x)
        x = _normalized(x, config, "refine")
    # float32 head: under the mixed_float16 policy the softmax must not run in half precision.
    head = layers.Conv2D(config.num_classes, 1, activation="softmax", dtype="float32", name="head")
    outputs = head(x)
    model = keras.Model(inputs, outputs, name=name)
    if config.head_foreground_prior > 0.0:
        head.bias.assign(head_bias(config.num_classes, config.head_foreground_prior))
    return model


def head_bias(num_classes: int, foreground_prior: float) -> np.ndarray:
    """Softmax bias giving each lesion class `foreground_prior` and the background the rest.

    Lesions cover about 1 % of a slice. From equal odds, the first steps' false positives on
    every pixel drive the lesion logits far negative, where the softmax's gradient vanishes,
    and a small net stays at all-background for several epochs (Lin et al., "Focal loss",
    ICCV 2017, start their classifier at the prior for the same reason)."""
    priors = np.full(num_classes, foreground_prior, np.float64)
    priors[0] = 1.0 - foreground_prior * (num_classes - 1)
    if priors[0] <= 0.0:
        raise ValueError(
            f"head_foreground_prior {foreground_prior} x {num_classes - 1} lesion classes "
            "leaves no probability for the background"
        )
    return np.log(priors).astype(np.float32)


def build_model(params: Params) -> keras.Model:
    """The FlexUNet that params.yaml's `model` section and `image_size` describe, with one
    output per class of `rgb_map`."""
    return build_unet(UNetConfig.from_params(params.model, params.image_size, len(params.palette)))
