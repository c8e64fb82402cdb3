"""Stage `evaluate`: per-case 3-D lesion metrics of models/model.keras on the test split.

Writes metrics/evaluate.json (flat; every null has a `<key>_null_reason`), its 12-key digest
metrics/headline.json (pipeline/evaluate/headline.py, for `dvc exp show`), the per-slice confusion
records metrics/confusion.csv, the per-case table metrics/cases.csv (these four in git, for
`dvc metrics` and `dvc plots`), and reports/evaluate/ (every test
prediction under predictions/, the volume Bland-Altman plot, reference-format evaluation.csv,
confusion matrix, per-slice Dice table and histogram, best/worst slices).
"""

from __future__ import annotations

import logging

from pipeline.evaluate.headline import headline_metrics
from pipeline.evaluate.run import run_evaluation, summary_lines
from pipeline.io import write_json
from pipeline.params import Params
from stages.common import run_stage

LOG = logging.getLogger("stages.evaluate")


def headline_keys(params: Params) -> tuple[str, ...]:
    """The keys printed at the end of a run: per lesion class, then the reference's two."""
    return (
        *(
            key
            for lesion in params.lesion_classes
            for key in (
                f"test_cases_{lesion.label}",
                f"dice_{lesion.label}",
                f"dice_{lesion.label}_ci_low",
                f"dice_{lesion.label}_ci_high",
                f"hd95_mm_{lesion.label}",
                f"nsd_{lesion.label}",
                f"lesion_f1_{lesion.label}",
                f"triage_threshold_ml_{lesion.label}",
                f"triage_sensitivity_{lesion.label}",
                f"triage_specificity_{lesion.label}",
                f"triage_auc_{lesion.label}",
                f"volume_bias_ml_{lesion.label}",
                f"pooled_dice_{lesion.label}",
            )
        ),
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
        cases_path="metrics/cases.csv",
    )
    write_json("metrics/headline.json", headline_metrics(metrics))
    LOG.info("evaluate:\n%s", "\n".join(summary_lines(metrics, headline_keys(params))))


if __name__ == "__main__":
    run_stage(main)
