"""The `validate` gate: each kind of defect fails the expectation that names it; clean data passes.

Fixtures are tiny file sets written here (32x32 PNGs and a manifest), three cases of four
slices per class, so every check runs on real files in well under a second.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.expectations import ValidationFailed, run_suite
from pipeline.data.split import MIN_CASES_PER_CLASS
from pipeline.data.stats import class_counts, plot_class_counts
from pipeline.data.validate import (
    ValidateOutputs,
    build_slice_table,
    class_table,
    slice_checks,
    validate_extracted,
)
from pipeline.io import read_image, read_manifest, resolve_path, write_manifest, write_png
from tests.conftest import (
    original_row,
    project_params,
    rehash_manifest,
    run_stage_command,
    with_sha256,
    write_project_params,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SIDE = 32
CASES = {"Hemorrhagic": ["049", "050", "051"], "Ischemic": ["0019983", "0019984", "0019985"]}
SLICES_PER_CASE = 4
PARAMS = project_params(
    {
        "validate": {
            "min_side": 16,
            "max_side": 64,
            "slices_per_class": {"min": 4, "max": 100},
            "cases_per_class": {"min": 3, "max": 10},
            "min_lesion_slice_share": 0.3,
            "workers": 1,
        }
    }
).validate


def lesion_mask(slice_number: int) -> np.ndarray:
    """0/255 mask: a square lesion on every slice but the first of each case."""
    mask = np.zeros((SIDE, SIDE), np.uint8)
    if slice_number > 0:
        mask[8 : 8 + 3 * slice_number, 10:20] = 255
    return mask


def write_dataset(root: Path) -> Path:
    """A clean extracted-data folder under `root`; returns its manifest path."""
    rows = []
    rng = np.random.default_rng(0)
    for class_name, cases in CASES.items():
        for case_id in cases:
            for number in range(SLICES_PER_CASE):
                slice_id = f"{class_name}_{case_id}_{number:03d}"
                mask = lesion_mask(number)
                write_png(
                    root / "images" / f"{slice_id}.png",
                    rng.integers(0, 256, (SIDE, SIDE), np.uint8),
                )
                write_png(root / "masks" / f"{slice_id}.png", mask)
                lesion_pixels = int((mask > 0).sum())
                rows.append(original_row(slice_id, case_id, class_name, SIDE, lesion_pixels))
    write_manifest(root / "manifest.csv", with_sha256(rows, root))
    return root / "manifest.csv"


def outputs_under(root: Path) -> ValidateOutputs:
    return ValidateOutputs(
        manifest=root / "validated" / "manifest.csv",
        metrics=root / "metrics" / "data.json",
        data_docs=root / "reports" / "data_docs",
        statistics=root / "reports" / "dataset_statistics.png",
    )


def edit_manifest(manifest_path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    write_manifest(manifest_path, edit(read_manifest(manifest_path)))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "extracted")


def test_clean_set_passes_and_writes_everything(dataset: Path, tmp_path: Path):
    outputs = outputs_under(tmp_path)
    report = validate_extracted(dataset, outputs, PARAMS)
    assert report.failed == ()
    assert len(report.outcomes) >= 20

    validated = read_manifest(outputs.manifest)
    extracted = read_manifest(dataset)
    assert validated["id"].tolist() == extracted["id"].tolist()
    assert validated["image_path"].iloc[0].startswith("../extracted/images/")
    for column in ("image_path", "mask_path"):
        first_validated = resolve_path(validated, validated[column].iloc[0])
        first_extracted = resolve_path(extracted, extracted[column].iloc[0])
        assert first_validated.resolve() == first_extracted.resolve()

    metrics = json.loads(outputs.metrics.read_text())
    assert metrics["slices"] == 24 and metrics["cases"] == 6
    assert metrics["slices_hemorrhagic"] == metrics["slices_ischemic"] == 12
    assert metrics["cases_hemorrhagic"] == metrics["cases_ischemic"] == 3
    assert metrics["lesion_slice_share_ischemic"] == pytest.approx(0.75)
    assert metrics["lesion_fraction_max"] == pytest.approx(9 * 10 / SIDE**2)
    assert metrics["expectations_failed"] == 0
    assert metrics["expectations_total"] == len(report.outcomes)
    assert all(isinstance(value, int | float) for value in metrics.values()), "metrics are flat"

    docs = outputs.data_docs
    assert (docs / "index.html").is_file()
    assert (docs / "slices" / "index.html").is_file() and (
        docs / "classes" / "index.html"
    ).is_file()
    assert outputs.statistics.read_bytes().startswith(b"\x89PNG")


def drop_mask(manifest_path: Path) -> str:
    (manifest_path.parent / "masks" / "Ischemic_0019984_002.png").unlink()
    return "Ischemic_0019984_002"


def grey_mask_values(manifest_path: Path) -> str:
    mask = lesion_mask(2)
    write_png(manifest_path.parent / "masks" / "Hemorrhagic_050_002.png", mask // 2)
    return "Hemorrhagic_050_002"


def mask_size_mismatch(manifest_path: Path) -> str:
    # Same lesion pixel count, one extra background column: only the size disagrees.
    mask = np.pad(lesion_mask(1), ((0, 0), (0, 8)))
    write_png(manifest_path.parent / "masks" / "Ischemic_0019985_001.png", mask)
    return "Ischemic_0019985_001"


def misspelt_class(manifest_path: Path) -> str:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        row = frame["id"] == "Hemorrhagic_051_003"
        frame.loc[row, ["class", "id", "source_id"]] = ["Haemorrhagic"] + [
            "Haemorrhagic_051_003"
        ] * 2
        return frame

    edit_manifest(manifest_path, edit)
    return "Haemorrhagic_051_003"


def duplicate_across_cases(manifest_path: Path) -> str:
    images = manifest_path.parent / "images"
    (images / "Ischemic_0019983_001.png").write_bytes(
        (images / "Hemorrhagic_049_001.png").read_bytes()
    )
    return "Hemorrhagic_049_001"


def too_few_slices(manifest_path: Path) -> str:
    # Three hemorrhagic slices left (one per case, below min 4); cases and lesion share still pass.
    edit_manifest(
        manifest_path,
        lambda frame: frame[(frame["class"] == "Ischemic") | frame["id"].str.endswith("_001")],
    )
    return "Hemorrhagic"


def corrupt_image(manifest_path: Path) -> str:
    path = manifest_path.parent / "images" / "Ischemic_0019983_003.png"
    path.write_bytes(path.read_bytes()[:30])
    return "Ischemic_0019983_003"


def wrong_lesion_count(manifest_path: Path) -> str:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[frame["id"] == "Hemorrhagic_049_003", "lesion_pixels"] = 7
        return frame

    edit_manifest(manifest_path, edit)
    return "Hemorrhagic_049_003"


def colour_image(manifest_path: Path) -> str:
    path = manifest_path.parent / "images" / "Ischemic_0019985_000.png"
    write_png(path, np.repeat(read_image(path)[..., None], 3, axis=-1))
    return "Ischemic_0019985_000"


def too_few_lesions(manifest_path: Path) -> str:
    for number in (1, 2, 3):
        write_png(
            manifest_path.parent / "masks" / f"Hemorrhagic_049_{number:03d}.png", lesion_mask(0)
        )
        write_png(
            manifest_path.parent / "masks" / f"Hemorrhagic_050_{number:03d}.png", lesion_mask(0)
        )

    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[frame["case_id"].isin(["049", "050"]), "lesion_pixels"] = 0
        return frame

    edit_manifest(manifest_path, edit)
    return "Hemorrhagic"


@pytest.mark.parametrize(
    ("defect", "failing_checks"),
    [
        (drop_mask, {"every_image_has_a_mask"}),
        (grey_mask_values, {"masks_binary"}),
        (mask_size_mismatch, {"image_and_mask_same_size"}),
        (misspelt_class, {"class_is_known"}),
        (duplicate_across_cases, {"no_identical_image_in_two_cases"}),
        (too_few_slices, {"slices_per_class_within_bounds"}),
        (corrupt_image, {"image_readable"}),
        (wrong_lesion_count, {"manifest_lesion_pixels_match_mask"}),
        (colour_image, {"image_single_channel"}),
        (too_few_lesions, {"lesion_slice_share_per_class"}),
    ],
)
def test_each_defect_fails_the_check_that_names_it(
    defect: Callable[[Path], str], failing_checks: set[str], dataset: Path, tmp_path: Path
):
    example = defect(dataset)
    rehash_manifest(dataset)  # each defect stands for files as extract wrote them
    outputs = outputs_under(tmp_path)
    with pytest.raises(ValidationFailed) as raised:
        validate_extracted(dataset, outputs, PARAMS)
    failed = {outcome.name for outcome in raised.value.report.critical_failures}
    assert failed == failing_checks
    message = str(raised.value)
    for name in failing_checks:
        assert f"- {name} [" in message
    assert example in message, "the summary must show an example of the offending rows"
    assert not outputs.manifest.exists(), "a failed gate must not write the validated manifest"
    metrics = json.loads(outputs.metrics.read_text())
    assert metrics["expectations_failed_critical"] == len(failing_checks)


def test_a_file_changed_after_extract_fails_the_sha256_check(dataset: Path, tmp_path: Path):
    path = dataset.parent / "images" / "Hemorrhagic_050_002.png"
    image = read_image(path)
    image[0, 0] ^= 1
    write_png(path, image)
    with pytest.raises(ValidationFailed) as raised:
        validate_extracted(dataset, outputs_under(tmp_path), PARAMS)
    failed = {outcome.name for outcome in raised.value.report.critical_failures}
    assert failed == {"manifest_sha256_matches_files"}
    assert "Hemorrhagic_050_002" in str(raised.value)


def test_image_outside_size_bounds_fails(dataset: Path, tmp_path: Path):
    params = PARAMS.model_copy(update={"min_side": SIDE + 1})
    with pytest.raises(ValidationFailed) as raised:
        validate_extracted(dataset, outputs_under(tmp_path), params)
    failed = {outcome.name for outcome in raised.value.report.critical_failures}
    assert failed == {"image_width_within_bounds", "image_height_within_bounds"}
    assert raised.value.report.critical_failures[0].unexpected_count == 24


def test_duplicate_ids_fail_unique_ids(dataset: Path):
    # read_manifest refuses duplicate ids already; the suite guards tables built otherwise.
    table = build_slice_table(read_manifest(dataset), workers=1)
    doubled = pd.concat([table, table.iloc[[0]]], ignore_index=True)
    report = run_suite(doubled, slice_checks(PARAMS), "doubled")
    assert "unique_ids" in {outcome.name for outcome in report.critical_failures}


def test_case_id_format_is_a_warning_only(dataset: Path, tmp_path: Path, caplog):
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        row = frame["case_id"] == "051"
        frame.loc[row, "case_id"] = "51"
        frame.loc[row, "id"] = frame.loc[row, "id"].str.replace("_051_", "_51_")
        frame.loc[row, "source_id"] = frame.loc[row, "id"]
        return frame

    edit_manifest(dataset, edit)
    outputs = outputs_under(tmp_path)
    report = validate_extracted(dataset, outputs, PARAMS)
    assert [outcome.name for outcome in report.warnings] == ["hemorrhagic_case_id_format"]
    assert report.warnings[0].unexpected_count == SLICES_PER_CASE
    assert report.critical_failures == ()
    assert any(
        record.levelname == "WARNING" and "hemorrhagic_case_id_format" in record.getMessage()
        for record in caplog.records
    )
    assert len(read_manifest(outputs.manifest)) == 24, "warnings do not drop rows"


def test_slice_table_facts_and_worker_independence(dataset: Path):
    manifest = read_manifest(dataset)
    serial = build_slice_table(manifest, workers=1)
    parallel = build_slice_table(manifest, workers=2)
    pd.testing.assert_frame_equal(serial, parallel)
    row = serial.set_index("id").loc["Hemorrhagic_050_003"]
    assert (row["image_width"], row["image_height"], row["image_channels"]) == (SIDE, SIDE, 1)
    assert row["image_dtype"] == "uint8" and row["mask_values"] == "0 255"
    assert row["lesion_pixels_measured"] == 90
    assert row["lesion_fraction"] == pytest.approx(90 / SIDE**2)
    assert serial["content_hash"].is_unique
    classes = class_table(serial).set_index("class")
    assert classes.loc["Ischemic", "lesion_slices"] == 9


def test_missing_class_fails_counts(dataset: Path, tmp_path: Path):
    edit_manifest(dataset, lambda frame: frame[frame["class"] == "Ischemic"])
    with pytest.raises(ValidationFailed) as raised:
        validate_extracted(dataset, outputs_under(tmp_path), PARAMS)
    failures = {o.name: o for o in raised.value.report.critical_failures}
    assert set(failures) == {
        "slices_per_class_within_bounds",
        "cases_per_class_within_bounds",
        "cases_per_class_enough_to_split",
    }
    assert failures["slices_per_class_within_bounds"].examples == ("Hemorrhagic",)


def test_a_count_failure_names_the_count_the_bound_and_the_param(dataset: Path, tmp_path: Path):
    too_few_slices(dataset)
    with pytest.raises(ValidationFailed) as raised:
        validate_extracted(dataset, outputs_under(tmp_path), PARAMS)
    message = str(raised.value)
    assert (
        "slices_per_class_within_bounds [expect_column_values_to_be_between]: 1 rows, "
        "e.g. Hemorrhagic (slices 3); expected slices between 4 and 100, "
        "set by validate.slices_per_class.min / .max in params.yaml"
    ) in message


def test_too_few_cases_for_the_split_stop_at_validate_naming_the_minimum(
    dataset: Path, tmp_path: Path
):
    """Lowering validate.cases_per_class.min lets two cases through its own bound; split
    would then stop on them, so validate checks split's minimum itself."""
    edit_manifest(dataset, lambda frame: frame[frame["case_id"] != "051"])
    params = PARAMS.model_copy(
        update={"cases_per_class": PARAMS.cases_per_class.model_copy(update={"min": 1})}
    )
    with pytest.raises(ValidationFailed) as raised:
        validate_extracted(dataset, outputs_under(tmp_path), params)
    assert [o.name for o in raised.value.report.critical_failures] == [
        "cases_per_class_enough_to_split"
    ]
    message = str(raised.value)
    assert f"e.g. Hemorrhagic (cases 2); expected cases >= {MIN_CASES_PER_CLASS}" in message
    assert "split.ratios (train, valid, test: one case of every class each" in message


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["train", "valid", "test"]),
            st.sampled_from(["Hemorrhagic", "Ischemic"]),
            st.sampled_from(["001", "002", "003"]),
        ),
        max_size=30,
    )
)
def test_class_counts_add_up(rows):
    manifest = pd.DataFrame(rows, columns=["split", "class", "case_id"])
    counts = class_counts(manifest, "split", group_order=["train", "valid", "test"])
    assert len(counts) == 6, "every split x class combination is listed"
    assert counts["group"].tolist()[::2] == ["train", "valid", "test"]
    assert counts["slices"].sum() == len(rows)
    distinct_cases = manifest.drop_duplicates().groupby(["split", "class"]).size()
    assert counts["cases"].sum() == distinct_cases.sum()


def test_statistics_figure_is_deterministic(dataset: Path, tmp_path: Path):
    manifest = read_manifest(dataset)
    manifest["split"] = np.where(manifest["case_id"].isin(["049", "0019983"]), "test", "train")
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    counts = plot_class_counts(manifest, first, group_column="split", group_order=["train", "test"])
    plot_class_counts(manifest, second, group_column="split", group_order=["train", "test"])
    assert first.read_bytes() == second.read_bytes()
    test_rows = counts[counts["group"] == "test"].set_index("class")
    assert test_rows.loc["Hemorrhagic", "slices"] == SLICES_PER_CASE
    assert test_rows.loc["Ischemic", "cases"] == 1


def run_validate_stage(workdir: Path) -> subprocess.CompletedProcess:
    return run_stage_command("validate", workdir)


def test_stage_exits_1_with_summary_and_writes_no_manifest(tmp_path: Path):
    manifest_path = write_dataset(tmp_path / "data" / "extracted")
    write_project_params(tmp_path / "params.yaml", {"validate": PARAMS.model_dump()})

    passed = run_validate_stage(tmp_path)
    assert passed.returncode == 0, passed.stderr
    assert (tmp_path / "data" / "validated" / "manifest.csv").is_file()
    assert (tmp_path / "metrics" / "data.json").is_file()

    (tmp_path / "data" / "validated" / "manifest.csv").unlink()
    drop_mask(manifest_path)
    failed = run_validate_stage(tmp_path)
    assert failed.returncode == 1
    assert "stage validate failed" in failed.stderr
    assert "every_image_has_a_mask" in failed.stderr and "Ischemic_0019984_002" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "data" / "validated" / "manifest.csv").exists()


def write_ct_archive(path: Path, duplicate_across_cases: bool) -> None:
    """A Kaggle-layout zip (CT Training only) of the clean fixture, optionally with one
    ischemic slice that is a byte copy of a hemorrhagic one (extract cannot see that)."""
    ct = "NEW-DATASET/REAL-TIME STROKE DETECTION IN MRI, CT, PET IMAGES/CT Images/data/Training"
    source = write_dataset(path.parent / f"{path.stem}_files")
    manifest = read_manifest(source)
    with zipfile.ZipFile(path, "w") as archive:
        for row in manifest.to_dict("records"):
            stem = row["id"].rsplit("_", 1)[1]
            image = resolve_path(manifest, row["image_path"])
            if duplicate_across_cases and row["id"] == "Ischemic_0019983_001":
                image = resolve_path(manifest, "images/Hemorrhagic_049_001.png")
            folder = f"{ct}/{row['class']}/{{}}/{row['case_id']}/{stem}.png"
            archive.write(image, folder.format("images"))
            archive.write(resolve_path(manifest, row["mask_path"]), folder.format("mask"))


def test_dvc_repro_stops_at_validate_and_nothing_downstream_runs(make_project):
    project = make_project({"extract": {"archive": "data/raw/archive.zip"}})
    archive = project.path / "data" / "raw" / "archive.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    write_ct_archive(archive, duplicate_across_cases=True)

    failed = project.dvc("repro", "colorize", check=False)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "no_identical_image_in_two_cases" in output and "Ischemic_0019983_001" in output
    assert "Running stage 'extract'" in output and "Running stage 'colorize'" not in output
    assert not (project.path / "data" / "validated" / "manifest.csv").exists()
    assert not (project.path / "data" / "colorized").exists()

    write_ct_archive(archive, duplicate_across_cases=False)
    project.dvc("repro", "colorize")
    colorized = read_manifest(project.path / "data" / "colorized" / "manifest.csv")
    assert len(colorized) == 24
    assert json.loads((project.path / "metrics" / "data.json").read_text())["slices"] == 24


# docs/real-data.md's walk of a small real archive ("Training on the real Kaggle archive"), exactly:
# 24 slices, 3 cases of 4 slices per class, in the Kaggle layout.
SMALL_ARCHIVE_WALK = (
    "-S", "extract.archive=data/raw/small.zip",
    "-S", "validate.slices_per_class.min=12",
)  # fmt: skip


def test_a_small_real_format_archive_walks_from_extract_to_a_trained_model(make_project):
    """With the project's validate and split params, validate stops the walk naming the
    count, the bound and the param; the docs' one override then trains a model."""
    defaults = project_params()
    project = make_project(
        {
            "validate": defaults.validate.model_dump(mode="json"),
            "split": defaults.split.model_dump(mode="json"),
        }
    )
    archive = project.path / "data" / "raw" / "small.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    write_ct_archive(archive, duplicate_across_cases=False)

    stopped = project.dvc("exp", "run", *SMALL_ARCHIVE_WALK[:2], "train", check=False)
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode != 0
    assert (
        "e.g. Hemorrhagic (slices 12), Ischemic (slices 12); expected slices between 20" in output
    )
    assert "validate.slices_per_class.min" in output
    assert "Running stage 'split'" not in output

    walked = project.dvc("exp", "run", *SMALL_ARCHIVE_WALK, "train")
    assert "Running stage 'train'" in walked.stdout
    assert (project.path / "models" / "model.keras").is_file()
    split = json.loads((project.path / "metrics" / "split.json").read_text())
    assert split["test_cases_hemorrhagic"] == split["test_cases_ischemic"] == 1
