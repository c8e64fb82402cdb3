"""The head: tissue densities, the random anatomy of a case (head shape, skull, ventricles,
sulci, deep nuclei) and the pixel grid it is drawn on.

Lengths in pixels are given for a head of the reference size (REFERENCE_HEAD_WIDTH_SHARE of a
512 px image, REFERENCE_SIZE) and scale with the case's head width and `image_size`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import cv2
import numpy as np

from pipeline.numerics import arctan2_f32, cos_f32, sin_f32
from pipeline.params import PhantomParams

REFERENCE_SIZE = 512
# Head width (at its widest level) over image width that the pixel lengths below are given
# for; a case's head is drawn at its own width (`phantom.head_width_share`) and its skull,
# cortex, sulci and lesion thicknesses scale with it, as a real head does when it fills more of
# the field of view.
REFERENCE_HEAD_WIDTH_SHARE = 0.66
# Tissues outside the brain have fixed densities; brain, CSF and lesions come from params.
AIR_HU = -1000.0
FAT_HU = -90.0
SKIN_HU = 45.0
MUSCLE_HU = 42.0
VITREOUS_HU = 12.0
# The lens is denser than the vitreous (about 100 HU in real scans); kept at the top of the
# soft-tissue range, where every window but the widest already shows it near white.
LENS_HU = 58.0
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
    VESSEL = 11  # dural sinuses and arteries, at blood density (unlabelled look-alikes)


PARENCHYMA = (Tissue.GREY_MATTER, Tissue.WHITE_MATTER)


def tissue_in(tissue: np.ndarray, labels: Sequence[Tissue]) -> np.ndarray:
    """Where a tissue map (uint8 labels) holds any of `labels`: `np.isin`'s answer through
    OpenCV's lookup table, 0.04 against 0.4-2 ms on a 512-px slice (integers: exact)."""
    table = np.zeros(256, dtype=np.uint8)
    table[list(labels)] = 1
    return cv2.LUT(tissue, table).view(bool)


def flat(array: np.ndarray) -> np.ndarray:
    """`array` as one flat view, to write through at `np.flatnonzero` indices (gathers by
    `take` and writes at flat indices cost a fifth of indexing by rows and columns). Refuses
    an array that is not contiguous, whose `ravel()` would be a copy and the writes lost."""
    if not array.flags.c_contiguous:
        raise ValueError("flat() needs a contiguous array: writes through a copy are lost")
    return array.ravel()


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
class Anatomy:
    """Everything random about one head (lengths in pixels are at the case's image size)."""

    centre: tuple[float, float]
    half_width_px: float
    px_scale: float  # pixels of this case per pixel of the reference head at 512 px
    elongation: float  # front-to-back over left-to-right head size
    rotation: float
    outline: np.ndarray  # (k, 3): harmonic order, amplitude, phase of the head outline
    heights: np.ndarray  # z of each slice
    skin_px: float  # the scalp, from the skin in: skin, fat, galea (soft tissue)
    fat_px: float
    galea_px: float
    skull_px: float
    gap_px: float
    cortex_px: float
    sulcus_count: int
    sulcus_meander: np.ndarray  # (k, 4): order, amplitude, phase, drift with z
    sulcus_depth: np.ndarray  # relative depth of each sulcus
    sulcus_opening: np.ndarray  # share of each sulcus' depth that holds visible CSF
    sulcus_width_px: np.ndarray  # half-width of each sulcus at the surface
    falx_bend: tuple[float, float]
    # Midline shift by a mass (head units, + towards the image right; 0 without): the falx
    # bows by this much midway along it, the ventricles move with it (lesions.mass_effect).
    midline_shift: float
    ventricles: tuple[Tube, ...]
    small_ventricles: tuple[Ellipsoid, ...]
    fissures: tuple[Tube, ...]
    nuclei: tuple[Ellipsoid, ...]
    grey_hu: float
    white_hu: float
    csf_hu: float
    texture: np.ndarray  # (slices, g, g) smooth parenchyma texture, unit std
    folding: np.ndarray  # (slices, g, g) smooth field that bends the sulci, unit std
    skull_base: SkullBase
    table: tuple[float, float, float] | None  # lowest point y, radius, thickness (px)
    lookalikes: LookAlikes


@dataclass(frozen=True)
class SkullBase:
    """The random part of a case's skull base and posterior fossa (head units unless named)."""

    cell_warp: np.ndarray  # (2, g, g) smooth fields, unit std, that bend the air cells' septa
    ethmoid_cell: float  # air-cell sizes in the ethmoid and in the mastoids
    mastoid_cell: float
    sphenoid_septum_u: float  # where the septum splits the sphenoid sinus
    petrous_angle: float  # radians the petrous ridges turn from their mean direction
    folia_period: float  # spacing of the cerebellar folia
    folia_phase: float
    beam_hardening_hu: float  # drop at the centre of the dark band between the petrous bones


@dataclass(frozen=True)
class LookAlikes:
    """Unlabelled structures that look like lesions, drawn for both classes alike: bright
    calcifications (choroid plexus, pineal, falx) and blood-density vessels and sinuses like a
    bleed, old infarcts at CSF density and periventricular hypodensity like an infarct."""

    calcifications: tuple[Ellipsoid, ...]
    falx_calcified: tuple[float, float] | None  # v range (head units) of a calcified falx
    calcification_hu: float
    sinus_hu: float
    arteries: tuple[Tube, ...]  # middle cerebral arteries in the Sylvian fissures
    artery_hu: float  # above sinus_hu in a hyperdense artery sign
    old_infarcts: tuple[Ellipsoid, ...]
    periventricular_drop_hu: float  # 0: none
    periventricular_px: float  # reach from the ventricles (reference head)
    # Depth of the transverse sinuses under the inner table (reference head's pixels), drawn
    # by `with_transverse_sinuses` from a generator of its own.
    transverse_sinus_px: float = 0.0


@dataclass(frozen=True)
class CaseGrid:
    """Per-pixel coordinates of a case, computed once and shared by its slices."""

    u: np.ndarray  # head units, to the image right
    v: np.ndarray  # head units, posterior
    angle: np.ndarray  # atan2(v, u)
    radius: np.ndarray  # hypot(u, v): distance from the head centre in head units
    radius_px: np.ndarray  # distance from the head centre in pixels
    outline_radius: np.ndarray  # head outline radius (head units) in each pixel's direction
    temporal_muscle: np.ndarray  # 0..1, where the temporal muscles lie (the head's sides)
    skull_profile: np.ndarray  # skull thickness by direction (thinner at the temples)
    falx_offset_px: np.ndarray  # distance from the falx's line (bent, shifted by a mass), px
    sulcus_phase: np.ndarray  # sulcus_count * angle
    meander_sin: tuple[np.ndarray, ...]  # sin / cos of each sulcus meander term's angle part
    meander_cos: tuple[np.ndarray, ...]
    table: np.ndarray | None  # the CT table's arc (pixels), when the case has one


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
# The posterior fossa under the tentorium is drawn at the slice's height this far back (v over
# the elongation, the tentorium's middle), not tilted along its own length.
TENTORIUM_MIDDLE_V = 0.5
PONS_TOP = 0.2  # the pons under it ends here, the midbrain (`_basal_cisterns`) above


def smoothstep(edge0: float, edge1: float, x: np.ndarray | float) -> np.ndarray:
    """0 at edge0, 1 at edge1 (edges may be in either order), smooth in between."""
    t = np.clip((np.asarray(x, dtype=np.float32) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def head_unit_mm(params: PhantomParams) -> float:
    """Millimetres of one head unit (a head half-width) at the declared pixel spacing."""
    return params.pixel_spacing_mm * REFERENCE_SIZE * REFERENCE_HEAD_WIDTH_SHARE / 2.0


def head_scale(z: float | np.ndarray) -> float | np.ndarray:
    """Head cross-section at height z relative to the widest level (z 0.45); z a height, or
    a float32 array of them (a tilted slice's height per pixel)."""
    if np.ndim(z) == 0:
        if z < 0.45:
            return 1.0 - 0.1 * ((0.45 - z) / 0.45) ** 2
        return math.sqrt(max(0.05, 1.0 - ((z - 0.45) / 0.8) ** 2))
    below = 1.0 - 0.1 * ((0.45 - z) / np.float32(0.45)) ** 2
    above = np.sqrt(np.maximum(np.float32(0.05), 1.0 - ((z - 0.45) / np.float32(0.8)) ** 2))
    return np.where(z < 0.45, below, above)


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


def sample_anatomy(rng: np.random.Generator, params: PhantomParams) -> Anatomy:
    size = params.image_size
    slices = params.slices_per_case
    # Pose and size: drawn first, the same way for every class (no shortcut for the model).
    half_width = size * rng.uniform(*params.head_width_share) / 2.0
    scale = size / REFERENCE_SIZE * half_width / (size * REFERENCE_HEAD_WIDTH_SHARE / 2.0)
    rotation = math.radians(rng.uniform(-1.0, 1.0) * params.rotation_max_deg)
    shift = rng.normal(0.0, params.centre_shift_share, size=2)
    elongation = rng.uniform(1.14, 1.26)
    # Centred a little above the middle (the table and neck below), shifted per case: wide
    # heads shifted towards an edge are cropped by the field of view, as in real scans.
    centre = (size * (0.5 + shift[0]), size * (0.475 + shift[1]))
    orders = np.arange(2.0, 6.0)
    outline = np.column_stack(
        [orders, rng.uniform(0.0, 0.016, size=4), rng.uniform(0, 2 * np.pi, size=4)]
    )
    # Egg shape: the back of the head (+v) is a little wider than the front.
    outline = np.vstack([outline, [1.0, rng.uniform(0.015, 0.04), -np.pi / 2]])
    low, high = rng.uniform(0.0, 0.04), rng.uniform(0.86, 0.93)
    heights = low + (high - low) * np.linspace(0.0, 1.0, slices) ** params.slice_height_power
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
        image_scale = size / REFERENCE_SIZE
        lowest = centre[1] + half_width * elongation * 1.1 + rng.uniform(6.0, 20.0) * image_scale
        table = (lowest, size * rng.uniform(0.55, 1.2), rng.uniform(3.0, 6.0) * image_scale)
    return Anatomy(
        centre=centre,
        half_width_px=half_width,
        px_scale=scale,
        elongation=elongation,
        rotation=rotation,
        outline=outline,
        heights=heights,
        **_scalp(
            rng.uniform(*params.scalp_mm), rng.uniform(*params.scalp_fat_share), params, scale
        ),
        skull_px=rng.uniform(*params.skull_mm) / params.pixel_spacing_mm * scale,
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
        midline_shift=0.0,
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
        texture=texture[2:-2],
        folding=folding[2:-2],
        skull_base=_sample_skull_base(rng, params),
        table=table,
        lookalikes=_sample_lookalikes(rng, params, elongation, atrophy),
    )


def _scalp(
    scalp_mm: float, fat_share: float, params: PhantomParams, scale: float
) -> dict[str, float]:
    """Scalp layers in pixels: of the soft tissue that is not fat, 0.6 is skin (dermis) over
    the fat, the rest the galea and pericranium under it, over the skull."""
    scalp_px = scalp_mm / params.pixel_spacing_mm * scale
    soft_px = scalp_px * (1.0 - fat_share)
    return {"skin_px": 0.6 * soft_px, "fat_px": fat_share * scalp_px, "galea_px": 0.4 * soft_px}


def _sample_skull_base(rng: np.random.Generator, params: PhantomParams) -> SkullBase:
    warp = rng.standard_normal((2, 24, 24), dtype=np.float32)
    warp = np.stack([cv2.GaussianBlur(plane, (0, 0), 1.2) for plane in warp])
    return SkullBase(
        cell_warp=warp / max(float(warp.std()), 1e-6),
        ethmoid_cell=rng.uniform(0.06, 0.09),
        mastoid_cell=rng.uniform(0.045, 0.07),
        sphenoid_septum_u=rng.normal(0.0, 0.03),
        petrous_angle=rng.normal(0.0, 0.06),
        folia_period=rng.uniform(0.028, 0.04),
        folia_phase=rng.uniform(0.0, 2 * np.pi),
        beam_hardening_hu=rng.uniform(*params.beam_hardening_hu),
    )


# The case's seed and this: the transverse sinuses' own generator (rendering._slice_rng uses
# 1 and 2, scanner.py 3, lesions.py 4; 11 is the stream row 89 of docs/phantom.md was judged
# with, so this param reproduces that phantom).
TRANSVERSE_SINUS_STREAM = 11


def with_transverse_sinuses(
    anatomy: Anatomy, entropy: Sequence[int], params: PhantomParams
) -> Anatomy:
    """The anatomy with its transverse sinuses' depth drawn (`phantom.transverse_sinus_mm`),
    from a generator of its own, so that every other draw of the case stays as it was."""
    rng = np.random.default_rng(np.random.SeedSequence([*entropy, TRANSVERSE_SINUS_STREAM]))
    depth_px = float(rng.uniform(*params.transverse_sinus_mm)) / params.pixel_spacing_mm
    lookalikes = dataclasses.replace(anatomy.lookalikes, transverse_sinus_px=depth_px)
    return dataclasses.replace(anatomy, lookalikes=lookalikes)


def _sample_lookalikes(
    rng: np.random.Generator, params: PhantomParams, elongation: float, atrophy: float
) -> LookAlikes:
    chance = params.calcification_probability
    calcifications: list[Ellipsoid] = []
    for side in (1, -1):  # choroid plexus in the atria
        if rng.uniform() < chance:
            radius = rng.uniform(0.012, 0.03)
            centre = (side * 0.2, 0.3 * elongation, 0.46 + rng.normal(0.0, 0.02))
            calcifications.append(Ellipsoid(centre, (radius, radius * 1.4, 0.05), 0.0))
    if rng.uniform() < chance:  # pineal gland
        radius = rng.uniform(0.012, 0.025)
        pineal = Ellipsoid((0.0, 0.17 * elongation, 0.38), (radius, radius, 0.05), 0.0)
        calcifications.append(pineal)
    falx = None
    if rng.uniform() < params.falx_calcification_probability:
        start = rng.uniform(-0.8, 0.5) * elongation
        falx = (start, start + rng.uniform(0.08, 0.25) * elongation)
    sinus_hu = rng.uniform(*params.sinus_hu)
    hyperdense = rng.uniform() < params.hyperdense_artery_probability
    arteries = tuple(
        Tube(
            np.array(
                [
                    (side * u, v * elongation, z + 0.02, 0.012, 0.05)
                    for u, v, z, _, _ in SYLVIAN_FISSURE
                ]
            )
        )
        for side in (1, -1)
    )
    old_infarcts: list[Ellipsoid] = []
    if rng.uniform() < params.old_infarct_probability:
        direction, distance = rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 0.7)
        radius = rng.uniform(0.03, 0.1)
        centre = (
            distance * math.cos(direction),
            distance * math.sin(direction) * elongation,
            rng.uniform(0.3, 0.75),
        )
        axes = (radius, radius * rng.uniform(0.6, 1.4), 0.1)
        old_infarcts.append(Ellipsoid(centre, axes, 0.0))
    chance = params.periventricular_hypodensity_probability * (0.5 + atrophy)
    drop = rng.uniform(*params.periventricular_drop_hu) if rng.uniform() < chance else 0.0
    return LookAlikes(
        calcifications=tuple(calcifications),
        falx_calcified=falx,
        calcification_hu=rng.uniform(*params.calcification_hu),
        sinus_hu=sinus_hu,
        arteries=arteries,
        # Normal arteries a little below the sinuses; a hyperdense one up to 5 HU above.
        artery_hu=rng.uniform(sinus_hu, params.sinus_hu[1] + 5.0) if hyperdense else sinus_hu - 8.0,
        old_infarcts=tuple(old_infarcts),
        periventricular_drop_hu=drop,
        periventricular_px=rng.uniform(6.0, 16.0),
    )


@dataclass(frozen=True)
class Acquisition:
    """How a case was scanned and exported, drawn per case like the pose."""

    window_level_hu: float
    window_width_hu: float
    wide_export: bool  # the window drawn from `wide_window_width_hu`, not a brain window's
    noise_hu: float
    noise_filter: np.ndarray  # (n, n // 2 + 1) amplitude of the noise's half-size spectrum
    blur_sigma_px: float


def sample_acquisition(rng: np.random.Generator, params: PhantomParams) -> Acquisition:
    """Window, noise and blur of a case. The noise is filtered back-projection noise: power
    spectrum |f| W(f)^2 (the ramp filter times a Hann apodisation window cut off at the case's
    frequency), so it is mottled, with no grain finer than the cut-off. It is drawn on a grid
    half the image size (cut-offs up to 0.25 cycles per pixel; `rendering._noise`)."""
    half = max(8, params.image_size // 2)
    cutoff = rng.uniform(*params.noise_cutoff_cycles_per_px)
    # Frequencies in cycles per image pixel: the half-size grid's pixels are two image pixels.
    fy = np.fft.fftfreq(half)[:, None] / 2.0
    fx = np.fft.rfftfreq(half)[None, :] / 2.0
    radial = np.hypot(fy, fx)
    window = np.where(radial < cutoff, 0.5 + 0.5 * np.cos(np.pi * radial / cutoff), 0.0)
    low_hu = rng.uniform(*params.window_low_hu)
    wide = rng.uniform() < params.wide_window_share
    width_hu = rng.uniform(*(params.wide_window_width_hu if wide else params.window_width_hu))
    return Acquisition(
        window_level_hu=low_hu + width_hu / 2.0,
        window_width_hu=width_hu,
        wide_export=wide,
        noise_hu=rng.uniform(*params.noise_hu),
        noise_filter=np.sqrt(radial) * window,
        blur_sigma_px=rng.uniform(*params.blur_sigma_px),
    )


def _smooth_volume(volume: np.ndarray) -> np.ndarray:
    """Smooth a (slices, g, g) random volume along z and in-plane; unit std again."""
    along_z = 0.25 * np.roll(volume, 1, axis=0) + 0.5 * volume + 0.25 * np.roll(volume, -1, axis=0)
    smooth = np.stack([cv2.GaussianBlur(plane, (0, 0), 0.8) for plane in along_z])
    return (smooth / max(float(smooth.std()), 1e-6)).astype(np.float32)


def case_grid(anatomy: Anatomy, size: int) -> CaseGrid:
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
    bend_linear, bend_square = anatomy.falx_bend
    midline = np.float32(bend_linear) * v + np.float32(bend_square) * v * v
    if anatomy.midline_shift:  # bowed by a mass, anchored front and back
        along_falx = np.clip(1.0 - (v / elongation) ** 2, 0.0, 1.0)
        midline += np.float32(anatomy.midline_shift) * along_falx
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
        radius=np.hypot(u, v),
        radius_px=np.hypot(dx, dy),
        outline_radius=outline * ellipse,
        temporal_muscle=smoothstep(0.5, 0.9, np.abs(cos_f32(angle))),
        skull_profile=1.0 - 0.22 * cos_f32(2.0 * angle),
        falx_offset_px=np.abs(u - midline) * np.float32(anatomy.half_width_px),
        sulcus_phase=np.float32(anatomy.sulcus_count) * angle,
        meander_sin=tuple(sin_f32(term) for term in meander),
        meander_cos=tuple(cos_f32(term) for term in meander),
        table=table,
    )


def pixel_box(
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


def ellipse_field(u: np.ndarray, v: np.ndarray, shape: Ellipsoid) -> np.ndarray:
    """Squared normalised in-plane radius of `shape` (below 1 inside its outline)."""
    u = u - np.float32(shape.centre[0])
    v = v - np.float32(shape.centre[1])
    cos, sin = np.float32(math.cos(shape.angle)), np.float32(math.sin(shape.angle))
    along_u = (u * cos + v * sin) / np.float32(shape.axes[0])
    along_v = (v * cos - u * sin) / np.float32(shape.axes[1])
    return along_u * along_u + along_v * along_v
