"""Stage `evaluate`: score the trained model on the test split and draw its reports.

The test slices are predicted `evaluate.batch_size` at a time and scored one by one
(`pipeline.metrics.SegmentationEvaluation`), so memory stays bounded whatever the test set's
size; the few best and worst slices are predicted again for their pictures.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.inference import Segmenter, batches, comparison_panel, to_model_input
from pipeline.io import (
    DataError,
    atomic_path,
    read_image,
    read_manifest,
    resolve_path,
    verify_content,
    write_bytes_atomic,
    write_json,
    write_png,
    write_text_atomic,
)
from pipeline.masks import Palette, colour_to_index
from pipeline.metrics import CLASS_LABELS, LESION_CLASSES, SegmentationEvaluation, SliceScores
from pipeline.params import Params

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The reference's evaluation.csv held these two lines; ours lists them first.
REFERENCE_KEYS = ("categorical_crossentropy", "dice_coef_multiclass")


@dataclass(frozen=True)
class EvaluationSlice:
    slice_id: str
    grey: np.ndarray
    truth: np.ndarray


def evaluation_rows(manifest_path: Path | str) -> pd.DataFrame:
    """The split manifest's test slices, sorted by id."""
    frame = read_manifest(manifest_path, extra_columns=("split", "mini_test"))
    chosen = frame[frame["split"] == "test"]
    if chosen.empty:
        raise DataError(f"{manifest_path}: no slice in the test split")
    verify_content(chosen)
    return chosen.sort_values("id", kind="stable")


def read_test_slice(
    rows: pd.DataFrame, row: pd.Series, palette: Palette, size: int
) -> EvaluationSlice:
    """Grey image and class-index truth of one slice, checked to be at the model's size."""
    image_path = resolve_path(rows, row["image_path"])
    mask_path = resolve_path(rows, row["mask_path"])
    grey = read_image(image_path)
    truth = colour_to_index(read_image(mask_path, color=True), palette, str(mask_path))
    for path, shape in ((image_path, grey.shape), (mask_path, truth.shape)):
        if shape != (size, size):
            raise DataError(
                f"{path}: {shape[1]}x{shape[0]} px but the model takes {size}x{size} "
                "(was the model trained with this image_size?)"
            )
    return EvaluationSlice(str(row["id"]), grey, truth)


def evaluate_test_split(
    params: Params, manifest_path: Path | str, segmenter: Segmenter
) -> tuple[SegmentationEvaluation, pd.DataFrame]:
    """Score every test slice; returns the evaluation and the test rows."""
    rows = evaluation_rows(manifest_path)
    evaluation = SegmentationEvaluation(params.evaluate.nsd_tolerance_px)
    records = [row for _, row in rows.iterrows()]
    with tqdm(total=len(records), desc="evaluate", unit="img", mininterval=1.0) as progress:
        for chunk in batches(records, params.evaluate.batch_size):
            slices = [read_test_slice(rows, row, params.palette, segmenter.size) for row in chunk]
            inputs = np.stack([to_model_input(item.grey, segmenter.size) for item in slices])
            for item, softmax in zip(slices, segmenter.softmax(inputs), strict=True):
                evaluation.add(item.slice_id, item.truth, softmax)
            progress.update(len(chunk))
    return evaluation, rows


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
    """The 3x3 pixel confusion matrix as CSV: one row per actual class, one column per
    predicted class."""
    header = "actual," + ",".join(CLASS_LABELS)
    rows = [
        f"{label}," + ",".join(str(int(count)) for count in evaluation.confusion[index])
        for index, label in enumerate(CLASS_LABELS)
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


def _figure_png(figure: Figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    # No creation metadata: the same numbers give the same bytes.
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def confusion_png(evaluation: SegmentationEvaluation) -> bytes:
    """Heatmap of the pixel confusion matrix, coloured by row share, annotated with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = evaluation.confusion.astype(np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    figure, axis = plt.subplots(figsize=(5.6, 4.4), layout="constrained")
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for actual in range(len(CLASS_LABELS)):
        for predicted in range(len(CLASS_LABELS)):
            share = shares[actual, predicted]
            axis.text(
                predicted,
                actual,
                f"{int(counts[actual, predicted])}\n{100 * share:.1f}%",
                ha="center",
                va="center",
                color="white" if share > 0.5 else "black",
                fontsize=9,
            )
    axis.set_xticks(range(len(CLASS_LABELS)), CLASS_LABELS)
    axis.set_yticks(range(len(CLASS_LABELS)), CLASS_LABELS)
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    axis.set_title("test pixels (colour: share of the actual class)")
    figure.colorbar(image, ax=axis, fraction=0.046)
    return _figure_png(figure)


def slice_dice_histogram_png(evaluation: SegmentationEvaluation) -> bytes:
    """Histogram of per-slice Dice, one colour per lesion class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = evaluation.slice_dice_rows()
    figure, axis = plt.subplots(figsize=(6.0, 3.6), layout="constrained")
    names = list(LESION_CLASSES.values())
    values = [[row["dice"] for row in rows if row["class"] == name] for name in names]
    axis.hist(
        values,
        bins=np.linspace(0.0, 1.0, 21),
        color=["tab:red", "tab:green"],
        label=[f"{name} ({len(v)} slices)" for name, v in zip(names, values, strict=True)],
    )
    axis.yaxis.get_major_locator().set_params(integer=True)
    axis.set_xlabel("Dice per slice (slices holding the class in truth or prediction)")
    axis.set_ylabel("slices")
    axis.legend()
    return _figure_png(figure)


def slice_picture(
    item: EvaluationSlice, labels: np.ndarray, scores: SliceScores, palette: Palette
) -> np.ndarray:
    """image | ground truth | prediction overlays, labelled with the id and the slice Dice."""
    return comparison_panel(
        item.grey,
        item.truth,
        labels,
        palette,
        title=scores.slice_id,
        prediction_title=f"prediction  Dice {scores.score:.3f}",
    )


def extreme_slices(evaluation: SegmentationEvaluation, count: int) -> list[tuple[str, SliceScores]]:
    """(file stem prefix, scores) of the `count` best and `count` worst slices, disjoint."""
    ranked = evaluation.ranked_slices()
    best = ranked[:count]
    worst = ranked[max(count, len(ranked) - count) :][::-1]
    return [(f"best_{rank + 1}", s) for rank, s in enumerate(best)] + [
        (f"worst_{rank + 1}", s) for rank, s in enumerate(worst)
    ]


def write_reports(
    params: Params,
    evaluation: SegmentationEvaluation,
    rows: pd.DataFrame,
    segmenter: Segmenter,
    report_dir: Path | str,
    metrics_path: Path | str,
    confusion_path: Path | str,
) -> dict[str, object]:
    """reports/evaluate/ (tables, plots, best/worst pictures), metrics JSON and the
    per-slice confusion records; the report folder appears only when complete."""
    metrics = evaluation.metrics()
    by_id = {str(row["id"]): row for _, row in rows.iterrows()}
    with atomic_path(report_dir) as folder:
        write_text_atomic(folder / "evaluation.csv", evaluation_csv(metrics))
        write_text_atomic(folder / "confusion_matrix.csv", confusion_table(evaluation))
        write_text_atomic(folder / "slice_dice.csv", slice_dice_csv(evaluation))
        write_bytes_atomic(folder / "confusion_matrix.png", confusion_png(evaluation))
        write_bytes_atomic(
            folder / "slice_dice_histogram.png", slice_dice_histogram_png(evaluation)
        )
        for prefix, scores in extreme_slices(evaluation, params.evaluate.overlay_slices):
            item = read_test_slice(rows, by_id[scores.slice_id], params.palette, segmenter.size)
            labels = segmenter.segment([item.grey])[0]
            picture = slice_picture(item, labels, scores, params.palette)
            write_png(folder / "overlays" / f"{prefix}_{scores.slice_id}.png", picture)
    write_text_atomic(confusion_path, slice_decisions(evaluation))
    write_json(metrics_path, metrics)
    return metrics


def run_evaluation(
    params: Params,
    manifest_path: Path | str,
    model_path: Path | str,
    report_dir: Path | str,
    metrics_path: Path | str,
    confusion_path: Path | str,
) -> dict[str, object]:
    segmenter = Segmenter.from_file(model_path, params.evaluate.batch_size)
    evaluation, rows = evaluate_test_split(params, manifest_path, segmenter)
    return write_reports(
        params, evaluation, rows, segmenter, report_dir, metrics_path, confusion_path
    )


def summary_lines(metrics: Mapping[str, object], keys: Iterable[str]) -> list[str]:
    """`key value` lines for the console, nulls shown with their reason."""
    return [
        f"{key:28s} "
        + (
            format_value(metrics[key])
            if metrics[key] is not None
            else f"null ({metrics.get(f'{key}_null_reason')})"
        )
        for key in keys
    ]
