"""Losses, chosen by name in params (`train.loss`), written with `keras.ops` only.

Tensors are one-hot targets `y_true` and softmax outputs `y_pred`, both (N, H, W, C) with class
0 = background and the lesion classes of `rgb_map` after it (pipeline/classes.py).

The cross-entropy of `categorical_crossentropy`, `dice_ce` and `focal` may weigh each class's
pixels (`train.cross_entropy_class_weights`, one weight per class in class-index order): a faint
class that covers a few hundredths of the pixels otherwise pulls on the shared features with
that share of the cross-entropy's gradient, and can stay at all-background while the others
learn (docs/phantom.md, "Choosing the defaults"). All weights 1 is the plain loss, to the bit.

Region losses (`dice`, `tversky`) pool their sums over the whole batch and the foreground
classes ("batch Dice", as nnU-Net does for 2D): a slice without lesions then adds no 0/0 term,
and a batch almost always holds both lesion classes.

The metrics `fit` reports are in pipeline/model/train_metrics.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import keras
from keras import ops

Loss = Callable[[object, object], object]

SMOOTH = 1.0  # additive smoothing of region losses: keeps gradients finite on empty classes
FOCAL_GAMMA = 2.0  # focusing exponent of the focal loss (Lin et al. 2017)
TVERSKY_ALPHA = 0.3  # weight of false positives in the Tversky index
TVERSKY_BETA = 0.7  # weight of false negatives: missing lesion pixels costs more
LOSS_NAMES = ("categorical_crossentropy", "dice", "dice_ce", "focal", "tversky")
# The losses with a cross-entropy term, the only ones class weights change.
CROSS_ENTROPY_LOSS_NAMES = ("categorical_crossentropy", "dice_ce", "focal")


def _clipped(y_pred):
    epsilon = keras.config.epsilon()
    return ops.clip(ops.cast(y_pred, "float32"), epsilon, 1.0 - epsilon)


def _weighted_target(y_true, class_weights: Sequence[float] | None):
    """The one-hot target with each class's pixels scaled by its weight (1 is exact: 0 or 1
    times 1.0, so unweighted numbers do not move)."""
    target = ops.cast(y_true, "float32")
    if class_weights is None:
        return target
    return target * ops.convert_to_tensor(class_weights, "float32")


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
def categorical_crossentropy(y_true, y_pred, class_weights: Sequence[float] | None = None):
    """Mean over pixels of -sum_c w_c t_c log p_c (w_c = 1 without `class_weights`)."""
    log_probability = ops.log(_clipped(y_pred))
    target = _weighted_target(y_true, class_weights)
    return ops.mean(-ops.sum(target * log_probability, axis=-1))


@keras.saving.register_keras_serializable(package="stroke")
def dice(y_true, y_pred):
    """1 - mean over foreground classes of the batch-pooled soft Dice (smoothed)."""
    true_positive, false_positive, false_negative = _foreground_sums(y_true, y_pred)
    score = (2.0 * true_positive + SMOOTH) / (
        2.0 * true_positive + false_positive + false_negative + SMOOTH
    )
    return 1.0 - ops.mean(score)


@keras.saving.register_keras_serializable(package="stroke")
def dice_ce(y_true, y_pred, class_weights: Sequence[float] | None = None):
    """Soft Dice + cross-entropy: Dice fights the class imbalance, CE gives smooth gradients."""
    return dice(y_true, y_pred) + categorical_crossentropy(y_true, y_pred, class_weights)


@keras.saving.register_keras_serializable(package="stroke")
def focal(y_true, y_pred, class_weights: Sequence[float] | None = None):
    """Focal loss: cross-entropy down-weighted by (1 - p)^gamma on easy pixels."""
    probability = _clipped(y_pred)
    weight = ops.power(1.0 - probability, FOCAL_GAMMA)
    target = _weighted_target(y_true, class_weights)
    per_pixel = -ops.sum(target * weight * ops.log(probability), axis=-1)
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


def _named(name: str) -> Loss:
    """The function of loss `name`; ValueError names the allowed ones."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSS_NAMES)}")
    return _LOSSES[name]


def make_loss(name: str, class_weights: Sequence[float] | None = None) -> Loss:
    """The loss called `name` (one of LOSS_NAMES), its cross-entropy weighted by
    `class_weights` when given (a `ClassWeightedLoss`, which a saved model records);
    ValueError names the allowed losses, or a region loss given weights other than 1."""
    if class_weights is None:
        return _named(name)
    return ClassWeightedLoss(name, class_weights)


def weighted_function(name: str, class_weights: Sequence[float] | None) -> Loss:
    """The function of loss `name` with its class weights bound (None: unweighted); ValueError
    for an unknown name, and for weights other than 1 on a loss without a cross-entropy term,
    which would ignore them."""
    function = _named(name)
    if name in CROSS_ENTROPY_LOSS_NAMES:
        return functools.partial(function, class_weights=class_weights)
    if class_weights is not None and any(weight != 1.0 for weight in class_weights):
        raise ValueError(
            f"loss {name!r} has no cross-entropy term for class weights {list(class_weights)} "
            f"to weigh; use one of {', '.join(CROSS_ENTROPY_LOSS_NAMES)} or weights of 1"
        )
    return function


@keras.saving.register_keras_serializable(package="stroke")
class ClassWeightedLoss(keras.losses.Loss):
    """A loss of LOSS_NAMES by name with its cross-entropy's class weights: a registered Keras
    loss, so a saved model's compile config records both and loads again. It returns the
    function's one number per batch, which Keras's reduction leaves as it is (the training test
    in tests/test_losses.py: the same weights as the plain function)."""

    def __init__(
        self,
        loss: str = "dice_ce",
        class_weights: Sequence[float] | None = None,
        name: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(name=name or loss, **kwargs)
        self.loss = loss
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.function = weighted_function(loss, self.class_weights)

    def call(self, y_true, y_pred):
        return self.function(y_true, y_pred)

    def get_config(self) -> dict:
        return {**super().get_config(), "loss": self.loss, "class_weights": self.class_weights}
