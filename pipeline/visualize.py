"""Pictures for people: overlays, labelled panels and montages, as uint8 RGB arrays."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Panels of smaller slices are enlarged so that their labels stay legible.
MIN_PANEL_SIDE_PX = 256


def enlarged(image: np.ndarray, *, nearest: bool = True) -> np.ndarray:
    """`image` enlarged by the smallest whole factor that makes its longer side at least
    MIN_PANEL_SIDE_PX (unchanged when it already is): nearest-neighbour for masks, so that
    no new colours appear, linear where `nearest` is False."""
    factor = max(1, -(-MIN_PANEL_SIDE_PX // max(image.shape[:2])))
    if factor == 1:
        return image
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=interpolation)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """RGB uint8 view of a grey (H, W), (H, W, 1) or RGB image."""
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    grey = image.reshape(image.shape[:2])
    return np.repeat(grey[..., None], 3, axis=2)


def overlay(
    image: np.ndarray,
    colour_mask: np.ndarray,
    alpha: float = 0.45,
    *,
    background: Sequence[int],
) -> np.ndarray:
    """Alpha-blend the lesion pixels of `colour_mask` (any colour but `background`, the
    mask's no-lesion colour, rgb_map's first) onto the CT image."""
    base = as_rgb(image)
    lesion = np.any(colour_mask != np.asarray(background, colour_mask.dtype), axis=-1)
    # Only the lesion pixels are blended (float32, as they always were): blending the whole
    # image in float32 took several 12-byte copies a pixel, over 1 GB for 4096 x 4096.
    mixed = (1.0 - alpha) * base[lesion].astype(np.float32) + alpha * colour_mask[lesion].astype(
        np.float32
    )
    blended = base.copy()
    blended[lesion] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return blended


def label(image: np.ndarray, text: str) -> np.ndarray:
    """Copy of `image` with `text` written in its top-left corner (white on a dark band)."""
    labelled = as_rgb(image).copy()
    scale = max(0.35, labelled.shape[1] / 400.0)
    thickness = max(1, round(scale * 1.5))
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    cv2.rectangle(labelled, (0, 0), (width + 6, height + baseline + 6), (0, 0, 0), -1)
    cv2.putText(
        labelled,
        text,
        (3, height + 3),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        thickness,
        cv2.LINE_AA,
    )
    return labelled


def hstack(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Images side by side (same height) with a thin grey gap."""
    rgb = [as_rgb(image) for image in images]
    height = rgb[0].shape[0]
    spacer = np.full((height, gap, 3), 64, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for index, image in enumerate(rgb):
        if image.shape[0] != height:
            raise ValueError("hstack needs images of equal height")
        parts.extend([spacer, image] if index else [image])
    return np.concatenate(parts, axis=1)


def panel(
    image: np.ndarray,
    truth: np.ndarray | None,
    prediction: np.ndarray,
    title: str = "",
) -> np.ndarray:
    """image | ground truth | prediction, labelled (ground truth omitted when unknown)."""
    parts = [label(image, title or "image")]
    if truth is not None:
        parts.append(label(truth, "ground truth"))
    parts.append(label(prediction, "prediction"))
    return hstack(parts)


def montage(tiles: Sequence[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    """Grid of equally sized RGB tiles, `columns` wide, padded with dark tiles."""
    if not tiles:
        raise ValueError("montage needs at least one tile")
    tiles = [as_rgb(tile) for tile in tiles]
    height, width = tiles[0].shape[:2]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    canvas = np.full(
        (rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3),
        64,
        dtype=np.uint8,
    )
    for index, tile in enumerate(tiles):
        if tile.shape[:2] != (height, width):
            tile = cv2.resize(tile, (width, height), interpolation=cv2.INTER_AREA)
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        canvas[top : top + height, left : left + width] = tile
    return canvas
