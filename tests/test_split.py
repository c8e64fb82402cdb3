"""Stage `split`: case-level, stratified, deterministic; integrity gate; mini_test choice."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.classes import SOURCE_CLASSES
from pipeline.data.expectations import ValidationFailed
from pipeline.data.split import (
    MIN_CASES_PER_CLASS,
    SPLITS,
    pick_mini_test,
    split_manifest,
    split_sizes,
    validate_split,
)
from pipeline.io import DataError, read_manifest, resolve_path, write_manifest, write_png
from pipeline.params import Params
from stages import split as split_stage
from tests.conftest import original_row, project_params, with_sha256

PALETTE = project_params().palette


def write_colorized(
    folder: Path,
    cases: list[str],
    *,
    slices_per_case: int = 3,
    size: int = 32,
    lesion_free_every: int = 3,
) -> Path:
    """A tiny `data/colorized`-like folder: grey images, palette masks with a disc lesion.

    `cases` lists "<Class>/<case_id>" keys; every case gets `slices_per_case` slices, every
    `lesion_free_every`-th of them without lesion. The lesion radius grows with the slice
    number, so slices have distinct lesion sizes.
    """
    rows = []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    for case_number, key in enumerate(sorted(cases)):
        class_name, case_id = key.split("/")
        class_index = SOURCE_CLASSES.index(class_name) + 1
        for slice_number in range(slices_per_case):
            slice_id = f"{class_name}_{case_id}_{slice_number:03d}"
            image = np.full((size, size), 40 + 10 * slice_number + case_number, np.uint8)
            cv2.circle(image, (size // 2, size // 2), size // 3, 120, -1)
            index_mask = np.zeros((size, size), np.uint8)
            if (slice_number + 1) % lesion_free_every:
                radius = 2 + slice_number + case_number % 3
                centre = (size // 2 + slice_number % 3, size // 2 - 2)
                cv2.circle(index_mask, centre, radius, class_index, -1)
                cv2.circle(image, centre, radius, 200, -1)
            mask = np.asarray(PALETTE, np.uint8)[index_mask]
            write_png(folder / "images" / f"{slice_id}.png", image)
            write_png(folder / "masks" / f"{slice_id}.png", mask)
            lesion_pixels = int(np.count_nonzero(index_mask))
            rows.append(original_row(slice_id, case_id, class_name, size, lesion_pixels))
    write_manifest(folder / "manifest.csv", with_sha256(rows, folder))
    return folder / "manifest.csv"


def case_keys(hemorrhagic: int, ischemic: int) -> list[str]:
    keys = [f"Hemorrhagic/{49 + i:03d}" for i in range(hemorrhagic)]
    return keys + [f"Ischemic/{19983 + i:07d}" for i in range(ischemic)]


def run_split_stage(root: Path, monkeypatch: pytest.MonkeyPatch, params: Params) -> pd.DataFrame:
    monkeypatch.chdir(root)
    split_stage.main(params)
    return read_manifest(root / "data/split/manifest.csv", extra_columns=("split", "mini_test"))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_colorized(tmp_path / "data/colorized", case_keys(6, 10), slices_per_case=4)
    return tmp_path


ratio_values = st.floats(min_value=0.05, max_value=0.9)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=3, max_value=300), ratio_values, ratio_values)
def test_split_sizes_cover_all_cases_with_one_per_split_at_least(count, train, valid):
    test = 1.0 - train - valid
    if test <= 0.01:
        return
    ratios = project_params(
        {"split": {"ratios": {"train": train, "valid": valid, "test": test}}}
    ).split.ratios
    sizes = split_sizes(count, ratios, "Hemorrhagic")
    assert sum(sizes.values()) == count
    assert min(sizes.values()) >= 1
    if all(count * getattr(ratios, name) >= 1 for name in SPLITS):
        for name in SPLITS:
            assert abs(sizes[name] - count * getattr(ratios, name)) < 1.0


def test_too_few_cases_names_class_count_and_ratios():
    with pytest.raises(
        DataError, match=r"class Ischemic has 2 cases, fewer than the 3 that split.ratios"
    ):
        split_sizes(2, project_params().split.ratios, "Ischemic")


@settings(max_examples=60, deadline=None)
@given(ratio_values, ratio_values)
def test_the_minimum_cases_per_class_that_validate_checks_is_splits_whatever_the_ratios(
    train, valid
):
    test = 1.0 - train - valid
    if test <= 0.01:
        return
    ratios = project_params(
        {"split": {"ratios": {"train": train, "valid": valid, "test": test}}}
    ).split.ratios
    assert min(split_sizes(MIN_CASES_PER_CLASS, ratios, "Ischemic").values()) == 1
    with pytest.raises(DataError, match="fewer than the"):
        split_sizes(MIN_CASES_PER_CLASS - 1, ratios, "Ischemic")


def test_stage_splits_whole_cases_and_writes_outputs(project, monkeypatch):
    table = run_split_stage(project, monkeypatch, project_params())
    colorized = read_manifest(project / "data/colorized/manifest.csv")
    assert sorted(table["id"]) == sorted(colorized["id"])
    # No leakage: every case id sits in exactly one split.
    assert (table.groupby("case_id")["split"].nunique() == 1).all()
    for split in SPLITS:
        assert set(table.loc[table["split"] == split, "class"]) == set(SOURCE_CLASSES)
    # Paths point into ../colorized and resolve to the files.
    assert all(path.startswith("../colorized/images/") for path in table["image_path"])
    assert all(resolve_path(table, path).is_file() for path in table["mask_path"])
    # mini_test: test slices with lesions, mini_test_per_class (3) per class.
    mini = table[table["mini_test"]]
    assert set(mini["split"]) == {"test"} and (mini["lesion_pixels"] > 0).all()
    assert mini["class"].value_counts().to_dict() == {"Hemorrhagic": 3, "Ischemic": 3}
    metrics = json.loads((project / "metrics/split.json").read_text())
    for split in SPLITS:
        in_split = table[table["split"] == split]
        assert metrics[f"{split}_slices"] == len(in_split)
        assert (
            metrics[f"{split}_cases_hemorrhagic"]
            == in_split.loc[in_split["class"] == "Hemorrhagic", "case_id"].nunique()
        )
    assert metrics["total_slices"] == len(table) and metrics["total_cases"] == 16
    # 6 and 10 cases at 0.5/0.2/0.3, by largest remainder: 3/1/2 and 5/2/3.
    assert [metrics[f"{s}_cases_hemorrhagic"] for s in SPLITS] == [3, 1, 2]
    assert [metrics[f"{s}_cases_ischemic"] for s in SPLITS] == [5, 2, 3]
    assert (project / "reports/split_statistics.png").stat().st_size > 1000


def test_split_is_deterministic_and_depends_on_seed(project):
    colorized = read_manifest(project / "data/colorized/manifest.csv")
    out = project / "data/split"
    first = split_manifest(colorized, project_params().split, 42, out)
    again = split_manifest(colorized, project_params().split, 42, out)
    other = split_manifest(colorized, project_params().split, 7, out)
    pd.testing.assert_frame_equal(first, again)
    assert not first["split"].equals(other["split"])
    # Case lists are sorted before shuffling: row order of the input does not matter.
    shuffled = colorized.sample(frac=1.0, random_state=0)
    shuffled.attrs = colorized.attrs
    reordered = split_manifest(shuffled, project_params().split, 42, out)
    assert reordered.set_index("id")["split"].to_dict() == first.set_index("id")["split"].to_dict()


def test_adding_cases_of_one_class_keeps_the_other_class_split(tmp_path):
    small = read_manifest(write_colorized(tmp_path / "a", case_keys(5, 8)))
    large = read_manifest(write_colorized(tmp_path / "b", case_keys(9, 8)))
    ischemic = [
        split_manifest(frame, project_params().split, 42, tmp_path)
        .query("`class` == 'Ischemic'")
        .set_index("id")["split"]
        .to_dict()
        for frame in (small, large)
    ]
    assert ischemic[0] == ischemic[1]


def test_mini_test_prefers_largest_lesions_from_different_cases():
    rows = [
        ("a1", "A", 100),
        ("a2", "A", 90),
        ("a3", "A", 0),
        ("b1", "B", 50),
        ("c1", "C", 0),
    ]
    table = pd.DataFrame(
        {
            "id": [r[0] for r in rows] + ["train1"],
            "case_id": [r[1] for r in rows] + ["T"],
            "class": "Hemorrhagic",
            "split": ["test"] * len(rows) + ["train"],
            "lesion_pixels": [r[2] for r in rows] + [500],
        }
    )
    assert table.loc[pick_mini_test(table, 2), "id"].tolist() == ["a1", "b1"]
    assert table.loc[pick_mini_test(table, 3), "id"].tolist() == ["a1", "a2", "b1"]
    # Only three test slices have lesions: asking for five gives those three.
    assert pick_mini_test(table, 5).sum() == 3


def test_class_with_too_few_cases_stops_the_stage(tmp_path, monkeypatch):
    write_colorized(tmp_path / "data/colorized", case_keys(2, 6))
    with pytest.raises(DataError, match="class Hemorrhagic has 2 cases"):
        run_split_stage(tmp_path, monkeypatch, project_params())
    assert not (tmp_path / "data/split").exists()


def test_case_id_in_both_classes_is_rejected(tmp_path):
    keys = [*case_keys(3, 3), "Ischemic/049"]
    colorized = read_manifest(write_colorized(tmp_path, keys))
    with pytest.raises(DataError, match=r"case ids \['049'\] hold slices of both classes"):
        split_manifest(colorized, project_params().split, 42, tmp_path)


def test_integrity_gate_catches_leakage_and_a_missing_class(project):
    colorized = read_manifest(project / "data/colorized/manifest.csv")
    table = split_manifest(colorized, project_params().split, 42, project / "data/split")
    validate_split(table, expected_rows=len(table))  # the real split passes

    leaky = table.copy()
    case = leaky.loc[leaky["split"] == "train", "case_id"].iloc[0]
    first_slice = leaky.index[leaky["case_id"] == case][0]
    leaky.loc[first_slice, "split"] = "test"
    # Every ischemic test case moved to valid: the test split lacks a class.
    leaky.loc[(leaky["class"] == "Ischemic") & (leaky["split"] == "test"), "split"] = "valid"
    leaky.loc[leaky["class"] == "Ischemic", "mini_test"] = False
    # A training slice flagged as mini_test.
    leaky.loc[leaky.index[leaky["split"] == "train"][0], "mini_test"] = True
    with pytest.raises(ValidationFailed) as failure:
        validate_split(leaky, expected_rows=len(leaky))
    message = str(failure.value)
    assert "each case is in exactly one split" in message
    assert "every class is in every split" in message
    assert "mini_test slices are test slices" in message
    assert "mini_test slices have lesions" not in message
