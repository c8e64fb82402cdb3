"""Losses, chosen by name in params (`train.loss`), written with `keras.ops` only.

Tensors are one-hot targets `y_true` and softmax outputs `y_pred`, both (N, H, W, C) with class
0 = background and the lesion classes of `rgb_map` after it (pipeline/classes.py).

Region losses (`dice`, `tversky`) pool their sums over the whole batch and the foreground
classes ("batch Dice", as nnU-Net does for 2D): a slice without lesions then adds no 0/0 term,
and a batch almost always holds both lesion classes.

The metrics `fit` reports are in pipeline/model/train_metrics.py.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops

Loss = Callable[[object, object], object]

SMOOTH = 1.0  # additive smoothing of region losses: keeps gradients finite on empty classes
FOCAL_GAMMA = 2.0  # focusing exponent of the focal loss (Lin et al. 2017)
TVERSKY_ALPHA = 0.3  # weight of false positives in the Tversky index
TVERSKY_BETA = 0.7  # weight of false negatives: missing lesion pixels costs more
LOSS_NAMES = ("categorical_crossentropy", "dice", "dice_ce", "focal", "tversky")


def _clipped(y_pred):
    epsilon = keras.config.epsilon()
    return ops.clip(ops.cast(y_pred, "float32"), epsilon, 1.0 - epsilon)


def _foreground_sums(y_true, y_pred):
    """Per-class soft true positives, false positives and false negatives over the batch."""
    y_true = ops.cast(y_true, "float32")[..., 1:]
    y_pred = ops.cast(y_pred, "float32")[..., 1:]
    axes = (0, 1, 2)
    # FP and FN from the totals: two fewer passes over the full-resolution maps.
    true_positive = ops.sum(y_true * y_pred, axis=axes)
    false_positive = ops.sum(y_pred, axis=axes) - true_positive
    false_negative = ops.sum(y_true, axis=axes) - true_positive
    return true_positive, false_positive, false_negative


@keras.saving.register_keras_serializable(package="stroke")
def categorical_crossentropy(y_true, y_pred):
    """Mean over pixels of -sum_c t_c log p_c."""
    log_probability = ops.log(_clipped(y_pred))
    return ops.mean(-ops.sum(ops.cast(y_true, "float32") * log_probability, axis=-1))


@keras.saving.register_keras_serializable(package="stroke")
def dice(y_true, y_pred):
    """1 - mean over foreground classes of the batch-pooled soft Dice (smoothed)."""
    true_positive, false_positive, false_negative = _foreground_sums(y_true, y_pred)
    score = (2.0 * true_positive + SMOOTH) / (
        2.0 * true_positive + false_positive + false_negative + SMOOTH
    )
    return 1.0 - ops.mean(score)


@keras.saving.register_keras_serializable(package="stroke")
def dice_ce(y_true, y_pred):
    """Soft Dice + cross-entropy: Dice fights the class imbalance, CE gives smooth gradients."""
    return dice(y_true, y_pred) + categorical_crossentropy(y_true, y_pred)


@keras.saving.register_keras_serializable(package="stroke")
def focal(y_true, y_pred):
    """Focal loss: cross-entropy down-weighted by (1 - p)^gamma on easy pixels."""
    probability = _clipped(y_pred)
    weight = ops.power(1.0 - probability, FOCAL_GAMMA)
    per_pixel = -ops.sum(ops.cast(y_true, "float32") * weight * ops.log(probability), axis=-1)
    return ops.mean(per_pixel)


@keras.saving.register_keras_serializable(package="stroke")
def tversky(y_true, y_pred):
    """1 - mean over foreground classes of the Tversky index (alpha FP, beta FN)."""
    true_positive, false_positive, false_negative = _foreground_sums(y_true, y_pred)
    index = (true_positive + SMOOTH) / (
        true_positive + TVERSKY_ALPHA * false_positive + TVERSKY_BETA * false_negative + SMOOTH
    )
    return 1.0 - ops.mean(index)


_LOSSES: dict[str, Loss] = {
    "categorical_crossentropy": categorical_crossentropy,
    "dice": dice,
    "dice_ce": dice_ce,
    "focal": focal,
    "tversky": tversky,
}


def make_loss(name: str) -> Loss:
    """The loss called `name` (one of LOSS_NAMES); ValueError names the allowed ones."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSS_NAMES)}")
    return _LOSSES[name]
