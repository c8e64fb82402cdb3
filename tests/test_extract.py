"""Stage `extract`: listing, pairing, archive safety, decoding, outputs and the DVC stage.

Every test builds its own tiny Kaggle-layout archive (zip or folder) from real PNG/JPEG
bytes; none depends on the phantom generator.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.extract import (
    PROBLEM_CATEGORIES,
    Entry,
    MaskUnreadable,
    SliceFile,
    binarize_mask,
    classify_entries,
    extract_archive,
    pair_slices,
)
from pipeline.io import DataError, encode_png, read_image, read_manifest, spacing_json
from pipeline.params import ParamsError
from tests.conftest import project_params

KAGGLE = "NEW-DATASET/REAL-TIME STROKE DETECTION IN MRI, CT, PET IMAGES"
CT = f"{KAGGLE}/CT Images/data"
SIDE = 32


def slice_image(seed: int, side: int = SIDE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)


def lesion_mask(seed: int, side: int = SIDE) -> np.ndarray:
    """A 0/255 disc whose position depends on `seed`; seed 0 gives an empty mask."""
    mask = np.zeros((side, side), np.uint8)
    if seed:
        cv2.circle(mask, (8 + seed % 16, 8 + seed % 13), 5, 255, -1)
    return mask


def slice_files(subset: str, class_name: str, case: str, stem: str, seed: int) -> dict[str, bytes]:
    folder = f"{CT}/{subset}/{class_name}"
    return {
        f"{folder}/images/{case}/{stem}.png": encode_png(slice_image(seed)),
        f"{folder}/mask/{case}/{stem}.png": encode_png(lesion_mask(seed)),
    }


def kaggle_files() -> dict[str, bytes]:
    """2 Hemorrhagic + 2 Ischemic cases of 2 slices, a Testing case, MRI and PET files."""
    files: dict[str, bytes] = {}
    seed = 0
    for class_name, cases in (
        ("Hemorrhagic", ("049", "050")),
        ("Ischemic", ("0019983", "0019984")),
    ):
        for case in cases:
            for stem in ("000", "001"):
                files.update(slice_files("Training", class_name, case, stem, seed))
                seed += 1
    files.update(slice_files("Testing", "Hemorrhagic", "051", "000", 7))
    files[f"{KAGGLE}/MRI Images/brain.png"] = encode_png(slice_image(99))
    files[f"{KAGGLE}/PET Images/scan.jpg"] = encode_png(slice_image(98))
    return files


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def write_folder(path: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def run_extract(workspace: Path, archive: Path, **params: object) -> tuple[dict, str]:
    """Extract into `workspace`; returns the metrics and the report text."""
    extract_archive(
        project_params({"extract": {"archive": str(archive), **params}}).extract,
        workspace / "data" / "extracted",
        workspace / "reports" / "extract_report.txt",
        workspace / "metrics" / "extract.json",
    )
    metrics = json.loads((workspace / "metrics" / "extract.json").read_text())
    return metrics, (workspace / "reports" / "extract_report.txt").read_text()


def assert_every_file_accounted_for(metrics: dict) -> None:
    """Each archive entry is written (in a pair) or listed in exactly one problem category."""
    listed = sum(metrics[category] for category in PROBLEM_CATEGORIES)
    assert metrics["entries"] == 2 * metrics["pairs"] + listed


def tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# ---------------------------------------------------------------- outputs


def test_geometry_comes_from_params_without_a_spacing_file(tmp_path):
    archive = write_zip(tmp_path / "a.zip", kaggle_files())
    _, report = run_extract(tmp_path, archive, pixel_spacing_mm=0.43, slice_thickness_mm=6.0)
    manifest = read_manifest(tmp_path / "data" / "extracted" / "manifest.csv")
    assert (manifest["pixel_spacing_mm"] == 0.43).all()
    assert (manifest["slice_thickness_mm"] == 6.0).all()
    assert "geometry: 0.43 mm pixels, 6 mm slices, from params" in report


def test_spacing_file_overrides_params_and_is_not_a_problem(tmp_path):
    files = {**kaggle_files(), f"{CT}/spacing.json": spacing_json(0.7, 2.5)}
    metrics, report = run_extract(tmp_path, write_folder(tmp_path / "archive", files))
    manifest = read_manifest(tmp_path / "data" / "extracted" / "manifest.csv")
    assert (manifest["pixel_spacing_mm"] == 0.7).all()
    assert (manifest["slice_thickness_mm"] == 2.5).all()
    assert f"from {CT}/spacing.json" in report
    listed = sum(metrics[category] for category in PROBLEM_CATEGORIES)
    assert metrics["entries"] == 2 * metrics["pairs"] + listed + 1  # the spacing file


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not a JSON spacing file"),
        (b'{"pixel_spacing_mm": 0.5}', "exactly the keys"),
        (b'{"pixel_spacing_mm": 0.5, "slice_thickness_mm": -5}', "positive and finite"),
        (b'{"pixel_spacing_mm": "0.5", "slice_thickness_mm": 5}', "must be a number"),
        (b" " * 5000, "over the 4096 allowed"),
    ],
)
def test_bad_spacing_file_is_a_clear_error_and_writes_nothing(tmp_path, content, message):
    files = {**kaggle_files(), f"{CT}/spacing.json": content}
    archive = write_zip(tmp_path / "a.zip", files)
    with pytest.raises(DataError, match=message) as raised:
        run_extract(tmp_path, archive)
    assert "spacing.json" in str(raised.value)
    assert not (tmp_path / "data" / "extracted").exists()


def test_zip_and_folder_give_identical_outputs(tmp_path):
    files = kaggle_files()
    zipped = write_zip(tmp_path / "archive.zip", files)
    folder = write_folder(tmp_path / "unpacked", files)
    zip_metrics, zip_report = run_extract(tmp_path / "from_zip", zipped)
    folder_metrics, folder_report = run_extract(tmp_path / "from_folder", folder)

    assert zip_metrics == folder_metrics
    assert_every_file_accounted_for(zip_metrics)
    assert tree(tmp_path / "from_zip" / "data") == tree(tmp_path / "from_folder" / "data")
    assert zip_report.replace(str(zipped), "X") == folder_report.replace(str(folder), "X")

    manifest = read_manifest(tmp_path / "from_zip" / "data" / "extracted" / "manifest.csv")
    assert manifest["id"].tolist() == [
        "Hemorrhagic_049_000",
        "Hemorrhagic_049_001",
        "Hemorrhagic_050_000",
        "Hemorrhagic_050_001",
        "Ischemic_0019983_000",
        "Ischemic_0019983_001",
        "Ischemic_0019984_000",
        "Ischemic_0019984_001",
    ]
    assert (manifest["source"] == "original").all()
    assert (manifest["source_id"] == manifest["id"]).all()
    assert manifest["case_id"].tolist()[4] == "0019983"
    for seed, row in enumerate(manifest.itertuples()):
        image = read_image(tmp_path / "from_zip" / "data" / "extracted" / row.image_path)
        mask = read_image(tmp_path / "from_zip" / "data" / "extracted" / row.mask_path)
        np.testing.assert_array_equal(image, slice_image(seed))
        np.testing.assert_array_equal(mask, lesion_mask(seed))
        assert (row.width, row.height) == (SIDE, SIDE)
        assert row.lesion_pixels == np.count_nonzero(lesion_mask(seed))
    # MRI, PET and the unselected Testing pair are ignored, and each is listed.
    assert zip_metrics["ignored_files"] == 4
    assert "MRI Images/brain.png: outside the CT tree" in zip_report
    assert "Testing/Hemorrhagic/mask/051/000.png: subset Testing not in" in zip_report


def test_output_is_deterministic_for_any_number_of_workers(tmp_path):
    archive = write_zip(tmp_path / "archive.zip", kaggle_files())
    run_extract(tmp_path / "first", archive, workers=1)
    run_extract(tmp_path / "second", archive, workers=1)
    run_extract(tmp_path / "two_workers", archive, workers=2)
    assert tree(tmp_path / "first") == tree(tmp_path / "second") == tree(tmp_path / "two_workers")


def test_metrics_hold_flat_counts(tmp_path):
    files = kaggle_files()
    del files[f"{CT}/Training/Ischemic/mask/0019984/001.png"]
    metrics, _ = run_extract(tmp_path, write_zip(tmp_path / "archive.zip", files))
    for key in (
        "pairs",
        "unpaired_images",
        "unpaired_masks",
        "unreadable_files",
        "size_mismatches",
        "ignored_files",
        "refused_members",
        "pairs_hemorrhagic",
        "pairs_ischemic",
        "cases_hemorrhagic",
        "cases_ischemic",
    ):
        assert isinstance(metrics[key], int), key
    assert metrics["pairs"] == 7
    assert (metrics["pairs_hemorrhagic"], metrics["pairs_ischemic"]) == (4, 3)
    assert (metrics["cases_hemorrhagic"], metrics["cases_ischemic"]) == (2, 2)
    assert metrics["unpaired_images"] == 1
    assert_every_file_accounted_for(metrics)


def test_testing_subset_gets_distinct_ids(tmp_path):
    files = kaggle_files()
    files.update(slice_files("Testing", "Hemorrhagic", "049", "000", 11))
    archive = write_zip(tmp_path / "archive.zip", files)
    metrics, _ = run_extract(tmp_path, archive, subsets=("Training", "Testing"))
    manifest = read_manifest(tmp_path / "data" / "extracted" / "manifest.csv")
    assert {"Hemorrhagic_049_000", "Hemorrhagic_049_test-000", "Hemorrhagic_051_test-000"} <= set(
        manifest["id"]
    )
    assert (metrics["pairs_training"], metrics["pairs_testing"]) == (8, 2)
    assert metrics["ignored_files"] == 2  # MRI and PET only


def test_tree_found_at_top_level_with_mixed_extensions_and_os_metadata(tmp_path):
    files = {
        "CT Images/data/Training/Hemorrhagic/images/049/000.PNG": encode_png(slice_image(1)),
        "CT Images/data/Training/Hemorrhagic/mask/049/000.png": encode_png(lesion_mask(1)),
        "CT Images/data/Training/Ischemic/images/0019983/000.jpeg": cv2.imencode(
            ".jpeg", slice_image(2)
        )[1].tobytes(),
        "CT Images/data/Training/Ischemic/mask/0019983/000.png": encode_png(lesion_mask(2)),
        "CT Images/data/Training/Ischemic/notes.txt": b"hello",
        "CT Images/data/Training/Ischemic/images/stray.png": encode_png(slice_image(3)),
        "__MACOSX/CT Images/data/Training/Ischemic/images/0019983/._000.jpeg": b"\0\1",
    }
    metrics, report = run_extract(tmp_path, write_zip(tmp_path / "archive.zip", files))
    assert metrics["pairs"] == 2
    assert (metrics["non_image_files"], metrics["misplaced_files"]) == (1, 1)
    assert_every_file_accounted_for(metrics)
    assert metrics["ignored_files"] == 1
    assert "Ischemic/notes.txt: not a PNG/JPEG file ('.txt')" in report
    assert "images/stray.png: not at <Subset>/<Class>/<kind>/<case>/<slice>" in report


# ---------------------------------------------------------------- pairing

slice_keys = st.tuples(
    st.sampled_from(["Hemorrhagic", "Ischemic"]),
    st.sampled_from(["049", "050", "0019983"]),
    st.sampled_from(["000", "001", "012", "a b"]),
)


def listing(keys: dict, suffix: str) -> list[SliceFile]:
    """Slice files for {(class, case, stem): (has_image, has_mask, duplicate_image)}."""
    files = []
    for (class_name, case, stem), (has_image, has_mask, duplicate) in keys.items():
        folder = f"{CT}/Training/{class_name}"
        if has_image:
            files.append(
                SliceFile(
                    f"{folder}/images/{case}/{stem}.png",
                    "Training",
                    class_name,
                    case,
                    "image",
                    stem,
                )
            )
        if duplicate:
            files.append(
                SliceFile(
                    f"{folder}/images/{case}/{stem}.jpg",
                    "Training",
                    class_name,
                    case,
                    "image",
                    stem,
                )
            )
        if has_mask:
            mask_stem = stem + suffix
            files.append(
                SliceFile(
                    f"{folder}/mask/{case}/{mask_stem}.png",
                    "Training",
                    class_name,
                    case,
                    "mask",
                    mask_stem,
                )
            )
    return files


@settings(max_examples=60, deadline=None)
@given(
    keys=st.dictionaries(slice_keys, st.tuples(st.booleans(), st.booleans(), st.booleans())),
    suffix=st.sampled_from(["", "_mask"]),
    data=st.data(),
)
def test_pairing_ignores_listing_order(keys, suffix, data):
    files = listing(keys, suffix)
    shuffled = data.draw(st.permutations(files))
    expected = pair_slices(files, suffix)
    result = pair_slices(shuffled, suffix)
    assert result.pairs == expected.pairs
    assert sorted(result.problems, key=repr) == sorted(expected.problems, key=repr)

    both = {key for key, (image, mask, duplicate) in keys.items() if (image or duplicate) and mask}
    assert [pair.id for pair in result.pairs] == sorted(f"{c}_{case}_{s}" for c, case, s in both)
    for pair in result.pairs:
        candidates = [
            f.path
            for f in files
            if f.kind == "image" and f.path.startswith(pair.image_path.rsplit(".", 1)[0] + ".")
        ]
        assert pair.image_path == min(candidates), "of duplicates, the first path in order wins"
        assert pair.mask_path.split("/mask/")[0] == pair.image_path.split("/images/")[0]
    categories = [problem.category for problem in result.problems]
    assert categories.count("unpaired_masks") == sum(
        1 for image, mask, duplicate in keys.values() if mask and not (image or duplicate)
    )
    assert categories.count("unpaired_images") == sum(
        1 for image, mask, duplicate in keys.values() if (image or duplicate) and not mask
    )
    assert categories.count("duplicate_files") == sum(
        1 for image, mask, duplicate in keys.values() if image and duplicate
    )


def test_missing_masks_are_counted_and_listed(tmp_path):
    files = kaggle_files()
    for stem in ("000", "001"):
        del files[f"{CT}/Training/Hemorrhagic/mask/050/{stem}.png"]
    files[f"{CT}/Training/Ischemic/mask/0019984/007.png"] = encode_png(lesion_mask(3))
    metrics, report = run_extract(tmp_path, write_zip(tmp_path / "archive.zip", files))
    assert (metrics["pairs"], metrics["unpaired_images"], metrics["unpaired_masks"]) == (6, 2, 1)
    assert_every_file_accounted_for(metrics)
    assert "Hemorrhagic/images/050/000.png: no mask for case 050 slice 000" in report
    assert "Ischemic/mask/0019984/007.png: no image for case 0019984 slice 007" in report


def test_mask_suffix_pairs_masks_that_add_it(tmp_path):
    folder = f"{CT}/Training/Ischemic"
    files = {
        f"{folder}/images/0019983/000.png": encode_png(slice_image(1)),
        f"{folder}/mask/0019983/000_mask.png": encode_png(lesion_mask(1)),
        f"{folder}/images/0019983/001.png": encode_png(slice_image(2)),
        f"{folder}/mask/0019983/001.png": encode_png(lesion_mask(2)),
    }
    archive = write_folder(tmp_path / "unpacked", files)
    metrics, report = run_extract(tmp_path, archive, mask_suffix="_mask")
    manifest = read_manifest(tmp_path / "data" / "extracted" / "manifest.csv")
    assert manifest["id"].tolist() == ["Ischemic_0019983_000"]
    assert (metrics["unpaired_images"], metrics["unpaired_masks"]) == (1, 1)
    assert_every_file_accounted_for(metrics)
    assert "mask/0019983/001.png: name lacks the suffix '_mask'" in report


# ---------------------------------------------------------------- archive safety


def test_unsafe_zip_members_are_refused_and_nothing_lands_outside(tmp_path, monkeypatch):
    workspace = tmp_path / "project"
    workspace.mkdir()
    outside = tmp_path / "outside"
    archive = tmp_path / "crafted.zip"
    payload = encode_png(slice_image(5))
    with zipfile.ZipFile(archive, "w") as crafted:
        for name, data in kaggle_files().items():
            crafted.writestr(name, data)
        crafted.writestr("../evil.png", payload)
        crafted.writestr(f"{CT}/Training/Hemorrhagic/images/049/../../../../../evil.png", payload)
        crafted.writestr(zipfile.ZipInfo(f"{outside}/absolute.png"), payload)
        link = zipfile.ZipInfo(f"{CT}/Training/Hemorrhagic/images/049/002.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        crafted.writestr(link, str(outside / "linked.png"))
        crafted.writestr(f"{CT}/Training/Hemorrhagic/mask/049/002.png", payload)
    assert f"{outside}/absolute.png".startswith("/")
    before = tree(tmp_path)
    monkeypatch.chdir(workspace)

    metrics, report = run_extract(Path("."), archive)

    new_files = set(tree(tmp_path)) - set(before)
    assert all(name.startswith("project/") for name in new_files), new_files
    assert not outside.exists()
    assert not (tmp_path / "evil.png").exists()
    assert metrics["refused_members"] == 4
    assert_every_file_accounted_for(metrics)
    assert "../evil.png: parent-directory component '..'" in report
    assert f"{outside}/absolute.png: absolute path" in report
    assert "images/049/002.png: symbolic link" in report
    # The refused link leaves its mask without an image, and that is reported too.
    assert "mask/049/002.png: no image for case 049 slice 002" in report
    assert metrics["pairs"] == 8


def test_folder_symlinks_leaving_the_folder_are_not_followed(tmp_path):
    files = kaggle_files()
    folder = write_folder(tmp_path / "unpacked", files)
    secret = write_folder(tmp_path / "secret", {"case/000.png": encode_png(slice_image(9))})
    hemorrhagic = folder / CT / "Training" / "Hemorrhagic"
    (hemorrhagic / "images" / "049" / "002.png").symlink_to(secret / "case" / "000.png")
    (hemorrhagic / "images" / "077").symlink_to(secret / "case")
    (hemorrhagic / "mask" / "049" / "002.png").write_bytes(encode_png(lesion_mask(9)))
    # A link that stays inside the folder is followed like the file it points to.
    (hemorrhagic / "images" / "049" / "003.png").symlink_to(hemorrhagic / "images/049/000.png")
    (hemorrhagic / "mask" / "049" / "003.png").write_bytes(encode_png(lesion_mask(0)))

    metrics, report = run_extract(tmp_path / "work", folder)

    assert metrics["refused_members"] == 2
    assert_every_file_accounted_for(metrics)
    assert "images/049/002.png: symbolic link to" in report
    assert "images/077: symbolic link to" in report
    manifest = read_manifest(tmp_path / "work" / "data" / "extracted" / "manifest.csv")
    assert "Hemorrhagic_049_003" in set(manifest["id"])
    assert "Hemorrhagic_049_002" not in set(manifest["id"])


def test_archive_declaring_more_than_the_cap_is_refused_before_writing(tmp_path):
    files = kaggle_files()
    files[f"{KAGGLE}/MRI Images/padding.bin"] = bytes(3 * 1024 * 1024)  # compresses to ~3 kB
    archive = write_zip(tmp_path / "bomb.zip", files)
    assert archive.stat().st_size < 1024 * 1024
    with pytest.raises(DataError, match=r"declares 3\.0 MB uncompressed, over extract\.max_unc"):
        run_extract(tmp_path / "work", archive, max_uncompressed_mb=2.0)
    assert not (tmp_path / "work").exists()
    metrics, _ = run_extract(tmp_path / "work", archive, max_uncompressed_mb=4.0)
    assert metrics["pairs"] == 8


# ---------------------------------------------------------------- decoding


def test_corrupt_and_truncated_files_are_counted_and_listed(tmp_path):
    files = kaggle_files()
    images = f"{CT}/Training/Hemorrhagic/images"
    files[f"{images}/049/000.png"] = b"not an image at all"
    files[f"{images}/049/001.png"] = files[f"{images}/049/001.png"][:200]
    files[f"{images}/050/000.png"] = files[f"{images}/050/000.png"][:-20]
    mask = f"{CT}/Training/Ischemic/mask/0019983/000.png"
    files[mask] = files[mask][: len(files[mask]) // 2]
    metrics, report = run_extract(tmp_path, write_zip(tmp_path / "archive.zip", files))
    assert (metrics["pairs"], metrics["unreadable_files"]) == (4, 4)
    for name in ("049/000.png", "049/001.png", "050/000.png", "0019983/000.png"):
        assert f"{name}: {CT}" in report  # the reason names the file
    assert "dropped Ischemic_0019983_000" in report
    assert metrics["dropped_partners"] == 4
    assert "0019983/000.png: its partner is unusable; dropped Ischemic_0019983_000" in report
    assert_every_file_accounted_for(metrics)


def test_corrupt_zip_member_data_is_unreadable_not_fatal(tmp_path):
    archive = write_zip(tmp_path / "archive.zip", kaggle_files())
    data = bytearray(archive.read_bytes())
    target = f"{CT}/Training/Ischemic/images/0019984/001.png"
    with zipfile.ZipFile(archive) as opened:
        info = opened.getinfo(target)
    # Flip bytes inside the member's compressed data (after its 30-byte local header).
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 10 : start + 20] = bytes(10)
    archive.write_bytes(bytes(data))
    metrics, report = run_extract(tmp_path, archive)
    assert (metrics["pairs"], metrics["unreadable_files"]) == (7, 1)
    assert_every_file_accounted_for(metrics)
    assert f"{target}: " in report


def test_size_mismatch_drops_the_pair_and_says_why(tmp_path):
    files = kaggle_files()
    files[f"{CT}/Training/Ischemic/mask/0019984/000.png"] = encode_png(lesion_mask(3, side=48))
    metrics, report = run_extract(tmp_path, write_zip(tmp_path / "archive.zip", files))
    assert (metrics["pairs"], metrics["size_mismatches"]) == (7, 1)
    assert "image 32x32 but mask" in report
    assert "is 48x48; dropped Ischemic_0019984_000" in report
    assert_every_file_accounted_for(metrics)


def test_jpeg_and_zero_one_masks_are_thresholded(tmp_path):
    folder = f"{CT}/Training/Hemorrhagic"
    disc = lesion_mask(5)
    files = {
        f"{folder}/images/049/000.png": encode_png(slice_image(1)),
        f"{folder}/mask/049/000.jpg": cv2.imencode(".jpg", disc, [cv2.IMWRITE_JPEG_QUALITY, 75])[
            1
        ].tobytes(),
        f"{folder}/images/049/001.png": encode_png(slice_image(2)),
        f"{folder}/mask/049/001.png": encode_png((disc > 0).astype(np.uint8)),
    }
    jpeg = cv2.imdecode(np.frombuffer(files[f"{folder}/mask/049/000.jpg"], np.uint8), 0)
    assert len(np.unique(jpeg)) > 2, "the JPEG mask must hold compression shades"
    run_extract(tmp_path, write_zip(tmp_path / "archive.zip", files))
    for stem in ("000", "001"):
        mask = read_image(tmp_path / "data" / "extracted" / "masks" / f"Hemorrhagic_049_{stem}.png")
        np.testing.assert_array_equal(mask, disc)


def binarize_oracle(values: list[int]) -> list[bool] | None:
    """The documented rule, written out per case: the lesion, or None when refused."""
    distinct = sorted(set(values))
    if distinct == [0]:
        return [False] * len(values)
    if len(distinct) == 2 and distinct[0] == 0:
        return [value > 0 for value in values]
    if len(distinct) <= 2:
        return None
    threshold = 127 if max(values) <= 255 else 32767
    lesion = [value > threshold for value in values]
    return lesion if any(lesion) and not all(lesion) else None


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.sampled_from([0, 1, 127, 128, 255, 256, 32767, 32768, 65535]), st.integers(0, 65535)
        ),
        min_size=1,
        max_size=64,
    ),
    dtype=st.sampled_from([np.uint8, np.uint16]),
)
def test_binarize_mask_rule(values, dtype):
    array = np.array(values, dtype=np.uint16).clip(0, np.iinfo(dtype).max).astype(dtype)
    expected = binarize_oracle(array.tolist())
    if expected is None:
        with pytest.raises(MaskUnreadable, match=r"m\.png: "):
            binarize_mask(array, "m.png")
    else:
        result = binarize_mask(array, "m.png")
        assert result.dtype == np.uint8 and set(np.unique(result)) <= {0, 255}
        np.testing.assert_array_equal(result == 255, expected)


@given(value=st.integers(1, 65535), lesion=st.lists(st.booleans(), min_size=2, max_size=32))
def test_two_level_masks_read_alike_at_every_scale(value, lesion):
    """0/1, 0/255, 0/1000, 0/65535: the same lesion whatever the value that marks it."""
    if all(lesion) or not any(lesion):
        lesion = [True, False, *lesion]
    array = np.where(lesion, value, 0).astype(np.uint16 if value > 255 else np.uint8)
    np.testing.assert_array_equal(binarize_mask(array) == 255, lesion)


# ---------------------------------------------------------------- fatal cases and params


def test_nothing_usable_is_fatal_and_leaves_no_output(tmp_path):
    files = {name: data for name, data in kaggle_files().items() if "/mask/" not in name}
    archive = write_zip(tmp_path / "archive.zip", files)
    with pytest.raises(DataError, match="no usable image/mask pair"):
        run_extract(tmp_path, archive)
    assert os.listdir(tmp_path / "data") == [], "neither the output nor its temporary folder"
    assert not (tmp_path / "metrics" / "extract.json").exists()
    report = (tmp_path / "reports" / "extract_report.txt").read_text()
    assert "unpaired_images (8)" in report


def test_archive_without_ct_tree_or_missing_is_a_clear_error(tmp_path):
    archive = write_zip(tmp_path / "other.zip", {"MRI Images/a.png": encode_png(slice_image(1))})
    with pytest.raises(DataError, match=r"other\.zip: no 'CT Images/data/' folder"):
        run_extract(tmp_path, archive)
    with pytest.raises(DataError, match=r"missing\.zip: archive not found"):
        run_extract(tmp_path, tmp_path / "missing.zip")
    (tmp_path / "fake.zip").write_bytes(b"PK not really")
    with pytest.raises(DataError, match=r"fake\.zip: not a readable zip archive"):
        run_extract(tmp_path, tmp_path / "fake.zip")


def test_classification_tolerates_folder_spelling(tmp_path):
    entries = [
        Entry("data/ct images/DATA/training/HEMORRHAGIC/Images/049/000.png"),
        Entry("data/ct images/DATA/training/hemorrhagic/masks/049/000.png"),
    ]
    listing_ = classify_entries(entries, ("Training",), "archive")
    assert listing_.ct_root == "data/ct images/DATA/"
    pairs = pair_slices(listing_.slices, "").pairs
    assert [pair.id for pair in pairs] == ["Hemorrhagic_049_000"]


@pytest.mark.parametrize(
    ("extract", "expected"),
    [
        ({"subsets": ["Validation"]}, "extract.subsets[0]: Input should be 'Training' or 'Test"),
        ({"subsets": []}, "extract.subsets: Value error, must name at least one"),
        ({"subsets": ["Training", "Training"]}, "extract.subsets: Value error, lists a subset"),
        ({"mask_suffix": "../m"}, "extract.mask_suffix: String should match pattern"),
        ({"max_uncompressed_mb": 0}, "extract.max_uncompressed_mb: Input should be greater"),
        ({"max_pixels": 0}, "extract.max_pixels: Input should be greater than or equal to 1"),
        ({"window_16bit": {"width": 0}}, "extract.window_16bit.width: Input should be greater"),
        ({"window_16bit": {"centre": 40}}, "extract.window_16bit.centre: unknown key"),
        ({"archive": ""}, "extract.archive: String should have at least 1 character"),
        ({"workers": -1}, "extract.workers: Input should be greater than or equal to 0"),
        ({"archve": "x.zip"}, "extract.archve: unknown key (allowed here: archive, subsets"),
    ],
)
def test_params_errors_name_the_key(extract, expected):
    with pytest.raises(ParamsError) as caught:
        project_params({"extract": extract})
    assert expected in str(caught.value)


# ---------------------------------------------------------------- the DVC stage


def test_dvc_repro_extract_on_a_custom_archive(make_project):
    project = make_project()
    (project.path / "data" / "raw").mkdir(parents=True)
    write_zip(project.path / "data" / "raw" / "custom.zip", kaggle_files())
    project.update_params({"extract": {"archive": "data/raw/custom.zip"}})

    project.dvc("repro", "extract")

    metrics = json.loads((project.path / "metrics" / "extract.json").read_text())
    assert metrics["pairs"] == 8
    manifest = read_manifest(project.path / "data" / "extracted" / "manifest.csv")
    assert len(manifest) == 8
    assert (project.path / "reports" / "extract_report.txt").is_file()
    assert "didn't change" in project.dvc("repro", "extract").stdout

    project.update_params({"extract": {"subsets": ["Validation"]}})
    failed = project.dvc("repro", "extract", check=False)
    assert failed.returncode != 0
    assert "extract.subsets[0]" in failed.stderr + failed.stdout
    leftovers = [name for name in os.listdir(project.path / "data") if "extracted" in name]
    assert leftovers == [], "no partial output"
