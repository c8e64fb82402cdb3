"""Scoring, the first step of `evaluate`: the test and validation cases read from the split
manifest, predicted `evaluate.batch_size` slices at a time, stacked in slice order into a
volume and scored in 3-D in mm (`pipeline.evaluate.scores`), one case in memory at a time.
Every test slice is also scored on its own into the slice-pooled figures
(`pipeline.evaluate.pooled`), and each test prediction is written as a PNG.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.classes import class_labels
from pipeline.evaluate.pooled import SegmentationEvaluation
from pipeline.evaluate.scores import CaseResult, Spacing, score_case_class
from pipeline.infer.inference import Segmenter, batches, to_model_input
from pipeline.io import (
    DataError,
    encode_png,
    read_image,
    read_manifest,
    resolve_path,
    verify_content,
)
from pipeline.masks import Palette, colour_to_index, index_to_colour
from pipeline.params import Params


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
