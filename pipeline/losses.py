"""Losses (chosen by name in params) and lesion metrics, written with `keras.ops` only.

Tensors are one-hot targets `y_true` and softmax outputs `y_pred`, both (N, H, W, C) with class
0 = background, 1 = Hemorrhagic, 2 = Ischemic.

Region losses (`dice`, `tversky`) pool their sums over the whole batch and the foreground
classes ("batch Dice", as nnU-Net does for 2D): a slice without lesions then adds no 0/0 term,
and a batch almost always holds both lesion classes.

Metric conventions (MONAI/nnU-Net style, background excluded):
- `dice_hemorrhagic`, `dice_ischemic`: hard Dice of the argmax prediction, pooled over every
  pixel the metric has seen since its last reset (in `fit`, one epoch): 2|P∩T| / (|P| + |T|).
- A class absent from both truth and prediction over the whole epoch scores 1.0 (nothing to
  find, nothing falsely found). Pooled over an epoch this only happens when a data set lacks
  the class; 1.0 keeps the monitored value finite, where NaN would silently disable
  ReduceLROnPlateau, EarlyStopping and best-checkpoint selection (NaN compares false).
- `dice_mean`: the mean of the two foreground Dice values.
- `dice_coef_multiclass`: the reference's metric, for comparison only (background included,
  so it equals soft pixel accuracy; a missed lesion still scores about 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
from keras import ops

Loss = Callable[[object, object], object]

SMOOTH = 1.0  # additive smoothing of region losses: keeps gradients finite on empty classes
FOCAL_GAMMA = 2.0  # focusing exponent of the focal loss (Lin et al. 2017)
TVERSKY_ALPHA = 0.3  # weight of false positives in the Tversky index
TVERSKY_BETA = 0.7  # weight of false negatives: missing lesion pixels costs more
REFERENCE_SMOOTH = 1e-6  # the reference's dice_coef_multiclass smoothing term
LOSS_NAMES = ("categorical_crossentropy", "dice", "dice_ce", "focal", "tversky")
FOREGROUND_CLASSES = {"hemorrhagic": 1, "ischemic": 2}


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


@keras.saving.register_keras_serializable(package="stroke")
def dice_coef_multiclass(y_true, y_pred):
    """The reference's metric per slice: (2 sum t*p + 1e-6) / (sum t + sum p + 1e-6) over H,W,C."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    axes = (1, 2, 3)
    return (2.0 * ops.sum(y_true * y_pred, axis=axes) + REFERENCE_SMOOTH) / (
        ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes) + REFERENCE_SMOOTH
    )


@keras.saving.register_keras_serializable(package="stroke")
class ForegroundDice(keras.metrics.Metric):
    """Hard Dice of argmax predictions for `class_indices`, pooled over all updates.

    With several classes the result is the mean of their Dice values. A class absent from
    truth and prediction alike scores 1.0 (see the module docstring).
    """

    def __init__(
        self, class_indices: Sequence[int], num_classes: int = 3, name: str = "dice", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        self.class_indices = tuple(int(index) for index in class_indices)
        self.num_classes = num_classes
        shape = (len(self.class_indices),)
        self.intersection = self.add_variable(shape=shape, initializer="zeros", name="inter")
        self.truth = self.add_variable(shape=shape, initializer="zeros", name="truth")
        self.predicted = self.add_variable(shape=shape, initializer="zeros", name="predicted")

    def update_state(self, y_true, y_pred, sample_weight=None):
        classes = list(self.class_indices)
        truth = ops.take(ops.one_hot(ops.argmax(y_true, axis=-1), self.num_classes), classes, -1)
        predicted = ops.take(
            ops.one_hot(ops.argmax(y_pred, axis=-1), self.num_classes), classes, -1
        )
        axes = (0, 1, 2)
        self.intersection.assign_add(ops.sum(truth * predicted, axis=axes))
        self.truth.assign_add(ops.sum(truth, axis=axes))
        self.predicted.assign_add(ops.sum(predicted, axis=axes))

    def result(self):
        total = self.truth + self.predicted
        per_class = ops.where(
            total > 0, 2.0 * self.intersection / ops.maximum(total, 1.0), ops.ones_like(total)
        )
        return ops.mean(per_class)

    def reset_state(self):
        for variable in (self.intersection, self.truth, self.predicted):
            variable.assign(ops.zeros_like(variable))

    def get_config(self):
        return {
            **super().get_config(),
            "class_indices": list(self.class_indices),
            "num_classes": self.num_classes,
        }


def make_metrics(num_classes: int = 3) -> list[keras.metrics.Metric]:
    """Per-class and mean foreground Dice, plus the reference's metric for comparison."""
    per_class = [
        ForegroundDice([index], num_classes, name=f"dice_{name}")
        for name, index in FOREGROUND_CLASSES.items()
    ]
    mean = ForegroundDice(list(FOREGROUND_CLASSES.values()), num_classes, name="dice_mean")
    reference = keras.metrics.MeanMetricWrapper(dice_coef_multiclass, name="dice_coef_multiclass")
    return [*per_class, mean, reference]
