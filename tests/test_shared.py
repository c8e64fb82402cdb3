"""Shared plumbing: atomic outputs, PNG and manifest I/O, palette masks, ordered parallel map,
pictures, and the Great Expectations gate machinery."""

from __future__ import annotations

import json
import multiprocessing

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline import io, masks, parallel, visualize
from tests.conftest import project_params

PALETTE = project_params().palette


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    with io.atomic_path(target) as temporary:
        temporary.mkdir()
        (temporary / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), io.atomic_path(target) as temporary:
        temporary.mkdir()
        (temporary / "a.txt").write_text("half")
        raise RuntimeError("writer crashed")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "temporary files were left behind"


def test_png_round_trip_and_corrupt_file_named(tmp_path):
    grey = np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
    rgb = np.stack([grey, grey[::-1], 255 - grey], axis=-1)
    io.write_png(tmp_path / "g.png", grey)
    io.write_png(tmp_path / "c.png", rgb)
    assert np.array_equal(io.read_image(tmp_path / "g.png"), grey)
    assert np.array_equal(io.read_image(tmp_path / "c.png", color=True), rgb)
    assert io.encode_png(rgb) == io.encode_png(rgb.copy()), "PNG encoding must be deterministic"
    truncated = tmp_path / "t.png"
    truncated.write_bytes((tmp_path / "g.png").read_bytes()[:40])
    with pytest.raises(io.DataError, match=r"t\.png: not a readable image"):
        io.read_image(truncated)


def _manifest(ids):
    return pd.DataFrame(
        {
            "id": ids,
            "case_id": ["049"] * len(ids),
            "class": ["Hemorrhagic"] * len(ids),
            "source": ["original"] * len(ids),
            "source_id": ids,
            "image_path": [f"images/{i}.png" for i in ids],
            "mask_path": [f"masks/{i}.png" for i in ids],
            "width": [64] * len(ids),
            "height": [64] * len(ids),
            "lesion_pixels": [3] * len(ids),
            "image_sha256": ["0" * 64] * len(ids),
            "mask_sha256": ["1" * 64] * len(ids),
            "pixel_spacing_mm": [0.45] * len(ids),
            "slice_thickness_mm": [5.0] * len(ids),
        }
    )


def test_manifest_round_trip_sorts_keeps_zero_padding_and_rejects_duplicates(tmp_path):
    path = tmp_path / "manifest.csv"
    io.write_manifest(path, _manifest(["b", "a"]))
    loaded = io.read_manifest(path)
    assert loaded["id"].tolist() == ["a", "b"]
    assert loaded["case_id"].tolist() == ["049", "049"]
    assert io.resolve_path(loaded, "images/a.png") == tmp_path / "images/a.png"
    io.write_manifest(path, _manifest(["a", "a"]))
    with pytest.raises(io.DataError, match="duplicate ids"):
        io.read_manifest(path)
    path.write_text("id,case_id\nx,1\n")
    with pytest.raises(io.DataError, match="lacks columns"):
        io.read_manifest(path)


def test_write_json_turns_nan_into_null(tmp_path):
    io.write_json(tmp_path / "m.json", {"a": np.float32(0.5), "b": float("nan"), "c": np.int64(3)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 0.5, "b": None, "c": 3}


@settings(max_examples=30, deadline=None)
@given(arrays(np.uint8, (8, 9), elements=st.integers(0, 2)))
def test_palette_round_trip(index_mask):
    colour = masks.index_to_colour(index_mask, PALETTE)
    assert np.array_equal(masks.colour_to_index(colour, PALETTE), index_mask)


def test_foreign_colour_is_an_error_naming_the_file():
    shaded = np.zeros((2, 2, 3), np.uint8)
    shaded[0, 0] = (200, 30, 10)
    with pytest.raises(io.DataError, match=r"m\.png: 1 pixels hold colours outside rgb_map"):
        masks.colour_to_index(shaded, PALETTE, source="m.png")


def test_binary_to_colour_uses_the_class_colour():
    binary = np.array([[0, 255], [1, 0]], np.uint8)
    colour = masks.binary_to_colour(binary, 2, PALETTE)
    assert colour[0, 1].tolist() == [0, 255, 0] and colour[0, 0].tolist() == [0, 0, 0]
    assert np.bincount(masks.colour_to_index(colour, PALETTE).ravel()).tolist() == [2, 0, 2]


def _square(value: int) -> int:
    return value * value


def test_ordered_map_keeps_input_order_for_any_worker_count():
    tasks = list(range(23))
    expected = [t * t for t in tasks]
    assert parallel.ordered_map(_square, tasks, workers=1, description="one") == expected
    assert parallel.ordered_map(_square, tasks, workers=2, description="two") == expected
    assert parallel.worker_count(0) >= 1


@settings(max_examples=40, deadline=None)
@given(
    tasks=st.lists(st.integers(-50, 50), max_size=30),
    workers=st.sampled_from([1, 2]),
    window=st.integers(1, 6),
    max_weight=st.none() | st.integers(0, 120),
)
def test_bounded_ordered_map_keeps_order_and_takes_at_most_a_window_ahead(
    tasks, workers, window, max_weight
):
    """Tasks are taken lazily: before each result, those taken and not yet yielded number at
    most `window` and, with a weight, weigh under `max_weight` plus the last one taken."""
    taken: list[int] = []

    def stream():
        for task in tasks:
            taken.append(task)
            yield task

    weighed = {} if max_weight is None else {"weight": abs, "max_weight": max_weight}
    results = []
    for result in parallel.bounded_ordered_map(
        _square, stream(), workers=workers, window=window, description="bounded", **weighed
    ):
        ahead = taken[len(results) :]  # taken and not yet yielded, this result's task first
        assert len(ahead) <= window
        if max_weight is not None and workers > 1:
            assert sum(map(abs, ahead[:-1])) < max(max_weight, 1)
        results.append(result)
    assert results == [t * t for t in tasks]


def _fail_on_three(value: int) -> int:
    if value == 3:
        raise ValueError("task 3 failed")
    return value


@pytest.mark.parametrize("workers", [1, 2])
def test_bounded_ordered_map_raises_a_task_error_in_order_and_stops_its_workers(workers):
    results = []
    with pytest.raises(ValueError, match="task 3 failed"):
        for result in parallel.bounded_ordered_map(
            _fail_on_three, iter(range(20)), workers=workers, window=4, description="failing"
        ):
            results.append(result)
    assert results == [0, 1, 2]
    assert multiprocessing.active_children() == []  # the pool was shut down, not left running


def test_pictures_have_expected_geometry():
    grey = np.full((20, 30), 100, np.uint8)
    colour = masks.index_to_colour(np.eye(20, 30, dtype=np.uint8), PALETTE)
    blended = visualize.overlay(grey, colour, alpha=0.5, background=PALETTE[0])
    assert blended[0, 0].tolist() == [178, 50, 50] and blended[0, 1].tolist() == [100] * 3
    # With a white background in rgb_map, white is no lesion and a black class colour is one.
    white_background = ((255, 255, 255), (0, 0, 0), (0, 255, 0))
    colour = masks.index_to_colour(np.eye(20, 30, dtype=np.uint8), white_background)
    blended = visualize.overlay(grey, colour, alpha=0.5, background=white_background[0])
    assert blended[0, 0].tolist() == [50] * 3 and blended[0, 1].tolist() == [100] * 3
    assert visualize.panel(grey, colour, colour).shape == (20, 3 * 30 + 2 * 4, 3)
    assert visualize.montage([grey] * 5, columns=2).shape == (3 * 20 + 2 * 4, 2 * 30 + 4, 3)


def test_gate_reports_failed_checks_with_example_ids(tmp_path, caplog):
    from pipeline.data.expectations import Check, ValidationFailed, enforce, gxe, run_suite

    table = pd.DataFrame({"id": ["a", "b", "c"], "size": [64, 64, 7], "cls": ["x", "y", "y"]})
    checks = [
        Check(
            "sizes within bounds", gxe.ExpectColumnValuesToBeBetween(column="size", min_value=32)
        ),
        Check(
            "known classes",
            gxe.ExpectColumnValuesToBeInSet(column="cls", value_set=["y"]),
            critical=False,
        ),
        Check("ids unique", gxe.ExpectColumnValuesToBeUnique(column="id")),
    ]
    report = run_suite(table, checks, "demo", data_docs_dir=tmp_path / "docs")
    assert [o.success for o in report.outcomes] == [False, False, True]
    assert report.outcomes[0].examples == ("c",) and report.outcomes[0].unexpected_count == 1
    assert (tmp_path / "docs" / "index.html").is_file()
    with pytest.raises(ValidationFailed, match=r"sizes within bounds .*1 rows, e\.g\. c"):
        enforce(report)
    assert any(
        record.levelname == "WARNING" and "known classes" in record.getMessage()
        for record in caplog.records
    )


@pytest.mark.parametrize(
    ("kind", "flags"),
    [
        (".png", []),
        (".jpg", []),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),  # SOF2 instead of SOF0
    ],
)
def test_image_header_size_reads_png_and_jpeg_headers(kind, flags):
    pixels = np.zeros((37, 53), np.uint8)
    data = cv2.imencode(kind, pixels, flags)[1].tobytes()
    assert io.image_header_size(data) == (kind[1:].upper().replace("JPG", "JPEG"), 53, 37)
    if kind == ".jpg":  # an APP1 segment (as EXIF adds) before the frame header
        app1 = b"\xff\xe1" + (2 + 1000).to_bytes(2, "big") + bytes(1000)
        assert io.image_header_size(data[:2] + app1 + data[2:]) == ("JPEG", 53, 37)
    for broken in (data[:20], b"BM" + data[2:], b""):
        assert io.image_header_size(broken) is None


@settings(max_examples=50, deadline=None)
@given(
    level=st.floats(-2000, 5000),
    width=st.floats(1, 4000),
    values=st.lists(st.integers(0, 65535), min_size=2, max_size=32),
)
def test_window_to_uint8_is_monotone_and_clips_at_the_window_edges(level, width, values):
    array = np.sort(np.asarray(values, dtype=np.uint16))
    result = io.window_to_uint8(array, level, width)
    assert result.dtype == np.uint8 and (np.diff(result.astype(int)) >= 0).all()
    assert (result[array <= level - width / 2] == 0).all()
    assert (result[array >= level + width / 2] == 255).all()
