"""Colour masks <-> class-index masks through `rgb_map` (index 0 background, then the lesion
classes: pipeline/classes.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.io import DataError

Palette = Sequence[tuple[int, int, int]]


def palette_array(palette: Palette) -> np.ndarray:
    """(classes, 3) uint8 array of the palette colours by class index."""
    return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)


def colour_to_index(mask_rgb: np.ndarray, palette: Palette, source: str = "mask") -> np.ndarray:
    """Class-index mask (H, W) uint8 from an exact-palette colour mask (H, W, 3).

    A colour outside the palette is a data error: masks are written with nearest-neighbour
    resampling only, so a foreign shade means a corrupted or foreign file.
    """
    colours = palette_array(palette)
    matches = np.all(mask_rgb[..., None, :] == colours[None, None, :, :], axis=-1)
    known = matches.any(axis=-1)
    if not known.all():
        bad = mask_rgb[~known][0].tolist()
        raise DataError(
            f"{source}: {int((~known).sum())} pixels hold colours outside rgb_map, e.g. {bad}"
        )
    return matches.argmax(axis=-1).astype(np.uint8)


def index_to_colour(index_mask: np.ndarray, palette: Palette) -> np.ndarray:
    """Colour mask (H, W, 3) uint8 from a class-index mask (H, W)."""
    colours = palette_array(palette)
    if index_mask.size and int(index_mask.max()) >= len(colours):
        raise ValueError(f"class index {int(index_mask.max())} has no colour in the palette")
    return colours[index_mask]


def binary_to_colour(binary_mask: np.ndarray, class_index: int, palette: Palette) -> np.ndarray:
    """Colour mask from a 0/255 (or 0/1) lesion mask whose lesions all belong to one class."""
    index = np.where(binary_mask > 0, np.uint8(class_index), np.uint8(0))
    return index_to_colour(index, palette)
