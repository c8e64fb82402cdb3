"""Stage `evaluate`: score the trained model on the test split and draw its reports, in
three steps, each a module that imports only the ones before it:

1. scoring (`cases`): every test and validation case predicted and scored per case in 3-D
   (`scores`), every test slice also scored on its own and pooled (`pooled`), both with the
   one definition of each metric (`measures`);
2. summarising (`summary`, with `agreement`): headline means with bootstrap intervals, triage
   at the volume threshold chosen on the validation cases, volume agreement;
3. drawing (`figures`): confusion matrix, slice Dice histogram, Bland-Altman plot, the few best
   and worst slices (predicted again for their pictures).

This module runs them in that order and writes the tables and metrics files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from pipeline.evaluate.cases import CaseEvaluation, evaluate_cases, read_test_slice
from pipeline.evaluate.figures import (
    bland_altman_png,
    confusion_png,
    extreme_slices,
    slice_dice_histogram_png,
    slice_picture,
)
from pipeline.evaluate.pooled import SegmentationEvaluation
from pipeline.evaluate.summary import cases_csv, summarize_cases
from pipeline.infer.inference import Segmenter
from pipeline.io import (
    atomic_path,
    write_bytes_atomic,
    write_json,
    write_png,
    write_text_atomic,
)
from pipeline.params import Params

# The reference's evaluation.csv held these two lines; ours lists them first.
REFERENCE_KEYS = ("categorical_crossentropy", "dice_coef_multiclass")


def evaluation_csv(metrics: Mapping[str, object]) -> str:
    """The reference's `name,value` lines (no header), then our per-class numbers; null = ''."""
    keys = [*REFERENCE_KEYS] + [
        key
        for key, value in metrics.items()
        if key not in REFERENCE_KEYS
        and not key.endswith("_null_reason")
        and not key.startswith("pixels_true_")
        and not isinstance(value, str)
    ]
    return "".join(f"{key},{format_value(metrics[key])}\n" for key in keys)


def format_value(value: object) -> str:
    """Counts as integers, ratios and distances to 4 decimals (as the reference), null as ''."""
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}"


def confusion_table(evaluation: SegmentationEvaluation) -> str:
    """The pixel confusion matrix (classes x classes) as CSV: one row per actual class, one
    column per predicted class."""
    header = "actual," + ",".join(evaluation.labels)
    rows = [
        f"{label}," + ",".join(str(int(count)) for count in evaluation.confusion[index])
        for index, label in enumerate(evaluation.labels)
    ]
    return "\n".join([header, *rows]) + "\n"


def slice_decisions(evaluation: SegmentationEvaluation) -> str:
    """One row per test slice for DVC's `confusion` template: the lesion class with the most
    pixels in the truth (actual) and in the prediction (predicted), 'none' without lesion.

    A per-pixel table would hold every test pixel (a million rows at 128 px); this one holds
    one exact record per slice, and the pixel matrix is in confusion_matrix.csv/.png.
    """
    lines = ["id,actual,predicted"]
    for scores in sorted(evaluation.slices, key=lambda s: s.slice_id):
        lines.append(f"{scores.slice_id},{scores.actual},{scores.predicted}")
    return "\n".join(lines) + "\n"


def slice_dice_csv(evaluation: SegmentationEvaluation) -> str:
    columns = ["id", "class", "slice_class", "dice"]
    frame = pd.DataFrame(evaluation.slice_dice_rows(), columns=columns)
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.6f")


def write_reports(
    params: Params,
    evaluation: CaseEvaluation,
    segmenter: Segmenter,
    folder: Path,
    metrics_path: Path | str,
    confusion_path: Path | str,
    cases_path: Path | str,
) -> dict[str, object]:
    """Tables, plots and best/worst pictures into the report `folder` (a temporary one that
    replaces reports/evaluate when complete), the metrics JSON, the per-slice confusion
    records and the per-case table. Metrics: the per-case headlines first, then the
    slice-pooled figures. The last three are small and kept in git (`dvc plots diff` compares
    them across revisions with no cache), so they live outside the cached report folder."""
    pooled = evaluation.pooled
    metrics = {
        **summarize_cases(
            evaluation.test,
            evaluation.valid,
            params.seed,
            params.evaluate.bootstrap_samples,
            [lesion.label for lesion in params.lesion_classes],
        ),
        **pooled.metrics(),
    }
    rows = evaluation.rows
    by_id = {str(row["id"]): row for _, row in rows.iterrows()}
    write_text_atomic(folder / "evaluation.csv", evaluation_csv(metrics))
    write_text_atomic(folder / "confusion_matrix.csv", confusion_table(pooled))
    write_text_atomic(folder / "slice_dice.csv", slice_dice_csv(pooled))
    write_bytes_atomic(folder / "confusion_matrix.png", confusion_png(pooled))
    write_bytes_atomic(
        folder / "slice_dice_histogram.png",
        slice_dice_histogram_png(pooled, params.lesion_classes),
    )
    write_bytes_atomic(
        folder / "volume_agreement.png", bland_altman_png(evaluation.test, params.lesion_classes)
    )
    for prefix, scores in extreme_slices(pooled, params.evaluate.overlay_slices):
        item = read_test_slice(rows, by_id[scores.slice_id], params.palette, segmenter.size)
        labels = segmenter.segment([item.grey])[0]
        picture = slice_picture(item, labels, scores, params.palette)
        write_png(folder / "overlays" / f"{prefix}_{scores.slice_id}.png", picture)
    write_text_atomic(confusion_path, slice_decisions(pooled))
    write_text_atomic(cases_path, cases_csv(evaluation.test))
    write_json(metrics_path, metrics)
    return metrics


def run_evaluation(
    params: Params,
    manifest_path: Path | str,
    model_path: Path | str,
    report_dir: Path | str,
    metrics_path: Path | str,
    confusion_path: Path | str,
    cases_path: Path | str,
) -> dict[str, object]:
    """The whole stage; reports/evaluate appears only when complete."""
    segmenter = Segmenter.from_file(model_path, params.evaluate.batch_size)
    with atomic_path(report_dir) as folder:
        evaluation = evaluate_cases(params, manifest_path, segmenter, folder / "predictions")
        return write_reports(
            params, evaluation, segmenter, folder, metrics_path, confusion_path, cases_path
        )


def summary_lines(metrics: Mapping[str, object], keys: Iterable[str]) -> list[str]:
    """`key value` lines for the console, nulls shown with their reason."""
    return [
        f"{key:34s} "
        + (
            format_value(metrics[key])
            if metrics[key] is not None
            else f"null ({metrics.get(f'{key}_null_reason')})"
        )
        for key in keys
    ]
