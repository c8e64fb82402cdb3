"""Synthetic non-contrast head CT, packed like the Kaggle stroke archive (stage `synthesize`).

Each case is one head: a random anatomy (head shape, size, rotation, skull, ventricles, sulci,
skull base) built from smooth 3-D functions of the in-plane position and the slice height z,
so structures change gradually from slice to slice, and one 3-D lesion spanning consecutive
slices. Hemorrhagic and ischemic cases share the anatomy generator and the window; only the
lesion differs. Slices are built in Hounsfield units (float32), blurred, given noise, then
windowed to 8-bit (brain window W 80 / L 40). The lesion mask comes from the same geometry as
the image: it is exactly the set of pixels whose HU the lesion changed.

Lengths in pixels are given at 512 px and scale with `image_size`. Randomness comes from one
generator per case seeded by (seed, class, case ordinal), so output never depends on the
number of workers or on the order in which cases are rendered.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from pipeline.classes import HEMORRHAGIC, ISCHEMIC, SOURCE_CLASSES, display_rgb
from pipeline.io import (
    SPACING_FILE,
    atomic_path,
    decode_image,
    encode_png,
    spacing_json,
    window_to_uint8,
)
from pipeline.masks import binary_to_colour
from pipeline.numerics import arctan2_f32, baseline_opencv, cos_f32, sin_f32
from pipeline.parallel import ordered_map
from pipeline.params import ISCHEMIC_ID_MAX_STEP, PhantomParams
from pipeline.visualize import label, montage, overlay

ARCHIVE_ROOT = "NEW-DATASET/REAL-TIME STROKE DETECTION IN MRI, CT, PET IMAGES"
CT_DATA_ROOT = f"{ARCHIVE_ROOT}/CT Images/data"
OTHER_MODALITIES = ("MRI Images", "PET Images")
# Zip members carry this fixed timestamp so the archive bytes depend on content only.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
REFERENCE_SIZE = 512
# Class indices of the source classes; they also seed each case's generator (its entropy).
CLASS_INDEX: dict[str, int] = {name: index for index, name in enumerate(SOURCE_CLASSES, start=1)}
Subset = Literal["Training", "Testing"]
MONTAGE_BACKGROUND = (0, 0, 0)  # no-lesion colour of the montage's overlay masks

# Tissues outside the brain have fixed densities; brain, CSF and lesions come from params.
AIR_HU = -1000.0
FAT_HU = -90.0
SKIN_HU = 45.0
MUSCLE_HU = 42.0
VITREOUS_HU = 12.0
TABLE_HU = 400.0


class Tissue(IntEnum):
    """Label of each pixel in the tissue map returned by `render_slice`."""

    AIR = 0
    FAT = 1
    SOFT_TISSUE = 2  # skin, muscle, eyes
    BONE = 3
    TABLE = 4
    CSF = 5
    GREY_MATTER = 6
    WHITE_MATTER = 7
    FALX = 8
    HEMORRHAGE = 9
    ISCHEMIA = 10


PARENCHYMA = (Tissue.GREY_MATTER, Tissue.WHITE_MATTER)


@dataclass(frozen=True)
class CaseSpec:
    """Where a case goes in the archive and the entropy its random anatomy is drawn from."""

    class_name: str  # one of classes.SOURCE_CLASSES
    case_id: str
    subset: Subset
    has_mask: bool
    slice_stems: tuple[str, ...]
    entropy: tuple[int, ...]

    def member(self, kind: Literal["images", "mask"], stem: str) -> str:
        """Archive member name of one slice's image or mask."""
        return f"{CT_DATA_ROOT}/{self.subset}/{self.class_name}/{kind}/{self.case_id}/{stem}.png"


@dataclass(frozen=True)
class PhantomSlice:
    """One rendered slice: `hu` is the final image in HU (blur and noise included);
    `clean_hu` the tissue model before blur and noise; `baseline_hu` the same tissue model
    without the lesion; `tissue` a `Tissue` label per pixel; `lesion` the lesion mask."""

    hu: np.ndarray
    clean_hu: np.ndarray
    baseline_hu: np.ndarray
    tissue: np.ndarray
    lesion: np.ndarray


@dataclass(frozen=True)
class Ellipsoid:
    """Ellipsoid in head units (u to the image right, v posterior; 1 = head half-width)
    and slice height z (0 skull base .. 1 vertex)."""

    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    angle: float


@dataclass(frozen=True)
class Tube:
    """Tube along a 3-D centre line: rows of (u, v, z, in-plane radius, vertical radius)."""

    points: np.ndarray


@dataclass(frozen=True)
class Hemorrhage:
    blobs: tuple[Ellipsoid, ...]  # intraparenchymal: union of irregular ellipsoids
    extra_axial: tuple[float, float, float] | None  # (angle, half-angle, thickness px at 512)
    mean_hu: float


@dataclass(frozen=True)
class Infarct:
    angle: float  # direction of the territory from the head centre
    half_angle: float
    inner_radius: float  # apex depth, as a fraction of the brain radius
    side: int  # hemisphere the territory is confined to (+1 / -1), 0 when not confined
    mean_drop_hu: float


@dataclass(frozen=True)
class Lesion:
    """One 3-D lesion spanning slices first..last (inclusive), edges roughened by `waves`."""

    first: int
    last: int
    waves: np.ndarray  # (k, 5): frequency along u, v and t, phase, amplitude
    hemorrhage: Hemorrhage | None
    infarct: Infarct | None

    def height(self, index: int) -> float | None:
        """Position t in (-1, 1) of slice `index` within the lesion; None outside it."""
        if not self.first <= index <= self.last:
            return None
        half = (self.last - self.first) / 2.0 + 0.5
        return (index - (self.first + self.last) / 2.0) / half


@dataclass(frozen=True)
class Anatomy:
    """Everything random about one head (lengths in pixels are at the case's image size)."""

    centre: tuple[float, float]
    half_width_px: float
    elongation: float  # front-to-back over left-to-right head size
    rotation: float
    outline: np.ndarray  # (k, 3): harmonic order, amplitude, phase of the head outline
    heights: np.ndarray  # z of each slice
    skin_px: float
    fat_px: float
    skull_px: float
    gap_px: float
    cortex_px: float
    sulcus_count: int
    sulcus_meander: np.ndarray  # (k, 4): order, amplitude, phase, drift with z
    sulcus_depth: np.ndarray  # relative depth of each sulcus
    sulcus_opening: np.ndarray  # share of each sulcus' depth that holds visible CSF
    sulcus_width_px: np.ndarray  # half-width of each sulcus at the surface
    falx_bend: tuple[float, float]
    ventricles: tuple[Tube, ...]
    small_ventricles: tuple[Ellipsoid, ...]
    fissures: tuple[Tube, ...]
    nuclei: tuple[Ellipsoid, ...]
    grey_hu: float
    white_hu: float
    csf_hu: float
    noise_hu: float
    texture: np.ndarray  # (slices, g, g) smooth parenchyma texture, unit std
    folding: np.ndarray  # (slices, g, g) smooth field that bends the sulci, unit std
    porosity: np.ndarray  # (g, g) field whose high values are air cells in the skull base
    table: tuple[float, float, float] | None  # lowest point y, radius, thickness (px)


@dataclass(frozen=True)
class CaseGrid:
    """Per-pixel coordinates of a case, computed once and shared by its slices."""

    u: np.ndarray  # head units, to the image right
    v: np.ndarray  # head units, posterior
    angle: np.ndarray  # atan2(v, u)
    radius_px: np.ndarray  # distance from the head centre in pixels
    outline_radius: np.ndarray  # head outline radius (head units) in each pixel's direction
    temporal_muscle: np.ndarray  # 0..1, where the temporal muscles lie (the head's sides)
    skull_profile: np.ndarray  # skull thickness by direction (thinner at the temples)
    sulcus_phase: np.ndarray  # sulcus_count * angle
    meander_sin: tuple[np.ndarray, ...]  # sin / cos of each sulcus meander term's angle part
    meander_cos: tuple[np.ndarray, ...]
    table: np.ndarray | None  # the CT table's arc (pixels), when the case has one


@dataclass(frozen=True)
class CaseModel:
    spec: CaseSpec
    params: PhantomParams
    anatomy: Anatomy
    lesion: Lesion
    grid: CaseGrid


# Centre lines, one side, mirrored: (u, v as a fraction of the front-back half-axis, z,
# in-plane radius, vertical radius). Ventricle radii grow with the case's atrophy.
LATERAL_VENTRICLE = (
    (0.050, -0.42, 0.47, 0.025, 0.06),  # frontal horn tip
    (0.072, -0.31, 0.50, 0.060, 0.08),  # frontal horn
    (0.064, -0.16, 0.55, 0.050, 0.07),  # body
    (0.070, 0.00, 0.57, 0.045, 0.07),
    (0.095, 0.14, 0.54, 0.055, 0.08),
    (0.190, 0.27, 0.46, 0.080, 0.09),  # atrium
    (0.170, 0.42, 0.43, 0.045, 0.06),  # occipital horn
    (0.135, 0.52, 0.42, 0.018, 0.04),
)
TEMPORAL_HORN = (
    (0.210, 0.24, 0.42, 0.050, 0.06),
    (0.310, 0.12, 0.33, 0.035, 0.05),
    (0.360, -0.02, 0.25, 0.025, 0.05),
    (0.370, -0.12, 0.21, 0.018, 0.04),
)
SYLVIAN_FISSURE = (
    (0.90, -0.06, 0.30, 0.020, 0.13),
    (0.68, -0.10, 0.30, 0.016, 0.13),
    (0.52, -0.07, 0.30, 0.013, 0.11),
)
# Small midline ventricles and deep grey nuclei: ((u, v fraction, z), axes, angle, mirrored).
EllipsoidTemplate = tuple[tuple[float, float, float], tuple[float, float, float], float, bool]
MIDLINE_VENTRICLES: tuple[EllipsoidTemplate, ...] = (
    ((0.0, -0.03, 0.36), (0.018, 0.13, 0.08), 0.0, False),  # third ventricle
    ((0.0, 0.33, 0.07), (0.055, 0.04, 0.07), 0.0, False),  # fourth ventricle
)
DEEP_NUCLEI: tuple[EllipsoidTemplate, ...] = (
    ((0.25, -0.05, 0.38), (0.07, 0.16, 0.11), 0.25, True),  # lentiform nucleus
    ((0.10, 0.11, 0.38), (0.075, 0.11, 0.09), 0.0, True),  # thalamus
    ((0.15, -0.28, 0.47), (0.045, 0.08, 0.10), 0.3, True),  # caudate head
)
BASE_TOP = 0.17  # skull-base structures fade out below this height


def smoothstep(edge0: float, edge1: float, x: np.ndarray | float) -> np.ndarray:
    """0 at edge0, 1 at edge1 (edges may be in either order), smooth in between."""
    t = np.clip((np.asarray(x, dtype=np.float32) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def head_scale(z: float) -> float:
    """Head cross-section at height z relative to the widest level (z 0.45)."""
    if z < 0.45:
        return 1.0 - 0.1 * ((0.45 - z) / 0.45) ** 2
    return math.sqrt(max(0.05, 1.0 - ((z - 0.45) / 0.8) ** 2))


# --------------------------------------------------------------------------- planning


def plan_cases(params: PhantomParams, seed: int) -> list[CaseSpec]:
    """Every case of the archive in a fixed order (Hemorrhagic, then Ischemic).

    Hemorrhagic ids count up from `first_hemorrhagic_case` (3 digits); ischemic ids grow by
    random steps from `first_ischemic_case` (7 digits). Per class the first cases are
    Training, the last `testing_cases_per_class` Testing; `hemorrhagic_cases_without_mask`
    Training hemorrhagic cases, drawn at random, get no mask folder (like the real archive).
    """
    plan_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    testing = params.testing_cases_per_class
    hemorrhagic_ids = [
        f"{params.first_hemorrhagic_case + ordinal:03d}"
        for ordinal in range(params.hemorrhagic_cases + testing)
    ]
    unmasked = set(
        plan_rng.choice(
            params.hemorrhagic_cases, size=params.hemorrhagic_cases_without_mask, replace=False
        ).tolist()
    )
    steps = plan_rng.integers(1_500, ISCHEMIC_ID_MAX_STEP, size=params.ischemic_cases + testing)
    steps[0] = 0
    ischemic_ids = [f"{params.first_ischemic_case + int(step):07d}" for step in np.cumsum(steps)]

    cases: list[CaseSpec] = []
    for class_name, ids, training in (
        (HEMORRHAGIC, hemorrhagic_ids, params.hemorrhagic_cases),
        (ISCHEMIC, ischemic_ids, params.ischemic_cases),
    ):
        for ordinal, case_id in enumerate(ids):
            first_stem = int(plan_rng.integers(1, 9))
            cases.append(
                CaseSpec(
                    class_name=class_name,
                    case_id=case_id,
                    subset="Training" if ordinal < training else "Testing",
                    has_mask=not (class_name == HEMORRHAGIC and ordinal in unmasked),
                    slice_stems=tuple(
                        f"{first_stem + index:03d}" for index in range(params.slices_per_case)
                    ),
                    entropy=(seed, CLASS_INDEX[class_name], ordinal),
                )
            )
    return cases


def _tube(
    template: Sequence[tuple[float, float, float, float, float]],
    side: int,
    grow: float,
    elongation: float,
    rng: np.random.Generator,
) -> Tube:
    points = np.array(template, dtype=np.float64)
    points[:, 0] = side * (points[:, 0] + points[:, 3] * (grow - 1.0))
    points[:, 1] *= elongation
    points[:, 3] *= grow
    points[:, :3] += rng.normal(0.0, 0.008, size=(len(points), 3))
    return Tube(points)


def _ellipsoids(
    templates: Sequence[EllipsoidTemplate], elongation: float, rng: np.random.Generator
) -> tuple[Ellipsoid, ...]:
    shapes: list[Ellipsoid] = []
    for (u, v, z), axes, angle, mirrored in templates:
        for side in (1, -1) if mirrored else (1,):
            jitter = rng.normal(0.0, 0.01, size=3)
            shapes.append(
                Ellipsoid(
                    centre=(side * u + jitter[0], v * elongation + jitter[1], z + jitter[2]),
                    axes=axes,
                    angle=side * angle,
                )
            )
    return tuple(shapes)


def _sample_anatomy(rng: np.random.Generator, params: PhantomParams) -> Anatomy:
    size = params.image_size
    scale = size / REFERENCE_SIZE
    slices = params.slices_per_case
    half_width = size * rng.uniform(0.31, 0.355)
    elongation = rng.uniform(1.14, 1.26)
    centre = (
        size * (0.5 + rng.normal(0.0, 0.012)),
        size * (0.465 + rng.normal(0.0, 0.01)),
    )
    orders = np.arange(2.0, 6.0)
    outline = np.column_stack(
        [orders, rng.uniform(0.0, 0.016, size=4), rng.uniform(0, 2 * np.pi, size=4)]
    )
    # Egg shape: the back of the head (+v) is a little wider than the front.
    outline = np.vstack([outline, [1.0, rng.uniform(0.015, 0.04), -np.pi / 2]])
    heights = np.linspace(rng.uniform(0.0, 0.04), rng.uniform(0.86, 0.93), slices)
    atrophy = rng.uniform(0.0, 1.0)
    grow = 0.85 + 0.6 * atrophy
    asymmetry = rng.normal(0.0, 0.05)
    sulcus_count = int(rng.integers(50, 64))
    meander = np.column_stack(
        [
            rng.choice(np.arange(3.0, 10.0), size=3, replace=False),
            rng.uniform(0.8, 1.8, size=3),
            rng.uniform(0, 2 * np.pi, size=3),
            rng.uniform(-1.5, 1.5, size=3),
        ]
    )
    # Random fields have fixed grids, so a case's anatomy does not depend on image_size.
    texture = _smooth_volume(rng.standard_normal((slices + 4, 21, 21), dtype=np.float32))
    folding = _smooth_volume(rng.standard_normal((slices + 4, 36, 36), dtype=np.float32))
    csf_low, csf_high = params.csf_hu
    table = None
    if rng.uniform() < params.table_probability:
        lowest = centre[1] + half_width * elongation * 1.1 + rng.uniform(6.0, 20.0) * scale
        table = (lowest, size * rng.uniform(0.55, 1.2), rng.uniform(3.0, 6.0) * scale)
    return Anatomy(
        centre=centre,
        half_width_px=half_width,
        elongation=elongation,
        rotation=rng.normal(0.0, 0.08),
        outline=outline,
        heights=heights,
        skin_px=rng.uniform(1.8, 2.8) * scale,
        fat_px=rng.uniform(2.5, 6.0) * scale,
        skull_px=rng.uniform(7.0, 11.0) * scale,
        gap_px=(0.5 + 1.5 * atrophy) * scale,
        cortex_px=rng.uniform(4.5, 6.0) * scale,
        sulcus_count=sulcus_count,
        sulcus_meander=meander,
        # Deep primary sulci between shallow secondary ones.
        sulcus_depth=np.where(
            rng.uniform(size=sulcus_count) < 0.45,
            rng.uniform(0.8, 1.5, size=sulcus_count),
            rng.uniform(0.25, 0.6, size=sulcus_count),
        ),
        sulcus_opening=(0.2 + 0.6 * atrophy) * rng.uniform(0.2, 1.2, size=sulcus_count),
        sulcus_width_px=(0.9 + 0.9 * atrophy) * scale * rng.uniform(0.6, 1.4, size=sulcus_count),
        falx_bend=(rng.normal(0.0, 0.02), rng.normal(0.0, 0.03)),
        ventricles=tuple(
            _tube(path, side, grow * (1.0 + side * asymmetry), elongation, rng)
            for path in (LATERAL_VENTRICLE, TEMPORAL_HORN)
            for side in (1, -1)
        ),
        small_ventricles=_ellipsoids(MIDLINE_VENTRICLES, elongation, rng),
        fissures=tuple(
            _tube(SYLVIAN_FISSURE, side, 0.9 + 0.5 * atrophy, elongation, rng) for side in (1, -1)
        ),
        nuclei=_ellipsoids(DEEP_NUCLEI, elongation, rng),
        grey_hu=params.grey_matter_hu + rng.uniform(-1.0, 1.0),
        white_hu=params.white_matter_hu + rng.uniform(-1.0, 1.0),
        csf_hu=rng.uniform(
            csf_low + 0.55 * (csf_high - csf_low), csf_low + 0.9 * (csf_high - csf_low)
        ),
        noise_hu=rng.uniform(*params.noise_hu),
        texture=texture[2:-2],
        folding=folding[2:-2],
        porosity=rng.uniform(0.0, 1.0, size=(85, 85)).astype(np.float32),
        table=table,
    )


def _smooth_volume(volume: np.ndarray) -> np.ndarray:
    """Smooth a (slices, g, g) random volume along z and in-plane; unit std again."""
    along_z = 0.25 * np.roll(volume, 1, axis=0) + 0.5 * volume + 0.25 * np.roll(volume, -1, axis=0)
    smooth = np.stack([cv2.GaussianBlur(plane, (0, 0), 0.8) for plane in along_z])
    return (smooth / max(float(smooth.std()), 1e-6)).astype(np.float32)


def _sample_lesion(
    rng: np.random.Generator, class_name: str, params: PhantomParams, elongation: float
) -> Lesion:
    """Lesion of the case's class over a run of consecutive slices, leaving at least
    `lesion_free_slice_share` of the slices (and the lowest ones) without lesion."""
    slices = params.slices_per_case
    longest = max(1, math.floor(slices * (1.0 - params.lesion_free_slice_share)))
    shortest = min(longest, math.ceil(0.4 * slices))
    span = int(rng.integers(shortest, longest + 1))
    lowest = min(math.ceil(0.15 * (slices - 1)), slices - span)
    first = int(rng.integers(lowest, slices - span + 1))
    last = first + span - 1
    waves = np.column_stack(
        [
            rng.normal(0.0, 22.0, size=(6, 2)),
            rng.normal(0.0, 1.5, size=6),
            rng.uniform(0, 2 * np.pi, size=6),
            rng.uniform(0.5, 1.0, size=6),
        ]
    )
    waves[:, 4] /= math.sqrt(float((waves[:, 4] ** 2).sum()) / 2.0)  # unit std
    if class_name == HEMORRHAGIC:
        low, high = params.hemorrhage_hu
        mean_hu = float(rng.uniform(low + 0.15 * (high - low), low + 0.55 * (high - low)))
        kind = rng.choice(["extra_axial", "deep", "lobar"], p=[0.3, 0.3, 0.4])
        if kind == "extra_axial":
            extra = (float(rng.uniform(-np.pi, np.pi)), rng.uniform(0.35, 0.8), rng.uniform(8, 24))
            return Lesion(first, last, waves, Hemorrhage((), extra, mean_hu), None)
        if kind == "deep":
            side = 1 if rng.uniform() < 0.5 else -1
            centre_u, centre_v = side * rng.uniform(0.15, 0.3), rng.uniform(-0.15, 0.15)
        else:
            direction, distance = rng.uniform(-np.pi, np.pi), rng.uniform(0.3, 0.55)
            centre_u = distance * math.cos(direction)
            centre_v = distance * math.sin(direction) * elongation
        radius = rng.uniform(0.09, 0.22)
        blobs = []
        for _ in range(int(rng.integers(2, 5))):
            offset = rng.normal(0.0, 0.35 * radius, size=2)
            axes = (radius * rng.uniform(0.55, 1.0), radius * rng.uniform(0.45, 0.85), 1.0)
            blobs.append(
                Ellipsoid(
                    (centre_u + offset[0], centre_v + offset[1], 0.0), axes, rng.uniform(0, np.pi)
                )
            )
        return Lesion(first, last, waves, Hemorrhage(tuple(blobs), None, mean_hu), None)
    low, high = params.ischemic_drop_hu
    territory = rng.choice(["middle", "anterior", "posterior"], p=[0.6, 0.15, 0.25])
    side = 1 if rng.uniform() < 0.5 else -1
    if territory == "middle":
        angle = (0.0 if side > 0 else np.pi) + rng.normal(0.0, 0.25)
        half_angle, confined = rng.uniform(0.3, 0.6), 0
    elif territory == "anterior":
        angle = -np.pi / 2 + side * rng.uniform(0.12, 0.3)
        half_angle, confined = rng.uniform(0.2, 0.35), side
    else:
        angle = np.pi / 2 - side * rng.uniform(0.15, 0.45)
        half_angle, confined = rng.uniform(0.22, 0.4), side
    infarct = Infarct(
        angle=float(angle),
        half_angle=float(half_angle),
        inner_radius=float(rng.uniform(0.3, 0.6)),
        side=confined,
        mean_drop_hu=float(rng.uniform(low + 0.2 * (high - low), high - 0.2 * (high - low))),
    )
    return Lesion(first, last, waves, None, infarct)


def _case_grid(anatomy: Anatomy, size: int) -> CaseGrid:
    image_y, image_x = np.mgrid[0:size, 0:size].astype(np.float32)
    dx = image_x - np.float32(anatomy.centre[0])
    dy = image_y - np.float32(anatomy.centre[1])
    cos, sin = np.float32(math.cos(anatomy.rotation)), np.float32(math.sin(anatomy.rotation))
    to_head = np.float32(1.0 / anatomy.half_width_px)
    u = (dx * cos + dy * sin) * to_head
    v = (dy * cos - dx * sin) * to_head
    angle = arctan2_f32(v, u)
    outline = np.ones_like(u)
    for order, amplitude, phase in anatomy.outline:
        outline += np.float32(amplitude) * cos_f32(np.float32(order) * angle + np.float32(phase))
    # Radius of the ellipse with half-axes 1 (along u) and `elongation` (along v).
    elongation = np.float32(anatomy.elongation)
    ellipse = elongation / np.sqrt((elongation * cos_f32(angle)) ** 2 + sin_f32(angle) ** 2)
    meander = [
        np.float32(order) * angle + np.float32(offset)
        for order, _, offset, _ in anatomy.sulcus_meander
    ]
    table = None
    if anatomy.table is not None:
        lowest, radius, thickness = anatomy.table
        centre_y = lowest - radius
        distance = np.hypot(image_x - np.float32(anatomy.centre[0]), image_y - np.float32(centre_y))
        table = (
            (distance <= radius)
            & (distance > radius - thickness)
            & (image_y > centre_y + 0.3 * radius)
        )
    return CaseGrid(
        u=u,
        v=v,
        angle=angle,
        radius_px=np.hypot(dx, dy),
        outline_radius=outline * ellipse,
        temporal_muscle=smoothstep(0.5, 0.9, np.abs(cos_f32(angle))),
        skull_profile=1.0 - 0.22 * cos_f32(2.0 * angle),
        sulcus_phase=np.float32(anatomy.sulcus_count) * angle,
        meander_sin=tuple(sin_f32(term) for term in meander),
        meander_cos=tuple(cos_f32(term) for term in meander),
        table=table,
    )


@baseline_opencv()
def build_case(spec: CaseSpec, params: PhantomParams) -> CaseModel:
    """Draw the anatomy and lesion of one case from the case's own generator."""
    rng = np.random.default_rng(np.random.SeedSequence(list(spec.entropy)))
    anatomy = _sample_anatomy(rng, params)
    lesion = _sample_lesion(rng, spec.class_name, params, anatomy.elongation)
    return CaseModel(spec, params, anatomy, lesion, _case_grid(anatomy, params.image_size))


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _SkullBase:
    bone: np.ndarray
    air: np.ndarray
    fat: np.ndarray
    eyes: np.ndarray
    csf: np.ndarray
    posterior_fossa: np.ndarray


def _pixel_box(
    anatomy: Anatomy, points: np.ndarray, reach: float, size: int
) -> tuple[slice, slice] | None:
    """Pixel window holding every point (head units) widened by `reach` head units."""
    cos, sin = math.cos(anatomy.rotation), math.sin(anatomy.rotation)
    x = anatomy.centre[0] + anatomy.half_width_px * (points[:, 0] * cos - points[:, 1] * sin)
    y = anatomy.centre[1] + anatomy.half_width_px * (points[:, 0] * sin + points[:, 1] * cos)
    margin = reach * anatomy.half_width_px + 2.0
    rows = slice(max(0, int(y.min() - margin)), min(size, int(y.max() + margin) + 1))
    columns = slice(max(0, int(x.min() - margin)), min(size, int(x.max() + margin) + 1))
    if rows.start >= rows.stop or columns.start >= columns.stop:
        return None
    return rows, columns


def _ellipse_field(u: np.ndarray, v: np.ndarray, shape: Ellipsoid) -> np.ndarray:
    """Squared normalised in-plane radius of `shape` (below 1 inside its outline)."""
    u = u - np.float32(shape.centre[0])
    v = v - np.float32(shape.centre[1])
    cos, sin = np.float32(math.cos(shape.angle)), np.float32(math.sin(shape.angle))
    along_u = (u * cos + v * sin) / np.float32(shape.axes[0])
    along_v = (v * cos - u * sin) / np.float32(shape.axes[1])
    return along_u * along_u + along_v * along_v


def _paint_ellipsoids(
    target: np.ndarray, grid: CaseGrid, anatomy: Anatomy, shapes: Sequence[Ellipsoid], z: float
) -> None:
    """Set `target` where any of the 3-D `shapes` cuts the slice at height z."""
    for shape in shapes:
        z_term = ((z - shape.centre[2]) / shape.axes[2]) ** 2
        if z_term >= 1.0:
            continue
        box = _pixel_box(
            anatomy, np.array([shape.centre[:2]]), max(shape.axes[:2]), target.shape[0]
        )
        if box is not None:
            target[box] |= _ellipse_field(grid.u[box], grid.v[box], shape) < 1.0 - z_term


def _segment_distance(
    u: np.ndarray, v: np.ndarray, start: Sequence[float], end: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each point to the segment start-end, and its position along it (0..1)."""
    du, dv = np.float32(end[0] - start[0]), np.float32(end[1] - start[1])
    u, v = u - np.float32(start[0]), v - np.float32(start[1])
    along = np.clip((u * du + v * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.hypot(u - along * du, v - along * dv), along


def _paint_tubes(
    target: np.ndarray, grid: CaseGrid, anatomy: Anatomy, tubes: Sequence[Tube], z: float
) -> None:
    """Set `target` where any tube (a chain of conical segments in 3-D) cuts the slice."""
    for tube in tubes:
        for start, end in zip(tube.points[:-1], tube.points[1:], strict=True):
            reach_z = max(start[4], end[4])
            if not min(start[2], end[2]) - reach_z < z < max(start[2], end[2]) + reach_z:
                continue
            box = _pixel_box(
                anatomy, np.stack([start[:2], end[:2]]), max(start[3], end[3]), target.shape[0]
            )
            if box is None:
                continue
            distance, along = _segment_distance(grid.u[box], grid.v[box], start, end)
            radius = start[3] + (end[3] - start[3]) * along
            height = start[2] + (end[2] - start[2]) * along
            vertical = start[4] + (end[4] - start[4]) * along
            target[box] |= (distance / radius) ** 2 + ((z - height) / vertical) ** 2 < 1.0


def _wave_noise(waves: np.ndarray, u: np.ndarray, v: np.ndarray, t: float) -> np.ndarray:
    """Smooth random function of (u, v, t) with unit std: a sum of random plane waves."""
    total = np.zeros_like(u)
    for along_u, along_v, along_t, phase, amplitude in waves:
        total += np.float32(amplitude) * sin_f32(
            np.float32(along_u) * u + np.float32(along_v) * v + np.float32(along_t * t + phase)
        )
    return total


def _set(
    hu: np.ndarray, tissue: np.ndarray, where: np.ndarray, value: float, label: Tissue
) -> None:
    hu[where] = value
    tissue[where] = label


@dataclass(frozen=True)
class _Head:
    """Scalp and skull of one slice, and where the cranial cavity starts."""

    head: np.ndarray  # inside the skin
    rho: np.ndarray  # radius relative to the head outline (1 at the skin)
    inner_depth: np.ndarray  # pixels below the skull's inner table (negative outside it)


@baseline_opencv()
def render_slice(case: CaseModel, index: int) -> PhantomSlice:
    """Slice `index` of a case in HU, with its tissue labels and lesion mask."""
    params, anatomy, grid = case.params, case.anatomy, case.grid
    size = params.image_size
    scale = size / REFERENCE_SIZE
    z = float(anatomy.heights[index])
    base = float(smoothstep(BASE_TOP, 0.02, z))  # 1 at the skull base, 0 higher up
    hu = np.full((size, size), AIR_HU, dtype=np.float32)
    tissue = np.full((size, size), Tissue.AIR, dtype=np.uint8)

    head = _scalp_and_skull(hu, tissue, case, z, base)
    cranium = head.head & (head.inner_depth >= 0.0)
    brain_space = cranium
    skull_base = None
    if base > 0.0:
        skull_base = _skull_base(grid, anatomy, z, base)
        _set(hu, tissue, cranium & skull_base.bone, params.skull_hu, Tissue.BONE)
        _set(hu, tissue, head.head & skull_base.air, AIR_HU, Tissue.AIR)
        _set(hu, tissue, head.head & skull_base.fat, FAT_HU, Tissue.FAT)
        _set(hu, tissue, head.head & skull_base.eyes, VITREOUS_HU, Tissue.SOFT_TISSUE)
        brain_space &= ~(skull_base.bone | skull_base.air | skull_base.fat | skull_base.eyes)

    # Brain: surface, sulci, fissures, cisterns and ventricles.
    gap_px = anatomy.gap_px * (1.0 + 1.5 * float(smoothstep(0.6, 0.95, z)))
    brain = brain_space & (head.inner_depth >= gap_px)
    surface_depth = head.inner_depth - np.float32(gap_px)
    open_sulci, sulcal_lines = _sulci(anatomy, grid, index, surface_depth, scale)
    fissure, falx = _interhemispheric(anatomy, grid, z, brain, scale)
    cisterns = np.zeros_like(brain)
    _paint_tubes(cisterns, grid, anatomy, anatomy.fissures, z)
    if skull_base is not None:
        cisterns |= skull_base.csf | _basal_cisterns(grid, anatomy, z)
    ventricles = np.zeros_like(brain)
    _paint_tubes(ventricles, grid, anatomy, anatomy.ventricles, z)
    _paint_ellipsoids(ventricles, grid, anatomy, anatomy.small_ventricles, z)
    ventricles &= brain & (surface_depth > 3.0 * scale)
    lesion_t = case.lesion.height(index)
    infarct = None
    if lesion_t is not None and case.lesion.infarct is not None:
        infarct = brain & _infarct_region(
            case.lesion, case.lesion.infarct, grid, head.rho, lesion_t
        )
        open_sulci &= ~infarct  # swelling effaces the sulci of an infarct
    outer_csf = (brain_space & ~brain) | (brain & (open_sulci | fissure | cisterns))

    grey = _grey_share(case, index, brain & ~(outer_csf | sulcal_lines | falx), skull_base)
    solid = brain & ~(outer_csf | ventricles | falx)
    parenchyma_hu = (
        np.float32(anatomy.white_hu)
        + np.float32(anatomy.grey_hu - anatomy.white_hu) * grey[solid]
        + np.float32(params.texture_hu) * _texture(case, index)[solid]
    )
    hu[solid] = np.clip(parenchyma_hu, *params.parenchyma_hu)
    tissue[solid] = np.where(grey[solid] >= 0.5, Tissue.GREY_MATTER, Tissue.WHITE_MATTER)
    _set(hu, tissue, outer_csf | ventricles, anatomy.csf_hu, Tissue.CSF)
    _set(hu, tissue, falx, params.falx_hu, Tissue.FALX)
    if grid.table is not None:
        _set(hu, tissue, grid.table & ~head.head, TABLE_HU, Tissue.TABLE)

    baseline_hu = hu.copy()
    lesion = np.zeros_like(brain)
    if lesion_t is not None:
        lesion = _add_lesion(hu, tissue, case, lesion_t, brain_space, head.inner_depth, infarct)
    sigma = params.blur_sigma_px * scale
    blurred = cv2.GaussianBlur(hu, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE) if sigma else hu
    return PhantomSlice(blurred + _noise(case, index), hu, baseline_hu, tissue, lesion)


def _scalp_and_skull(
    hu: np.ndarray, tissue: np.ndarray, case: CaseModel, z: float, base: float
) -> _Head:
    """Paint skin, fat, temporal muscles and skull by depth below the skin."""
    anatomy, grid = case.anatomy, case.grid
    scale = case.params.image_size / REFERENCE_SIZE
    rho = np.hypot(grid.u, grid.v) / (grid.outline_radius * np.float32(head_scale(z)))
    head = rho < 1.0
    depth = cv2.distanceTransform(head.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    fat_start = anatomy.skin_px
    muscle_start = fat_start + anatomy.fat_px
    skull_start = (
        muscle_start + 9.0 * scale * float(smoothstep(0.7, 0.45, z)) * grid.temporal_muscle
    )
    # Thicker at the skull base and where the top of the skull is cut obliquely.
    skull_px = anatomy.skull_px * grid.skull_profile
    skull_px += scale * (7.0 * base + 5.0 * float(smoothstep(0.78, 0.95, z)))
    _set(hu, tissue, head, SKIN_HU, Tissue.SOFT_TISSUE)
    _set(hu, tissue, head & (depth >= fat_start), FAT_HU, Tissue.FAT)
    muscle = head & (depth >= muscle_start) & (depth < skull_start)
    _set(hu, tissue, muscle, MUSCLE_HU, Tissue.SOFT_TISSUE)
    _set(hu, tissue, head & (depth >= skull_start), case.params.skull_hu, Tissue.BONE)
    return _Head(head, rho, depth - (skull_start + skull_px))


def _grey_share(
    case: CaseModel, index: int, cortex_source: np.ndarray, skull_base: _SkullBase | None
) -> np.ndarray:
    """Share of grey matter per pixel (0 white .. 1 grey): a cortex ribbon of the case's
    thickness along the brain surface, sulci and fissures (`cortex_source` is zero there),
    the deep nuclei, and a uniform cerebellum."""
    anatomy = case.anatomy
    scale = case.params.image_size / REFERENCE_SIZE
    depth = cv2.distanceTransform(
        cortex_source.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
    )
    grey = np.clip((np.float32(anatomy.cortex_px) - depth) / np.float32(1.5 * scale) + 0.5, 0, 1)
    nuclei = np.zeros(grey.shape, dtype=bool)
    _paint_ellipsoids(nuclei, case.grid, anatomy, anatomy.nuclei, float(anatomy.heights[index]))
    grey[nuclei] = np.maximum(grey[nuclei], 0.8)
    if skull_base is not None:
        fossa = skull_base.posterior_fossa
        grey[fossa] = 0.55 + 0.35 * grey[fossa]
    return grey


def _texture(case: CaseModel, index: int) -> np.ndarray:
    """Parenchyma texture (std about 1.2): smooth blotches plus a finer mottle."""
    size = case.params.image_size
    blotches = cv2.resize(case.anatomy.texture[index], (size, size), interpolation=cv2.INTER_CUBIC)
    mottle = _slice_rng(case, 2, index).standard_normal((64, 64), dtype=np.float32)
    return blotches + 0.7 * cv2.resize(mottle, (size, size), interpolation=cv2.INTER_CUBIC)


def _add_lesion(
    hu: np.ndarray,
    tissue: np.ndarray,
    case: CaseModel,
    t: float,
    brain_space: np.ndarray,
    inner_depth: np.ndarray,
    infarct: np.ndarray | None,
) -> np.ndarray:
    """Paint the lesion at height t and return its mask: exactly the pixels it changed.

    A hemorrhage replaces whatever the cranial cavity holds; an infarct lowers the
    parenchyma of its territory by a drop within `ischemic_drop_hu`."""
    params, grid, lesion = case.params, case.grid, case.lesion
    if lesion.hemorrhage is not None:
        region = _hemorrhage_region(lesion, lesion.hemorrhage, case.anatomy, grid, inner_depth, t)
        mask = brain_space & region
        variation = _wave_noise(lesion.waves[2:], grid.u[mask], grid.v[mask], t)
        values = np.float32(lesion.hemorrhage.mean_hu) + 4.0 * variation
        hu[mask] = np.clip(values, *params.hemorrhage_hu)
        tissue[mask] = Tissue.HEMORRHAGE
        return mask
    if infarct is None or lesion.infarct is None:
        raise ValueError("an ischemic lesion needs its infarct region")
    mask = infarct & np.isin(tissue, PARENCHYMA)
    low, high = params.ischemic_drop_hu
    variation = _wave_noise(lesion.waves[2:], grid.u[mask], grid.v[mask], t)
    hu[mask] -= np.clip(lesion.infarct.mean_drop_hu + 0.2 * (high - low) * variation, low, high)
    tissue[mask] = Tissue.ISCHEMIA
    return mask


def _slice_rng(case: CaseModel, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([*case.spec.entropy, stream, index]))


def _noise(case: CaseModel, index: int) -> np.ndarray:
    """CT-like noise, a few pixels grainy, with the case's standard deviation exactly."""
    size = case.params.image_size
    white = _slice_rng(case, 1, index).standard_normal((size, size), dtype=np.float32)
    grain = case.params.noise_grain_px * size / REFERENCE_SIZE
    field = cv2.GaussianBlur(white, (0, 0), grain) if grain > 0.0 else white
    field -= np.float32(field.mean())
    return field * np.float32(case.anatomy.noise_hu / max(float(field.std()), 1e-6))


def _sulci(
    anatomy: Anatomy, grid: CaseGrid, index: int, surface_depth: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sulci: clefts from the brain surface inwards, spaced around the cortex and bent by a
    smooth random field. Returns the open part (visible CSF) and the full-depth centre lines
    (lined by cortex)."""
    count = anatomy.sulcus_count
    z = float(anatomy.heights[index])
    size = grid.u.shape[0]
    folding = cv2.resize(anatomy.folding[index], (size, size), interpolation=cv2.INTER_CUBIC)
    phase = grid.sulcus_phase + np.float32(2.2) * folding
    for (_, amplitude, _, drift), sine, cosine in zip(
        anatomy.sulcus_meander, grid.meander_sin, grid.meander_cos, strict=True
    ):
        # amplitude * sin(order * angle + offset + drift * z), with the angle part cached.
        shift = drift * z
        phase += np.float32(amplitude * math.cos(shift)) * sine
        phase += np.float32(amplitude * math.sin(shift)) * cosine
    phase += surface_depth * np.float32(0.08 / scale)  # clefts bend as they go deeper
    nearest = np.floor(phase * np.float32(1.0 / (2 * np.pi)) + np.float32(0.5))
    offset_px = np.abs(phase - nearest * np.float32(2 * np.pi)) * grid.radius_px / np.float32(count)
    mean_depth = (16.0 + 14.0 * z) * scale
    which = nearest.astype(np.int64) % count
    depth = anatomy.sulcus_depth.astype(np.float32)[which] * np.float32(mean_depth)
    inside = (surface_depth >= 0.0) & (surface_depth < depth)
    open_depth = depth * anatomy.sulcus_opening.astype(np.float32)[which]
    within = np.clip(1.0 - surface_depth / np.maximum(open_depth, 1e-3), 0.0, 1.0)
    half_width = anatomy.sulcus_width_px.astype(np.float32)[which] * (0.4 + 0.6 * np.sqrt(within))
    open_part = inside & (surface_depth < open_depth) & (offset_px < half_width)
    lines = inside & (offset_px < 0.75 * scale)
    return open_part, lines


def _interhemispheric(
    anatomy: Anatomy, grid: CaseGrid, z: float, brain: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Interhemispheric fissure (CSF) and the falx in it; the corpus callosum interrupts
    them between the ventricles, above which they run the whole length."""
    bend_linear, bend_square = anatomy.falx_bend
    midline = np.float32(bend_linear) * grid.v + np.float32(bend_square) * grid.v * grid.v
    offset_px = np.abs(grid.u - midline) * np.float32(anatomy.half_width_px)
    half_gap = 0.45 * anatomy.elongation * float(smoothstep(0.7, 0.62, z))
    along = brain & ((grid.v < -half_gap) | ((grid.v > half_gap) & (z > 0.2)))
    half_width = (1.3 + 1.0 * float(smoothstep(0.5, 0.95, z))) * scale
    falx = along & (offset_px < 0.8 * scale) & (z > 0.12)
    fissure = along & (offset_px < half_width) & ~falx
    return fissure, falx


def _basal_cisterns(grid: CaseGrid, anatomy: Anatomy, z: float) -> np.ndarray:
    """Suprasellar, ambient and quadrigeminal cisterns around the midbrain."""
    weight = float(smoothstep(0.05, 0.11, z) * smoothstep(0.25, 0.17, z))
    if weight <= 0.0:
        return np.zeros(grid.u.shape, dtype=bool)
    elongation = anatomy.elongation
    midbrain = np.hypot(grid.u / 0.12, (grid.v - 0.05 * elongation) / 0.11)
    ambient = (midbrain > 1.0) & (midbrain < 1.0 + 0.3 * weight) & (grid.v > 0.0)
    suprasellar = np.hypot(grid.u / 0.13, (grid.v + 0.14 * elongation) / 0.075) < weight
    quadrigeminal = np.hypot(grid.u / 0.07, (grid.v - 0.2 * elongation) / 0.045) < weight
    return ambient | suprasellar | quadrigeminal


def _skull_base(grid: CaseGrid, anatomy: Anatomy, z: float, base: float) -> _SkullBase:
    """Bone islands, air cells, orbits and posterior fossa of the lowest slices."""
    u, v = grid.u, grid.v
    elongation = anatomy.elongation
    size = u.shape[0]
    porous = cv2.resize(anatomy.porosity, (size, size), interpolation=cv2.INTER_LINEAR)
    bone = np.zeros(u.shape, dtype=bool)
    air = np.zeros_like(bone)
    posterior_fossa = np.zeros_like(bone)
    csf = np.zeros_like(bone)
    if base >= 0.35:  # below that only thin slivers of these bones would be left
        # Petrous ridges, from the clivus back and out to the mastoids (air cells laterally).
        start_v, end_v = -0.05 * elongation, 0.3 * elongation
        for side in (1, -1):
            distance, along = _segment_distance(u, v, (side * 0.1, start_v), (side * 0.8, end_v))
            ridge = distance < (0.03 + 0.12 * along) * base * (0.8 + 0.4 * porous)
            bone |= ridge
            air |= ridge & (along > 0.55) & (porous > 0.58)
        slope = (end_v - start_v) / 0.7
        posterior_fossa = v > start_v + slope * (np.abs(u) - 0.1)
        bone |= np.hypot(u / 0.075, (v + 0.12 * elongation) / 0.1) < base  # clivus
        # Between the cerebellar hemispheres: the vallecula and cisterna magna.
        csf = posterior_fossa & (
            (np.hypot(u / 0.05, (v - 0.84 * elongation) / 0.07) < 1.0)
            | ((np.abs(u) < 0.012) & (v > 0.6 * elongation))
        )
    fat = np.zeros_like(bone)
    eyes = np.zeros_like(bone)
    face = float(smoothstep(0.12, 0.04, z))
    if face > 0.0:
        # Orbits (globe in fat, in a bony socket) either side of the ethmoid air cells,
        # the sphenoid sinus behind them, the greater sphenoid wings towards the temples.
        front = v < (-0.5 + 0.35 * u * u) * elongation
        sockets = np.zeros_like(bone)
        for side in (1, -1):
            radius = np.hypot(u - side * 0.4, v + 0.62 * elongation)
            eyes |= radius < 0.15 * math.sqrt(face)
            fat |= radius < 0.22 * math.sqrt(face)
            sockets |= radius < 0.3 * face
            wing, _ = _segment_distance(
                u, v, (side * 0.16, -0.34 * elongation), (side * 0.7, -0.44 * elongation)
            )
            bone |= wing < 0.035 * face
        fat &= ~eyes
        midline = (np.abs(u) < 0.1 + 0.1 * smoothstep(-0.3, -0.6, v / elongation)) & (
            v < -0.3 * elongation
        )
        ethmoid = (np.abs(u) < 0.14) & (v < -0.52 * elongation) & (porous > 0.45)
        sphenoid = np.hypot(u / 0.12, (v + 0.38 * elongation) / 0.08) < face
        air |= (ethmoid | sphenoid) & ~fat & ~eyes
        bone |= front & (sockets | midline) & ~fat & ~eyes
    bone &= ~air
    posterior_fossa &= ~bone & ~air
    return _SkullBase(bone, air, fat, eyes, csf & posterior_fossa, posterior_fossa)


def _angle_offset(angle: np.ndarray, towards: float) -> np.ndarray:
    """Absolute angular distance (radians, 0..pi) from `towards`."""
    return np.abs(np.remainder(angle - np.float32(towards - np.pi), np.float32(2 * np.pi)) - np.pi)


def _hemorrhage_region(
    lesion: Lesion,
    bleed: Hemorrhage,
    anatomy: Anatomy,
    grid: CaseGrid,
    inner_depth: np.ndarray,
    t: float,
) -> np.ndarray:
    """Irregular blob(s) in the parenchyma, or a lens along the skull (extra-axial)."""
    size = grid.u.shape[0]
    region = np.zeros((size, size), dtype=bool)
    for blob in bleed.blobs:
        box = _pixel_box(anatomy, np.array([blob.centre[:2]]), max(blob.axes[:2]) * 1.4, size)
        if box is None:
            continue
        u, v = grid.u[box], grid.v[box]
        field = _ellipse_field(u, v, blob) + 0.3 * _wave_noise(lesion.waves, u, v, t)
        region[box] |= field < 1.0 - t * t
    if bleed.extra_axial is not None:
        angle, half_angle, thickness_px = bleed.extra_axial
        most = thickness_px * size / REFERENCE_SIZE
        offset = _angle_offset(grid.angle, angle)
        candidates = np.nonzero(
            (inner_depth >= 0.0) & (inner_depth < 1.3 * most) & (offset < half_angle)
        )
        profile = np.clip(1.0 - (offset[candidates] / half_angle) ** 2 - t * t, 0.0, None)
        rough = 1.0 + 0.15 * _wave_noise(lesion.waves, grid.u[candidates], grid.v[candidates], t)
        region[candidates] = inner_depth[candidates] < most * np.sqrt(profile) * rough
    return region


def _infarct_region(
    lesion: Lesion, infarct: Infarct, grid: CaseGrid, rho: np.ndarray, t: float
) -> np.ndarray:
    """Wedge of a vascular territory: apex deep, base on the cortex, tapering at its ends."""
    radial = (rho * np.float32(1.0 / 0.92) - infarct.inner_radius) / (1.0 - infarct.inner_radius)
    offset = _angle_offset(grid.angle, infarct.angle)
    widest = infarct.half_angle * math.sqrt(max(0.0, 1.0 - t * t))
    near = (radial > 0.0) & (offset < 1.6 * widest)
    if infarct.side:
        near &= np.sign(grid.u) == infarct.side
    candidates = np.nonzero(near)
    rough = 1.0 + 0.25 * _wave_noise(lesion.waves, grid.u[candidates], grid.v[candidates], t)
    taper = np.sqrt(np.minimum(radial[candidates], 1.0) + 0.1)
    wedge = np.zeros(grid.u.shape, dtype=bool)
    wedge[candidates] = offset[candidates] < widest * rough * taper
    return wedge


# --------------------------------------------------------------------------- archive


@dataclass(frozen=True)
class CaseFiles:
    """A rendered case: its archive members (PNG bytes) and lesion pixels per slice."""

    spec: CaseSpec
    members: tuple[tuple[str, bytes], ...]
    lesion_pixels: tuple[int, ...]


@dataclass(frozen=True)
class PhantomSummary:
    cases: int
    slices: int
    masks: int
    lesion_slices: int
    archive_bytes: int


def render_case_slices(spec: CaseSpec, params: PhantomParams) -> Iterator[PhantomSlice]:
    """Every slice of a case in order, in HU before windowing: the one source of the
    archive's PNGs and of the DICOM series (pipeline/dicom.py)."""
    case = build_case(spec, params)
    for index in range(len(spec.slice_stems)):
        yield render_slice(case, index)


def render_case_files(task: tuple[CaseSpec, PhantomParams]) -> CaseFiles:
    """Render every slice of a case to PNG bytes (image, and mask unless the case has
    none). Module-level so that worker processes can run it."""
    spec, params = task
    members: list[tuple[str, bytes]] = []
    lesion_pixels: list[int] = []
    slices = render_case_slices(spec, params)
    for stem, rendered in zip(spec.slice_stems, slices, strict=True):
        image = window_to_uint8(rendered.hu, params.window_level_hu, params.window_width_hu)
        members.append((spec.member("images", stem), encode_png(image)))
        if spec.has_mask:
            mask = np.where(rendered.lesion, np.uint8(255), np.uint8(0))
            members.append((spec.member("mask", stem), encode_png(mask)))
        lesion_pixels.append(int(np.count_nonzero(rendered.lesion)))
    return CaseFiles(spec, tuple(members), tuple(lesion_pixels))


@baseline_opencv()
def other_modality_members(params: PhantomParams, seed: int) -> list[tuple[str, bytes]]:
    """A few MRI and PET files (PNG, JPEG, text) that a CT pipeline must leave alone."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    members: list[tuple[str, bytes]] = []
    for modality in OTHER_MODALITIES:
        prefix = modality.split()[0].lower()
        for index in range(params.files_per_other_modality):
            kind = ("png", "jpg", "txt")[index % 3]
            name = f"{ARCHIVE_ROOT}/{modality}/{prefix}_{index + 1:03d}.{kind}"
            if kind == "txt":
                members.append((name, f"{modality} placeholder, not CT.\n".encode()))
                continue
            blob = cv2.GaussianBlur(rng.uniform(0.0, 255.0, (64, 64)).astype(np.float32), (0, 0), 6)
            picture = window_to_uint8(blob, float(blob.mean()), 4.0 * float(blob.std()) + 1e-3)
            if kind == "png":
                members.append((name, encode_png(picture)))
            else:
                ok, buffer = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 90])
                if not ok:
                    raise RuntimeError("OpenCV could not encode a JPEG")
                members.append((name, buffer.tobytes()))
    return members


def geometry_member(params: PhantomParams) -> tuple[str, bytes]:
    """The spacing file `extract` reads: the physical scale the phantom declares (its
    anatomy is drawn in pixels, a head about two thirds of the image wide)."""
    data = spacing_json(params.pixel_spacing_mm, params.slice_thickness_mm)
    return f"{CT_DATA_ROOT}/{SPACING_FILE}", data


def write_zip(path: Path | str, members: Sequence[tuple[str, bytes]]) -> None:
    """Deterministic zip, written atomically: members sorted by name, fixed timestamps,
    stored uncompressed (PNG and JPEG are compressed already)."""
    with atomic_path(path) as temporary, zipfile.ZipFile(temporary, "w") as archive:
        for name, data in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)


def synthesize_archive(
    path: Path | str, params: PhantomParams, seed: int
) -> tuple[PhantomSummary, list[CaseFiles]]:
    """Render every case (in parallel, one task per case) and write the archive."""
    cases = plan_cases(params, seed)
    rendered = ordered_map(
        render_case_files,
        [(spec, params) for spec in cases],
        workers=params.workers,
        description="synthesize",
        chunksize=1,
    )
    members = [member for files in rendered for member in files.members]
    members.append(geometry_member(params))
    write_zip(path, members + other_modality_members(params, seed))
    summary = PhantomSummary(
        cases=len(cases),
        slices=sum(len(files.lesion_pixels) for files in rendered),
        masks=sum(len(files.lesion_pixels) for files in rendered if files.spec.has_mask),
        lesion_slices=sum(1 for files in rendered for pixels in files.lesion_pixels if pixels),
        archive_bytes=Path(path).stat().st_size,
    )
    return summary, rendered


def phantom_montage(rendered: Sequence[CaseFiles], per_class: int = 4) -> np.ndarray:
    """Montage to compare by eye with real CT: per class, the lowest slice of its first masked
    case (skull base), then the largest-lesion slice of the next ones; each slice is shown
    plain and with its mask overlaid in the class's display colour (pipeline/classes.py, not
    rgb_map: a mask-colour change must not regenerate the phantom)."""
    tiles: list[np.ndarray] = []
    for class_name, class_index in CLASS_INDEX.items():
        masked = [f for f in rendered if f.spec.class_name == class_name and f.spec.has_mask]
        for number in range(per_class):
            files = masked[number % len(masked)]
            index = 0 if number == 0 else int(np.argmax(files.lesion_pixels))
            stem = files.spec.slice_stems[index]
            members = dict(files.members)
            image_name = files.spec.member("images", stem)
            mask_name = files.spec.member("mask", stem)
            image = decode_image(members[image_name], image_name, color=False)
            mask = decode_image(members[mask_name], mask_name, color=False)
            colour = binary_to_colour(mask, 1, (MONTAGE_BACKGROUND, display_rgb(class_index)))
            tiles.append(label(image, f"{class_name} {files.spec.case_id}/{stem}"))
            tiles.append(label(overlay(image, colour, background=MONTAGE_BACKGROUND), "mask"))
    return montage(tiles, columns=4)
