"""Losses and lesion metrics on small hand-computed cases, edge cases and invariants."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.losses import (
    LOSS_NAMES,
    SMOOTH,
    TVERSKY_ALPHA,
    TVERSKY_BETA,
    ForegroundDice,
    dice_coef_multiclass,
    make_loss,
    make_metrics,
)


def one_hot(labels: np.ndarray, classes: int = 3) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]


def value(tensor) -> float:
    return float(keras.ops.convert_to_numpy(tensor))


def metric_result(metric: keras.metrics.Metric, *batches) -> float:
    metric.reset_state()
    for truth, prediction in batches:
        metric.update_state(truth, prediction)
    return value(metric.result())


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


def test_foreground_dice_counts_hits_misses_and_false_alarms() -> None:
    truth_labels, predicted_labels = lesion_case()
    batch = (one_hot(truth_labels), one_hot(predicted_labels))
    assert metric_result(ForegroundDice([1], name="h"), batch) == pytest.approx(0.5)
    # Ischemic is absent from truth and prediction: 1.0 by the documented convention.
    assert metric_result(ForegroundDice([2], name="i"), batch) == pytest.approx(1.0)
    assert metric_result(ForegroundDice([1, 2], name="m"), batch) == pytest.approx(0.75)


def test_a_missed_lesion_scores_zero_while_the_reference_metric_stays_near_one() -> None:
    truth_labels = np.zeros((1, 16, 16), np.int64)
    truth_labels[0, 5:7, 5:7] = 2
    truth = one_hot(truth_labels)
    all_background = one_hot(np.zeros_like(truth_labels))
    assert metric_result(ForegroundDice([2], name="i"), (truth, all_background)) == 0.0
    reference = value(dice_coef_multiclass(truth, all_background)[0])
    assert reference == pytest.approx((2 * 252 + 1e-6) / (256 + 256 + 1e-6))
    assert reference > 0.98


def test_a_false_alarm_on_an_empty_slice_scores_zero() -> None:
    truth = one_hot(np.zeros((1, 4, 4), np.int64))
    prediction_labels = np.zeros((1, 4, 4), np.int64)
    prediction_labels[0, 0, 0] = 1
    assert metric_result(ForegroundDice([1], name="h"), (truth, one_hot(prediction_labels))) == 0


def test_foreground_dice_pools_pixels_over_updates_and_resets() -> None:
    big_truth = np.zeros((1, 4, 4), np.int64)
    big_truth[0, :2, :] = 1  # 8 pixels, predicted perfectly
    small_truth = np.zeros((1, 4, 4), np.int64)
    small_truth[0, 0, 0] = 1  # 1 pixel, missed
    metric = ForegroundDice([1], name="h")
    pooled = metric_result(
        metric,
        (one_hot(big_truth), one_hot(big_truth)),
        (one_hot(small_truth), one_hot(np.zeros_like(small_truth))),
    )
    assert pooled == pytest.approx(2 * 8 / (9 + 8))  # not the mean of 1.0 and 0.0
    metric.reset_state()
    assert value(metric.result()) == 1.0


def test_foreground_dice_uses_the_argmax_of_soft_predictions() -> None:
    truth = one_hot(np.array([[[1, 0]]]))
    soft = np.array([[[[0.3, 0.4, 0.3], [0.6, 0.3, 0.1]]]], np.float32)
    assert metric_result(ForegroundDice([1], name="h"), (truth, soft)) == 1.0


def test_reference_metric_is_per_slice_soft_overlap_with_background() -> None:
    truth = one_hot(np.array([[[0, 1]], [[2, 2]]]))
    prediction = np.array(
        [[[[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]], [[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]]], np.float32
    )
    per_slice = np.asarray(dice_coef_multiclass(truth, prediction))
    np.testing.assert_allclose(per_slice, [(2 * 1.5 + 1e-6) / (2 + 2 + 1e-6), 1.0], rtol=1e-6)


def test_metric_names_match_the_contract() -> None:
    assert [metric.name for metric in make_metrics()] == [
        "dice_hemorrhagic",
        "dice_ischemic",
        "dice_mean",
        "dice_coef_multiclass",
    ]


@settings(max_examples=25, deadline=None)
@given(
    truth=arrays(np.int64, (2, 4, 4), elements=st.integers(0, 2)),
    prediction=arrays(np.int64, (2, 4, 4), elements=st.integers(0, 2)),
)
def test_foreground_dice_is_a_symmetric_score_in_unit_range(
    truth: np.ndarray, prediction: np.ndarray
) -> None:
    metric = ForegroundDice([1, 2], name="m")
    forward = metric_result(metric, (one_hot(truth), one_hot(prediction)))
    backward = metric_result(metric, (one_hot(prediction), one_hot(truth)))
    assert 0.0 <= forward <= 1.0
    assert forward == pytest.approx(backward)
    assert metric_result(metric, (one_hot(truth), one_hot(truth))) == 1.0
    if forward == pytest.approx(1.0):
        assert np.array_equal(truth, prediction)
