"""Per-case 3-D metrics against MONAI 1.6 (values recorded by tests/monai_oracle.py), a
brute-force implementation written here from the formulas, and hand-computed volumes:
anisotropic spacing, the empty rules and multi-component lesions."""

from __future__ import annotations

import itertools
import math
from collections import deque

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from medpy.metric import binary as medpy_binary
from scipy.spatial.distance import cdist

from pipeline.evaluate.measures import match_lesions
from pipeline.evaluate.scores import (
    Spacing,
    crop_to_union,
    score_case_class,
    surface_scores,
    volume_diagonal_mm,
)
from tests.surface_cases import box, smooth_random, surface_cases

# (HD95 mm, NSD) from MONAI 1.6.1 (torch 2.13.0+cpu): `python tests/monai_oracle.py`.
MONAI_VALUES = {
    "square_plus_strays_isotropic": (27.34208107, 0.961538434),
    "square_plus_strays_anisotropic": (12.4138031, 0.961538434),
    "shifted_boxes_anisotropic": (5.080354214, 0.571428597),
    "shifted_boxes_coarse_slices": (7.532595634, 0.4499999881),
    "multi_component": (55.53517151, 0.3111111224),
    "touching_first_slice": (3.089251995, 0.7654321194),
    "random_blobs": (25, 0.1240310073),
}
# MONAI computes in float32.
MONAI_RTOL = 1e-6
FACES = [offset for offset in itertools.product((-1, 0, 1), repeat=3) if sum(map(abs, offset)) == 1]
NEIGHBOURS_26 = [offset for offset in itertools.product((-1, 0, 1), repeat=3) if any(offset)]


# ---- brute force, from the definitions ----------------------------------------------------


def brute_border(mask: np.ndarray) -> np.ndarray:
    """Voxels of the mask with a face neighbour outside it or outside the volume."""
    border = np.zeros_like(mask, dtype=bool)
    for index in zip(*np.nonzero(mask), strict=True):
        for offset in FACES:
            neighbour = tuple(i + o for i, o in zip(index, offset, strict=True))
            inside = all(0 <= n < size for n, size in zip(neighbour, mask.shape, strict=True))
            if not inside or not mask[neighbour]:
                border[index] = True
                break
    return border


def brute_directed(source: np.ndarray, target: np.ndarray, spacing) -> np.ndarray:
    """Distance in mm from each border voxel of source to the nearest border voxel of target."""
    points = [np.argwhere(brute_border(mask)) * np.asarray(spacing) for mask in (source, target)]
    return cdist(*points).min(axis=1)


def brute_surface(truth, prediction, spacing, tolerance) -> tuple[float, float]:
    forward = brute_directed(truth, prediction, spacing)
    backward = brute_directed(prediction, truth, spacing)
    hd95 = max(np.percentile(forward, 95), np.percentile(backward, 95))
    near = (forward <= tolerance).sum() + (backward <= tolerance).sum()
    return float(hd95), float(near / (forward.size + backward.size))


def brute_components(mask: np.ndarray) -> list[set[tuple[int, ...]]]:
    """26-connected components by breadth-first flood fill."""
    seen: set[tuple[int, ...]] = set()
    components = []
    for start in map(tuple, np.argwhere(mask)):
        if start in seen:
            continue
        component, queue = set(), deque([start])
        seen.add(start)
        while queue:
            voxel = queue.popleft()
            component.add(voxel)
            for offset in NEIGHBOURS_26:
                other = tuple(v + o for v, o in zip(voxel, offset, strict=True))
                if (
                    all(0 <= n < size for n, size in zip(other, mask.shape, strict=True))
                    and mask[other]
                    and other not in seen
                ):
                    seen.add(other)
                    queue.append(other)
        components.append(component)
    return components


def brute_lesion_f1(truth: np.ndarray, prediction: np.ndarray) -> float | None:
    truth_parts, predicted_parts = brute_components(truth), brute_components(prediction)
    predicted_voxels = set(map(tuple, np.argwhere(prediction)))
    truth_voxels = set(map(tuple, np.argwhere(truth)))
    found = sum(1 for part in truth_parts if part & predicted_voxels)
    false = sum(1 for part in predicted_parts if not part & truth_voxels)
    missed = len(truth_parts) - found
    denominator = 2 * found + false + missed
    return 2 * found / denominator if denominator else None


# ---- oracles --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MONAI_VALUES))
def test_hd95_and_nsd_match_monai_and_brute_force(name):
    truth, prediction, spacing, tolerance = surface_cases()[name]
    hd95, nsd = surface_scores(truth, prediction, spacing, tolerance)
    assert (hd95, nsd) == pytest.approx(MONAI_VALUES[name], rel=MONAI_RTOL)
    assert (hd95, nsd) == pytest.approx(brute_surface(truth, prediction, spacing, tolerance))


def test_the_stray_cube_is_hidden_by_pooled_percentiles_but_not_by_monai_hd95():
    truth, prediction, spacing, tolerance = surface_cases()["square_plus_strays_isotropic"]
    assert medpy_binary.hd95(prediction, truth, voxelspacing=spacing) == 0.0
    assert surface_scores(truth, prediction, spacing, tolerance)[0] > 27.0


SQUARE_PIXEL_CASES = sorted(
    name for name, case in surface_cases().items() if case[2][1] == case[2][2]
)


@pytest.mark.parametrize("name", SQUARE_PIXEL_CASES)
def test_case_scores_match_brute_force(name):
    truth, prediction, (thickness, row, column), tolerance = surface_cases()[name]
    spacing = Spacing(slice_thickness_mm=thickness, pixel_spacing_mm=row)
    scores = score_case_class(truth, prediction, spacing, tolerance)
    overlap = (truth & prediction).sum()
    assert scores.dice == pytest.approx(2 * overlap / (truth.sum() + prediction.sum()))
    assert scores.iou == pytest.approx(overlap / (truth | prediction).sum())
    assert scores.lesion_f1 == pytest.approx(brute_lesion_f1(truth, prediction))
    voxel_ml = thickness * row * column / 1000.0
    assert scores.truth_volume_ml == pytest.approx(truth.sum() * voxel_ml)
    assert scores.predicted_volume_ml == pytest.approx(prediction.sum() * voxel_ml)


def test_multi_component_lesions_count_in_3d():
    """Two truth lesions, one found; a predicted blob touching no lesion is a false positive.
    The first lesion spans slices 1-3: one 3-D lesion, not one per slice."""
    truth, prediction, *_ = surface_cases()["multi_component"]
    match = match_lesions(truth, prediction)
    assert (match.truth_lesions, match.detected_lesions) == (2, 1)
    assert (match.predicted_lesions, match.false_positive_lesions) == (2, 1)
    assert match.f1 == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))


def test_diagonal_touching_voxels_are_one_lesion():
    truth = np.zeros((3, 4, 4), dtype=bool)
    truth[0, 0, 0] = truth[1, 1, 1] = truth[2, 2, 2] = True
    assert match_lesions(truth, truth).truth_lesions == 1


# ---- empty rules ----------------------------------------------------------------------------

SPACING = Spacing(slice_thickness_mm=5.0, pixel_spacing_mm=0.9)


def test_class_in_neither_mask_excludes_the_case():
    empty = np.zeros((4, 8, 8), dtype=bool)
    scores = score_case_class(empty, empty, SPACING, 2.0)
    assert not scores.counted
    assert (scores.dice, scores.iou, scores.hd95_mm, scores.nsd, scores.lesion_f1) == (None,) * 5
    assert scores.truth_volume_ml == scores.predicted_volume_ml == 0.0


@pytest.mark.parametrize("missing", ["truth", "prediction"])
def test_class_in_one_mask_scores_zero_and_the_diagonal(missing):
    lesion = box((4, 8, 10), (1, 3, 2, 5, 2, 5))
    empty = np.zeros_like(lesion)
    truth, prediction = (empty, lesion) if missing == "truth" else (lesion, empty)
    scores = score_case_class(truth, prediction, SPACING, 2.0)
    assert scores.counted
    assert (scores.dice, scores.iou, scores.nsd, scores.lesion_f1) == (0.0, 0.0, 0.0, 0.0)
    assert scores.hd95_mm == pytest.approx(math.sqrt(20.0**2 + 7.2**2 + 9.0**2))
    assert volume_diagonal_mm((4, 8, 10), SPACING) == scores.hd95_mm


def test_spacing_must_be_positive():
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        Spacing(slice_thickness_mm=5.0, pixel_spacing_mm=0.0)
    with pytest.raises(ValueError, match="slice_thickness_mm"):
        Spacing(slice_thickness_mm=float("nan"), pixel_spacing_mm=0.5)


# ---- properties -----------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    seeds=st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)),
    levels=st.tuples(st.floats(-0.1, 0.4), st.floats(-0.1, 0.4)),
    thickness=st.floats(0.5, 8.0),
    pixel=st.floats(0.2, 2.0),
)
def test_symmetry_bounds_and_identity(seeds, levels, thickness, pixel):
    shape = (5, 14, 14)
    truth, prediction = (smooth_random(s, shape, lv) for s, lv in zip(seeds, levels, strict=True))
    spacing = Spacing(slice_thickness_mm=thickness, pixel_spacing_mm=pixel)
    forward = score_case_class(truth, prediction, spacing, 2.0)
    backward = score_case_class(prediction, truth, spacing, 2.0)
    # Lesion F1 is not symmetric: one predicted blob over two truth lesions is 2 TP, but one
    # truth lesion under two predicted blobs is 1 TP and no FP.
    assert (forward.dice, forward.hd95_mm, forward.nsd) == (
        backward.dice,
        backward.hd95_mm,
        backward.nsd,
    )
    if forward.counted:
        assert 0.0 <= forward.iou <= forward.dice <= 1.0
        assert 0.0 <= forward.nsd <= 1.0 and 0.0 <= forward.lesion_f1 <= 1.0
        assert 0.0 <= forward.hd95_mm <= volume_diagonal_mm(shape, spacing) + 1e-9
    if truth.any():
        same = score_case_class(truth, truth, spacing, 0.0)
        assert (same.dice, same.hd95_mm, same.nsd, same.lesion_f1) == (1.0, 0.0, 1.0, 1.0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), level=st.floats(0.0, 0.6))
def test_cropping_keeps_the_surface_scores(seed, level):
    truth = smooth_random(seed, (6, 20, 20), level)
    prediction = smooth_random(seed + 1, (6, 20, 20), level)
    assume(truth.any() and prediction.any())
    spacing = (5.0, 0.7, 0.7)
    cropped = crop_to_union(truth, prediction)
    assert cropped[0].sum() == truth.sum() and cropped[1].sum() == prediction.sum()
    assert surface_scores(truth, prediction, spacing, 3.0) == pytest.approx(
        brute_surface(truth, prediction, spacing, 3.0)
    )
