"""The square round a patient's head that the model sees, and its way back (`head_crop`).

Real heads fill 0.64-0.95 of a CT slice's width (the phantom draws 0.55-0.95), so at the
model's 128 px a small head keeps fewer pixels across a bleed than a large one. Before a slice
is resized to `image_size` it is cropped to a square round its head: the head's bounding box,
widened to a square, never smaller than the slice's shorter side over `head_crop.max_zoom`
(so no head is enlarged more than that; 1.0 keeps every slice whole) and centred on the head.
Where the square reaches past the slice it is padded with grey 0 (air). A head larger than the
slice, or a square as large as it, leaves the slice whole.

One square serves a whole volume (a case in `colorize`, a series in the DICOM command), so that
its slices keep one pixel spacing (mm = the slice's spacing x side / image_size); loose new
PNG/JPEG slices get one each. Training and use crop alike; the model's softmax is resized back
to the square and pasted into the slice, background outside it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

# Lengths in pixels are stated for a 512-px slice and scaled with the slice's width.
REFERENCE_WIDTH_PX = 512
CLOSE_GAPS_PX = 5  # scalp fat and sinus air break the head outline: closed before filling
# Opened away before the largest object is taken: thinner objects (a table's arc, holder rails,
# tubes, ears) touching the scalp would otherwise join the head.
THIN_OBJECT_PX = 31
REGROW_PX = 5  # then grown back this far: the opening shaves the outline's tips too
# The head is looked for on a copy at most this wide: a fifth of the time of 512 px, and the
# box found there is only ever wider (by 8 px per side at the 90th percentile; measured on
# 117 phantom and 22 real slices, 2026-12-07), never cutting the head.
SEARCH_WIDTH_PX = 256


def disc(diameter_px: float) -> np.ndarray:
    size = max(1, int(diameter_px)) | 1  # odd, so that the element has a centre
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(sizes.argmax())


def head_mask(grey: np.ndarray, scale: float) -> np.ndarray:
    """The head of a brain-window grey slice: the largest object above grey 0 once closed,
    its holes filled and what is thinner than 31 px (x `scale`) opened away."""
    tissue = (grey > 0).astype(np.uint8)
    closed = cv2.morphologyEx(tissue, cv2.MORPH_CLOSE, disc(round(CLOSE_GAPS_PX * scale)))
    filled = ndimage.binary_fill_holes(closed)
    thin = disc(round(THIN_OBJECT_PX * scale))
    opened = cv2.morphologyEx(filled.astype(np.uint8), cv2.MORPH_OPEN, thin)
    if not opened.any():  # nothing that thick (a sliver of a slice): the plain largest object
        return largest_component(filled)
    regrown = cv2.dilate(largest_component(opened > 0).astype(np.uint8), disc(REGROW_PX * scale))
    return filled & (regrown > 0)


@dataclass(frozen=True)
class Extent:
    """Rows top..bottom-1 and columns left..right-1 of a slice."""

    top: int
    bottom: int
    left: int
    right: int

    def union(self, other: Extent | None) -> Extent:
        if other is None:
            return self
        return Extent(
            min(self.top, other.top),
            max(self.bottom, other.bottom),
            min(self.left, other.left),
            max(self.right, other.right),
        )


def union(extents: Iterable[Extent | None]) -> Extent | None:
    """The smallest extent holding every given one; None when none is given."""
    result: Extent | None = None
    for extent in extents:
        if extent is not None:
            result = extent.union(result)
    return result


def mask_extent(mask: np.ndarray) -> Extent | None:
    """Where `mask` (2-D, or with channels) is non-zero; None where it is zero everywhere."""
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(mask.any(axis=0))
    return Extent(int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1)


def head_extent(grey: np.ndarray) -> Extent | None:
    """The head's bounding box in `grey`'s pixels (found on a copy at most
    SEARCH_WIDTH_PX wide, rounded outwards); None on a slice without one."""
    height, width = grey.shape
    shrink = min(1.0, SEARCH_WIDTH_PX / width)
    if shrink < 1.0:
        size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    found = mask_extent(head_mask(grey, grey.shape[1] / REFERENCE_WIDTH_PX))
    if found is None:
        return None
    row_scale, column_scale = height / grey.shape[0], width / grey.shape[1]
    return Extent(
        math.floor(found.top * row_scale),
        min(height, math.ceil(found.bottom * row_scale)),
        math.floor(found.left * column_scale),
        min(width, math.ceil(found.right * column_scale)),
    )


@dataclass(frozen=True)
class SquareBox:
    """A side x side square of a slice from (top, left); it may reach past the slice."""

    top: int
    left: int
    side: int


def square_box(extent: Extent | None, shape: tuple[int, int], max_zoom: float) -> SquareBox | None:
    """The square round `extent` that a slice of `shape` is cropped to; None: the whole slice
    (no extent, max_zoom 1, or a square as large as the slice's shorter side)."""
    if extent is None:
        return None
    shorter = min(shape)
    side = max(
        extent.bottom - extent.top, extent.right - extent.left, math.ceil(shorter / max_zoom)
    )
    if side >= shorter:
        return None
    # Centred on the extent; floor division keeps every pixel of it inside the square.
    top = (extent.top + extent.bottom - side) // 2
    left = (extent.left + extent.right - side) // 2
    return SquareBox(top, left, side)


def volume_box(greys: Sequence[np.ndarray], max_zoom: float) -> SquareBox | None:
    """One square for slices of one shape (a volume, or one slice): round their heads."""
    if max_zoom <= 1.0 or not greys:
        return None
    return square_box(union(head_extent(grey) for grey in greys), greys[0].shape[:2], max_zoom)


def crop(array: np.ndarray, box: SquareBox | None) -> np.ndarray:
    """`array`'s pixels inside `box` (2-D or with channels), 0 where the box leaves the array;
    `array` itself when box is None."""
    if box is None:
        return array
    height, width = array.shape[:2]
    out = np.zeros((box.side, box.side, *array.shape[2:]), array.dtype)
    top, left = max(box.top, 0), max(box.left, 0)
    bottom, right = min(box.top + box.side, height), min(box.left + box.side, width)
    if bottom > top and right > left:
        out[top - box.top : bottom - box.top, left - box.left : right - box.left] = array[
            top:bottom, left:right
        ]
    return out


def paste_probabilities(
    probabilities: np.ndarray, box: SquareBox, shape: tuple[int, int]
) -> np.ndarray:
    """(H, W, classes) of a slice of `shape`: `probabilities` (side x side x classes, the
    square's own pixels) where the box lies, certain background (class 0) elsewhere."""
    height, width = shape
    full = np.zeros((height, width, probabilities.shape[-1]), np.float32)
    full[..., 0] = 1.0
    top, left = max(box.top, 0), max(box.left, 0)
    bottom, right = min(box.top + box.side, height), min(box.left + box.side, width)
    if bottom > top and right > left:
        full[top:bottom, left:right] = probabilities[
            top - box.top : bottom - box.top, left - box.left : right - box.left
        ]
    return full
