"""Stage `evaluate`: score the trained model on the test split and draw its reports.

The headline is per case (patient): each test case's slices are predicted
`evaluate.batch_size` at a time, stacked in slice order into a volume and scored in 3-D in mm
(`pipeline/evaluate/scores.py`), one case in memory at a time. The validation cases are
predicted too, only to choose the triage thresholds. Every test slice is also scored on its
own and pooled (`pipeline.evaluate.pooled.SegmentationEvaluation`, keys prefixed `pooled_`),
and the few best and worst slices are predicted again for their pictures.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.classes import LesionClass, class_labels
from pipeline.evaluate.agreement import volume_agreement
from pipeline.evaluate.pooled import SegmentationEvaluation, SliceScores
from pipeline.evaluate.scores import Spacing, score_case_class
from pipeline.evaluate.summary import CaseResult, cases_csv, summarize_cases
from pipeline.infer.inference import Segmenter, batches, comparison_panel, to_model_input
from pipeline.io import (
    DataError,
    atomic_path,
    encode_png,
    read_image,
    read_manifest,
    resolve_path,
    verify_content,
    write_bytes_atomic,
    write_json,
    write_png,
    write_text_atomic,
)
from pipeline.masks import Palette, colour_to_index, index_to_colour
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


def split_rows(manifest_path: Path | str, split: str) -> pd.DataFrame:
    """The split manifest's slices of one split, checked against their sha256, sorted by id."""
    frame = read_manifest(manifest_path, extra_columns=("split", "mini_test"))
    chosen = frame[frame["split"] == split]
    verify_content(chosen)
    return chosen.sort_values("id", kind="stable")


def slice_order_key(slice_id: str) -> tuple[object, ...]:
    """Natural order of slice ids: digit runs compare as numbers (`_9` before `_10`), so a
    case stacks in slice order even where slice numbers are not zero-padded."""
    return tuple(
        (1, int(part), "") if part.isdigit() else (0, 0, part)
        for part in re.split(r"(\d+)", slice_id)
    )


def case_groups(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame, Spacing]]:
    """(case id, its rows in slice order, its voxel spacing) per case, by case id.

    A case is one volume, so its slices must share one geometry; DataError names the
    manifest and the case otherwise.
    """
    source = rows.attrs.get("path", "manifest")
    groups = []
    for case_id, case_rows in rows.groupby("case_id", sort=True):
        ordered = case_rows.iloc[
            sorted(range(len(case_rows)), key=lambda i: slice_order_key(case_rows["id"].iloc[i]))
        ]
        geometry = ordered[["pixel_spacing_mm", "slice_thickness_mm"]].drop_duplicates()
        if len(geometry) != 1:
            raise DataError(
                f"{source}: case {case_id} mixes slice geometries "
                f"{geometry.to_dict('records')}; one case must be one volume"
            )
        try:
            spacing = Spacing(
                slice_thickness_mm=float(geometry["slice_thickness_mm"].iloc[0]),
                pixel_spacing_mm=float(geometry["pixel_spacing_mm"].iloc[0]),
            )
        except ValueError as error:
            raise DataError(f"{source}: case {case_id}: {error}") from None
        groups.append((str(case_id), ordered, spacing))
    return groups


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


@dataclass
class CaseEvaluation:
    """What scoring the test and validation cases yields."""

    test: list[CaseResult]
    valid: list[CaseResult]
    pooled: SegmentationEvaluation
    rows: pd.DataFrame


def score_case(
    params: Params,
    rows: pd.DataFrame,
    case: tuple[str, pd.DataFrame, Spacing],
    segmenter: Segmenter,
    pooled: SegmentationEvaluation | None = None,
    predictions: Path | None = None,
) -> CaseResult:
    """Predict one case's slices, stack truth and prediction in slice order, score in 3-D.

    With `pooled`, each test slice is also scored on its own; with `predictions`, each
    predicted slice is written there as `<id>.png` in the `rgb_map` colours.
    """
    case_id, case_rows, spacing = case
    truths: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    records = [row for _, row in case_rows.iterrows()]
    for chunk in batches(records, params.evaluate.batch_size):
        slices = [read_test_slice(rows, row, params.palette, segmenter.size) for row in chunk]
        inputs = np.stack([to_model_input(item.grey, segmenter.size) for item in slices])
        for item, softmax in zip(slices, segmenter.softmax(inputs), strict=True):
            prediction = softmax.argmax(axis=-1).astype(np.uint8)
            if pooled is not None:
                pooled.add(item.slice_id, item.truth, softmax, spacing.pixel_spacing_mm)
            if predictions is not None:
                colour = index_to_colour(prediction, params.palette)
                (predictions / f"{item.slice_id}.png").write_bytes(encode_png(colour))
            truths.append(item.truth)
            labels.append(prediction)
    truth, predicted = np.stack(truths), np.stack(labels)
    tolerance_mm = params.evaluate.nsd_tolerance_mm
    return CaseResult(
        case_id=case_id,
        class_name=str(case_rows["class"].iloc[0]),
        slices=len(records),
        spacing=spacing,
        scores={
            lesion.label: score_case_class(
                truth == lesion.index, predicted == lesion.index, spacing, tolerance_mm
            )
            for lesion in params.lesion_classes
        },
    )


def evaluate_cases(
    params: Params, manifest_path: Path | str, segmenter: Segmenter, predictions: Path
) -> CaseEvaluation:
    """Score every test case (writing its predictions) and every validation case."""
    rows = split_rows(manifest_path, "test")
    if rows.empty:
        raise DataError(f"{manifest_path}: no slice in the test split")
    valid_rows = split_rows(manifest_path, "valid")
    pooled = SegmentationEvaluation(params.evaluate.nsd_tolerance_mm, class_labels(params.rgb_map))
    predictions.mkdir(parents=True, exist_ok=True)
    test: list[CaseResult] = []
    valid: list[CaseResult] = []
    total = len(rows) + len(valid_rows)
    with tqdm(total=total, desc="evaluate", unit="img", mininterval=1.0) as progress:
        for case in case_groups(rows):
            test.append(score_case(params, rows, case, segmenter, pooled, predictions))
            progress.update(len(case[1]))
        for case in case_groups(valid_rows):
            valid.append(score_case(params, valid_rows, case, segmenter))
            progress.update(len(case[1]))
    return CaseEvaluation(test, valid, pooled, rows)


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


def figure_png(figure: Figure) -> bytes:
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
    labels = evaluation.labels
    for actual in range(len(labels)):
        for predicted in range(len(labels)):
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
    axis.set_xticks(range(len(labels)), labels)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    axis.set_title("test pixels (colour: share of the actual class)")
    figure.colorbar(image, ax=axis, fraction=0.046)
    return figure_png(figure)


def slice_dice_histogram_png(
    evaluation: SegmentationEvaluation, lesion_classes: Sequence[LesionClass]
) -> bytes:
    """Histogram of per-slice Dice, one colour per lesion class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = evaluation.slice_dice_rows()
    figure, axis = plt.subplots(figsize=(6.0, 3.6), layout="constrained")
    names = [lesion.label for lesion in lesion_classes]
    values = [[row["dice"] for row in rows if row["class"] == name] for name in names]
    axis.hist(
        values,
        bins=np.linspace(0.0, 1.0, 21),
        color=[lesion.display_colour for lesion in lesion_classes],
        label=[f"{name} ({len(v)} slices)" for name, v in zip(names, values, strict=True)],
    )
    axis.yaxis.get_major_locator().set_params(integer=True)
    axis.set_xlabel("Dice per slice (slices holding the class in truth or prediction)")
    axis.set_ylabel("slices")
    axis.legend()
    return figure_png(figure)


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


def bland_altman_png(cases: list[CaseResult], lesion_classes: Sequence[LesionClass]) -> bytes:
    """Bland-Altman per lesion class over the counted test cases: predicted minus true volume
    (mL) against their mean, with the bias (solid) and the 95% limits of agreement (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {lesion.name: lesion.display_colour for lesion in lesion_classes}
    figure, axes = plt.subplots(
        1,
        len(lesion_classes),
        figsize=(5.5 * len(lesion_classes), 4.2),
        layout="constrained",
        squeeze=False,
    )
    labels = [lesion.label for lesion in lesion_classes]
    for axis, lesion_class in zip(axes[0], labels, strict=True):
        counted = [case for case in cases if case.scores[lesion_class].counted]
        truth = np.array([case.scores[lesion_class].truth_volume_ml for case in counted])
        predicted = np.array([case.predicted_ml(lesion_class) for case in counted])
        for class_name, colour in colours.items():
            chosen = np.array([case.class_name == class_name for case in counted], dtype=bool)
            if chosen.any():
                axis.scatter(
                    ((predicted + truth) / 2.0)[chosen],
                    (predicted - truth)[chosen],
                    c=colour,
                    s=30,
                    label=f"{class_name} cases ({int(chosen.sum())})",
                )
        axis.axhline(0.0, color="lightgrey", lw=0.8, zorder=0)
        agreement = volume_agreement(predicted, truth)
        if agreement is not None:
            axis.axhline(agreement.bias_ml, color="black", lw=1.2)
            axis.plot([], [], color="black", lw=1.2, label=f"bias {agreement.bias_ml:+.2f} mL")
            if agreement.loa_low_ml is not None and agreement.loa_high_ml is not None:
                for bound in (agreement.loa_low_ml, agreement.loa_high_ml):
                    axis.axhline(bound, color="black", lw=1.0, ls="--")
                limits = f"{agreement.loa_low_ml:+.2f} to {agreement.loa_high_ml:+.2f} mL"
                axis.plot([], [], color="black", lw=1.0, ls="--", label=f"95% limits {limits}")
            axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)
        axis.set_xlabel(f"mean of predicted and true {lesion_class} volume (mL)")
        axis.set_ylabel("predicted - true (mL)")
        axis.set_title(
            f"{lesion_class} volume: {len(counted)} test cases with it in truth or prediction"
        )
    return figure_png(figure)


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
