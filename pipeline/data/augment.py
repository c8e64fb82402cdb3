"""Offline distortion of the hemorrhagic training slices (stage `augment`).

Every output is one warp of one original, never a warp of a warp (the reference chained its
barrel outputs). The warps:

- barrel (amount > 0) and pincushion (amount < 0), the reference's formula: for a centre c
  and R = width * radius, the output pixel p at distance 0 < r < R from c reads the input at
  `c + sin(pi r / 2R) ** amount * (p - c)`; pixels at r >= R keep their value. The source's
  distance from c, s(r) = r sin(pi r / 2R) ** amount, rises monotonically from 0 to R for
  every amount > -1, so the warp is continuous, leaves the centre in place and never reads
  outside its disc: no clipping is needed. Barrel has s(r) < r (the centre is magnified;
  its factor tends to 0, yet the displacement s(r) - r tends to 0 too). For pincushion the
  factor sin(...) ** amount grows without bound as r -> 0, but s(r) ~ r ** (1 + amount)
  still tends to 0; the centre pixel itself is mapped to itself instead of computing
  0 * inf. Amount -1 (rejected by params) would map the centre's neighbourhood onto a
  circle of radius 2R / pi, tearing the image.
- elastic (Simard et al. 2003): per axis, uniform(-1, 1) noise smoothed by a Gaussian of
  `sigma` pixels and scaled by `alpha` pixels, from a generator seeded by (seed, original
  id, variant), so results do not depend on which worker runs them.

Image and mask always go through the same map: the image bilinearly, the mask with nearest
neighbour, so the mask keeps exactly the palette colours. Sources outside the image read 0
in the image (air around the head) and the background colour in the mask.

How many: enough copies that train holds `target_ratio` hemorrhagic slices per ischemic
slice. The originals are the hemorrhagic training slices with a lesion (a distorted copy of a
lesion-free slice teaches nothing about hemorrhage), taken in a seeded order round after
round, while the transforms cycle through their grid; no original gets the same transform
twice, and originals and transforms are used as evenly as the counts allow.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.classes import HEMORRHAGIC, ISCHEMIC
from pipeline.io import (
    MANIFEST_COLUMNS,
    DataError,
    atomic_path,
    encode_png,
    read_image,
    read_manifest,
    relative_to,
    resolve_path,
    verify_content,
    write_hashed,
    write_manifest,
)
from pipeline.numerics import baseline_opencv
from pipeline.parallel import ordered_map
from pipeline.params import AugmentParams, ParamsError

LOG = logging.getLogger(__name__)

AUGMENTED_CLASS = HEMORRHAGIC  # the minority class of the Kaggle archive, as the reference chose
OTHER_CLASS = ISCHEMIC
TRANSFORM_KINDS: tuple[str, ...] = ("barrel", "pincushion", "elastic")
# Entropy words that keep the planning stream apart from the per-output elastic streams.
PLAN_STREAM = 0
ELASTIC_STREAM = 1

Rgb = tuple[int, int, int]


@dataclass(frozen=True)
class Transform:
    """One entry of the transform grid: a single warp with all its parameters."""

    kind: str
    radius: float = 0.0
    amount: float = 0.0
    centre: tuple[float, float] = (0.5, 0.5)
    alpha: float = 0.0
    sigma: float = 0.0
    variant: int = 0

    @property
    def prefix(self) -> str:
        """File-name prefix naming the transform and its parameters."""
        if self.kind == "elastic":
            return f"elastic_a{self.alpha:g}_s{self.sigma:g}_k{self.variant}"
        x, y = self.centre
        return f"{self.kind}_r{self.radius:g}_a{self.amount:g}_c{x:g}-{y:g}"

    def output_id(self, source_id: str) -> str:
        return f"{self.prefix}_{source_id}"


def transform_grid(params: AugmentParams) -> tuple[Transform, ...]:
    """Every transform the params allow, the kinds of `transforms` interleaved.

    barrel = positive amounts x centres, pincushion = negative amounts x centres,
    elastic = `elastic.variants` random fields. Interleaving (barrel, pincushion, elastic,
    barrel, ...) lets a plan shorter than the grid still use every kind.
    """
    barrel, elastic = params.barrel, params.elastic
    per_kind: list[list[Transform]] = []
    for kind in params.transforms:
        if kind == "elastic":
            per_kind.append(
                [
                    Transform(kind, alpha=elastic.alpha, sigma=elastic.sigma, variant=variant)
                    for variant in range(elastic.variants)
                ]
            )
            continue
        amounts = [a for a in barrel.amounts if (a > 0) == (kind == "barrel")]
        per_kind.append(
            [
                Transform(kind, radius=barrel.radius, amount=amount, centre=tuple(centre))
                for amount in amounts
                for centre in barrel.centres
            ]
        )
    interleaved = itertools.chain.from_iterable(itertools.zip_longest(*per_kind))
    grid = tuple(transform for transform in interleaved if transform is not None)
    prefixes = [transform.prefix for transform in grid]
    if len(set(prefixes)) != len(prefixes):
        raise ParamsError(
            "augment.barrel: amounts or centres that differ only beyond 6 significant digits "
            f"would give the same file names: {sorted(prefixes)}"
        )
    return grid


@dataclass(frozen=True)
class WarpMap:
    """Absolute source coordinates (float32) of the output pixels in a box; identity elsewhere.

    The box starts at (`top`, `left`) and has the maps' shape.
    """

    top: int
    left: int
    map_x: np.ndarray
    map_y: np.ndarray


def barrel_source(
    x: np.ndarray, y: np.ndarray, centre: tuple[float, float], radius_px: float, amount: float
) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates of output points (x, y) under the reference's barrel formula.

    Written as p + (factor - 1) * (p - c) so that factor 1 (outside the radius, at the
    centre, or amount 0) returns p exactly.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    dx, dy = x - centre[0], y - centre[1]
    r = np.hypot(dx, dy)
    inside = (r > 0) & (r < radius_px)
    factor = np.ones_like(r)
    factor[inside] = np.sin(np.pi * r[inside] / (2.0 * radius_px)) ** amount
    return x + (factor - 1.0) * dx, y + (factor - 1.0) * dy


def centre_in_pixels(centre: tuple[float, float], height: int, width: int) -> tuple[float, float]:
    """Pixel coordinates of a centre given as shares: 0 and 1 are the outer image edges."""
    return centre[0] * width - 0.5, centre[1] * height - 0.5


@functools.lru_cache(maxsize=64)
def barrel_map(
    height: int, width: int, centre: tuple[float, float], radius: float, amount: float
) -> WarpMap:
    """Barrel/pincushion map, computed over the bounding box of its disc only (cached)."""
    centre_x, centre_y = centre_in_pixels(centre, height, width)
    radius_px = radius * width
    top, left = max(0, math.floor(centre_y - radius_px)), max(0, math.floor(centre_x - radius_px))
    bottom = min(height, math.ceil(centre_y + radius_px) + 1)
    right = min(width, math.ceil(centre_x + radius_px) + 1)
    ys, xs = np.mgrid[top : max(top, bottom), left : max(left, right)]
    source_x, source_y = barrel_source(xs, ys, (centre_x, centre_y), radius_px, amount)
    warp = WarpMap(top, left, source_x.astype(np.float32), source_y.astype(np.float32))
    warp.map_x.flags.writeable = False  # shared by every call with these arguments
    warp.map_y.flags.writeable = False
    return warp


def elastic_generator(seed: int, source_id: str, variant: int) -> np.random.Generator:
    """The generator of one elastic output: depends on seed, original and variant only."""
    digest = int.from_bytes(hashlib.sha256(source_id.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, ELASTIC_STREAM, digest, variant])


@baseline_opencv()
def elastic_map(
    height: int, width: int, alpha: float, sigma: float, generator: np.random.Generator
) -> WarpMap:
    """Simard et al. (2003): smoothed uniform(-1, 1) displacement fields scaled by alpha."""
    noise = generator.random((2, height, width), dtype=np.float32) * 2.0 - 1.0
    dx = cv2.GaussianBlur(noise[0], (0, 0), sigma) * np.float32(alpha)
    dy = cv2.GaussianBlur(noise[1], (0, 0), sigma) * np.float32(alpha)
    map_x = np.arange(width, dtype=np.float32)[None, :] + dx
    map_y = np.arange(height, dtype=np.float32)[:, None] + dy
    return WarpMap(0, 0, map_x, map_y)


def transform_map(
    transform: Transform, height: int, width: int, seed: int, source_id: str
) -> WarpMap:
    if transform.kind == "elastic":
        generator = elastic_generator(seed, source_id, transform.variant)
        return elastic_map(height, width, transform.alpha, transform.sigma, generator)
    return barrel_map(height, width, transform.centre, transform.radius, transform.amount)


def warp_pair(
    image: np.ndarray, mask: np.ndarray, warp: WarpMap, background: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one map to an image (bilinear, border 0) and its mask (nearest, border background)."""
    warped_image, warped_mask = image.copy(), mask.copy()
    rows, columns = warp.map_x.shape
    if rows and columns:
        box = np.s_[warp.top : warp.top + rows, warp.left : warp.left + columns]
        warped_image[box] = cv2.remap(
            image, warp.map_x, warp.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        warped_mask[box] = cv2.remap(
            mask,
            warp.map_x,
            warp.map_y,
            cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=tuple(int(value) for value in background),
        )
    return warped_image, warped_mask


def lesion_pixel_count(mask: np.ndarray, background: Sequence[int]) -> int:
    """Pixels of an RGB mask that are not the background colour."""
    # cv2.inRange is ~50x faster than numpy's any() over the colour axis.
    colour = np.asarray(background, np.uint8)
    return mask.shape[0] * mask.shape[1] - cv2.countNonZero(cv2.inRange(mask, colour, colour))


@dataclass(frozen=True)
class AugmentPlan:
    """What to add: `outputs` lists (original id, transform), in a deterministic order."""

    hemorrhagic_before: int
    ischemic_before: int
    wanted: int
    eligible_originals: int
    outputs: tuple[tuple[str, Transform], ...]


def plan_augmentation(train: pd.DataFrame, params: AugmentParams, seed: int) -> AugmentPlan:
    """Choose originals and transforms so train reaches `target_ratio` (or the grid runs out)."""
    is_hemorrhagic = train["class"] == AUGMENTED_CLASS
    hemorrhagic = int(is_hemorrhagic.sum())
    ischemic = int((train["class"] == OTHER_CLASS).sum())
    # The tolerance keeps e.g. 0.3 * 10 from rounding up to 4 through float error.
    wanted = max(0, math.ceil(params.target_ratio * ischemic - 1e-9) - hemorrhagic)
    eligible = sorted(train.loc[is_hemorrhagic & (train["lesion_pixels"] > 0), "id"])
    if wanted == 0:
        return AugmentPlan(hemorrhagic, ischemic, 0, len(eligible), ())
    if not eligible:
        raise DataError(
            f"no {AUGMENTED_CLASS} training slice with a lesion to augment ({hemorrhagic} "
            f"{AUGMENTED_CLASS} training slices, none with lesion_pixels > 0), but "
            f"target_ratio {params.target_ratio:g} asks for {wanted} more"
        )
    grid = transform_grid(params)
    count = min(wanted, len(eligible) * len(grid))
    if count < wanted:
        LOG.warning(
            f"augment: target_ratio {params.target_ratio:g} asks for {wanted} "
            f"augmented slices, but {len(eligible)} originals x {len(grid)} transforms "
            f"give only {count}"
        )
    order = np.random.default_rng([seed, PLAN_STREAM]).permutation(len(eligible))
    # Output j takes original j mod n and transform j mod g, shifted by one after every
    # lcm(n, g) outputs: the pairs never repeat, and both cycle as evenly as they can.
    block = math.lcm(len(eligible), len(grid))
    outputs = [
        (eligible[order[index % len(eligible)]], grid[(index + index // block) % len(grid)])
        for index in range(count)
    ]
    return AugmentPlan(hemorrhagic, ischemic, wanted, len(eligible), tuple(outputs))


@dataclass(frozen=True)
class OriginalTask:
    """Everything a worker needs to write all the warps of one original."""

    source_id: str
    image_path: Path
    mask_path: Path
    height: int
    width: int
    transforms: tuple[Transform, ...]
    out_folder: Path
    seed: int
    background: Rgb


@dataclass(frozen=True)
class WarpedSlice:
    """What the manifest records of one written warp."""

    lesion_pixels: int
    image_sha256: str
    mask_sha256: str


def augment_original(task: OriginalTask) -> list[WarpedSlice]:
    """Write every warp of one original; what the manifest records of each, in order."""
    image = read_image(task.image_path)
    mask = read_image(task.mask_path, color=True)
    for path, array in ((task.image_path, image), (task.mask_path, mask)):
        if array.shape[:2] != (task.height, task.width):
            raise DataError(
                f"{path}: {array.shape[1]}x{array.shape[0]} pixels, the manifest says "
                f"{task.width}x{task.height}"
            )
    folder = task.out_folder
    written = []
    for transform in task.transforms:
        warp = transform_map(transform, task.height, task.width, task.seed, task.source_id)
        warped_image, warped_mask = warp_pair(image, mask, warp, task.background)
        name = f"{transform.output_id(task.source_id)}.png"
        # Plain writes: the whole output folder is moved into place atomically afterwards.
        written.append(
            WarpedSlice(
                lesion_pixels=lesion_pixel_count(warped_mask, task.background),
                image_sha256=write_hashed(folder / "images" / name, encode_png(warped_image)),
                mask_sha256=write_hashed(folder / "masks" / name, encode_png(warped_mask)),
            )
        )
    return written


def _training_rows(split_manifest: Path) -> pd.DataFrame:
    split = read_manifest(split_manifest, extra_columns=("split",))
    train = split[split["split"] == "train"].copy()
    if train.empty:
        raise DataError(f"{split_manifest}: no rows with split == train")
    verify_content(train)
    for column in ("image_path", "mask_path"):
        train[column] = [str(resolve_path(split, path)) for path in train[column]]
    return train


def augment_training_set(
    split_manifest: Path,
    out_folder: Path,
    params: AugmentParams,
    *,
    seed: int,
    background: Rgb,
    workers: int,
) -> dict[str, object]:
    """Write `out_folder` (images/, masks/, manifest.csv of the whole training set); metrics.

    The manifest lists the training originals (paths into their own folder) and every
    augmented slice (images/ and masks/ here); valid and test rows are left out.
    """
    train = _training_rows(split_manifest)
    plan = plan_augmentation(train, params, seed)
    by_id = train.set_index("id", drop=False)
    transforms_of: dict[str, list[Transform]] = {}
    for source_id, transform in plan.outputs:
        transforms_of.setdefault(source_id, []).append(transform)
    sources = sorted(transforms_of)
    with atomic_path(out_folder) as temporary:
        (temporary / "images").mkdir(parents=True)
        (temporary / "masks").mkdir()
        tasks = [
            OriginalTask(
                source_id=source_id,
                image_path=Path(by_id.at[source_id, "image_path"]),
                mask_path=Path(by_id.at[source_id, "mask_path"]),
                height=int(by_id.at[source_id, "height"]),
                width=int(by_id.at[source_id, "width"]),
                transforms=tuple(transforms_of[source_id]),
                out_folder=temporary,
                seed=seed,
                background=tuple(int(value) for value in background),
            )
            for source_id in sources
        ]
        warps = ordered_map(augment_original, tasks, workers=workers, description="augment")
        augmented = [
            {
                "id": transform.output_id(task.source_id),
                "case_id": by_id.at[task.source_id, "case_id"],
                "class": AUGMENTED_CLASS,
                "source": transform.kind,
                "source_id": task.source_id,
                "image_path": f"images/{transform.output_id(task.source_id)}.png",
                "mask_path": f"masks/{transform.output_id(task.source_id)}.png",
                "width": task.width,
                "height": task.height,
                "lesion_pixels": warp.lesion_pixels,
                "image_sha256": warp.image_sha256,
                "mask_sha256": warp.mask_sha256,
                # The warps move pixels locally but keep the image's scale.
                "pixel_spacing_mm": by_id.at[task.source_id, "pixel_spacing_mm"],
                "slice_thickness_mm": by_id.at[task.source_id, "slice_thickness_mm"],
            }
            for task, task_warps in zip(tasks, warps, strict=True)
            for transform, warp in zip(task.transforms, task_warps, strict=True)
        ]
        originals = train[list(MANIFEST_COLUMNS)].copy()
        for column in ("image_path", "mask_path"):
            originals[column] = [relative_to(Path(p), out_folder) for p in originals[column]]
        manifest = pd.concat(
            [originals, pd.DataFrame(augmented, columns=list(MANIFEST_COLUMNS))],
            ignore_index=True,
        )
        write_manifest(temporary / "manifest.csv", manifest)
    return augment_metrics(plan)


def augment_metrics(plan: AugmentPlan) -> dict[str, object]:
    """Flat counts before and after, per transform, and whether the ratio was already met."""
    per_kind = Counter(transform.kind for _, transform in plan.outputs)
    added = len(plan.outputs)
    after = plan.hemorrhagic_before + added

    def ratio(hemorrhagic: int) -> float:
        return hemorrhagic / plan.ischemic_before if plan.ischemic_before else float("nan")

    return {
        "train_slices_before_hemorrhagic": plan.hemorrhagic_before,
        "train_slices_before_ischemic": plan.ischemic_before,
        "ratio_before": ratio(plan.hemorrhagic_before),
        "ratio_already_met": plan.wanted == 0,
        "eligible_originals": plan.eligible_originals,
        "augmented_originals": len({source_id for source_id, _ in plan.outputs}),
        "augmented_wanted": plan.wanted,
        "augmented_total": added,
        **{f"augmented_{kind}": per_kind.get(kind, 0) for kind in TRANSFORM_KINDS},
        "train_slices_after_hemorrhagic": after,
        "train_slices_after_ischemic": plan.ischemic_before,
        "train_slices_after": after + plan.ischemic_before,
        "ratio_after": ratio(after),
    }
