"""Realism score: phantom slices against real head CT slices, feature by feature, and one figure.

    .venv/bin/python benchmarks/realism.py --real DIR \
        [--phantom data/raw/phantom.zip] [--phantom-slices 64] [--seed 0] \
        [--json OUT.json] [--montage OUT.png]

Real slices: `DIR/images/*.png|jpg` (8-bit brain-window slices, grey or RGB holding grey, read
by extract's rules) and `DIR/masks/<same name>`, colour masks in rgb_map's colours (red
hemorrhagic, green ischemic); each mask pixel takes its nearest rgb_map colour, so the
interpolated edges of distorted copies count for the closer class. A slice that cannot be read
is reported on stderr and left out; the script stops if none is left.

Phantom slices: a Kaggle-layout archive, zip or unpacked folder (default `data/raw/phantom.zip`,
what the synthesize stage writes), listed, paired and decoded by extract's own code (Training
and Testing). `--phantom-slices` slices holding a lesion are drawn with `--seed` (every real
slice holds one; lesion-free phantom slices would differ from them by selection alone).

Features per slice, HU through the model's brain window (`infer.window_level_hu` and
`window_width_hu`, W 80 / L 40: HU = level - width/2 + grey/255 * width; grey 0 is <= 0 HU and
255 >= 80 HU, so air and fat, bone and calcium each read as one value):
- head: the largest object above grey 0 once closed, its holes filled and what is thinner than
  31 px (per 512 px: the table's arc, head-holder rails, tubes, ears) opened away; its width
  over the image width, its share of bone (grey 255) and of air or fat (grey 0);
- intracranial: inside the skull (bone closed and filled), or where the skull is open (skull
  base), the head deeper than 8% of its width; bone, air and fat left out. Its HU quantiles;
  the head's mean HU in shells of its own shape: a pixel's distance from the head's centre over
  the head's extent along the same ray (1 at the head's edge, 1-degree rays), so that the
  outer shells hold scalp and skull on every side of a long head as of a round one; and how
  much denser it reads 1-7 px inside its edge than 13-27 px inside (per 512 px; lesions and a
  10-px ring around them left out): the inner table's halo;
- noise: the SD of the residual after a 5x5 median (grey levels, intracranial, lesions left
  out), its lag-1 autocorrelation, and the noise-power shares in low (< 0.1 cycles/px), mid
  (0.1-0.25) and high (>= 0.25) spatial frequencies of a 64-px intracranial patch (per 512 px)
  with its quadratic trend removed and a Hann window, and the frequency of its peak;
- texture: the median Sobel gradient (HU/px) and median 7x7 local SD (HU) inside the skull;
- per lesion class on the slices holding it: its mean HU, its contrast against a 10-px ring
  around it (per 512 px; the ring's intracranial pixels, lesions left out), how that contrast
  fades towards its outline (the mean HU 1-3 and 3-5 px inside the mask, minus the ring's, over
  the same for its core deeper than 6 px: 1 for a step, about 0.5 at the outline of a lesion
  annotated at half contrast), its area (px and share of the head), and its centroid from the
  head's centre over R (distance, and vertical: positive is lower in the image).

Each feature is compared by the 1-D Wasserstein distance between the real and phantom values
(in the feature's unit, and over the real values' SD). The overall figure is the cross-validated
ROC AUC of an L2 logistic regression (numpy, Newton steps) told to separate phantom from real
slices on the standardised slice features (lesion features exist only on slices holding the
class, so they are compared one by one but left out of it): 0.5 means it cannot. Stratified
5-fold, repeated with 10 seeded shuffles; the mean AUC and its range over the repeats.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
from scipy.stats import wasserstein_distance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.classes import display_rgb  # noqa: E402
from pipeline.data.extract import (  # noqa: E402
    classify_entries,
    decode_file,
    open_source,
    pair_slices,
)
from pipeline.evaluate.agreement import roc_auc  # noqa: E402
from pipeline.headcrop import REFERENCE_WIDTH_PX, disc, head_mask  # noqa: E402
from pipeline.io import (  # noqa: E402
    IMAGE_SUFFIXES,
    DataError,
    read_untrusted,
    untrusted_to_grey,
    write_json,
    write_png,
)
from pipeline.masks import Palette, palette_array  # noqa: E402
from pipeline.params import ExtractParams, Params, load_params  # noqa: E402
from pipeline.visualize import label, montage  # noqa: E402

DEFAULT_PHANTOM = ROOT / "data/raw/phantom.zip"
DEFAULT_PHANTOM_SLICES = 64
# Lengths in pixels are stated for a 512-px slice (REFERENCE_WIDTH_PX) and scaled with the
# slice's width.
RING_PX = 10
# Depth bands (px inside a lesion's mask, per 512 px) for its edge profile, and its core.
EDGE_BANDS_PX = {"2px": (1.0, 3.0), "4px": (3.0, 5.0)}
EDGE_CORE_PX = 6.0
MIN_CORE_PX = 20  # per 512 px slice: a smaller core gives no reference contrast
MIN_CORE_CONTRAST_HU = 1.0  # below it a share of the contrast means nothing
NPS_PATCH_PX = 64
# Per 512 px from the intracranial edge: 0.5-3 mm and 6-12 mm at 0.45 mm a pixel.
INNER_TABLE_BAND_PX = (1.0, 7.0)
DEEP_BAND_PX = (13.0, 27.0)
SKULL_CLOSE_PX = 15  # gaps in the skull (sutures, foramina) closed before filling it
OPEN_SKULL_DEPTH = 0.08  # head depth, as a share of its width, taken as intracranial
MIN_REGION_PX = 400  # per 512 px slice: fewer intracranial pixels make no statistics
# Shells of the head's own shape: 0.85-1 holds scalp and skull, 0.7-0.85 the outer brain.
RADIAL_EDGES = (0.0, 0.25, 0.5, 0.7, 0.85, 1.0)
RAY_COUNT = 360
NPS_BANDS = {"low": (0.0, 0.1), "mid": (0.1, 0.25), "high": (0.25, 1.0)}  # cycles/px
INTRACRANIAL_QUANTILES = (5, 25, 50, 75, 95)
FOLDS = 5
CV_REPEATS = 10
L2_PENALTY = 1.0
MONTAGE_TILES = 8  # per row: phantom above, real below
MONTAGE_TILE_PX = 256


@dataclass
class Slice:
    """One slice as the features see it: 8-bit brain-window grey and class-index labels."""

    name: str
    grey: np.ndarray
    labels: np.ndarray  # uint8: 0 background, then rgb_map's lesion classes


@dataclass
class SliceSet:
    source: str
    slices: list[Slice]
    skipped: list[str] = field(default_factory=list)  # "path: reason"


@dataclass(frozen=True)
class Window:
    level_hu: float
    width_hu: float

    def hu(self, grey: np.ndarray) -> np.ndarray:
        return self.level_hu - self.width_hu / 2.0 + grey.astype(np.float64) / 255.0 * self.width_hu


# ---------------------------------------------------------------- reading


def nearest_palette_labels(colour: np.ndarray, palette: Palette) -> np.ndarray:
    """Class index of each RGB pixel: its nearest palette colour (squared distance; the lower
    index on a tie). One colour at a time, so memory stays a few times the mask's."""
    pixels = colour.astype(np.int32)
    labels = np.zeros(colour.shape[:2], np.uint8)
    nearest = np.full(colour.shape[:2], np.iinfo(np.int32).max, np.int32)
    for index, reference in enumerate(palette_array(palette).astype(np.int32)):
        distance = ((pixels - reference) ** 2).sum(axis=-1, dtype=np.int32)
        closer = distance < nearest
        labels[closer], nearest[closer] = index, distance[closer]
    return labels


def read_real_slice(image_path: Path, mask_path: Path, params: Params) -> Slice:
    rules = params.extract
    pixels = read_untrusted(image_path, rules.max_pixels, "extract.max_pixels")
    grey, _ = untrusted_to_grey(pixels, rules.window_16bit.level, rules.window_16bit.width)
    mask = read_untrusted(mask_path, rules.max_pixels, "extract.max_pixels")
    if mask.ndim != 3 or mask.dtype != np.uint8:
        raise DataError(f"{mask_path}: not an 8-bit colour mask (rgb_map colours)")
    if mask.shape[:2] != grey.shape:
        raise DataError(f"{mask_path}: {mask.shape[1]}x{mask.shape[0]}, image {grey.shape[::-1]}")
    rgb = cv2.cvtColor(np.ascontiguousarray(mask[..., :3]), cv2.COLOR_BGR2RGB)
    return Slice(image_path.name, grey, nearest_palette_labels(rgb, params.palette))


def read_real_folder(folder: Path, params: Params) -> SliceSet:
    """Every image of `folder/images` with its mask of the same name in `folder/masks`."""
    images = folder / "images"
    if not images.is_dir():
        raise DataError(f"{folder}: no images/ folder (expected images/ and masks/)")
    real = SliceSet(str(folder), [])
    for path in sorted(images.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        mask_path = folder / "masks" / path.name
        try:
            real.slices.append(read_real_slice(path, mask_path, params))
        except DataError as error:
            real.skipped.append(str(error))
            print(f"skipped {error}", file=sys.stderr)
    return real


def read_phantom(archive: Path, params: Params, count: int, seed: int) -> SliceSet:
    """Up to `count` slices holding a lesion, drawn with `seed` from a Kaggle-layout archive
    (zip or folder), listed, paired and decoded as extract does."""
    rules: ExtractParams = params.extract.model_copy(update={"subsets": ["Training", "Testing"]})
    index_of = {lesion.name: lesion.index for lesion in params.lesion_classes}
    phantom = SliceSet(str(archive), [])
    source = open_source(archive, rules)
    try:
        listing = classify_entries(source.entries(), rules.subsets, str(archive))
        pairs = pair_slices(listing.slices, rules.mask_suffix).pairs
        # Pairs are read in a seeded order until `count` hold a lesion: at most all of them.
        for position in np.random.default_rng(seed).permutation(len(pairs)):
            pair = pairs[position]
            try:
                grey, _ = decode_file(source.read(pair.image_path), pair.image_path, False, rules)
                mask, _ = decode_file(source.read(pair.mask_path), pair.mask_path, True, rules)
            except DataError as error:
                phantom.skipped.append(str(error))
                print(f"skipped {error}", file=sys.stderr)
                continue
            if mask.any():
                labels = np.where(mask > 0, index_of[pair.class_name], 0).astype(np.uint8)
                phantom.slices.append(Slice(pair.id, grey, labels))
                if len(phantom.slices) == count:
                    break
    finally:
        source.close()
    return phantom


# ---------------------------------------------------------------- features


def shape_radius(head: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Each pixel's distance from `centre` over the head's extent along the same ray (the
    farthest head pixel within its 1-degree sector): 0 at the centre, 1 at the head's edge."""
    rows, columns = np.indices(head.shape)
    distance = np.hypot(rows - centre[0], columns - centre[1])
    angle = np.arctan2(rows - centre[0], columns - centre[1])
    ray = np.minimum(((angle + np.pi) / (2 * np.pi) * RAY_COUNT).astype(int), RAY_COUNT - 1)
    extent = np.zeros(RAY_COUNT)
    np.maximum.at(extent, ray[head], distance[head])
    return distance / np.maximum(extent[ray], 1.0)


def intracranial_mask(grey: np.ndarray, head: np.ndarray, scale: float) -> np.ndarray:
    bone = head & (grey == 255)
    skull = cv2.morphologyEx(
        bone.astype(np.uint8), cv2.MORPH_CLOSE, disc(round(SKULL_CLOSE_PX * scale))
    ).astype(bool)
    inside = ndimage.binary_fill_holes(skull) & ~skull
    if inside.sum() < 0.1 * head.sum():  # the skull is open (skull base): a depth rule
        columns = np.flatnonzero(head.any(axis=0))
        width = columns[-1] - columns[0] + 1 if columns.size else 0
        inside = ndimage.distance_transform_edt(head) > OPEN_SKULL_DEPTH * width
    return inside & (grey > 0) & (grey < 255)


def inner_table_excess(
    hu: np.ndarray, intracranial: np.ndarray, labels: np.ndarray, scale: float
) -> float:
    """Mean HU of the intracranial pixels just inside its edge (INNER_TABLE_BAND_PX) minus
    that deeper in (DEEP_BAND_PX), lesions and RING_PX around them left out (NaN when either
    band holds too few pixels): how much denser the cavity reads along the inner table."""
    from_edge = (
        cv2.distanceTransform(intracranial.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5) / scale
    )
    lesions = cv2.dilate((labels > 0).astype(np.uint8), disc(2 * round(RING_PX * scale) + 1))
    usable = intracranial & (lesions == 0)
    means = []
    for low, high in (INNER_TABLE_BAND_PX, DEEP_BAND_PX):
        band = usable & (from_edge > low) & (from_edge <= high)
        if band.sum() < MIN_REGION_PX * scale**2 / 4:
            return np.nan
        means.append(float(hu[band].mean()))
    return means[0] - means[1]


def noise_power_bands(hu: np.ndarray, region: np.ndarray, patch_px: int) -> dict[str, float]:
    """Noise-power shares by band and the peak frequency of a square patch inside `region`,
    centred where the region is deepest; NaN when no such patch fits."""
    nan = {f"nps_{band}_share": np.nan for band in NPS_BANDS} | {"nps_peak_cycles_per_px": np.nan}
    depth = ndimage.distance_transform_edt(region)
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    half = patch_px // 2
    if y < half or x < half or y + half > hu.shape[0] or x + half > hu.shape[1]:
        return nan
    inside = region[y - half : y + half, x - half : x + half]
    if inside.mean() < 0.95:
        return nan
    patch = hu[y - half : y + half, x - half : x + half]
    rows, columns = np.mgrid[:patch_px, :patch_px] / patch_px - 0.5
    trend = np.stack([np.ones_like(rows), rows, columns, rows**2, columns**2, rows * columns], -1)
    design = trend.reshape(-1, trend.shape[-1])
    coefficients, *_ = np.linalg.lstsq(design, patch.ravel(), rcond=None)
    detrended = patch - (design @ coefficients).reshape(patch.shape)
    hann = np.outer(np.hanning(patch_px), np.hanning(patch_px))
    power = np.abs(np.fft.fft2(detrended * hann)) ** 2
    frequencies = np.fft.fftfreq(patch_px)
    radius = np.hypot(*np.meshgrid(frequencies, frequencies, indexing="ij"))
    power[0, 0] = 0.0  # the mean: no noise
    total = power.sum()
    if total <= 0:
        return nan
    result = {
        f"nps_{band}_share": float(power[(radius >= low) & (radius < high)].sum() / total)
        for band, (low, high) in NPS_BANDS.items()
    }
    # Radial profile in rings one frequency step (1 / patch_px) wide: mean power per ring.
    rings = np.rint(radius * patch_px).astype(int).ravel()
    profile = np.bincount(rings, power.ravel()) / np.bincount(rings)
    nyquist = patch_px // 2  # every ring up to here holds frequencies
    result["nps_peak_cycles_per_px"] = float(
        (int(profile[1 : nyquist + 1].argmax()) + 1) / patch_px
    )
    return result


def lesion_features(
    name: str,
    lesion: np.ndarray,
    labels: np.ndarray,
    hu: np.ndarray,
    intracranial: np.ndarray,
    head: np.ndarray,
    centre: np.ndarray,
    radius: float,
    scale: float,
) -> dict[str, float]:
    features = {
        f"{name}_lesion_hu": np.nan,
        f"{name}_contrast_hu": np.nan,
        **{f"{name}_edge_share_{band}": np.nan for band in EDGE_BANDS_PX},
        f"{name}_area_px": np.nan,
        f"{name}_area_share_of_head": np.nan,
        f"{name}_position_r": np.nan,
        f"{name}_position_y": np.nan,
    }
    if not lesion.any():
        return features
    ring_px = max(1, round(RING_PX * scale))
    grown = cv2.dilate(lesion.astype(np.uint8), disc(2 * ring_px + 1)).astype(bool)
    # Inside the skull only: beside a subdural or epidural bleed the scalp is no reference.
    ring = grown & (labels == 0) & intracranial
    rows, columns = np.nonzero(lesion)
    offset = (np.array([rows.mean(), columns.mean()]) - centre) / radius
    features.update(
        {
            f"{name}_lesion_hu": float(hu[lesion].mean()),
            f"{name}_contrast_hu": float(hu[lesion].mean() - hu[ring].mean())
            if ring.any()
            else np.nan,
            f"{name}_area_px": float(lesion.sum()),
            f"{name}_area_share_of_head": float(lesion.sum() / head.sum()),
            f"{name}_position_r": float(np.hypot(*offset)),
            f"{name}_position_y": float(offset[0]),
        }
    )
    if ring.any():
        features.update(edge_shares(name, lesion, hu, float(hu[ring].mean()), scale))
    return features


def edge_shares(
    name: str, lesion: np.ndarray, hu: np.ndarray, ring_hu: float, scale: float
) -> dict[str, float]:
    """The lesion's contrast over the ring in each band of EDGE_BANDS_PX inside its mask, as a
    share of its core's; NaN where the core is too small or too faint to divide by."""
    depth = cv2.distanceTransform(lesion.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    core = depth > EDGE_CORE_PX * scale
    if core.sum() < MIN_CORE_PX * scale**2:
        return {}
    core_contrast = float(hu[core].mean()) - ring_hu
    if abs(core_contrast) < MIN_CORE_CONTRAST_HU:
        return {}
    shares = {}
    for band, (low, high) in EDGE_BANDS_PX.items():
        inside = (depth > low * scale) & (depth <= high * scale)
        if inside.any():
            shares[f"{name}_edge_share_{band}"] = (
                float(hu[inside].mean()) - ring_hu
            ) / core_contrast
    return shares


def slice_features(
    grey: np.ndarray, labels: np.ndarray, window: Window, lesion_names: Sequence[str]
) -> dict[str, float]:
    """Every feature of one slice (NaN where it is undefined); see the module docstring.
    `lesion_names[i]` is the name of class index i + 1."""
    height, width = grey.shape
    scale = width / REFERENCE_WIDTH_PX
    hu = window.hu(grey)
    head = head_mask(grey, scale)
    features: dict[str, float] = {}
    columns = np.flatnonzero(head.any(axis=0))
    head_px = int(head.sum())
    features["head_width_share"] = (columns[-1] - columns[0] + 1) / width if head_px else 0.0
    features["bone_share_of_head"] = float((head & (grey == 255)).sum() / max(head_px, 1))
    features["air_share_of_head"] = float((head & (grey == 0)).sum() / max(head_px, 1))

    centre = np.array(ndimage.center_of_mass(head)) if head_px else np.array([height, width]) / 2
    radius = max(np.sqrt(head_px / np.pi), 1.0)
    shell = shape_radius(head, centre)
    for low, high in itertools.pairwise(RADIAL_EDGES):
        ring = head & (shell >= low) & ((shell < high) | (high == RADIAL_EDGES[-1]))
        features[f"radial_hu_{low:.2f}_{high:.2f}"] = (
            float(hu[ring].mean()) if ring.any() else np.nan
        )

    intracranial = intracranial_mask(grey, head, scale)
    enough = intracranial.sum() >= MIN_REGION_PX * scale**2
    features["inner_table_excess_hu"] = inner_table_excess(hu, intracranial, labels, scale)
    for quantile, value in zip(
        INTRACRANIAL_QUANTILES,
        np.percentile(hu[intracranial], INTRACRANIAL_QUANTILES) if enough else [np.nan] * 5,
        strict=True,
    ):
        features[f"intracranial_hu_p{quantile:02d}"] = float(value)
    # Noise and texture away from the region's edge (the 5x5 median and 7x7 SD reach 3 px).
    quiet = cv2.erode(intracranial.astype(np.uint8), disc(7)).astype(bool)
    residual = grey.astype(np.float64) - cv2.medianBlur(grey, 5)
    noise_region = quiet & (labels == 0)
    if noise_region.sum() >= MIN_REGION_PX * scale**2:
        values = residual[noise_region]
        features["noise_residual_sd_grey"] = float(values.std())
        neighbours = noise_region[:, :-1] & noise_region[:, 1:]  # horizontal pixel pairs
        left, right = residual[:, :-1][neighbours], residual[:, 1:][neighbours]
        features["noise_lag1_correlation"] = (
            float(np.corrcoef(left, right)[0, 1]) if left.std() > 0 and right.std() > 0 else np.nan
        )
    else:
        features["noise_residual_sd_grey"] = features["noise_lag1_correlation"] = np.nan
    features.update(noise_power_bands(hu, intracranial, max(16, round(NPS_PATCH_PX * scale))))
    if quiet.sum() >= MIN_REGION_PX * scale**2:
        gradient = np.hypot(cv2.Sobel(hu, cv2.CV_64F, 1, 0), cv2.Sobel(hu, cv2.CV_64F, 0, 1)) / 8
        mean = cv2.blur(hu, (7, 7))
        local_sd = np.sqrt(np.maximum(cv2.blur(hu * hu, (7, 7)) - mean * mean, 0.0))
        features["texture_gradient_hu_per_px"] = float(np.median(gradient[quiet]))
        features["texture_local_sd_hu"] = float(np.median(local_sd[quiet]))
    else:
        features["texture_gradient_hu_per_px"] = features["texture_local_sd_hu"] = np.nan

    for index, name in enumerate(lesion_names, start=1):
        features.update(
            lesion_features(
                name, labels == index, labels, hu, intracranial, head, centre, radius, scale
            )
        )
    return features


FEATURE_UNITS = {
    "head_width_share": "of image width",
    "bone_share_of_head": "share",
    "air_share_of_head": "share",
    "radial_hu": "HU",
    "intracranial_hu": "HU",
    "inner_table_excess_hu": "HU",
    "noise_residual_sd_grey": "grey levels",
    "noise_lag1_correlation": "correlation",
    "nps_peak_cycles_per_px": "cycles/px",
    "nps_": "share of power",
    "texture_gradient_hu_per_px": "HU/px",
    "texture_local_sd_hu": "HU",
    "_edge_share_": "share of the core's contrast",
    "_lesion_hu": "HU",
    "_contrast_hu": "HU",
    "_area_px": "px",
    "_area_share_of_head": "share",
    "_position_": "head radii",
}


def feature_unit(name: str) -> str:
    return next((unit for key, unit in FEATURE_UNITS.items() if key in name), "")


def is_lesion_feature(name: str, lesion_names: Sequence[str]) -> bool:
    return any(name.startswith(f"{lesion}_") for lesion in lesion_names)


# ---------------------------------------------------------------- comparison


def summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"n": 0, "median": np.nan, "min": np.nan, "max": np.nan}
    return {
        "n": int(values.size),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def compare_features(real: np.ndarray, phantom: np.ndarray, names: Sequence[str]) -> dict:
    """Per feature: both sides' median and range, and their Wasserstein distance (NaN values
    left out; NaN when a side has none)."""
    table = {}
    for column, name in enumerate(names):
        ours, theirs = phantom[:, column], real[:, column]
        ours, theirs = ours[np.isfinite(ours)], theirs[np.isfinite(theirs)]
        distance = wasserstein_distance(theirs, ours) if ours.size and theirs.size else np.nan
        spread = theirs.std() if theirs.size > 1 else np.nan
        table[name] = {
            "unit": feature_unit(name),
            "real": summary(theirs),
            "phantom": summary(ours),
            "wasserstein": float(distance),
            "wasserstein_per_real_sd": float(distance / spread) if spread > 0 else np.nan,
        }
    return table


def fit_logistic(features: np.ndarray, targets: np.ndarray, penalty: float) -> np.ndarray:
    """Weights (bias first) of an L2-penalised logistic regression, classes weighted to equal
    total weight, by Newton steps (the objective is strictly convex: it converges)."""
    design = np.hstack([np.ones((len(features), 1)), features])
    positive = targets.mean()
    sample_weight = np.where(targets == 1, 0.5 / positive, 0.5 / (1 - positive))
    ridge = penalty * np.eye(design.shape[1])
    ridge[0, 0] = 0.0  # the bias is not penalised
    weights = np.zeros(design.shape[1])
    for _ in range(50):
        probability = 1.0 / (1.0 + np.exp(-np.clip(design @ weights, -30, 30)))
        gradient = design.T @ (sample_weight * (probability - targets)) + ridge @ weights
        curvature = sample_weight * probability * (1 - probability)
        hessian = (design * curvature[:, None]).T @ design + ridge
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-10:
            break
    return weights


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets standardised with the training set's median-imputed mean and SD."""
    medians = np.nanmedian(train, axis=0)
    medians = np.where(np.isfinite(medians), medians, 0.0)
    train = np.where(np.isfinite(train), train, medians)
    test = np.where(np.isfinite(test), test, medians)
    mean, sd = train.mean(axis=0), train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return (train - mean) / sd, (test - mean) / sd


def stratified_folds(targets: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold number of each sample: each class shuffled and dealt round the folds."""
    assignment = np.empty(len(targets), dtype=int)
    for value in (0, 1):
        members = rng.permutation(np.flatnonzero(targets == value))
        assignment[members] = np.arange(len(members)) % folds
    return assignment


def classifier_auc(real: np.ndarray, phantom: np.ndarray, seed: int) -> dict:
    """Cross-validated AUC of telling phantom (positive) from real slices; see the docstring."""
    features = np.vstack([real, phantom])
    targets = np.r_[np.zeros(len(real)), np.ones(len(phantom))]
    folds = min(FOLDS, len(real), len(phantom))
    if folds < 2:
        raise DataError(
            f"the classifier needs 2 slices a side, got {len(real)} real, {len(phantom)} phantom"
        )
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(CV_REPEATS):
        assignment = stratified_folds(targets, folds, rng)
        scores = np.empty(len(targets))
        for fold in range(folds):
            test = assignment == fold
            train_x, test_x = standardise(features[~test], features[test])
            weights = fit_logistic(train_x, targets[~test], L2_PENALTY)
            scores[test] = weights[0] + test_x @ weights[1:]
        aucs.append(roc_auc(scores, targets.astype(bool)))
    all_x, _ = standardise(features, features)
    weights = fit_logistic(all_x, targets, L2_PENALTY)
    return {
        "auc": float(np.mean(aucs)),
        "auc_min": float(np.min(aucs)),
        "auc_max": float(np.max(aucs)),
        "folds": folds,
        "repeats": CV_REPEATS,
        "weights": weights[1:],  # on standardised features; positive leans phantom
    }


def feature_matrix(
    slices: Sequence[Slice], names: Sequence[str], window: Window, lesion_names: Sequence[str]
) -> np.ndarray:
    rows = [slice_features(item.grey, item.labels, window, lesion_names) for item in slices]
    return np.array([[row[name] for name in names] for row in rows], dtype=np.float64)


def score(real: SliceSet, phantom: SliceSet, params: Params, seed: int) -> dict:
    """Features of both sets, their comparison and the classifier's AUC."""
    for side in (real, phantom):
        if not side.slices:
            raise DataError(f"{side.source}: no usable slice (see the lines above)")
    window = Window(params.infer.window_level_hu, params.infer.window_width_hu)
    lesion_names = [lesion.label for lesion in params.lesion_classes]
    first = real.slices[0]
    names = list(slice_features(first.grey, first.labels, window, lesion_names))
    real_x = feature_matrix(real.slices, names, window, lesion_names)
    phantom_x = feature_matrix(phantom.slices, names, window, lesion_names)
    slice_level = [i for i, name in enumerate(names) if not is_lesion_feature(name, lesion_names)]
    classifier = classifier_auc(real_x[:, slice_level], phantom_x[:, slice_level], seed)
    classifier["features"] = [names[i] for i in slice_level]
    classifier["weights"] = dict(
        zip(classifier["features"], np.round(classifier["weights"], 3).tolist(), strict=True)
    )
    return {
        "real": {"source": real.source, "slices": len(real.slices), "skipped": real.skipped},
        "phantom": {
            "source": phantom.source,
            "slices": len(phantom.slices),
            "skipped": phantom.skipped,
            "seed": seed,
        },
        "window": {"level_hu": window.level_hu, "width_hu": window.width_hu},
        "features": compare_features(real_x, phantom_x, names),
        "classifier": classifier,
    }


# ---------------------------------------------------------------- output


def format_number(value: float) -> str:
    if not np.isfinite(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if magnitude < 1 else f"{value:.2f}"


def format_side(side: dict) -> str:
    if not side["n"]:
        return "- (0)"
    return (
        f"{format_number(side['median'])} [{format_number(side['min'])}, "
        f"{format_number(side['max'])}] ({side['n']})"
    )


def aligned_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Plain-text lines of `rows` (the first is the header) in left-aligned columns, a rule of
    dashes under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def format_table(result: dict) -> str:
    header = (
        "feature",
        "unit",
        "real median [range] (n)",
        "phantom median [range] (n)",
        "W1",
        "W1/SD real",
    )
    rows = [header]
    for name, row in result["features"].items():
        rows.append(
            (
                name,
                row["unit"],
                format_side(row["real"]),
                format_side(row["phantom"]),
                format_number(row["wasserstein"]),
                format_number(row["wasserstein_per_real_sd"]),
            )
        )
    lines = aligned_table(rows)
    classifier = result["classifier"]
    leaning = sorted(classifier["weights"].items(), key=lambda item: -abs(item[1]))[:5]
    lines += [
        "",
        f"real: {result['real']['slices']} slices from {result['real']['source']}; phantom: "
        f"{result['phantom']['slices']} slices from {result['phantom']['source']} "
        f"(seed {result['phantom']['seed']})",
        f"phantom-vs-real classifier AUC {classifier['auc']:.3f} (range "
        f"{classifier['auc_min']:.3f}-{classifier['auc_max']:.3f} over {classifier['repeats']} "
        f"shuffles of {classifier['folds']}-fold CV; 0.5 = cannot tell them apart)",
        "largest weights (standardised; + leans phantom): "
        + ", ".join(f"{name} {weight:+.2f}" for name, weight in leaning),
    ]
    return "\n".join(lines)


def initialled(name: str, lesion_names: Sequence[str]) -> str:
    """A slice's file name without its suffix, lesion class names in it cut to their initial
    (a tile's label holds about 22 letters)."""
    title = Path(name).stem
    for lesion_name in lesion_names:
        title = title.replace(lesion_name, lesion_name[0])
    return title


def tile(item: Slice, side: str, lesion_names: Sequence[str]) -> np.ndarray:
    """The slice with its lesions outlined in their classes' display colours, labelled with
    its side and name (`initialled`)."""
    picture = cv2.cvtColor(item.grey, cv2.COLOR_GRAY2RGB)
    for index in range(1, len(lesion_names) + 1):
        outline, _ = cv2.findContours(
            (item.labels == index).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        thickness = max(1, item.grey.shape[1] // 256)
        cv2.drawContours(picture, outline, -1, display_rgb(index), thickness)
    small = cv2.resize(picture, (MONTAGE_TILE_PX, MONTAGE_TILE_PX), interpolation=cv2.INTER_AREA)
    return label(small, f"{side} {initialled(item.name, lesion_names)[-(21 - len(side)) :]}")


def spread(items: Sequence[Slice], count: int) -> Iterator[Slice]:
    """`count` items evenly spaced through `items` (sorted by name: sources mix)."""
    ordered = sorted(items, key=lambda item: item.name)
    for position in np.linspace(0, len(ordered) - 1, count).round().astype(int):
        yield ordered[position]


def write_montage(path: Path, real: SliceSet, phantom: SliceSet, params: Params) -> None:
    """Up to MONTAGE_TILES phantom slices in a row above as many real ones."""
    names = [lesion.name for lesion in params.lesion_classes]
    count = min(MONTAGE_TILES, len(real.slices), len(phantom.slices))
    tiles = [tile(item, "phantom", names) for item in spread(phantom.slices, count)]
    tiles += [tile(item, "real", names) for item in spread(real.slices, count)]
    write_png(path, montage(tiles, count))


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--real", type=Path, required=True, help="folder with images/ and masks/")
    parser.add_argument(
        "--phantom",
        type=Path,
        default=DEFAULT_PHANTOM,
        help="Kaggle-layout zip or folder (default data/raw/phantom.zip)",
    )
    parser.add_argument(
        "--phantom-slices",
        type=int,
        default=DEFAULT_PHANTOM_SLICES,
        help=f"phantom slices drawn (default {DEFAULT_PHANTOM_SLICES})",
    )
    parser.add_argument("--seed", type=int, default=0, help="draws the slices and the CV folds")
    parser.add_argument(
        "--params",
        type=Path,
        default=ROOT / "params.yaml",
        help="rgb_map, the brain window (infer.*) and extract's reading rules",
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--montage", type=Path, help="PNG: phantom slices above real ones")
    arguments = parser.parse_args(argv)
    if arguments.phantom_slices < 2:
        parser.error("--phantom-slices must be at least 2")
    try:
        params = load_params(arguments.params)
        real = read_real_folder(arguments.real, params)
        phantom = read_phantom(arguments.phantom, params, arguments.phantom_slices, arguments.seed)
        result = score(real, phantom, params, arguments.seed)
    except (DataError, ValueError) as error:
        sys.exit(f"realism: {error}")
    print(format_table(result))
    if arguments.json:
        write_json(arguments.json, result)
    if arguments.montage:
        write_montage(arguments.montage, real, phantom, params)
    return result


if __name__ == "__main__":
    main()
