"""Losses on small hand-computed cases, edge cases and invariants."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.model.losses import LOSS_NAMES, SMOOTH, TVERSKY_ALPHA, TVERSKY_BETA, make_loss


def one_hot(labels: np.ndarray, classes: int = 3) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]


def value(tensor) -> float:
    return float(keras.ops.convert_to_numpy(tensor))


def lesion_case() -> tuple[np.ndarray, np.ndarray]:
    """A 1x4x4 slice with a 4-pixel hemorrhage; the prediction hits 2 of them, adds 2 more."""
    truth = np.zeros((1, 4, 4), np.int64)
    truth[0, 0, :4] = 1
    prediction = np.zeros((1, 4, 4), np.int64)
    prediction[0, 0, 2:4] = 1
    prediction[0, 1, 0:2] = 1
    return truth, prediction


def test_categorical_crossentropy_of_one_pixel() -> None:
    truth = one_hot(np.array([[[0]]]))
    prediction = np.array([[[[0.5, 0.25, 0.25]]]], np.float32)
    assert value(make_loss("categorical_crossentropy")(truth, prediction)) == pytest.approx(
        math.log(2), rel=1e-5
    )


def test_focal_loss_down_weights_by_one_minus_p_squared() -> None:
    truth = one_hot(np.array([[[0, 1]]]))
    prediction = np.array([[[[0.5, 0.25, 0.25], [0.1, 0.9, 0.0]]]], np.float32)
    expected = (0.5**2 * math.log(2) + 0.1**2 * -math.log(0.9)) / 2
    assert value(make_loss("focal")(truth, prediction)) == pytest.approx(expected, rel=1e-4)


def test_soft_dice_and_tversky_on_a_hand_computed_batch() -> None:
    truth_labels, predicted_labels = lesion_case()
    truth, prediction = one_hot(truth_labels), one_hot(predicted_labels)
    # Hemorrhagic: TP 2, FP 2, FN 2. Ischemic: empty in both, so (0 + s) / (0 + s) = 1.
    hemorrhagic_dice = (2 * 2 + SMOOTH) / (2 * 2 + 2 + 2 + SMOOTH)
    assert value(make_loss("dice")(truth, prediction)) == pytest.approx(
        1 - (hemorrhagic_dice + 1) / 2, rel=1e-5
    )
    tversky = (2 + SMOOTH) / (2 + TVERSKY_ALPHA * 2 + TVERSKY_BETA * 2 + SMOOTH)
    assert value(make_loss("tversky")(truth, prediction)) == pytest.approx(
        1 - (tversky + 1) / 2, rel=1e-5
    )
    combined = value(make_loss("dice")(truth, prediction)) + value(
        make_loss("categorical_crossentropy")(truth, prediction)
    )
    assert value(make_loss("dice_ce")(truth, prediction)) == pytest.approx(combined, rel=1e-5)


def test_region_losses_are_zero_for_a_perfect_prediction() -> None:
    truth_labels, _ = lesion_case()
    truth = one_hot(truth_labels)
    for name in ("dice", "tversky", "dice_ce"):
        assert value(make_loss(name)(truth, truth)) == pytest.approx(0.0, abs=1e-5)


def test_unknown_loss_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="dice_ce"):
        make_loss("dce")


@settings(max_examples=20, deadline=None)
@given(
    labels=arrays(np.int64, (2, 3, 3), elements=st.integers(0, 2)),
    logits=arrays(np.float32, (2, 3, 3, 3), elements=st.floats(-5, 5, width=32)),
)
def test_every_loss_is_finite_and_non_negative(labels: np.ndarray, logits: np.ndarray) -> None:
    probabilities = np.asarray(keras.ops.softmax(logits, axis=-1))
    for name in LOSS_NAMES:
        loss = value(make_loss(name)(one_hot(labels), probabilities))
        assert math.isfinite(loss) and loss >= -1e-6, name
