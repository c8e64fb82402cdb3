"""Records MONAI's HD95 and NSD for tests/surface_cases.py (the values in
tests/test_case_metrics.py::MONAI_VALUES come from this script).

MONAI needs torch, which the project does not depend on, so run this in a throw-away venv:

    python3.11 -m venv /tmp/monai-venv
    /tmp/monai-venv/bin/pip install torch monai==1.6.1 scipy   # torch: the CPU wheel is enough
    /tmp/monai-venv/bin/python tests/monai_oracle.py

It prints the dictionary to paste into the test. MONAI settings: one-hot (background,
lesion) volumes with the background excluded; `compute_hausdorff_distance(percentile=95,
directed=False, spacing=...)` and `compute_surface_dice(class_thresholds=[tolerance],
spacing=..., use_subvoxels=False)`, both with Euclidean distances.
"""

from __future__ import annotations

import sys
from pathlib import Path

import monai
import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.surface_cases import surface_cases


def one_hot(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))


def main() -> None:
    print(f"# MONAI {monai.__version__}, torch {torch.__version__}")
    print("MONAI_VALUES = {")
    for name, (truth, prediction, spacing, tolerance) in surface_cases().items():
        y_pred, y = one_hot(prediction), one_hot(truth)
        hd95 = compute_hausdorff_distance(
            y_pred, y, include_background=False, percentile=95, spacing=list(spacing)
        )
        nsd = compute_surface_dice(
            y_pred, y, [tolerance], include_background=False, spacing=list(spacing)
        )
        print(f'    "{name}": ({float(hd95):.10g}, {float(nsd):.10g}),')
    print("}")


if __name__ == "__main__":
    main()
