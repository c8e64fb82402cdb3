"""Per-case (patient) 3-D segmentation metrics in physical units: the headline of `evaluate`.

A case is its slices stacked in slice order into a (slices, rows, columns) volume, with voxel
spacing (slice_thickness_mm, pixel_spacing_mm, pixel_spacing_mm). Per lesion class, each
metric as `pipeline.evaluate.measures` defines it:

- Dice and IoU: voxel overlap of the whole volume (nnU-Net, Metrics Reloaded).
- Borders as MONAI's `get_mask_edges` without sub-voxel surfaces: a mask minus its erosion by
  the 6-connected cross, voxels beyond the volume counting as background (so a lesion touching
  the first or last slice is open there). Distances are Euclidean in mm between border voxel
  centres (`distance_transform_edt` with the spacing).
- HD95: the larger of the two directed 95th percentiles of the border distances (numpy's linear
  interpolation, as `torch.quantile`), as MONAI's `compute_hausdorff_distance(percentile=95)`
  and Metrics Reloaded; medpy's `hd95` pools both sets instead and can hide a stray component.
- NSD: MONAI's `compute_surface_dice`: border voxels of either mask within the tolerance of
  the other mask's border, over all border voxels of both.
- Lesion-wise detection on 26-connected components of the volume (the 3-D analogue of the
  8-connectivity of the slice figures): a truth lesion is found (TP) when a predicted
  component overlaps it, missed (FN) otherwise; a predicted component touching no truth voxel
  is a false positive (FP); F1 = 2TP / (2TP + FP + FN).

Empty rules: a class in neither mask leaves every metric None (the case is excluded for that
class); a class in only one mask scores Dice 0, IoU 0, NSD 0, lesion F1 0 and HD95 the
volume's diagonal in mm (the worst distance the volume allows, as Metrics Reloaded asks for a
worst value rather than MONAI's infinity, which no mean survives).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.evaluate.measures import (
    LesionMatch,
    dice,
    hd95,
    iou,
    match_lesions,
    nsd,
    overlap_counts,
    surface_distances,
)

CUBIC_MM_PER_ML = 1000.0


@dataclass(frozen=True)
class Spacing:
    """Voxel size in mm: between slices, and between pixel centres within a slice."""

    slice_thickness_mm: float
    pixel_spacing_mm: float

    def __post_init__(self) -> None:
        for name in ("slice_thickness_mm", "pixel_spacing_mm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name} must be a positive number of mm, got {value!r}")

    @property
    def axes_mm(self) -> tuple[float, float, float]:
        return (self.slice_thickness_mm, self.pixel_spacing_mm, self.pixel_spacing_mm)

    @property
    def voxel_ml(self) -> float:
        return self.slice_thickness_mm * self.pixel_spacing_mm**2 / CUBIC_MM_PER_ML


def volume_diagonal_mm(shape: tuple[int, ...], spacing: Spacing) -> float:
    """Length of the volume's diagonal: the HD95 of a class found in only one mask."""
    return float(math.hypot(*(size * mm for size, mm in zip(shape, spacing.axes_mm, strict=True))))


def crop_to_union(truth: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union plus one voxel (within the volume).

    Borders and border distances are unchanged (every border voxel lies in the box, and the
    margin keeps the box's own faces outside both masks except at the volume's faces, where
    the erosion treats the exterior as background anyway); it only saves time on big scans.
    """
    union = truth | prediction
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        present = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(int(present[0]) - 1, 0), int(present[-1]) + 2))
    return truth[tuple(box)], prediction[tuple(box)]


def surface_scores(
    truth: np.ndarray, prediction: np.ndarray, axes_mm: Sequence[float], tolerance_mm: float
) -> tuple[float, float]:
    """(HD95 in mm, NSD) of two non-empty boolean volumes with spacing `axes_mm` per axis."""
    distances = surface_distances(*crop_to_union(truth, prediction), axes_mm)
    assert distances is not None, "surface_scores takes two non-empty volumes"
    return hd95(distances), nsd(distances, tolerance_mm)


@dataclass(frozen=True)
class CaseClassScores:
    """One lesion class in one case. The metrics are None when neither mask holds the class
    (the case is then excluded for it); volumes and lesion counts are always set."""

    dice: float | None
    iou: float | None
    hd95_mm: float | None
    nsd: float | None
    lesions: LesionMatch
    truth_volume_ml: float
    predicted_volume_ml: float

    @property
    def counted(self) -> bool:
        return self.dice is not None

    @property
    def lesion_f1(self) -> float | None:
        return self.lesions.f1


def score_case_class(
    truth: np.ndarray, prediction: np.ndarray, spacing: Spacing, tolerance_mm: float
) -> CaseClassScores:
    """Every per-case metric of one class from boolean (slices, rows, columns) volumes."""
    if truth.shape != prediction.shape or truth.ndim != 3:
        raise ValueError(f"volumes must be 3-D and alike, got {truth.shape} and {prediction.shape}")
    truth, prediction = truth.astype(bool), prediction.astype(bool)
    counts = overlap_counts(truth, prediction)
    volumes = {
        "truth_volume_ml": counts.truth * spacing.voxel_ml,
        "predicted_volume_ml": counts.predicted * spacing.voxel_ml,
    }
    lesions = match_lesions(truth, prediction)
    if counts.truth == 0 and counts.predicted == 0:
        return CaseClassScores(None, None, None, None, lesions, **volumes)
    if counts.truth == 0 or counts.predicted == 0:
        worst = volume_diagonal_mm(truth.shape, spacing)
        return CaseClassScores(0.0, 0.0, worst, 0.0, lesions, **volumes)
    hd95_mm, nsd_value = surface_scores(truth, prediction, spacing.axes_mm, tolerance_mm)
    return CaseClassScores(
        dice=dice(counts),
        iou=iou(counts),
        hd95_mm=hd95_mm,
        nsd=nsd_value,
        lesions=lesions,
        **volumes,
    )


@dataclass(frozen=True)
class CaseResult:
    """One case (patient): its manifest class, slice count, geometry and per-class scores."""

    case_id: str
    class_name: str
    slices: int
    spacing: Spacing
    scores: dict[str, CaseClassScores]

    def has_truth(self, lesion_class: str) -> bool:
        return self.scores[lesion_class].truth_volume_ml > 0.0

    def predicted_ml(self, lesion_class: str) -> float:
        return self.scores[lesion_class].predicted_volume_ml
