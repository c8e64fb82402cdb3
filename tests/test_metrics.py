"""Lesion metrics of the slice-pooled figures: hand-computed cases, empty-mask rules, and
agreement with independent implementations (medpy for Dice and IoU; brute force written here for
HD95, NSD and borders).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from medpy.metric import binary as medpy_binary
from scipy import ndimage
from scipy.spatial.distance import cdist

from pipeline.classes import class_labels
from pipeline.evaluate import measures
from pipeline.evaluate.measures import match_lesions, surface_border
from pipeline.evaluate.pooled import (
    SegmentationEvaluation,
    confusion_matrix,
    crossentropy_sum,
    dice_coef_multiclass,
)
from tests.conftest import project_params

LABELS = class_labels(project_params().rgb_map)
REQUIRED_KEYS = (
    "pooled_dice_hemorrhagic",
    "pooled_dice_ischemic",
    "pooled_dice_mean",
    "pooled_iou_hemorrhagic",
    "pooled_iou_ischemic",
    "pooled_slice_hd95_mm_hemorrhagic",
    "pooled_slice_hd95_mm_ischemic",
    "pooled_nsd_hemorrhagic",
    "pooled_nsd_ischemic",
    "pooled_slice_lesion_f1_hemorrhagic",
    "pooled_slice_lesion_f1_ischemic",
    "dice_coef_multiclass",
    "categorical_crossentropy",
)


def mask(shape: tuple[int, int], *pixels: tuple[int, int]) -> np.ndarray:
    array = np.zeros(shape, dtype=bool)
    for row, column in pixels:
        array[row, column] = True
    return array


def evaluated(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    pixel_spacing_mm: float = 1.0,
    tolerance_mm: float = 2.0,
) -> SegmentationEvaluation:
    """(truth, prediction) masks of class 1, one slice each, through `evaluate`'s own path."""
    evaluation = SegmentationEvaluation(tolerance_mm=tolerance_mm, labels=LABELS)
    for number, (truth, prediction) in enumerate(pairs):
        labels = np.where(prediction, 1, 0).astype(np.uint8)
        softmax = one_hot_softmax(labels)
        evaluation.add(str(number), truth.astype(np.uint8), softmax, pixel_spacing_mm)
    return evaluation


def one_slice(truth: np.ndarray, prediction: np.ndarray, tolerance_px: float = 2.0):
    """Class 1 of one slice (1 mm pixels, so mm = px): its SliceClassScores and the pooled
    IoU, which over one slice is the slice's."""
    evaluation = evaluated([(truth, prediction)], tolerance_mm=tolerance_px)
    scores = evaluation.slices[0].classes[LABELS[1]]
    return scores, evaluation.metrics()[f"pooled_iou_{LABELS[1]}"]


def dice(truth: np.ndarray, prediction: np.ndarray) -> float | None:
    return measures.dice(measures.overlap_counts(truth, prediction))


def iou(truth: np.ndarray, prediction: np.ndarray) -> float | None:
    return one_slice(truth, prediction)[1]


def hd95(truth: np.ndarray, prediction: np.ndarray) -> float | None:
    return one_slice(truth, prediction)[0].hd95


def normalized_surface_dice(
    truth: np.ndarray, prediction: np.ndarray, tolerance_px: float
) -> float | None:
    return one_slice(truth, prediction, tolerance_px)[0].nsd


# ---- hand-computed cases -------------------------------------------------------------------


def test_dice_and_iou_empty_rules():
    empty = np.zeros((6, 6), dtype=bool)
    lesion = mask((6, 6), (2, 2))
    assert dice(empty, empty) is None and iou(empty, empty) is None
    assert dice(empty, lesion) == 0.0 and iou(empty, lesion) == 0.0
    assert dice(lesion, empty) == 0.0 and iou(lesion, empty) == 0.0
    assert dice(lesion, lesion) == 1.0 and iou(lesion, lesion) == 1.0


def test_dice_and_iou_partial_overlap():
    truth = np.zeros((6, 6), dtype=bool)
    truth[1:3, 1:3] = True  # 4 px
    prediction = mask((6, 6), (1, 1), (1, 2), (4, 4))  # 2 inside, 1 outside
    assert dice(truth, prediction) == pytest.approx(2 * 2 / (4 + 3))
    assert iou(truth, prediction) == pytest.approx(2 / 5)


def test_surface_metrics_undefined_when_a_mask_is_empty():
    empty = np.zeros((8, 8), dtype=bool)
    lesion = mask((8, 8), (3, 3))
    for truth, prediction in ((empty, lesion), (lesion, empty), (empty, empty)):
        assert hd95(truth, prediction) is None
        assert normalized_surface_dice(truth, prediction, 2.0) is None


def test_one_pixel_lesions():
    truth = mask((10, 10), (5, 5))
    prediction = mask((10, 10), (5, 8))
    assert hd95(truth, prediction) == pytest.approx(3.0)
    assert normalized_surface_dice(truth, prediction, 2.0) == 0.0
    assert normalized_surface_dice(truth, prediction, 3.0) == 1.0
    assert dice(truth, prediction) == 0.0


def test_hd95_and_nsd_with_a_distant_false_positive():
    truth = mask((8, 10), (2, 2))
    prediction = mask((8, 10), (2, 2), (2, 6))
    # distances: prediction->truth {0, 4}, truth->prediction {0}: the larger directed 95th
    # percentile is 0.95 * 4 (medpy's percentile of both pooled, [0, 0, 4], would say 0.9 * 4)
    assert hd95(truth, prediction) == pytest.approx(0.95 * 4.0)
    assert normalized_surface_dice(truth, prediction, 2.0) == pytest.approx(2 / 3)
    assert normalized_surface_dice(truth, prediction, 4.0) == pytest.approx(1.0)


def test_border_excludes_interior_and_includes_image_edge():
    square = np.zeros((5, 5), dtype=bool)
    square[1:4, 1:4] = True
    border = surface_border(square)
    assert border.sum() == 8 and not border[2, 2]
    full = np.ones((3, 3), dtype=bool)
    assert surface_border(full).sum() == 8  # outside the image counts as background


def test_identical_masks_are_perfect():
    square = np.zeros((9, 9), dtype=bool)
    square[2:7, 3:8] = True
    assert hd95(square, square) == 0.0
    assert normalized_surface_dice(square, square, 0.0) == 1.0


def test_two_lesions_one_missed():
    truth = mask((12, 12), (1, 1), (1, 2), (8, 8), (9, 9))  # 2 lesions (diagonal joins, 8-conn.)
    prediction = mask((12, 12), (1, 2), (1, 3))  # overlaps the first only
    counts = match_lesions(truth, prediction)
    assert (counts.truth_lesions, counts.detected_lesions) == (2, 1)
    assert (counts.predicted_lesions, counts.true_predicted_lesions) == (1, 1)
    assert counts.precision == 1.0
    assert counts.recall == 0.5
    assert counts.f1 == pytest.approx(2 / 3)


def test_false_positive_lesion_lowers_precision():
    truth = mask((12, 12), (1, 1), (8, 8))
    prediction = mask((12, 12), (1, 1), (5, 1))
    scores = match_lesions(truth, prediction)
    assert (scores.precision, scores.recall, scores.f1) == (0.5, 0.5, 0.5)


def test_detection_empty_rules():
    empty = np.zeros((6, 6), dtype=bool)
    lesion = mask((6, 6), (2, 2))
    none = match_lesions(empty, empty)
    assert (none.precision, none.recall, none.f1) == (None, None, None)
    all_missed = match_lesions(lesion, empty)
    assert (all_missed.precision, all_missed.recall, all_missed.f1) == (None, 0.0, 0.0)
    all_false = match_lesions(empty, lesion)
    assert (all_false.precision, all_false.recall, all_false.f1) == (0.0, None, 0.0)


def test_confusion_matrix_counts_pairs():
    truth = np.array([[0, 0, 1], [2, 2, 1]], dtype=np.uint8)
    prediction = np.array([[0, 1, 1], [2, 0, 0]], dtype=np.uint8)
    expected = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(truth, prediction, 3), expected)


def test_reference_metric_is_soft_pixel_accuracy():
    truth = np.array([[0, 1]], dtype=np.uint8)
    all_background = np.array([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    assert dice_coef_multiclass(truth, all_background) == pytest.approx(
        (2 * 1 + 1e-6) / (4 + 1e-6), abs=1e-12
    )


def test_crossentropy_matches_keras_definition():
    truth = np.array([[0, 2]], dtype=np.uint8)
    softmax = np.array([[[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]]])
    assert crossentropy_sum(truth, softmax) == pytest.approx(2 * math.log(2))
    certain_wrong = np.array([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]])
    assert crossentropy_sum(truth, certain_wrong) == pytest.approx(-2 * math.log(1e-7))


# ---- against independent implementations ----------------------------------------------------


def random_mask(rng: np.random.Generator, shape: tuple[int, int], smooth: float) -> np.ndarray:
    """Blobby (smooth > 0) or speckled random mask; never empty."""
    noise = rng.random(shape)
    if smooth:
        noise = ndimage.gaussian_filter(noise, smooth)
    threshold = np.quantile(noise, rng.uniform(0.6, 0.95))
    result = noise > threshold
    result[tuple(rng.integers(0, s) for s in shape)] = True
    return result


def brute_border(array: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour outside the mask or outside the image, by explicit loops."""
    height, width = array.shape
    border = np.zeros_like(array)
    for row in range(height):
        for column in range(width):
            if not array[row, column]:
                continue
            for d_row, d_column in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                r, c = row + d_row, column + d_column
                if not (0 <= r < height and 0 <= c < width) or not array[r, c]:
                    border[row, column] = True
    return border


def brute_directed(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    return cdist(np.argwhere(brute_border(source)), np.argwhere(brute_border(target))).min(axis=1)


def brute_hd95(truth: np.ndarray, prediction: np.ndarray) -> float:
    """The larger of the two directed 95th percentiles (linear interpolation), in px."""
    forward, backward = brute_directed(truth, prediction), brute_directed(prediction, truth)
    return max(float(np.percentile(forward, 95)), float(np.percentile(backward, 95)))


def brute_nsd(truth: np.ndarray, prediction: np.ndarray, tolerance: float) -> float:
    forward, backward = brute_directed(truth, prediction), brute_directed(prediction, truth)
    near = (forward <= tolerance).sum() + (backward <= tolerance).sum()
    return near / (forward.size + backward.size)


def brute_dice(truth: np.ndarray, prediction: np.ndarray) -> float:
    truth_set = {tuple(p) for p in np.argwhere(truth)}
    prediction_set = {tuple(p) for p in np.argwhere(prediction)}
    return 2 * len(truth_set & prediction_set) / (len(truth_set) + len(prediction_set))


@pytest.mark.parametrize("seed", range(12))
def test_agrees_with_medpy_and_brute_force_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(12, 40)), int(rng.integers(12, 40)))
    smooth = (0.0, 1.5, 3.0)[seed % 3]
    truth, prediction = random_mask(rng, shape, smooth), random_mask(rng, shape, smooth)
    assert dice(truth, prediction) == pytest.approx(medpy_binary.dc(prediction, truth), abs=1e-6)
    assert dice(truth, prediction) == pytest.approx(brute_dice(truth, prediction), abs=1e-6)
    assert iou(truth, prediction) == pytest.approx(medpy_binary.jc(prediction, truth), abs=1e-6)
    assert hd95(truth, prediction) == pytest.approx(brute_hd95(truth, prediction), abs=1e-6)
    np.testing.assert_array_equal(surface_border(truth), brute_border(truth))
    for tolerance in (0.0, 1.0, 2.0, 3.5):
        assert normalized_surface_dice(truth, prediction, tolerance) == pytest.approx(
            brute_nsd(truth, prediction, tolerance), abs=1e-6
        )


@pytest.mark.parametrize("seed", range(4))
def test_pooled_slice_surface_metrics_are_in_mm(seed):
    """The slice HD95 and NSD of `evaluate`'s pooled figures, with the pixel spacing."""
    rng = np.random.default_rng(seed)
    truth, prediction = random_mask(rng, (24, 24), 1.5), random_mask(rng, (24, 24), 1.5)
    evaluation = evaluated([(truth, prediction)], pixel_spacing_mm=1.8, tolerance_mm=3.6)
    scores = evaluation.slices[0].classes["hemorrhagic"]
    assert scores.hd95 == pytest.approx(1.8 * brute_hd95(truth, prediction), abs=1e-6)
    # 3.6 mm at 1.8 mm pixels is the 2 px tolerance.
    assert scores.nsd == pytest.approx(brute_nsd(truth, prediction, 2.0))


def brute_match_lesions(truth: np.ndarray, prediction: np.ndarray) -> tuple[int, int, int, int]:
    """Components by flood fill over 8 neighbours, written independently of scipy.label."""

    def components(array: np.ndarray) -> list[set[tuple[int, int]]]:
        remaining = {tuple(p) for p in np.argwhere(array)}
        found = []
        while remaining:
            stack = [remaining.pop()]
            component = set(stack)
            while stack:
                row, column = stack.pop()
                for d_row in (-1, 0, 1):
                    for d_column in (-1, 0, 1):
                        neighbour = (row + d_row, column + d_column)
                        if neighbour in remaining:
                            remaining.remove(neighbour)
                            component.add(neighbour)
                            stack.append(neighbour)
            found.append(component)
        return found

    truth_set = {tuple(p) for p in np.argwhere(truth)}
    prediction_set = {tuple(p) for p in np.argwhere(prediction)}
    truth_parts, prediction_parts = components(truth), components(prediction)
    return (
        len(truth_parts),
        sum(bool(part & prediction_set) for part in truth_parts),
        len(prediction_parts),
        sum(bool(part & truth_set) for part in prediction_parts),
    )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), smooth=st.sampled_from([0.0, 1.0, 2.5]))
def test_lesion_counts_match_flood_fill(seed, smooth):
    rng = np.random.default_rng(seed)
    truth, prediction = random_mask(rng, (20, 24), smooth), random_mask(rng, (20, 24), smooth)
    counts = match_lesions(truth, prediction)
    assert (
        counts.truth_lesions,
        counts.detected_lesions,
        counts.predicted_lesions,
        counts.true_predicted_lesions,
    ) == brute_match_lesions(truth, prediction)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), smooth=st.sampled_from([0.0, 1.0, 2.5]))
def test_metric_invariants(seed, smooth):
    rng = np.random.default_rng(seed)
    truth, prediction = random_mask(rng, (16, 16), smooth), random_mask(rng, (16, 16), smooth)
    assert dice(truth, prediction) == pytest.approx(dice(prediction, truth))
    assert hd95(truth, prediction) == pytest.approx(hd95(prediction, truth))
    value = normalized_surface_dice(truth, prediction, 2.0)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(normalized_surface_dice(prediction, truth, 2.0))
    assert 0.0 <= iou(truth, prediction) <= dice(truth, prediction) <= 1.0


# ---- the flat metrics document -------------------------------------------------------------


def one_hot_softmax(labels: np.ndarray) -> np.ndarray:
    softmax = np.full((*labels.shape, 3), 0.05, dtype=np.float32)
    np.put_along_axis(softmax, labels[..., None].astype(np.int64), 0.9, axis=-1)
    return softmax


def test_pooled_hd95_is_the_headline_hd95_per_slice_averaged():
    """2 mm pixels. Slice a: a stray predicted pixel 4 px (8 mm) off a found one: directed 95th
    percentiles 0 (truth to prediction) and 0.95 * 8 of {0, 8}; the larger, 7.6 mm (medpy's one
    percentile of {0, 0, 8} would say 7.2). Slice b: one pixel off by 3 px, 6 mm both ways.
    Slice c holds the class in the truth only: no border to measure to, left out."""
    pairs = [
        (mask((8, 10), (2, 2)), mask((8, 10), (2, 2), (2, 6))),
        (mask((8, 10), (5, 5)), mask((8, 10), (5, 8))),
        (mask((8, 10), (4, 4)), mask((8, 10))),
    ]
    metrics = evaluated(pairs, pixel_spacing_mm=2.0).metrics()
    assert metrics["pooled_slice_hd95_mm_hemorrhagic"] == pytest.approx((7.6 + 6.0) / 2)
    assert metrics["pooled_surface_slice_count_hemorrhagic"] == 2
    by_the_definition = [
        measures.hd95(measures.surface_distances(t, p, (2.0, 2.0))) for t, p in pairs[:2]
    ]
    assert metrics["pooled_slice_hd95_mm_hemorrhagic"] == pytest.approx(np.mean(by_the_definition))


def test_pooled_lesion_f1_is_lesion_match_f1_of_the_summed_counts():
    """Slice a: one truth lesion found by two predicted components. Slice b: a truth lesion
    missed and a false positive. Summed: 2 truth lesions, 1 found (TP), 1 missed (FN); 3
    predicted, 2 on a truth lesion, 1 false (FP): precision 2/3, recall 1/2, and F1 =
    2TP / (2TP + FP + FN) = 2 / 4, as per case (the harmonic mean of 2/3 and 1/2 is 4/7)."""
    pairs = [
        (mask((8, 10), *((1, column) for column in range(1, 6))), mask((8, 10), (1, 1), (1, 5))),
        (mask((8, 10), (6, 6)), mask((8, 10), (2, 9))),
    ]
    metrics = evaluated(pairs).metrics()
    assert metrics["pooled_lesion_precision_hemorrhagic"] == pytest.approx(2 / 3)
    assert metrics["pooled_lesion_recall_hemorrhagic"] == pytest.approx(1 / 2)
    assert metrics["pooled_slice_lesion_f1_hemorrhagic"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    summed = match_lesions(*pairs[0]) + match_lesions(*pairs[1])
    assert metrics["pooled_slice_lesion_f1_hemorrhagic"] == summed.f1


def test_evaluation_metrics_keys_values_and_null_reasons():
    evaluation = SegmentationEvaluation(tolerance_mm=2.0, labels=LABELS)
    truth_a = np.zeros((16, 16), dtype=np.uint8)
    truth_a[2:6, 2:6] = 1
    prediction_a = truth_a.copy()
    truth_b = np.zeros((16, 16), dtype=np.uint8)
    truth_b[8:12, 8:12] = 1
    prediction_b = np.zeros((16, 16), dtype=np.uint8)  # lesion missed
    empty = np.zeros((16, 16), dtype=np.uint8)
    evaluation.add("a", truth_a, one_hot_softmax(prediction_a))
    evaluation.add("b", truth_b, one_hot_softmax(prediction_b))
    evaluation.add("c", empty, one_hot_softmax(empty))
    metrics = evaluation.metrics()

    for key in REQUIRED_KEYS:
        assert key in metrics
        value = metrics[key]
        if value is None:
            assert isinstance(metrics[f"{key}_null_reason"], str)
        else:
            assert math.isfinite(value)
    assert metrics["test_slices"] == 3
    assert metrics["pooled_dice_hemorrhagic"] == pytest.approx(2 * 16 / (32 + 16))
    # a: 1, b: 0, c: not counted
    assert metrics["pooled_slice_dice_hemorrhagic"] == pytest.approx(0.5)
    assert metrics["pooled_slice_dice_count_hemorrhagic"] == 2
    assert metrics["pooled_slice_hd95_mm_hemorrhagic"] == 0.0
    assert metrics["pooled_nsd_hemorrhagic"] == 1.0
    assert metrics["pooled_surface_slice_count_hemorrhagic"] == 1
    assert metrics["pooled_lesion_recall_hemorrhagic"] == 0.5
    assert metrics["pooled_lesion_precision_hemorrhagic"] == 1.0
    assert metrics["pooled_slice_sensitivity_hemorrhagic"] == 0.5
    assert metrics["pooled_slice_specificity_hemorrhagic"] == 1.0
    assert metrics["pooled_dice_mean"] == metrics["pooled_dice_hemorrhagic"]  # ischemic undefined
    for stem in ("dice", "iou", "slice_hd95_mm", "nsd"):
        key = f"pooled_{stem}_ischemic"
        assert metrics[key] is None and "ischemic" in metrics[f"{key}_null_reason"]
    assert metrics["pooled_slice_lesion_f1_ischemic"] is None
    assert metrics["pooled_slice_specificity_ischemic"] == 1.0
    assert metrics["pooled_slice_sensitivity_ischemic"] is None
    assert metrics["pixels_true_hemorrhagic_pred_background"] == 16
    assert metrics["pixel_accuracy"] == pytest.approx(1 - 16 / (3 * 256))
    assert [(s.actual, s.predicted) for s in evaluation.slices] == [
        ("hemorrhagic", "hemorrhagic"),
        ("hemorrhagic", "none"),
        ("none", "none"),
    ]
    assert [s.slice_id for s in evaluation.ranked_slices()] == ["a", "b"]
