"""The phantom montage (reports/phantom_montage.png), to compare by eye with real CT."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.classes import display_rgb
from pipeline.io import decode_image
from pipeline.masks import binary_to_colour
from pipeline.synthesize.archive import CaseSlices
from pipeline.synthesize.layout import CLASS_INDEX
from pipeline.visualize import label, montage, overlay

MONTAGE_BACKGROUND = (0, 0, 0)  # no-lesion colour of the montage's overlay masks


def phantom_montage(
    archive_path: Path | str, cases: Sequence[CaseSlices], per_class: int = 4
) -> np.ndarray:
    """Montage to compare by eye with real CT: per class, the lowest slice of its first masked
    case (skull base), then the largest-lesion slice of the next ones, as written to the
    archive; each slice is shown plain and with its mask overlaid in the class's display
    colour (pipeline/classes.py, not rgb_map: a mask-colour change must not regenerate the
    phantom)."""
    tiles: list[np.ndarray] = []
    with zipfile.ZipFile(archive_path) as archive:
        for class_name, class_index in CLASS_INDEX.items():
            masked = [c for c in cases if c.spec.class_name == class_name and c.spec.has_mask]
            for number in range(per_class):
                case = masked[number % len(masked)]
                index = 0 if number == 0 else int(np.argmax(case.lesion_pixels))
                stem = case.spec.slice_stems[index]
                image_name = case.spec.member("images", stem)
                mask_name = case.spec.member("mask", stem)
                image = decode_image(archive.read(image_name), image_name, color=False)
                mask = decode_image(archive.read(mask_name), mask_name, color=False)
                colour = binary_to_colour(mask, 1, (MONTAGE_BACKGROUND, display_rgb(class_index)))
                tiles.append(label(image, f"{class_name} {case.spec.case_id}/{stem}"))
                tiles.append(label(overlay(image, colour, background=MONTAGE_BACKGROUND), "mask"))
    return montage(tiles, columns=4)
