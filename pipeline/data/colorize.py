"""The `colorize` stage: binary lesion masks to `rgb_map` colour masks, everything resized.

Images are resampled with area averaging (or bilinear) to `image_size`; masks are resampled as
class indices with nearest neighbour and coloured afterwards, so every mask pixel holds exactly
one palette colour (the reference interpolated masks and got shades of red on every edge).
Before the resize each slice is cropped to its case's square round the head
(`head_crop.max_zoom`, pipeline/headcrop.py): one square per case and slice size, round the
union of its slices' heads and lesions, so a case keeps one pixel spacing and no labelled pixel
is cut off. Slices left whole that are not square are stretched to the square model input.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.headcrop import Extent, SquareBox, crop, head_extent, mask_extent, square_box, union
from pipeline.io import (
    DataError,
    atomic_path,
    encode_png,
    read_image,
    resolve_path,
    verify_content,
    write_hashed,
    write_manifest,
)
from pipeline.masks import Palette, binary_to_colour
from pipeline.parallel import ordered_map

IMAGE_INTERPOLATIONS: Mapping[str, int] = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}
# Picks the source pixel whose centre is nearest (OpenCV's plain INTER_NEAREST is biased
# towards the top-left), so a mask does not shift by half a source pixel when shrunk.
MASK_INTERPOLATION = cv2.INTER_NEAREST_EXACT


def resize_image(image: np.ndarray, size: int, interpolation: str) -> np.ndarray:
    """Grey uint8 image resampled to (size, size) with `area` or `linear` interpolation."""
    if interpolation not in IMAGE_INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(IMAGE_INTERPOLATIONS)}")
    if image.shape[:2] == (size, size):
        return image.copy()
    return cv2.resize(image, (size, size), interpolation=IMAGE_INTERPOLATIONS[interpolation])


def resize_lesion_mask(binary_mask: np.ndarray, size: int) -> np.ndarray:
    """Boolean lesion mask (values > 0) resampled to (size, size) with nearest neighbour."""
    lesion = (binary_mask > 0).astype(np.uint8)
    if lesion.shape[:2] != (size, size):
        lesion = cv2.resize(lesion, (size, size), interpolation=MASK_INTERPOLATION)
    return lesion.astype(bool)


def colorize_slice(
    image: np.ndarray,
    binary_mask: np.ndarray,
    class_index: int,
    palette: Palette,
    size: int,
    interpolation: str,
    box: SquareBox | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(resized grey image, resized RGB colour mask) of one slice whose lesions are one class,
    cropped to `box` first (None: the whole slice)."""
    if image.shape[:2] != binary_mask.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {binary_mask.shape[:2]} sizes differ")
    image, binary_mask = crop(image, box), crop(binary_mask, box)
    lesion = resize_lesion_mask(binary_mask, size)
    colour = binary_to_colour(lesion, class_index, palette)
    return resize_image(image, size, interpolation), colour


def resized_spacing_mm(
    pixel_spacing_mm: float, width: int, height: int, size: int, box: SquareBox | None = None
) -> float:
    """Pixel spacing after cropping a width x height slice to `box` and resampling it to
    size x size.

    A square (a box, or a square slice) scales by its side / size exactly. A non-square slice
    left whole is stretched unevenly and its pixels stop being square; the manifest keeps one
    spacing, the geometric mean of the two new ones, so each pixel's area and hence every
    volume in mL stays exact.
    """
    if box is not None:
        return pixel_spacing_mm * box.side / size
    return pixel_spacing_mm * math.sqrt(width * height) / size


@dataclass(frozen=True)
class SliceJob:
    """Everything one worker needs to colorize one slice (picklable, no shared state)."""

    slice_id: str
    image_path: str
    mask_path: str
    class_index: int
    palette: tuple[tuple[int, int, int], ...]
    size: int
    interpolation: str
    output_folder: str
    box: SquareBox | None = None


@dataclass(frozen=True)
class ColorizedSlice:
    """What the manifest records of one written slice."""

    lesion_pixels: int
    image_sha256: str
    mask_sha256: str


def read_pair(job: SliceJob) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(job.image_path)
    mask = read_image(job.mask_path)
    if image.shape != mask.shape:
        raise DataError(
            f"{job.mask_path}: mask size {mask.shape} differs from its image {image.shape}"
        )
    return image, mask


def slice_extent(job: SliceJob) -> Extent | None:
    """Where one slice's head and lesions lie (what its case's square must hold)."""
    image, mask = read_pair(job)
    return union([head_extent(image), mask_extent(mask)])


def case_boxes(
    manifest: pd.DataFrame, jobs: Sequence[SliceJob], max_zoom: float, workers: int
) -> list[SquareBox | None]:
    """Each slice's square: one per case and slice size, round all their heads and lesions."""
    if max_zoom <= 1.0:
        return [None] * len(jobs)
    # Each slice is read here and again when it is colorized: holding a case's slices until
    # its square is known would bound memory by the largest case rather than by one slice.
    extents = ordered_map(slice_extent, jobs, workers=workers, description="colorize: heads")
    # A case is one volume (evaluate scores it in 3-D), so all its slices of one size share
    # one square and hence one pixel spacing.
    groups = list(zip(manifest["case_id"], manifest["width"], manifest["height"], strict=True))
    unions: dict[tuple, Extent | None] = {}
    for group, extent in zip(groups, extents, strict=True):
        unions[group] = union([unions.get(group), extent])
    boxes = {
        group: square_box(extent, (int(group[2]), int(group[1])), max_zoom)
        for group, extent in unions.items()
    }
    return [boxes[group] for group in groups]


def colorize_file(job: SliceJob) -> ColorizedSlice:
    """Read, colorize and write one slice into the output folder; what the manifest needs."""
    image, mask = read_pair(job)
    resized, colour = colorize_slice(
        image, mask, job.class_index, job.palette, job.size, job.interpolation, job.box
    )
    folder = Path(job.output_folder)
    # Channel by channel: np.any over a last axis of 3 took 7 ms a 512-px slice, a third of
    # the stage's CPU (benchmarks/kaggle_scale.py).
    background = job.palette[0]
    lesion = (colour[..., 0] != background[0]) | (colour[..., 1] != background[1])
    lesion |= colour[..., 2] != background[2]
    # Plain writes: the whole output folder is renamed into place only when complete.
    return ColorizedSlice(
        lesion_pixels=int(np.count_nonzero(lesion)),
        image_sha256=write_hashed(folder / "images" / f"{job.slice_id}.png", encode_png(resized)),
        mask_sha256=write_hashed(folder / "masks" / f"{job.slice_id}.png", encode_png(colour)),
    )


def colorize_dataset(
    manifest: pd.DataFrame,
    output_folder: Path,
    *,
    size: int,
    rgb_map: Mapping[str, tuple[int, int, int]],
    interpolation: str,
    max_head_zoom: float = 1.0,
    workers: int = 0,
) -> pd.DataFrame:
    """Write `output_folder/{images,masks}/<id>.png` and its manifest; return the manifest.

    The class of each row picks its colour from `rgb_map` (keys: background, then the class
    names in class-index order); each case is cropped round its heads with `max_head_zoom`
    (1.0: whole slices). The folder replaces any previous one only when complete.
    """
    class_names: Sequence[str] = list(rgb_map)
    unknown = sorted(set(manifest["class"]) - set(class_names[1:]))
    if unknown:
        raise DataError(f"manifest lists classes without a colour in rgb_map: {unknown}")
    palette = tuple(tuple(colour) for colour in rgb_map.values())
    verify_content(manifest)
    with atomic_path(output_folder) as temporary:
        (temporary / "images").mkdir(parents=True)
        (temporary / "masks").mkdir()
        jobs = [
            SliceJob(
                slice_id=str(row["id"]),
                image_path=str(resolve_path(manifest, row["image_path"])),
                mask_path=str(resolve_path(manifest, row["mask_path"])),
                class_index=class_names.index(row["class"]),
                palette=palette,
                size=size,
                interpolation=interpolation,
                output_folder=str(temporary),
            )
            for row in manifest.to_dict("records")
        ]
        boxes = case_boxes(manifest, jobs, max_head_zoom, workers)
        jobs = [dataclasses.replace(job, box=box) for job, box in zip(jobs, boxes, strict=True)]
        written = ordered_map(colorize_file, jobs, workers=workers, description="colorize")
        colorized = manifest.copy()
        colorized["image_path"] = [f"images/{job.slice_id}.png" for job in jobs]
        colorized["mask_path"] = [f"masks/{job.slice_id}.png" for job in jobs]
        colorized["pixel_spacing_mm"] = [
            resized_spacing_mm(float(spacing), int(width), int(height), size, box)
            for spacing, width, height, box in zip(
                manifest["pixel_spacing_mm"],
                manifest["width"],
                manifest["height"],
                boxes,
                strict=True,
            )
        ]
        colorized["width"] = size
        colorized["height"] = size
        colorized["lesion_pixels"] = [result.lesion_pixels for result in written]
        colorized["image_sha256"] = [result.image_sha256 for result in written]
        colorized["mask_sha256"] = [result.mask_sha256 for result in written]
        write_manifest(temporary / "manifest.csv", colorized)
    colorized.attrs["root"] = str(output_folder)
    return colorized
