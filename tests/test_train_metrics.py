"""The Keras metrics `fit` reports, on small hand-computed cases, edge cases and invariants."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.model.train_metrics import ForegroundDice, dice_coef_multiclass, make_metrics
from tests.conftest import project_params
from tests.test_losses import lesion_case, one_hot, value


def metric_result(metric: keras.metrics.Metric, *batches) -> float:
    metric.reset_state()
    for truth, prediction in batches:
        metric.update_state(truth, prediction)
    return value(metric.result())


def test_foreground_dice_counts_hits_misses_and_false_alarms() -> None:
    truth_labels, predicted_labels = lesion_case()
    batch = (one_hot(truth_labels), one_hot(predicted_labels))
    assert metric_result(ForegroundDice([1], 3, name="h"), batch) == pytest.approx(0.5)
    # Ischemic is absent from truth and prediction: 1.0 by the documented convention.
    assert metric_result(ForegroundDice([2], 3, name="i"), batch) == pytest.approx(1.0)
    assert metric_result(ForegroundDice([1, 2], 3, name="m"), batch) == pytest.approx(0.75)


def test_a_missed_lesion_scores_zero_while_the_reference_metric_stays_near_one() -> None:
    truth_labels = np.zeros((1, 16, 16), np.int64)
    truth_labels[0, 5:7, 5:7] = 2
    truth = one_hot(truth_labels)
    all_background = one_hot(np.zeros_like(truth_labels))
    assert metric_result(ForegroundDice([2], 3, name="i"), (truth, all_background)) == 0.0
    reference = value(dice_coef_multiclass(truth, all_background)[0])
    assert reference == pytest.approx((2 * 252 + 1e-6) / (256 + 256 + 1e-6))
    assert reference > 0.98


def test_a_false_alarm_on_an_empty_slice_scores_zero() -> None:
    truth = one_hot(np.zeros((1, 4, 4), np.int64))
    prediction_labels = np.zeros((1, 4, 4), np.int64)
    prediction_labels[0, 0, 0] = 1
    assert metric_result(ForegroundDice([1], 3, name="h"), (truth, one_hot(prediction_labels))) == 0


def test_foreground_dice_pools_pixels_over_updates_and_resets() -> None:
    big_truth = np.zeros((1, 4, 4), np.int64)
    big_truth[0, :2, :] = 1  # 8 pixels, predicted perfectly
    small_truth = np.zeros((1, 4, 4), np.int64)
    small_truth[0, 0, 0] = 1  # 1 pixel, missed
    metric = ForegroundDice([1], 3, name="h")
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
    assert metric_result(ForegroundDice([1], 3, name="h"), (truth, soft)) == 1.0


def test_reference_metric_is_per_slice_soft_overlap_with_background() -> None:
    truth = one_hot(np.array([[[0, 1]], [[2, 2]]]))
    prediction = np.array(
        [[[[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]], [[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]]], np.float32
    )
    per_slice = np.asarray(dice_coef_multiclass(truth, prediction))
    np.testing.assert_allclose(per_slice, [(2 * 1.5 + 1e-6) / (2 + 2 + 1e-6), 1.0], rtol=1e-6)


def test_metric_names_match_the_contract() -> None:
    assert [metric.name for metric in make_metrics(project_params().lesion_classes)] == [
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
    metric = ForegroundDice([1, 2], 3, name="m")
    forward = metric_result(metric, (one_hot(truth), one_hot(prediction)))
    backward = metric_result(metric, (one_hot(prediction), one_hot(truth)))
    assert 0.0 <= forward <= 1.0
    assert forward == pytest.approx(backward)
    assert metric_result(metric, (one_hot(truth), one_hot(truth))) == 1.0
    if forward == pytest.approx(1.0):
        assert np.array_equal(truth, prediction)
