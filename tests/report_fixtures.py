"""A tiny run's outputs, as the stages write them, for building the report without training.

`write_tiny_run(root, shape)` lays out a project folder the way a finished `dvc repro` leaves
it for the `report` stage: metrics/*.json, reports/ with its tables, pictures and Data Docs,
and a git repository whose committed params.yaml differs from the run's in `lr`.

- Data Docs and metrics/data.json come from the real `validate` code on a tiny file set.
- The other metrics are the default run's own files (tests/fixtures/report/), and evaluate's
  come in the two shapes the report must read: "slices" (today's slice-pooled evaluate, with
  slice_dice.csv) and "cases" (per-patient keys with confidence intervals, triage and volume,
  with cases.csv and a Bland-Altman plot).
- Pictures are real PNGs of the stages' sizes, drawn with pipeline.visualize.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import yaml

from pipeline.data.validate import validate_extracted
from pipeline.io import write_png, write_text_atomic
from pipeline.visualize import hstack, label, montage
from tests.conftest import PROJECT_ROOT, tool_env
from tests.test_validate import PARAMS as VALIDATE_PARAMS
from tests.test_validate import outputs_under, write_dataset

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "report"
SHAPES = ("slices", "cases")
RUN_LR = 0.0005  # the run's lr; params.yaml at HEAD keeps the default


def picture(text: str, size: int = 128, lesion: tuple[int, int, int] = (255, 0, 0)) -> np.ndarray:
    """A CT-like grey disc with a coloured blob, labelled: stands in for a slice picture."""
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.4 * size) ** 2
    image = np.repeat((disc * 110 + 20).astype(np.uint8)[..., None], 3, axis=2)
    blob = ((yy - 0.4 * size) ** 2 + (xx - 0.6 * size) ** 2) < (0.08 * size) ** 2
    image[blob] = lesion
    return label(image, text)


def panel(slice_id: str, dice: float) -> np.ndarray:
    return hstack(
        [picture(slice_id), picture("ground truth"), picture(f"prediction  Dice {dice:.3f}")]
    )


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, env=tool_env(), check=True, capture_output=True)


def write_pictures(root: Path) -> None:
    reports = root / "reports"
    write_png(reports / "phantom_montage.png", montage([picture(f"case {i}") for i in range(8)], 4))
    write_png(reports / "split_statistics.png", picture("split statistics", 256, (0, 0, 255)))
    write_png(reports / "train" / "train_metrics.png", picture("Dice per epoch", 256))
    write_png(reports / "train" / "train_losses.png", picture("Loss per epoch", 256))
    write_png(
        reports / "train" / "epoch_change_montage.png",
        montage([picture(f"epoch {e}", 96, (0, 255, 0)) for e in range(1, 9)], 8),
    )
    write_png(reports / "evaluate" / "confusion_matrix.png", picture("confusion", 256))
    write_png(reports / "evaluate" / "slice_dice_histogram.png", picture("histogram", 256))
    overlays = reports / "evaluate" / "overlays"
    write_png(overlays / "best_1_Hemorrhagic_050_007.png", panel("Hemorrhagic_050_007", 0.991))
    write_png(overlays / "worst_1_Ischemic_0019990_004.png", panel("Ischemic_0019990_004", 0.0))
    write_png(
        reports / "infer" / "mini_test_output.png",
        montage([panel(f"Ischemic_0019990_00{i}", 0.8) for i in range(3)], 1),
    )
    write_text_atomic(reports / "extract_report.txt", "unpaired image: Training/x.png\n")


def write_evaluate(root: Path, shape: str) -> None:
    evaluate = root / "reports" / "evaluate"
    shutil.copy(FIXTURES / f"evaluate_{shape}.json", root / "metrics" / "evaluate.json")
    if shape == "slices":
        write_text_atomic(
            evaluate / "slice_dice.csv",
            "id,class,slice_class,dice\n"
            "Hemorrhagic_050_007,hemorrhagic,Hemorrhagic_050_007 hemorrhagic,0.991304\n"
            "Ischemic_0019990_003,ischemic,Ischemic_0019990_003 ischemic,0.412500\n"
            "Ischemic_0019990_004,ischemic,Ischemic_0019990_004 ischemic,0.000000\n",
        )
        return
    lines = [
        "case_id,class,dice_hemorrhagic,dice_ischemic,hd95_mm_ischemic,"
        "truth_volume_ml_hemorrhagic,predicted_volume_ml_hemorrhagic,"
        "truth_volume_ml_ischemic,predicted_volume_ml_ischemic,slices"
    ]
    for index in range(6):
        lines.append(
            f"{50 + index:03d},Hemorrhagic,{0.85 + index / 50:.4f},,,"
            f"{2.0 + index:.3f},{1.9 + index:.3f},0.000,0.000,16"
        )
        dice = [0.0, 0.31, 0.62, 0.7, 0.78, 0.83][index]
        predicted = [0.0, 0.9, 3.1, 4.2, 4.8, 5.5][index]
        lines.append(
            f"{19990 + index:07d},Ischemic,,{dice:.4f},{9.5 - index:.2f},"
            f"0.000,0.000,{3.0 + index:.3f},{predicted:.3f},16"
        )
    write_text_atomic(root / "metrics" / "cases.csv", "\n".join(lines) + "\n")
    write_png(evaluate / "volume_bland_altman.png", picture("Bland-Altman", 256, (0, 255, 0)))


def write_tiny_run(root: Path, shape: str) -> Path:
    """A finished tiny run under `root` with evaluate outputs of `shape`; returns `root`."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "params.yaml")
    git(root, "commit", "-q", "-m", "tiny run")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lr"] = RUN_LR
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    (root / "metrics").mkdir()
    for name in ("extract", "split", "augment", "train", "infer"):
        shutil.copy(FIXTURES / f"{name}.json", root / "metrics" / f"{name}.json")
    manifest = write_dataset(root / "data" / "extracted")
    validate_extracted(manifest, outputs_under(root), VALIDATE_PARAMS)
    write_pictures(root)
    write_evaluate(root, shape)
    return root


def evaluate_metrics(root: Path) -> dict[str, object]:
    return json.loads((root / "metrics" / "evaluate.json").read_text())
