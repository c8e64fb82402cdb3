"""Stage `evaluate`: per-class lesion metrics of models/model.keras on the test split.

Writes metrics/evaluate.json (flat; every null has a `<key>_null_reason`), the per-slice
confusion records metrics/confusion.csv, and reports/evaluate/ (reference-format
evaluation.csv, confusion matrix, per-slice Dice table and histogram, best/worst slices).
"""

from __future__ import annotations

from pipeline.evaluation import run_evaluation, summary_lines
from pipeline.params import Params
from stages.common import run_stage

HEADLINE_KEYS = (
    "dice_hemorrhagic",
    "dice_ischemic",
    "dice_mean",
    "hd95_hemorrhagic",
    "hd95_ischemic",
    "nsd_hemorrhagic",
    "nsd_ischemic",
    "lesion_f1_hemorrhagic",
    "lesion_f1_ischemic",
    "dice_coef_multiclass",
    "categorical_crossentropy",
)


def main(params: Params) -> None:
    metrics = run_evaluation(
        params,
        manifest_path="data/split/manifest.csv",
        model_path="models/model.keras",
        report_dir="reports/evaluate",
        metrics_path="metrics/evaluate.json",
        confusion_path="metrics/confusion.csv",
    )
    print("\n".join(summary_lines(metrics, HEADLINE_KEYS)))


if __name__ == "__main__":
    run_stage(main)
