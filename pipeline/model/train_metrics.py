"""The metrics `fit` reports per epoch (the Keras side), written with `keras.ops` only.

Tensors are one-hot targets `y_true` and softmax outputs `y_pred`, both (N, H, W, C) with class
0 = background and the lesion classes of `rgb_map` after it (pipeline/classes.py).

Metric conventions (MONAI/nnU-Net style, background excluded):
- `dice_<label>` per lesion class (`dice_hemorrhagic`, `dice_ischemic`): hard Dice of the
  argmax prediction, pooled over every pixel the metric has seen since its last reset (in
  `fit`, one epoch): 2|P∩T| / (|P| + |T|).
- A class absent from both truth and prediction over the whole epoch scores 1.0 (nothing to
  find, nothing falsely found). Pooled over an epoch this only happens when a data set lacks
  the class; 1.0 keeps the monitored value finite, where NaN would silently disable
  ReduceLROnPlateau, EarlyStopping and best-checkpoint selection (NaN compares false).
- `dice_mean`: the mean of the foreground Dice values.
- `dice_coef_multiclass`: the reference's metric, for comparison only (background included,
  so it equals soft pixel accuracy; a missed lesion still scores about 1).

The numpy oracles of the evaluation side are in pipeline/evaluate/pooled.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from pipeline.classes import LesionClass

REFERENCE_SMOOTH = 1e-6  # the reference's dice_coef_multiclass smoothing term


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
        self, class_indices: Sequence[int], num_classes: int, name: str = "dice", **kwargs
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


def make_metrics(lesion_classes: Sequence[LesionClass]) -> list[keras.metrics.Metric]:
    """Per-class and mean foreground Dice, plus the reference's metric for comparison."""
    num_classes = 1 + len(lesion_classes)
    per_class = [
        ForegroundDice([lesion.index], num_classes, name=f"dice_{lesion.label}")
        for lesion in lesion_classes
    ]
    indices = [lesion.index for lesion in lesion_classes]
    mean = ForegroundDice(indices, num_classes, name="dice_mean")
    reference = keras.metrics.MeanMetricWrapper(dice_coef_multiclass, name="dice_coef_multiclass")
    return [*per_class, mean, reference]
