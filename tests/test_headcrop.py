"""The square round the head (pipeline/headcrop.py): found, sized, cropped and pasted back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.headcrop import (
    Extent,
    SquareBox,
    crop,
    head_extent,
    mask_extent,
    paste_probabilities,
    square_box,
    volume_box,
)


def head_slice(
    shape: tuple[int, int], centre: tuple[int, int], axes: tuple[int, int], table: bool = True
) -> np.ndarray:
    """A brain-window slice: brain (grey 120) in a skull (255) on air (0), and a table's thin
    arc below the head, which is not part of it."""
    grey = np.zeros(shape, np.uint8)
    cv2.ellipse(grey, centre, axes, 0, 0, 360, 255, -1)
    cv2.ellipse(grey, centre, (axes[0] - 8, axes[1] - 8), 0, 0, 360, 120, -1)
    if table:
        below = centre[1] + axes[1] + 12
        cv2.line(grey, (centre[0] - axes[0], below), (centre[0] + axes[0], below), 160, 3)
    return grey


def test_head_extent_holds_the_head_and_leaves_out_the_table():
    grey = head_slice((512, 512), (240, 250), (150, 180))
    extent = head_extent(grey)
    assert extent is not None
    # The head spans rows 70-430 and columns 90-390; the box found on the half-size copy is
    # only ever a little wider, and the table's arc 12 px below the head is not in it.
    assert extent.top <= 70 and extent.bottom >= 431 and extent.left <= 90 and extent.right >= 391
    assert extent.top >= 60 and extent.left >= 80 and extent.right <= 401
    assert extent.bottom < 250 + 180 + 12


def test_head_extent_scales_with_the_slice_and_is_none_without_a_head():
    small = head_extent(head_slice((256, 256), (128, 128), (80, 90), table=False))
    large = head_extent(head_slice((1024, 1024), (512, 512), (320, 360), table=False))
    assert small is not None and large is not None
    for found, scale in ((small, 1), (large, 4)):
        assert found.top <= 38 * scale and found.bottom >= 218 * scale
        assert found.top >= 38 * scale - 6 * scale
    assert head_extent(np.zeros((64, 64), np.uint8)) is None
    assert mask_extent(np.zeros((8, 8, 3), np.uint8)) is None


def test_square_box_widens_to_the_zoom_cap_and_keeps_whole_slices_whole():
    extent = Extent(top=100, bottom=300, left=150, right=330)  # 200 x 180 px
    box = square_box(extent, (512, 512), max_zoom=1.2)
    assert box == SquareBox(top=-14, left=26, side=427)  # ceil(512 / 1.2), centred
    assert square_box(extent, (512, 512), max_zoom=4.0) == SquareBox(100, 140, 200)
    assert square_box(extent, (512, 512), max_zoom=1.0) is None
    assert square_box(Extent(0, 512, 0, 300), (512, 512), max_zoom=2.0) is None  # head as tall
    assert square_box(None, (512, 512), max_zoom=2.0) is None
    # A non-square slice: the cap counts from its shorter side.
    assert square_box(Extent(10, 200, 10, 100), (400, 600), max_zoom=2.0).side == 200


@settings(max_examples=200, deadline=None)
@given(
    shape=st.tuples(st.integers(8, 80), st.integers(8, 80)),
    corners=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
    max_zoom=st.floats(1.0, 4.0),
)
def test_square_box_holds_its_extent_and_respects_the_cap(shape, corners, max_zoom):
    top, bottom = sorted(int(v * shape[0]) for v in corners[:2])
    left, right = sorted(int(v * shape[1]) for v in corners[2:])
    extent = Extent(top, bottom + 1, left, right + 1)
    box = square_box(extent, shape, max_zoom)
    if box is None:
        return
    assert box.top <= extent.top and box.top + box.side >= extent.bottom
    assert box.left <= extent.left and box.left + box.side >= extent.right
    assert min(shape) / max_zoom <= box.side < min(shape)


@settings(max_examples=200, deadline=None)
@given(
    shape=st.tuples(st.integers(4, 40), st.integers(4, 40)),
    top=st.integers(-20, 40),
    left=st.integers(-20, 40),
    side=st.integers(1, 50),
    seed=st.integers(0, 2**16),
)
def test_crop_then_paste_returns_the_labels_inside_and_background_outside(
    shape, top, left, side, seed
):
    labels = np.random.default_rng(seed).integers(0, 3, shape, dtype=np.uint8)
    box = SquareBox(top, left, side)
    cropped = crop(labels, box)
    assert cropped.shape == (side, side)
    pasted = paste_probabilities(np.eye(3, dtype=np.float32)[cropped], box, shape).argmax(-1)
    inside = np.zeros(shape, bool)
    inside[max(top, 0) : max(top + side, 0), max(left, 0) : max(left + side, 0)] = True
    assert np.array_equal(pasted[inside], labels[inside])
    assert not pasted[~inside].any()
    # What the box holds beyond the slice is air (grey 0), never a lesion.
    assert int((cropped > 0).sum()) == int((labels[inside] > 0).sum())
    assert crop(labels, None) is labels


def test_volume_box_is_one_square_round_every_slice_of_the_volume():
    greys = [
        head_slice((512, 512), (256, 256), (100, 120)),  # the top of the head: small
        head_slice((512, 512), (270, 250), (200, 230)),
    ]
    box = volume_box(greys, max_zoom=1.2)
    assert box is not None
    # The large head spans rows 20-480 and columns 70-470: the one square holds it (461 px
    # tall), though the small head alone would get the capped 427-px square round itself.
    assert box.top <= 20 and box.top + box.side >= 481 and box.side >= 461
    assert box.left <= 70 and box.left + box.side >= 471
    alone = volume_box(greys[:1], max_zoom=1.2)
    assert alone is not None and alone.side == 427 and alone != box
    assert volume_box(greys, max_zoom=1.0) is None
    assert volume_box([], max_zoom=1.2) is None


def test_paste_takes_the_square_at_its_place():
    probabilities = np.zeros((4, 4, 2), np.float32)
    probabilities[..., 1] = 1.0
    pasted = paste_probabilities(probabilities, SquareBox(2, 3, 4), (10, 10))
    assert pasted.shape == (10, 10, 2)
    assert pasted[2:6, 3:7, 1].all() and pasted[..., 1].sum() == 16
    assert pasted[..., 0].sum() == pytest.approx(100 - 16)
