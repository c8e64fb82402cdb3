"""The one definition of each segmentation metric of `evaluate`, for masks of any rank.

Both the per-case 3-D headline (`pipeline.evaluate.scores`) and the slice-pooled comparison
figures (`pipeline.evaluate.pooled`) call these: a case passes its (slices, rows, columns)
volume with the voxel spacing, a slice its (rows, columns) image with the pixel spacing.
Pooling over slices sums the counts below (`OverlapCounts`, `LesionMatch`) and applies the
same formula to the sums. Each function returns None where the metric is undefined; what a
caller then reports (None, or the worst value) is its own empty rule, stated in its module.

The reference's `dice_coef_multiclass` (soft overlap, background included) is not one of
these: it stays in `pooled`, named as the reference's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class OverlapCounts:
    """Elements (pixels or voxels) of one class: in both masks, in the truth, in the prediction.
    Counts of several slices add up to the pooled counts."""

    intersection: int
    truth: int
    predicted: int

    def __add__(self, other: OverlapCounts) -> OverlapCounts:
        return OverlapCounts(
            self.intersection + other.intersection,
            self.truth + other.truth,
            self.predicted + other.predicted,
        )


NO_OVERLAP = OverlapCounts(0, 0, 0)


def overlap_counts(truth: np.ndarray, prediction: np.ndarray) -> OverlapCounts:
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    return OverlapCounts(
        int(np.logical_and(truth, prediction).sum()), int(truth.sum()), int(prediction.sum())
    )


def dice(counts: OverlapCounts) -> float | None:
    """Dice = 2|T∩P| / (|T| + |P|), unitless in [0, 1]; None when both masks are empty."""
    total = counts.truth + counts.predicted
    return 2.0 * counts.intersection / total if total else None


def iou(counts: OverlapCounts) -> float | None:
    """IoU (Jaccard) = |T∩P| / |T∪P| = |T∩P| / (|T| + |P| - |T∩P|), unitless in [0, 1]; None
    when both masks are empty."""
    union = counts.truth + counts.predicted - counts.intersection
    return counts.intersection / union if union else None


def surface_border(mask: np.ndarray) -> np.ndarray:
    """Elements of `mask` with a face neighbour outside it (4-neighbours in 2-D, 6 in 3-D);
    the array's exterior counts as outside, as in MONAI's `get_mask_edges` (without sub-voxel
    surfaces) and medpy 0.5 (connectivity 1)."""
    mask = mask.astype(bool)
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def directed_surface_distances(
    source: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Euclidean distance from each border element of `source` to the nearest border element
    of `target`, between element centres: in elements, or in mm given `spacing` (mm per
    axis). `target` must hold at least one element."""
    to_target = ndimage.distance_transform_edt(~surface_border(target), sampling=spacing)
    return to_target[surface_border(source)]


def surface_distances(
    truth: np.ndarray, prediction: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """(truth-to-prediction, prediction-to-truth) border distances (mm given `spacing`);
    None when either mask is empty (no border to measure to)."""
    if not truth.any() or not prediction.any():
        return None
    return (
        directed_surface_distances(truth, prediction, spacing),
        directed_surface_distances(prediction, truth, spacing),
    )


def hd95(distances: tuple[np.ndarray, np.ndarray]) -> float:
    """HD95 in mm: the larger of the two directed 95th percentiles of the border distances
    (numpy's linear interpolation, as `torch.quantile`), as MONAI's
    `compute_hausdorff_distance(percentile=95)` and Metrics Reloaded. Not medpy 0.5's `hd95`,
    which takes one percentile of both sets pooled, where a stray component far off can hide
    among the other set's distances."""
    return float(max(np.percentile(directed, 95) for directed in distances))


def nsd(distances: tuple[np.ndarray, np.ndarray], tolerance_mm: float) -> float:
    """Normalised surface Dice, unitless in [0, 1], as MONAI's `compute_surface_dice`: the
    share of border elements of both masks lying within `tolerance_mm` of the other mask's
    border."""
    near = sum(int((directed <= tolerance_mm).sum()) for directed in distances)
    return near / sum(directed.size for directed in distances)


@dataclass(frozen=True)
class LesionMatch:
    """Lesions (connected components) of one class: in the truth, those a predicted component
    overlaps (found), in the prediction, and those overlapping a truth lesion. Matches of
    several slices add up to the pooled counts."""

    truth_lesions: int
    detected_lesions: int
    predicted_lesions: int
    true_predicted_lesions: int

    def __add__(self, other: LesionMatch) -> LesionMatch:
        return LesionMatch(
            self.truth_lesions + other.truth_lesions,
            self.detected_lesions + other.detected_lesions,
            self.predicted_lesions + other.predicted_lesions,
            self.true_predicted_lesions + other.true_predicted_lesions,
        )

    @property
    def false_positive_lesions(self) -> int:
        return self.predicted_lesions - self.true_predicted_lesions

    @property
    def precision(self) -> float | None:
        """Lesion precision: predicted lesions overlapping a truth lesion, over predicted
        lesions; None without predicted lesions."""
        if not self.predicted_lesions:
            return None
        return self.true_predicted_lesions / self.predicted_lesions

    @property
    def recall(self) -> float | None:
        """Lesion recall: truth lesions found, over truth lesions; None without truth lesions."""
        return self.detected_lesions / self.truth_lesions if self.truth_lesions else None

    @property
    def f1(self) -> float | None:
        """Lesion F1 = 2TP / (2TP + FP + FN), TP the found truth lesions; None when neither
        mask has a lesion."""
        missed = self.truth_lesions - self.detected_lesions
        denominator = 2 * self.detected_lesions + self.false_positive_lesions + missed
        return 2 * self.detected_lesions / denominator if denominator else None


NO_LESIONS = LesionMatch(0, 0, 0, 0)


def _components_overlapping(mask: np.ndarray, other: np.ndarray) -> tuple[int, int]:
    """(components of `mask`, how many of them share at least one element with `other`),
    components fully connected (8-connected in 2-D, 26-connected in 3-D)."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    labels, count = ndimage.label(mask, structure=structure)
    hit = np.unique(labels[np.logical_and(labels > 0, other)])
    return count, int(hit.size)


def match_lesions(truth: np.ndarray, prediction: np.ndarray) -> LesionMatch:
    """Lesion-wise matching: a truth lesion is found, and a predicted one true, on an overlap
    of one element, in either direction."""
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    truth_lesions, detected = _components_overlapping(truth, prediction)
    predicted_lesions, true_predicted = _components_overlapping(prediction, truth)
    return LesionMatch(truth_lesions, detected, predicted_lesions, true_predicted)
