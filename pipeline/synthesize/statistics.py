"""The phantom's own statistics (metrics/synthesize.json): what each case drew (lesion kinds,
pose, acquisition) and what its lesion slices show (contrast against a ring, area), so that
`dvc metrics diff` shows what a phantom change did. Contrast is measured as
benchmarks/realism.py measures it on real slices: lesion mean minus the mean of a 10-px ring
around it (per 512 px), in HU of the final image clipped to the case's window (what its PNG
shows: bone blurred into a bleed by the skull is 255, not 1000 HU), the ring kept inside the
cranial soft tissue."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.classes import SOURCE_CLASSES
from pipeline.synthesize.anatomy import REFERENCE_SIZE, Tissue, tissue_in
from pipeline.synthesize.rendering import CaseModel, PhantomSlice

RING_PX = 10  # at 512 px, as benchmarks/realism.py
# Where a ring pixel may lie: inside the cranium, not bone, air, fat, scalp or table.
RING_TISSUES = (
    Tissue.CSF,
    Tissue.GREY_MATTER,
    Tissue.WHITE_MATTER,
    Tissue.FALX,
    Tissue.VESSEL,
    Tissue.HEMORRHAGE,
    Tissue.ISCHEMIA,
)


@dataclass(frozen=True)
class CaseStatistics:
    """What one case drew and what its lesion slices measure."""

    class_name: str
    lesion_kinds: tuple[str, ...]
    head_width_share: float
    rotation_deg: float
    centre_shift_share: float  # distance of the head centre from the image centre / size
    window_level_hu: float
    window_width_hu: float
    noise_hu: float
    blur_sigma_px: float
    tilt_deg: float
    lesion_contrast_hu: tuple[float, ...]  # one per lesion slice
    lesion_area_px: tuple[int, ...]


def lesion_contrast_hu(rendered: PhantomSlice) -> float | None:
    """Mean HU of the lesion minus that of a ring around it; None without lesion or ring."""
    if not rendered.lesion.any():
        return None
    size = rendered.lesion.shape[0]
    reach = max(1, round(RING_PX * size / REFERENCE_SIZE))
    rows, columns = np.nonzero(rendered.lesion)
    top, bottom = max(0, rows.min() - reach), min(size, rows.max() + reach + 1)
    left, right = max(0, columns.min() - reach), min(size, columns.max() + reach + 1)
    lesion = rendered.lesion[top:bottom, left:right]
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    ring = cv2.dilate(lesion.astype(np.uint8), kernel).astype(bool) & ~lesion
    ring &= tissue_in(rendered.tissue[top:bottom, left:right], RING_TISSUES)
    if not ring.any():
        return None
    half = rendered.window_width_hu / 2.0
    lowest, highest = rendered.window_level_hu - half, rendered.window_level_hu + half
    hu = np.clip(rendered.hu[top:bottom, left:right], lowest, highest)
    return float(hu[lesion].mean() - hu[ring].mean())


def case_statistics(case: CaseModel, rendered: Sequence[PhantomSlice]) -> CaseStatistics:
    size = case.params.image_size
    anatomy, acquisition = case.anatomy, case.acquisition
    contrasts = [lesion_contrast_hu(slice_) for slice_ in rendered]
    return CaseStatistics(
        class_name=case.spec.class_name,
        lesion_kinds=tuple(lesion.kind for lesion in case.lesions),
        head_width_share=2.0 * anatomy.half_width_px / size,
        rotation_deg=math.degrees(anatomy.rotation),
        centre_shift_share=math.hypot(anatomy.centre[0] - size / 2, anatomy.centre[1] - size / 2)
        / size,
        window_level_hu=acquisition.window_level_hu,
        window_width_hu=acquisition.window_width_hu,
        noise_hu=acquisition.noise_hu,
        blur_sigma_px=acquisition.blur_sigma_px,
        tilt_deg=case.scanner.tilt_deg,
        lesion_contrast_hu=tuple(c for c in contrasts if c is not None),
        lesion_area_px=tuple(int(s.lesion.sum()) for s in rendered if s.lesion.any()),
    )


STATISTICS = ("min", "p05", "median", "p95", "max")
# Drawn per case, the same way for both classes: (field, key stem, unit suffix).
NUISANCE = (
    ("head_width_share", "head_width_share", ""),
    ("rotation_deg", "rotation", "_deg"),
    ("centre_shift_share", "centre_shift_share", ""),
    ("window_level_hu", "window_level", "_hu"),
    ("window_width_hu", "window_width", "_hu"),
    ("noise_hu", "noise", "_hu"),
    ("blur_sigma_px", "blur_sigma", "_px"),
    ("tilt_deg", "tilt", "_deg"),
)


def _spread(stem: str, unit: str, suffix: str, values: Sequence[float]) -> dict[str, float]:
    """`<stem>_<statistic><unit><suffix>` for min, 5th, 50th, 95th percentile and max (none
    for no values: `dvc metrics diff` then shows the key as removed)."""
    if not values:
        return {}
    quantiles = np.quantile(np.asarray(values, dtype=np.float64), [0.0, 0.05, 0.5, 0.95, 1.0])
    return {
        f"{stem}_{name}{unit}{suffix}": round(float(value), 3)
        for name, value in zip(STATISTICS, quantiles, strict=True)
    }


def summarise(cases: Sequence[CaseStatistics]) -> dict[str, float | int]:
    """metrics/synthesize.json, flat keys `<what>[_<unit>]_<class>` (docs/experiments.md,
    "Metric key names"): per class, lesion kinds, contrast and area; for all cases, pose and
    acquisition."""
    metrics: dict[str, float | int] = {"cases": len(cases)}
    for class_name in SOURCE_CLASSES:
        suffix = f"_{class_name.lower()}"
        of_class = [case for case in cases if case.class_name == class_name]
        metrics[f"cases{suffix}"] = len(of_class)
        metrics[f"cases_several_lesions{suffix}"] = sum(len(c.lesion_kinds) > 1 for c in of_class)
        kinds = Counter(kind for case in of_class for kind in case.lesion_kinds)
        metrics |= {f"lesions_{kind}{suffix}": count for kind, count in sorted(kinds.items())}
        metrics[f"lesion_slices{suffix}"] = sum(len(c.lesion_area_px) for c in of_class)
        contrast = [value for case in of_class for value in case.lesion_contrast_hu]
        metrics |= _spread("lesion_contrast", "_hu", suffix, contrast)
        area = [value for case in of_class for value in case.lesion_area_px]
        metrics |= _spread("lesion_area", "_px", suffix, area)
    for field, stem, unit in NUISANCE:
        metrics |= _spread(stem, unit, "", [getattr(case, field) for case in cases])
    return metrics
