"""The `colorize` stage: palette-exact colour masks, lesion area kept through resizing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.colorize import (
    colorize_dataset,
    resize_image,
    resize_lesion_mask,
    resized_spacing_mm,
)
from pipeline.io import (
    MANIFEST_COLUMNS,
    DataError,
    read_image,
    read_manifest,
    resolve_path,
    write_manifest,
    write_png,
)
from tests.conftest import (
    original_row,
    project_params,
    run_stage_command,
    with_sha256,
    write_project_params,
)
from tests.test_headcrop import head_slice

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RGB_MAP = project_params().rgb_map
SOURCE_SIDE = 64
SIZE = 24  # not a divisor of 64, so area and linear resampling differ


def write_validated(root: Path) -> Path:
    """Extracted-like files under root/extracted and a manifest under root/validated."""
    rng = np.random.default_rng(1)
    rows = []
    for class_name, case_id in (("Hemorrhagic", "049"), ("Ischemic", "0019983")):
        for number in range(3):
            slice_id = f"{class_name}_{case_id}_{number:03d}"
            mask = np.zeros((SOURCE_SIDE, SOURCE_SIDE), np.uint8)
            if number:
                cv2.circle(mask, (20 + 8 * number, 30), 6 * number, 255, -1)
            write_png(
                root / "extracted" / "images" / f"{slice_id}.png",
                rng.integers(0, 256, mask.shape, np.uint8),
            )
            write_png(root / "extracted" / "masks" / f"{slice_id}.png", mask)
            lesion_pixels = int((mask > 0).sum())
            rows.append(
                original_row(
                    slice_id, case_id, class_name, SOURCE_SIDE, lesion_pixels, "../extracted/"
                )
            )
    write_manifest(root / "validated" / "manifest.csv", with_sha256(rows, root / "validated"))
    return root / "validated" / "manifest.csv"


def colorize(
    manifest_path: Path,
    output: Path,
    *,
    interpolation: str = "area",
    workers: int = 1,
    max_head_zoom: float = 1.0,
    size: int = SIZE,
):
    return colorize_dataset(
        read_manifest(manifest_path),
        output,
        size=size,
        rgb_map=RGB_MAP,
        interpolation=interpolation,
        max_head_zoom=max_head_zoom,
        workers=workers,
    )


HEAD_SOURCE_SIDE = 256


def write_validated_heads(root: Path) -> Path:
    """Two cases of three slices each, heads of different sizes and places (the top slice of a
    head is smaller), one lesion inside a head and one on the scalp at the slice's edge."""
    rows = []
    heads = {
        ("Hemorrhagic", "049"): [
            ((128, 128), (40, 50)),
            ((120, 130), (70, 80)),
            ((125, 130), (75, 85)),
        ],
        ("Ischemic", "0019983"): [
            ((100, 110), (60, 60)),
            ((110, 100), (60, 70)),
            ((100, 100), (50, 50)),
        ],
    }
    for (class_name, case_id), ellipses in heads.items():
        for number, (centre, axes) in enumerate(ellipses):
            slice_id = f"{class_name}_{case_id}_{number:03d}"
            grey = head_slice((HEAD_SOURCE_SIDE, HEAD_SOURCE_SIDE), centre, axes)
            mask = np.zeros_like(grey)
            if number == 1:
                cv2.circle(mask, centre, 12, 255, -1)
            if class_name == "Ischemic" and number == 2:
                mask[0:6, 240:256] = 255  # outside every head of the case: must not be cut off
            write_png(root / "extracted" / "images" / f"{slice_id}.png", grey)
            write_png(root / "extracted" / "masks" / f"{slice_id}.png", mask)
            rows.append(
                original_row(
                    slice_id,
                    case_id,
                    class_name,
                    HEAD_SOURCE_SIDE,
                    int((mask > 0).sum()),
                    "../extracted/",
                )
            )
    write_manifest(root / "validated" / "manifest.csv", with_sha256(rows, root / "validated"))
    return root / "validated" / "manifest.csv"


def test_each_case_is_cropped_to_one_square_round_its_heads_and_lesions(tmp_path: Path):
    manifest_path = write_validated_heads(tmp_path)
    size = 128
    cropped = colorize(manifest_path, tmp_path / "cropped", size=size, max_head_zoom=2.0)
    source = read_manifest(manifest_path).set_index("id")
    # The square's side in source pixels, from the spacing each case's slices now share (one
    # volume, one geometry: evaluate scores a case in 3-D).
    sides_px = {
        case_id: rows["pixel_spacing_mm"].unique() / 0.45 / (512 / HEAD_SOURCE_SIDE) * size
        for case_id, rows in cropped.groupby("case_id")
    }
    # The hemorrhagic case: its largest head, rows 45-215 (171 px). The ischemic one: its heads
    # span columns 40-170, and the lesion on the scalp at columns 240-255 widens that to 216.
    assert sides_px["049"].tolist() == pytest.approx([171.0])
    assert sides_px["0019983"].tolist() == pytest.approx([216.0])
    # Every lesion is kept whole: its area in mm^2 matches the source's within the pixels its
    # border straddles.
    for row in cropped.to_dict("records"):
        source_mm2 = (
            source.loc[row["id"], "lesion_pixels"] * source.loc[row["id"], "pixel_spacing_mm"] ** 2
        )
        kept_mm2 = row["lesion_pixels"] * row["pixel_spacing_mm"] ** 2
        assert kept_mm2 == pytest.approx(source_mm2, rel=0.25, abs=1e-9)


def test_a_zoom_cap_of_one_keeps_every_slice_whole(tmp_path: Path):
    manifest_path = write_validated_heads(tmp_path)
    size = 64
    written = colorize(manifest_path, tmp_path / "one", size=size, max_head_zoom=1.0)
    source = read_manifest(manifest_path)
    np.testing.assert_allclose(
        written["pixel_spacing_mm"], source["pixel_spacing_mm"] * HEAD_SOURCE_SIDE / size
    )
    for row in source.to_dict("records"):
        whole = resize_image(read_image(resolve_path(source, row["image_path"])), size, "area")
        assert np.array_equal(read_image(tmp_path / "one" / "images" / f"{row['id']}.png"), whole)


def test_masks_hold_exactly_the_palette_and_manifest_is_updated(tmp_path: Path):
    manifest_path = write_validated(tmp_path)
    output = tmp_path / "colorized"
    colorize(manifest_path, output)
    written = read_manifest(output / "manifest.csv")
    source = read_manifest(manifest_path)
    assert list(written.columns) == list(MANIFEST_COLUMNS)
    assert written["id"].tolist() == source["id"].tolist()
    assert (written["width"] == SIZE).all() and (written["height"] == SIZE).all()
    colours_seen: set[tuple[int, ...]] = set()
    for row in written.to_dict("records"):
        image = read_image(resolve_path(written, row["image_path"]))
        assert image.shape == (SIZE, SIZE) and image.dtype == np.uint8
        mask = read_image(resolve_path(written, row["mask_path"]), color=True)
        assert mask.shape == (SIZE, SIZE, 3)
        colours = {tuple(c) for c in np.unique(mask.reshape(-1, 3), axis=0).tolist()}
        # Only background and this slice's own class colour: no shade, no other class.
        assert colours <= {RGB_MAP["background"], RGB_MAP[row["class"]]}
        lesion = np.any(mask != RGB_MAP["background"], axis=-1)
        assert int(lesion.sum()) == row["lesion_pixels"]
        colours_seen |= colours
    assert colours_seen == set(RGB_MAP.values())
    assert written.loc[written["id"] == "Hemorrhagic_049_000", "lesion_pixels"].item() == 0
    # Pixels grow as the slice shrinks: the field of view in mm stays the same.
    np.testing.assert_allclose(
        written["pixel_spacing_mm"] * SIZE, source["pixel_spacing_mm"] * SOURCE_SIDE
    )
    assert (written["slice_thickness_mm"] == source["slice_thickness_mm"]).all()


def test_non_square_slices_keep_their_pixel_area():
    # 600 x 400 px of 0.5 mm to 200 x 200: 1.5 mm by 1 mm pixels, area 1.5 mm^2.
    spacing = resized_spacing_mm(0.5, width=600, height=400, size=200)
    assert spacing**2 == pytest.approx(1.5 * 1.0)
    assert resized_spacing_mm(0.45, width=512, height=512, size=128) == pytest.approx(1.8)


def mixed_footprints(mask: np.ndarray, size: int) -> int:
    """Output pixels whose source footprint holds both lesion and background.

    Output pixel i covers source [i*n/size, (i+1)*n/size); every source pixel it touches is in
    [floor(i*n/size), ceil((i+1)*n/size)). Footprints that are all lesion or all background
    resize exactly under any interpolation that samples inside the footprint.
    """
    rows, columns = mask.shape
    mixed = 0
    for i in range(size):
        top, bottom = i * rows // size, -(-(i + 1) * rows // size)
        for j in range(size):
            left, right = j * columns // size, -(-(j + 1) * columns // size)
            block = mask[top:bottom, left:right]
            mixed += bool(block.any() and not block.all())
    return mixed


@settings(max_examples=40, deadline=None)
@given(
    source=st.integers(16, 80),
    size=st.integers(8, 96),
    box=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
)
def test_lesion_area_is_kept_up_to_the_boundary(source, size, box):
    top, bottom = sorted(int(v * source) for v in box[:2])
    left, right = sorted(int(v * source) for v in box[2:])
    mask = np.zeros((source, source), np.uint8)
    mask[top:bottom, left:right] = 255
    resized = resize_lesion_mask(mask, size)
    assert resized.shape == (size, size) and resized.dtype == bool
    scale = size / source
    expected = (mask > 0).sum() * scale**2
    error = abs(int(resized.sum()) - expected)
    # Exact bound: only footprints straddling the lesion's edge can be wrong, by one pixel each.
    mixed = mixed_footprints(mask > 0, size)
    assert error <= mixed + 1e-9
    # ...which is a band along the perimeter one output pixel wide (plus the corners).
    perimeter = 2 * ((bottom - top) + (right - left)) if bottom > top and right > left else 0
    assert mixed <= perimeter * scale + 8


def test_image_interpolation_param_is_used():
    noise = np.random.default_rng(2).integers(0, 256, (64, 64), np.uint8)
    area = resize_image(noise, 16, "area")
    linear = resize_image(noise, 16, "linear")
    # Area averages each 4x4 block; linear only blends the 2x2 pixels around each centre.
    block_means = noise.reshape(16, 4, 16, 4).mean(axis=(1, 3))
    assert np.abs(area - block_means).max() <= 0.5 + 1e-9
    assert np.array_equal(linear, cv2.resize(noise, (16, 16), interpolation=cv2.INTER_LINEAR))
    assert np.abs(linear - block_means).max() > 10
    with pytest.raises(ValueError, match="interpolation"):
        resize_image(noise, 16, "cubic")


def test_dataset_interpolation_and_worker_independence(tmp_path: Path):
    manifest_path = write_validated(tmp_path)
    serial = tmp_path / "serial"
    colorize(manifest_path, serial, workers=1)
    colorize(manifest_path, tmp_path / "parallel", workers=2)
    colorize(manifest_path, tmp_path / "linear", interpolation="linear")
    files = sorted(p.relative_to(serial) for p in serial.rglob("*") if p.is_file())
    assert len(files) == 13
    for name in files:
        assert (serial / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes()
    image = "images/Ischemic_0019983_001.png"
    assert (serial / image).read_bytes() != (tmp_path / "linear" / image).read_bytes()
    mask = "masks/Ischemic_0019983_001.png"
    assert (serial / mask).read_bytes() == (tmp_path / "linear" / mask).read_bytes()


def test_missing_input_names_the_file_and_keeps_previous_output(tmp_path: Path):
    manifest_path = write_validated(tmp_path)
    output = tmp_path / "colorized"
    colorize(manifest_path, output)
    before = (output / "manifest.csv").read_bytes()
    (tmp_path / "extracted" / "masks" / "Ischemic_0019983_002.png").unlink()
    with pytest.raises(DataError, match=r"Ischemic_0019983_002\.png"):
        colorize(manifest_path, output)
    assert (output / "manifest.csv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["colorized", "extracted", "validated"]


def test_unknown_class_is_refused(tmp_path: Path):
    manifest_path = write_validated(tmp_path)
    manifest = read_manifest(manifest_path)
    manifest.loc[0, "class"] = "Tumour"
    with pytest.raises(DataError, match="Tumour"):
        colorize_dataset(
            manifest, tmp_path / "out", size=SIZE, rgb_map=RGB_MAP, interpolation="area"
        )
    assert not (tmp_path / "out").exists()


def test_stage_entry_point(tmp_path: Path):
    write_validated(tmp_path / "data")
    params = {
        "image_size": 20,
        "model": {"num_layers": 3},  # 20 = 4 x 5: two halvings
        "colorize": {"image_interpolation": "linear", "workers": 1},
    }
    write_project_params(tmp_path / "params.yaml", params)
    result = run_stage_command("colorize", tmp_path)
    assert result.returncode == 0, result.stderr
    written = read_manifest(tmp_path / "data" / "colorized" / "manifest.csv")
    assert len(written) == 6 and (written["width"] == 20).all()
    assert read_image(
        tmp_path / "data" / "colorized" / written["mask_path"].iloc[1], color=True
    ).shape == (20, 20, 3)
