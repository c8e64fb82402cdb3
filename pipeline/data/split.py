"""Case-level (patient-level) train/valid/test split, stratified by class (stage `split`).

Whole cases go to one split, so neighbouring slices of a patient (and, later, their distorted
copies) never sit on both sides of an evaluation: the reference split files at random after
augmenting, which leaked patients into its test set. Per class, the case ids are sorted, then
shuffled by a generator seeded from `seed` and the class, and cut by the ratios with at least
one case in every split. `mini_test` takes the test slices with the largest lesions, spread
over different cases. Split integrity is checked with Great Expectations before anything is
written; a critical failure stops the stage.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.classes import SOURCE_CLASSES
from pipeline.data.expectations import Check, enforce, gxe, run_suite
from pipeline.io import DataError, relative_to, resolve_path
from pipeline.params import SplitParams, SplitRatios
from pipeline.data.stats import class_counts

LOG = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
# Every split holds at least one case of every class, so a class needs one case per split.
# No ratio raises it (`split_sizes` moves a case from the largest split into any split that
# rounds to zero) and mini_test only picks slices of the test cases, so this is the whole
# minimum; validate checks it before split runs (`pipeline.data.validate`).
MIN_CASES_PER_CLASS = len(SPLITS)


def split_sizes(case_count: int, ratios: SplitRatios, class_name: str) -> dict[str, int]:
    """Cases per split for one class: the ratios rounded by largest remainder, >= 1 each.

    A split that rounds to zero cases takes one from the largest split, so every class is
    present in train, valid and test; fewer than three cases cannot be split that way.
    """
    shares = [case_count * getattr(ratios, name) for name in SPLITS]
    if case_count < MIN_CASES_PER_CLASS:
        raise DataError(
            f"class {class_name} has {case_count} cases, fewer than the {MIN_CASES_PER_CLASS} "
            f"that split.ratios (train {ratios.train:g} / valid {ratios.valid:g} / test "
            f"{ratios.test:g}) need: every split needs at least one case of every class"
        )
    sizes = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(SPLITS)), key=lambda i: (sizes[i] - shares[i], i))
    for index in by_remainder[: case_count - sum(sizes)]:
        sizes[index] += 1
    for index in range(len(SPLITS)):
        if sizes[index] == 0:
            largest = max(range(len(SPLITS)), key=lambda i: (sizes[i], -i))
            sizes[largest] -= 1
            sizes[index] = 1
    return dict(zip(SPLITS, sizes, strict=True))


def _check_classes(manifest: pd.DataFrame, source: str) -> None:
    unknown = sorted(set(manifest["class"]) - set(SOURCE_CLASSES))
    if unknown:
        raise DataError(f"{source}: unknown classes {unknown} (expected {list(SOURCE_CLASSES)})")
    classes_per_case = manifest.groupby("case_id")["class"].nunique()
    mixed = classes_per_case[classes_per_case > 1].index.tolist()
    if mixed:
        raise DataError(
            f"{source}: case ids {mixed[:5]} hold slices of both classes; a case id must name "
            f"one patient of one class, or the case-level split cannot keep it in one split"
        )


def assign_splits(manifest: pd.DataFrame, params: SplitParams, seed: int) -> pd.Series:
    """Split name per row (indexed like `manifest`), whole cases per split, per class."""
    source = str(Path(manifest.attrs.get("root", ".")) / "manifest.csv")
    _check_classes(manifest, source)
    split_of_case: dict[str, str] = {}
    for class_index, class_name in enumerate(SOURCE_CLASSES):
        cases = sorted(set(manifest.loc[manifest["class"] == class_name, "case_id"]))
        sizes = split_sizes(len(cases), params.ratios, class_name)
        # One stream per class: adding cases of one class leaves the other's split unchanged.
        order = np.random.default_rng([seed, class_index]).permutation(len(cases))
        names = [name for name in SPLITS for _ in range(sizes[name])]
        for position, case_index in enumerate(order):
            split_of_case[cases[case_index]] = names[position]
    return manifest["case_id"].map(split_of_case).astype("string")


def pick_mini_test(table: pd.DataFrame, per_class: int) -> pd.Series:
    """True for `per_class` test slices with lesions per class, as varied as possible.

    Largest lesions first, but each case gives its best slice before any case gives a
    second, so the preview shows several patients. Ties break by id (deterministic).
    """
    chosen = pd.Series(False, index=table.index)
    for class_name in SOURCE_CLASSES:
        candidates = table[
            (table["split"] == "test")
            & (table["class"] == class_name)
            & (table["lesion_pixels"] > 0)
        ].sort_values(["lesion_pixels", "id"], ascending=[False, True], kind="stable")
        rank_in_case = candidates.groupby("case_id").cumcount()
        ranked = candidates.assign(rank_in_case=rank_in_case).sort_values(
            ["rank_in_case", "lesion_pixels", "id"], ascending=[True, False, True], kind="stable"
        )
        if len(ranked) < per_class:
            LOG.warning(
                f"split: only {len(ranked)} {class_name} test slices have lesions, "
                f"mini_test_per_class is {per_class}"
            )
        chosen[ranked.index[:per_class]] = True
    return chosen


def split_manifest(
    manifest: pd.DataFrame, params: SplitParams, seed: int, out_folder: Path
) -> pd.DataFrame:
    """The input manifest plus `split` and `mini_test`, paths rewritten relative to `out_folder`."""
    table = manifest.copy()
    table["split"] = assign_splits(manifest, params, seed)
    table["mini_test"] = pick_mini_test(table, params.mini_test_per_class)
    for column in ("image_path", "mask_path"):
        table[column] = [relative_to(resolve_path(manifest, p), out_folder) for p in table[column]]
    table.attrs = {}
    return table


def split_checks(expected_rows: int) -> list[Check]:
    """Integrity of a split table (with the derived columns of `_check_table`)."""
    every_pair = [f"{split}/{name}" for split in SPLITS for name in SOURCE_CLASSES]
    on_mini_test = {"row_condition": "mini_test == True", "condition_parser": "pandas"}
    return [
        Check(
            "every input slice is in the split",
            gxe.ExpectTableRowCountToEqual(value=expected_rows),
        ),
        Check("slice ids are unique", gxe.ExpectColumnValuesToBeUnique(column="id")),
        Check(
            "split is train, valid or test",
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        ),
        Check(
            "each case is in exactly one split",
            gxe.ExpectColumnValuesToBeBetween(column="splits_of_case", min_value=1, max_value=1),
        ),
        Check(
            "every class is in every split",
            gxe.ExpectColumnDistinctValuesToContainSet(column="split_class", value_set=every_pair),
        ),
        Check(
            "mini_test slices are test slices",
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["test"], **on_mini_test),
        ),
        Check(
            "mini_test slices have lesions",
            gxe.ExpectColumnValuesToBeBetween(column="lesion_pixels", min_value=1, **on_mini_test),
        ),
        Check(
            "mini_test shows every class",
            gxe.ExpectColumnDistinctValuesToContainSet(
                column="class", value_set=list(SOURCE_CLASSES), **on_mini_test
            ),
            critical=False,
        ),
    ]


def _check_table(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(
        splits_of_case=table.groupby("case_id")["split"].transform("nunique"),
        split_class=table["split"].astype(str) + "/" + table["class"].astype(str),
        mini_test=table["mini_test"].astype(bool),
    )


def validate_split(table: pd.DataFrame, expected_rows: int) -> None:
    """Run the split's Great Expectations suite; raise `ValidationFailed` on a critical failure."""
    enforce(run_suite(_check_table(table), split_checks(expected_rows), "split"))


def split_metrics(table: pd.DataFrame) -> dict[str, int]:
    """Flat counts: slices and cases per split and class, per split, mini_test, totals."""
    counts = class_counts(table, "split", SPLITS)
    metrics: dict[str, int] = {}
    for row in counts.to_dict("records"):
        split, lesion_class = row["group"], str(row["class"]).lower()
        metrics[f"{split}_slices_{lesion_class}"] = int(row["slices"])
        metrics[f"{split}_cases_{lesion_class}"] = int(row["cases"])
    for split in SPLITS:
        in_split = table[table["split"] == split]
        metrics[f"{split}_slices"] = len(in_split)
        metrics[f"{split}_cases"] = int(in_split["case_id"].nunique())
    for class_name in SOURCE_CLASSES:
        picked = table["mini_test"] & (table["class"] == class_name)
        metrics[f"mini_test_slices_{class_name.lower()}"] = int(picked.sum())
    metrics["total_slices"] = len(table)
    metrics["total_cases"] = int(table["case_id"].nunique())
    return metrics
