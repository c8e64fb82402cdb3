"""Hand-made 3-D mask pairs for the surface-metric oracles, built with numpy alone.

Shared by tests/test_case_metrics.py and tests/monai_oracle.py (which records MONAI's values
for them in a separate venv with torch), so both score exactly the same volumes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# name -> (truth, prediction, spacing (slice, row, column) in mm, NSD tolerance in mm)
SurfaceCase = tuple[np.ndarray, np.ndarray, tuple[float, float, float], float]


def box(shape: tuple[int, int, int], *corners: tuple[int, int, int, int, int, int]) -> np.ndarray:
    """Boolean volume holding the union of boxes (z0, z1, y0, y1, x0, x1), ends excluded."""
    volume = np.zeros(shape, dtype=bool)
    for z0, z1, y0, y1, x0, x1 in corners:
        volume[z0:z1, y0:y1, x0:x1] = True
    return volume


def smooth_random(seed: int, shape: tuple[int, int, int], level: float) -> np.ndarray:
    """Blobby random mask: smoothed noise above a level."""
    noise = np.random.default_rng(seed).standard_normal(shape)
    return ndimage.gaussian_filter(noise, sigma=(1.0, 2.5, 2.5)) > level


def surface_cases() -> dict[str, SurfaceCase]:
    shape = (6, 40, 40)
    square = box(shape, (2, 3, 5, 15, 5, 15))
    strays = square.copy()
    strays[1:3, 33:35, 33:35] = True  # 8 stray voxels: over 5% of one border, not of both
    shifted_truth = box(shape, (1, 4, 10, 20, 10, 22))
    shifted_prediction = box(shape, (2, 5, 12, 22, 9, 21))
    two_lesions = box(shape, (1, 3, 4, 10, 4, 10), (3, 6, 25, 33, 25, 35))
    one_found_one_false = box(shape, (1, 4, 5, 11, 5, 9), (0, 2, 20, 24, 2, 6))
    return {
        # A 10x10 square found exactly, plus a far stray 2x2x2 cube: pooling both distance
        # sets (medpy) hides it, the larger directed percentile (MONAI) does not.
        "square_plus_strays_isotropic": (square, strays, (1.0, 1.0, 1.0), 1.0),
        "square_plus_strays_anisotropic": (square, strays, (5.0, 0.45, 0.45), 2.0),
        "shifted_boxes_anisotropic": (shifted_truth, shifted_prediction, (5.0, 0.9, 0.9), 4.0),
        "shifted_boxes_coarse_slices": (shifted_truth, shifted_prediction, (7.5, 0.5, 0.7), 1.0),
        "multi_component": (two_lesions, one_found_one_false, (5.0, 1.8, 1.8), 4.0),
        "touching_first_slice": (
            box(shape, (0, 2, 3, 9, 3, 9)),
            box(shape, (0, 3, 4, 9, 3, 10)),
            (3.0, 1.0, 1.0),
            1.5,
        ),
        "random_blobs": (
            smooth_random(1, (8, 32, 32), 0.15),
            smooth_random(2, (8, 32, 32), 0.2) | smooth_random(1, (8, 32, 32), 0.3),
            (5.0, 1.8, 1.8),
            4.0,
        ),
    }
