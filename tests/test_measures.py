"""The one definition of each metric (pipeline/evaluate/measures.py) against values worked out
by hand from its formula, and pooling as summing: the pooled figure of several slices is the
metric of the slices side by side."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.evaluate.measures import (
    NO_LESIONS,
    NO_OVERLAP,
    LesionMatch,
    dice,
    hd95,
    iou,
    match_lesions,
    nsd,
    overlap_counts,
    surface_distances,
)


def test_overlap_metrics_by_hand():
    truth = np.zeros((4, 4), dtype=bool)
    truth[0, 0:3] = True  # 3 pixels
    prediction = np.zeros((4, 4), dtype=bool)
    prediction[0, 1:4] = True  # 3 pixels, 2 shared
    counts = overlap_counts(truth, prediction)
    assert counts == (counts.__class__(2, 3, 3))
    assert dice(counts) == 2 * 2 / (3 + 3)
    assert iou(counts) == 2 / 4


def test_empty_rules():
    empty = np.zeros((3, 3), dtype=bool)
    lesion = empty.copy()
    lesion[1, 1] = True
    assert dice(overlap_counts(empty, empty)) is None and iou(NO_OVERLAP) is None
    assert dice(overlap_counts(lesion, empty)) == 0.0 and iou(overlap_counts(empty, lesion)) == 0.0
    assert surface_distances(lesion, empty) is None and surface_distances(empty, lesion) is None
    assert match_lesions(empty, empty) == NO_LESIONS and NO_LESIONS.f1 is None
    assert match_lesions(lesion, empty).f1 == 0.0


def test_surface_metrics_by_hand():
    """Single pixels are their own border: the distances are the centre-to-centre ones."""
    truth = np.zeros((1, 12), dtype=bool)
    truth[0, [0, 1]] = True  # border: columns 0 and 1
    prediction = np.zeros((1, 12), dtype=bool)
    prediction[0, [1, 11]] = True  # two 1-pixel components
    distances = surface_distances(truth, prediction, (1.0, 2.0))  # 2 mm between columns
    assert distances is not None
    np.testing.assert_array_equal(distances[0], [2.0, 0.0])  # truth to prediction
    np.testing.assert_array_equal(distances[1], [0.0, 20.0])  # prediction to truth
    # Directed 95th percentiles (linear): 0 + 0.95 * 2 and 0 + 0.95 * 20; HD95 the larger.
    assert hd95(distances) == pytest.approx(19.0)
    assert nsd(distances, tolerance_mm=2.0) == 3 / 4


def test_lesion_matching_by_hand():
    truth = np.zeros((6, 6), dtype=bool)
    truth[0, 0] = truth[1, 1] = True  # one lesion: diagonal neighbours are connected
    truth[5, 5] = True  # a second, missed
    prediction = np.zeros((6, 6), dtype=bool)
    prediction[1, 1] = True  # finds the first
    prediction[3, 0] = True  # a false positive
    match = match_lesions(truth, prediction)
    assert (match.truth_lesions, match.detected_lesions) == (2, 1)
    assert (match.predicted_lesions, match.true_predicted_lesions) == (2, 1)
    assert match.false_positive_lesions == 1
    assert match.f1 == 2 * 1 / (2 * 1 + 1 + 1)


slices = st.lists(st.tuples(arrays(bool, (5, 6)), arrays(bool, (5, 6))), min_size=1, max_size=4)


@settings(max_examples=50, deadline=None)
@given(pairs=slices)
def test_pooling_is_summing(pairs):
    """Summed slice counts are the counts of the slices laid side by side (columns apart by
    an empty column, so no lesion spans two slices)."""
    gap = np.zeros((5, 1), dtype=bool)
    truth = np.hstack([part for t, _ in pairs for part in (t, gap)])
    prediction = np.hstack([part for _, p in pairs for part in (p, gap)])
    pooled_overlap, pooled_lesions = NO_OVERLAP, NO_LESIONS
    for t, p in pairs:
        pooled_overlap += overlap_counts(t, p)
        pooled_lesions += match_lesions(t, p)
    assert pooled_overlap == overlap_counts(truth, prediction)
    assert pooled_lesions == match_lesions(truth, prediction)
    assert dice(pooled_overlap) == dice(overlap_counts(truth, prediction))


def test_lesion_precision_and_recall_by_hand():
    match = LesionMatch(
        truth_lesions=4, detected_lesions=3, predicted_lesions=2, true_predicted_lesions=1
    )
    assert (match.precision, match.recall) == (1 / 2, 3 / 4)
    assert NO_LESIONS.precision is None and NO_LESIONS.recall is None
