"""One slice in Hounsfield units: the case model (anatomy, grid, lesion) drawn at one
height, then blurred, given noise and windowed to 8-bit by the caller."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.numerics import baseline_opencv, cos_f32, exp_f32
from pipeline.params import PhantomParams
from pipeline.synthesize.anatomy import (
    AIR_HU,
    BASE_TOP,
    FAT_HU,
    LENS_HU,
    MUSCLE_HU,
    PARENCHYMA,
    PONS_TOP,
    REFERENCE_SIZE,
    SKIN_HU,
    TABLE_HU,
    TENTORIUM_MIDDLE_V,
    VITREOUS_HU,
    Acquisition,
    Anatomy,
    CaseGrid,
    Ellipsoid,
    Tissue,
    Tube,
    case_grid,
    ellipse_field,
    flat,
    head_scale,
    pixel_box,
    sample_acquisition,
    sample_anatomy,
    smoothstep,
    tissue_in,
    with_transverse_sinuses,
)
from pipeline.synthesize.layout import CaseSpec
from pipeline.synthesize.lesions import (
    Lesion,
    Spaces,
    add_context,
    add_lesions,
    infarct_region,
    mass_effect,
    sample_lesions,
    with_soft_edges,
)
from pipeline.synthesize.scanner import Scanner, sample_scanner


@dataclass(frozen=True)
class PhantomSlice:
    """One rendered slice: `hu` is the final image in HU (blur and noise included);
    `clean_hu` the tissue model before blur and noise; `baseline_hu` the same tissue model
    without the lesion; `tissue` a `Tissue` label per pixel; `lesion` the lesion mask; the
    case's brain window for its 8-bit export."""

    hu: np.ndarray
    clean_hu: np.ndarray
    baseline_hu: np.ndarray
    tissue: np.ndarray
    lesion: np.ndarray
    window_level_hu: float
    window_width_hu: float


@dataclass(frozen=True)
class CaseModel:
    spec: CaseSpec
    params: PhantomParams
    anatomy: Anatomy
    acquisition: Acquisition
    lesions: tuple[Lesion, ...]
    grid: CaseGrid
    scanner: Scanner
    height_index: HeightIndex | None  # None: the case is not tilted


@baseline_opencv()
def build_case(spec: CaseSpec, params: PhantomParams) -> CaseModel:
    """Draw the anatomy, acquisition and lesions of one case from the case's own generator:
    the first two before anything depends on the class, so they are drawn the same way for
    both classes."""
    rng = np.random.default_rng(np.random.SeedSequence(list(spec.entropy)))
    anatomy = with_transverse_sinuses(sample_anatomy(rng, params), spec.entropy, params)
    acquisition = sample_acquisition(rng, params)
    scanner = sample_scanner(spec.entropy, params, anatomy.elongation)
    lesions = with_soft_edges(
        sample_lesions(rng, spec.class_name, params, anatomy, scanner.tilt_slope),
        spec.entropy,
        params,
    )
    anatomy = mass_effect(rng, anatomy, lesions, params)
    grid = case_grid(anatomy, params.image_size)
    lookup = height_index(grid) if scanner.tilt_slope else None
    return CaseModel(spec, params, anatomy, acquisition, lesions, grid, scanner, lookup)


# A tilted slice's functions of height are read from tables of this many values along v
# (steps of about 0.0002 in height at 15 degrees): one gather per pixel instead of evaluating
# each function on the whole image (speed).
HEIGHT_SAMPLES = 4096


@dataclass(frozen=True)
class HeightIndex:
    """Each pixel's place among HEIGHT_SAMPLES values of v spanning the image (tilted cases)."""

    v_samples: np.ndarray  # float32
    index: np.ndarray  # per pixel (intp: `take` converts any other type first)


def height_index(grid: CaseGrid) -> HeightIndex:
    v_low, v_high = float(grid.v.min()), float(grid.v.max())
    step = np.float32((v_high - v_low) / (HEIGHT_SAMPLES - 1))
    index = np.rint((grid.v - np.float32(v_low)) / step)
    return HeightIndex(
        v_samples=np.float32(v_low) + step * np.arange(HEIGHT_SAMPLES, dtype=np.float32),
        index=np.minimum(index, HEIGHT_SAMPLES - 1).astype(np.intp),
    )


class SliceHeights:
    """The height z of each pixel of a slice: the slice's own height where the case is not
    tilted; tilted out of plane, it grows along the head's front-back axis (`scanner`):
    z + tilt_slope * v. `at` evaluates a function of the height once where it is the same
    all over the slice, else per pixel from a table along v (`HeightIndex`)."""

    def __init__(self, case: CaseModel, index: int) -> None:
        self.z = float(case.anatomy.heights[index])
        self.slope = case.scanner.tilt_slope
        self._v = case.grid.v
        self._lookup = case.height_index
        self.tilted = self._lookup is not None
        if self._lookup is not None:
            self._samples = np.float32(self.z) + np.float32(self.slope) * self._lookup.v_samples

    def at(self, function: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """`function` of the height: one value, or one per pixel."""
        if self._lookup is None:
            return function(np.float32(self.z))
        table = function(self._samples)
        return table[0] if table.min() == table.max() else table.take(self._lookup.index)

    @functools.cached_property
    def field(self) -> np.ndarray:
        return np.float32(self.z) + np.float32(self.slope) * self._v

    def in_box(self, box: tuple[slice, slice]) -> np.ndarray | float:
        return self.field[box] if self.tilted else self.z

    def at_v(self, v: float) -> float:
        """The height where the front-back coordinate is v (head units)."""
        return self.z + self.slope * v

    def span(self, v_low: float, v_high: float) -> tuple[float, float]:
        """The lowest and highest height between v_low and v_high."""
        ends = self.at_v(v_low), self.at_v(v_high)
        return min(ends), max(ends)

    def below(self, z_limit: float, v_low: float, v_high: float) -> tuple[float, float] | None:
        """The part of v_low..v_high where the height is below z_limit (None: nowhere)."""
        if self.slope == 0.0:
            return (v_low, v_high) if self.z < z_limit else None
        crossing = (z_limit - self.z) / self.slope
        if self.slope > 0.0:
            v_high = min(v_high, crossing)
        else:
            v_low = max(v_low, crossing)
        return (v_low, v_high) if v_low < v_high else None

    @functools.cached_property
    def base(self) -> np.ndarray:
        """1 at the skull base, 0 higher up."""
        return self.at(lambda z: smoothstep(BASE_TOP, 0.02, z))


def _in_box(values: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """A per-pixel field's window, or the one value the field holds."""
    return values[box] if np.ndim(values) == 2 else values


@dataclass(frozen=True)
class _SkullBase:
    bone: np.ndarray
    air: np.ndarray
    fat: np.ndarray
    eyes: np.ndarray  # vitreous
    lens: np.ndarray
    muscle: np.ndarray  # extraocular muscles
    csf: np.ndarray
    posterior_fossa: np.ndarray
    brainstem: np.ndarray
    folia: np.ndarray  # the fine sulci of the cerebellum
    beam_hardening_hu: np.ndarray  # drop of parenchyma in the band between the petrous bones


def _paint_ellipsoids(
    target: np.ndarray,
    grid: CaseGrid,
    anatomy: Anatomy,
    shapes: Sequence[Ellipsoid],
    heights: SliceHeights,
) -> None:
    """Set `target` where any of the 3-D `shapes` cuts the slice."""
    for shape in shapes:
        centre, axis = shape.centre[2], shape.axes[2]
        reach = max(shape.axes[:2])
        low, high = heights.span(shape.centre[1] - reach, shape.centre[1] + reach)
        if centre - axis >= high or centre + axis <= low:
            continue
        box = pixel_box(anatomy, np.array([shape.centre[:2]]), max(shape.axes[:2]), target.shape[0])
        if box is not None:
            z_term = ((heights.in_box(box) - centre) / np.float32(axis)) ** 2
            target[box] |= ellipse_field(grid.u[box], grid.v[box], shape) < 1.0 - z_term


def _segment_distance(
    u: np.ndarray, v: np.ndarray, start: Sequence[float], end: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each point to the segment start-end, and its position along it (0..1)."""
    du, dv = np.float32(end[0] - start[0]), np.float32(end[1] - start[1])
    u, v = u - np.float32(start[0]), v - np.float32(start[1])
    along = np.clip((u * du + v * dv) / (du * du + dv * dv), 0.0, 1.0)
    return np.hypot(u - along * du, v - along * dv), along


def _paint_tubes(
    target: np.ndarray,
    grid: CaseGrid,
    anatomy: Anatomy,
    tubes: Sequence[Tube],
    heights: SliceHeights,
) -> None:
    """Set `target` where any tube (a chain of conical segments in 3-D) cuts the slice."""
    for tube in tubes:
        for start, end in zip(tube.points[:-1], tube.points[1:], strict=True):
            reach_z = max(start[4], end[4])
            lowest, highest = min(start[2], end[2]) - reach_z, max(start[2], end[2]) + reach_z
            reach_v = max(start[3], end[3])
            low, high = heights.span(
                min(start[1], end[1]) - reach_v, max(start[1], end[1]) + reach_v
            )
            if high <= lowest or low >= highest:
                continue
            box = pixel_box(
                anatomy, np.stack([start[:2], end[:2]]), max(start[3], end[3]), target.shape[0]
            )
            if box is None:
                continue
            distance, along = _segment_distance(grid.u[box], grid.v[box], start, end)
            radius = start[3] + (end[3] - start[3]) * along
            height = start[2] + (end[2] - start[2]) * along
            vertical = start[4] + (end[4] - start[4]) * along
            z = heights.in_box(box)
            target[box] |= (distance / radius) ** 2 + ((z - height) / vertical) ** 2 < 1.0


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
    scale = anatomy.px_scale
    heights = SliceHeights(case, index)
    base = heights.base
    hu = np.full((size, size), AIR_HU, dtype=np.float32)
    tissue = np.full((size, size), Tissue.AIR, dtype=np.uint8)

    head = _scalp_and_skull(hu, tissue, case, heights)
    cranium = head.head & (head.inner_depth >= 0.0)
    brain_space = cranium
    tentorium_z = _tentorium_height(case, heights)
    skull_base = None
    if np.max(base) > 0.0 or tentorium_z < TENTORIUM_HEIGHTS[1]:
        skull_base = _skull_base(grid, anatomy, heights, tentorium_z)
        _set(hu, tissue, cranium & skull_base.bone, params.skull_hu, Tissue.BONE)
        _set(hu, tissue, head.head & skull_base.air, AIR_HU, Tissue.AIR)
        _set(hu, tissue, head.head & skull_base.fat, FAT_HU, Tissue.FAT)
        _set(hu, tissue, head.head & skull_base.eyes, VITREOUS_HU, Tissue.SOFT_TISSUE)
        _set(hu, tissue, head.head & skull_base.lens, LENS_HU, Tissue.SOFT_TISSUE)
        _set(hu, tissue, head.head & skull_base.muscle, MUSCLE_HU, Tissue.SOFT_TISSUE)
        brain_space &= ~(
            skull_base.bone
            | skull_base.air
            | skull_base.fat
            | skull_base.eyes
            | skull_base.lens
            | skull_base.muscle
        )
    _ears(hu, tissue, case, head, heights)

    # Brain: surface, sulci, fissures, cisterns and ventricles.
    gap_px = anatomy.gap_px * (1.0 + 1.5 * heights.at(lambda z: smoothstep(0.6, 0.95, z)))
    brain = brain_space & (head.inner_depth >= gap_px)
    surface_depth = head.inner_depth - gap_px.astype(np.float32)
    open_sulci, sulcal_lines = _sulci(anatomy, grid, index, surface_depth, scale)
    if skull_base is not None:  # the cerebellum is folded into folia, not the cerebrum's sulci
        open_sulci &= ~skull_base.posterior_fossa
        sulcal_lines &= ~skull_base.posterior_fossa
    fissure, falx = _interhemispheric(anatomy, grid, heights, brain, scale)
    falx |= _tentorium(grid, anatomy, tentorium_z, scale) & brain
    cisterns = np.zeros_like(brain)
    _paint_tubes(cisterns, grid, anatomy, anatomy.fissures, heights)
    if skull_base is not None:
        cisterns |= skull_base.csf | _basal_cisterns(grid, anatomy, heights)
    ventricles = np.zeros_like(brain)
    _paint_tubes(ventricles, grid, anatomy, anatomy.ventricles, heights)
    _paint_ellipsoids(ventricles, grid, anatomy, anatomy.small_ventricles, heights)
    ventricles &= brain & (surface_depth > 3.0 * scale)
    fossa = None if skull_base is None else skull_base.posterior_fossa
    infarct = infarct_region(case.lesions, anatomy, grid, index, brain, head.rho, fossa)
    open_sulci &= ~infarct  # swelling effaces the sulci of an infarct
    outer_csf = (brain_space & ~brain) | (brain & (open_sulci | fissure | cisterns))

    grey = _grey_share(case, heights, brain & ~(outer_csf | sulcal_lines | falx), skull_base)
    solid = brain & ~(outer_csf | ventricles | falx)
    parenchyma_hu = (
        np.float32(anatomy.white_hu)
        + np.float32(anatomy.grey_hu - anatomy.white_hu) * grey[solid]
        + np.float32(params.texture_hu) * _texture(case, index)[solid]
    )
    if skull_base is not None:  # beam hardening, clipped where parenchyma is clipped too
        parenchyma_hu -= skull_base.beam_hardening_hu[solid]
    hu[solid] = np.clip(parenchyma_hu, *params.parenchyma_hu)
    tissue[solid] = np.where(grey[solid] >= 0.5, Tissue.GREY_MATTER, Tissue.WHITE_MATTER)
    _set(hu, tissue, outer_csf | ventricles, anatomy.csf_hu, Tissue.CSF)
    _set(hu, tissue, falx, params.falx_hu, Tissue.FALX)
    _lookalikes(hu, tissue, case, heights, brain, ventricles, falx, head.inner_depth)
    if grid.table is not None:
        _set(hu, tissue, grid.table & ~head.head, TABLE_HU, Tissue.TABLE)
    _head_holder(hu, tissue, case)

    spaces = Spaces(
        brain_space,
        brain,
        head.inner_depth,
        head.rho,
        outer_csf & brain_space,
        ventricles,
        grey,
        fossa,
    )
    add_context(hu, tissue, case.lesions, anatomy, grid, params, index, spaces, head.head)
    baseline_hu = hu.copy()
    lesion = add_lesions(hu, tissue, case.lesions, anatomy, grid, params, index, spaces)
    # Streaks and the inner table's halo are the scanner's, like blur and noise: over
    # everything in the head, lesions included, and not part of the tissue model (clean_hu,
    # baseline_hu).
    streaks = _streaks(case, base, head.head)
    scanned = hu.copy() if streaks is None else streaks + hu  # `hu` stays the tissue model
    _add_inner_table_halo(scanned, case, head, tissue)
    acquisition = case.acquisition
    sigma = acquisition.blur_sigma_px * size / REFERENCE_SIZE  # the scanner's, not the head's
    blurred = (
        cv2.GaussianBlur(scanned, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        if sigma
        else scanned
    )
    return PhantomSlice(
        blurred + _noise(case, index),
        hu,
        baseline_hu,
        tissue,
        lesion,
        acquisition.window_level_hu,
        acquisition.window_width_hu,
    )


def _ears(
    hu: np.ndarray, tissue: np.ndarray, case: CaseModel, head: _Head, heights: SliceHeights
) -> None:
    """The auricles outside the skin (soft tissue over cartilage) and the ear canals' air
    through the scalp and the tympanic bone, at the case's ear level."""
    scanner = case.scanner
    auricles = np.zeros_like(head.head)
    _paint_tubes(auricles, case.grid, case.anatomy, scanner.ears, heights)
    _set(hu, tissue, auricles & ~head.head, SKIN_HU, Tissue.SOFT_TISSUE)
    canals = np.zeros_like(head.head)
    _paint_tubes(canals, case.grid, case.anatomy, scanner.ear_canals, heights)
    _set(hu, tissue, canals & (head.inner_depth < 0.0), AIR_HU, Tissue.AIR)


def _head_holder(hu: np.ndarray, tissue: np.ndarray, case: CaseModel) -> None:
    """The head holder, where the case has one: a rigid plastic cradle arc round the centre
    of the head below it, on a foam pad (fat density) that touches the back of the head at its
    widest level; drawn on air only (the head, ears and table stay)."""
    holder = case.scanner.holder
    if holder is None:
        return
    anatomy, grid = case.anatomy, case.grid
    size = case.params.image_size
    centre_x, centre_y = anatomy.centre
    # The outline's radius depends on the direction only: read it straight below the centre.
    row = min(size - 1, max(0, int(centre_y + 0.5 * anatomy.half_width_px)))
    column = min(size - 1, max(0, round(centre_x)))
    back_px = float(grid.outline_radius[row, column]) * anatomy.half_width_px
    pad_px, thickness_px = holder.pad_px * anatomy.px_scale, holder.thickness_px * anatomy.px_scale
    inner_px = back_px + pad_px
    rows = slice(
        min(size, max(0, int(centre_y))), min(size, int(centre_y + inner_px + thickness_px) + 2)
    )
    if rows.start >= rows.stop:
        return
    below_px = (np.arange(rows.start, rows.stop, dtype=np.float32) - np.float32(centre_y))[:, None]
    distance = grid.radius_px[rows]
    free = (below_px > distance * np.float32(math.cos(holder.half_span))) & (
        tissue[rows] == Tissue.AIR
    )
    cradle = free & (distance >= inner_px) & (distance < inner_px + thickness_px)
    pad = free & (distance >= back_px) & (distance < inner_px)
    _set(hu[rows], tissue[rows], cradle, holder.hu, Tissue.TABLE)
    _set(hu[rows], tissue[rows], pad, FAT_HU, Tissue.FAT)


STREAK_FADE = 0.25  # head units over which a streak fades past the bones it joins


def _streaks(case: CaseModel, base: np.ndarray, head: np.ndarray) -> np.ndarray | None:
    """The case's streaks (`scanner.Streak`) in HU inside the head, at full strength on the
    lowest slices and fading with the skull base; None where the slice has none."""
    streaks = case.scanner.streaks
    if not streaks or np.max(base) <= 0.0:
        return None
    anatomy, grid = case.anatomy, case.grid
    size = case.params.image_size
    field = np.zeros((size, size), dtype=np.float32)
    for streak in streaks:
        ends = np.array([streak.start, streak.end])
        box = pixel_box(anatomy, ends, 2.0 * STREAK_FADE, size)
        if box is None:
            continue
        (start_u, start_v), (end_u, end_v) = streak.start, streak.end
        length = math.hypot(end_u - start_u, end_v - start_v)
        du, dv = np.float32((end_u - start_u) / length), np.float32((end_v - start_v) / length)
        u, v = grid.u[box] - np.float32(start_u), grid.v[box] - np.float32(start_v)
        along = u * du + v * dv
        across_px = (u * dv - v * du) * np.float32(anatomy.half_width_px)
        past = np.maximum(np.maximum(-along, along - np.float32(length)), 0.0)
        width_px = np.float32(streak.width_px * anatomy.px_scale)
        field[box] += (
            np.float32(streak.hu)
            * _in_box(base, box)
            * exp_f32(-((across_px / width_px) ** 2) - (past / np.float32(STREAK_FADE)) ** 2)
        )
    field[~head] = 0.0
    return field


def _add_inner_table_halo(
    scanned: np.ndarray, case: CaseModel, head: _Head, tissue: np.ndarray
) -> None:
    """Add the case's halo (`Scanner.inner_table_halo_hu`) to `scanned` inside the inner
    table: everything in the cranial cavity but bone and air cells, fading exponentially with
    the depth below it. Unlabelled and drawn the same for both classes: a bright rim along the
    bone that is not an extra-axial bleed."""
    scanner = case.scanner
    if scanner.inner_table_halo_hu <= 0.0:
        return
    reach_px = scanner.inner_table_halo_mm / case.params.pixel_spacing_mm * case.anatomy.px_scale
    # Below the inner table is inside the head (inner_depth is negative outside it).
    inside = (head.inner_depth >= 0.0) & ~tissue_in(tissue, (Tissue.BONE, Tissue.AIR))
    depth = head.inner_depth[inside]
    halo = np.float32(scanner.inner_table_halo_hu) * exp_f32(-depth / np.float32(reach_px))
    scanned[inside] += halo


def _lookalikes(
    hu: np.ndarray,
    tissue: np.ndarray,
    case: CaseModel,
    heights: SliceHeights,
    brain: np.ndarray,
    ventricles: np.ndarray,
    falx: np.ndarray,
    inner_depth: np.ndarray,
) -> None:
    """Paint the case's unlabelled look-alikes (`anatomy.LookAlikes`) into the brain."""
    anatomy, grid, params = case.anatomy, case.grid, case.params
    found, scale = anatomy.lookalikes, anatomy.px_scale
    if found.periventricular_drop_hu > 0.0 and ventricles.any():
        reach = max(1, round(found.periventricular_px * scale))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
        near = cv2.dilate(ventricles.astype(np.uint8), kernel).astype(bool)
        caps = near & (tissue == Tissue.WHITE_MATTER)
        lowered = hu[caps] - np.float32(found.periventricular_drop_hu)
        hu[caps] = np.maximum(lowered, np.float32(params.parenchyma_hu[0]))
    if found.old_infarcts:
        old = np.zeros_like(brain)
        _paint_ellipsoids(old, grid, anatomy, found.old_infarcts, heights)
        old &= tissue_in(tissue, PARENCHYMA)
        _set(hu, tissue, old, anatomy.csf_hu, Tissue.CSF)
    # Dural sinuses, computed on the thin band under the inner table only (speed): the
    # superior sagittal one a triangle at the midline, front and back; the transverse ones
    # along the back of the skull at the skull base, the case's depth deep.
    depth_px = np.float32(7.0 * scale)  # the sagittal triangle's height
    transverse_px = np.float32(found.transverse_sinus_px * scale)
    band = np.flatnonzero(brain & (inner_depth < max(depth_px, transverse_px)))
    u, v, depth = grid.u.take(band), grid.v.take(band), inner_depth.take(band)
    bend_linear, bend_square = anatomy.falx_bend
    midline = np.float32(bend_linear) * v + np.float32(bend_square) * v * v
    offset_px = np.abs(u - midline) * np.float32(anatomy.half_width_px)
    sinus = (np.abs(v) > 0.5 * anatomy.elongation) & (
        offset_px < np.float32(4.0 * scale) * (1.0 - depth / depth_px)
    )
    z = heights.field.take(band) if heights.tilted else np.float32(heights.z)
    sinus |= (z < 0.22) & (depth < transverse_px) & (v > 0.55 * anatomy.elongation)
    sinus &= ~((z >= 0.22) & (z < 0.3)) | (v < 0.0)  # the sagittal sinus begins above the torcula
    flat(hu)[band[sinus]] = found.sinus_hu
    flat(tissue)[band[sinus]] = Tissue.VESSEL
    arteries = np.zeros_like(brain)
    _paint_tubes(arteries, grid, anatomy, found.arteries, heights)
    _set(hu, tissue, arteries & brain & ~ventricles, found.artery_hu, Tissue.VESSEL)
    calcified = np.zeros_like(brain)
    _paint_ellipsoids(calcified, grid, anatomy, found.calcifications, heights)
    if found.falx_calcified is not None:
        low, high = found.falx_calcified
        calcified |= falx & (grid.v > low) & (grid.v < high)
    _set(hu, tissue, calcified & brain, found.calcification_hu, Tissue.BONE)


def _scalp_and_skull(
    hu: np.ndarray, tissue: np.ndarray, case: CaseModel, heights: SliceHeights
) -> _Head:
    """Paint skin, fat, temporal muscles and skull by depth below the skin."""
    anatomy, grid = case.anatomy, case.grid
    scale = anatomy.px_scale
    rho = grid.radius / (grid.outline_radius * np.float32(heights.at(head_scale)))
    head = rho < 1.0
    # The 5x5 chamfer distance: within 0.6 px of the exact one over the 30 px of scalp and
    # skull, at 2.0 against 4.8 ms per 512 px slice (measured 2026-12-05).
    depth = cv2.distanceTransform(head.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    fat_start = anatomy.skin_px
    muscle_start = fat_start + anatomy.fat_px  # the galea, then the temporal muscles
    skull_start = (
        muscle_start
        + anatomy.galea_px
        + 9.0 * scale * heights.at(lambda z: smoothstep(0.7, 0.45, z)) * grid.temporal_muscle
    )
    # Thicker at the skull base and where the top of the skull is cut obliquely.
    skull_px = anatomy.skull_px * grid.skull_profile
    skull_px += scale * (7.0 * heights.base + 5.0 * heights.at(lambda z: smoothstep(0.78, 0.95, z)))
    _set(hu, tissue, head, SKIN_HU, Tissue.SOFT_TISSUE)
    _set(hu, tissue, head & (depth >= fat_start), FAT_HU, Tissue.FAT)
    muscle = head & (depth >= muscle_start) & (depth < skull_start)
    _set(hu, tissue, muscle, MUSCLE_HU, Tissue.SOFT_TISSUE)
    _set(hu, tissue, head & (depth >= skull_start), case.params.skull_hu, Tissue.BONE)
    return _Head(head, rho, depth - (skull_start + skull_px))


def _grey_share(
    case: CaseModel, heights: SliceHeights, cortex_source: np.ndarray, skull_base: _SkullBase | None
) -> np.ndarray:
    """Share of grey matter per pixel (0 white .. 1 grey): a cortex ribbon of the case's
    thickness along the brain surface, sulci and fissures (`cortex_source` is zero there),
    the deep nuclei, and the posterior fossa: cerebellum between grey and white, striped by
    its folia at white-matter density, and a white-matter brainstem."""
    anatomy = case.anatomy
    scale = anatomy.px_scale
    depth = cv2.distanceTransform(
        cortex_source.astype(np.uint8),
        cv2.DIST_L2,
        cv2.DIST_MASK_5,  # as in _scalp_and_skull
    )
    grey = np.clip((np.float32(anatomy.cortex_px) - depth) / np.float32(1.5 * scale) + 0.5, 0, 1)
    nuclei = np.zeros(grey.shape, dtype=bool)
    _paint_ellipsoids(nuclei, case.grid, anatomy, anatomy.nuclei, heights)
    grey[nuclei] = np.maximum(grey[nuclei], 0.8)
    if skull_base is not None:
        fossa = skull_base.posterior_fossa
        grey[fossa] = 0.55 + 0.35 * grey[fossa]
        grey[skull_base.folia] = 0.1
        grey[skull_base.brainstem] = 0.2
    return grey


def _texture(case: CaseModel, index: int) -> np.ndarray:
    """Parenchyma texture (std about 1.2): smooth blotches plus a finer mottle."""
    size = case.params.image_size
    blotches = cv2.resize(case.anatomy.texture[index], (size, size), interpolation=cv2.INTER_CUBIC)
    mottle = _slice_rng(case, 2, index).standard_normal((64, 64), dtype=np.float32)
    return blotches + 0.7 * cv2.resize(mottle, (size, size), interpolation=cv2.INTER_CUBIC)


def _slice_rng(case: CaseModel, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([*case.spec.entropy, stream, index]))


def _noise(case: CaseModel, index: int) -> np.ndarray:
    """Filtered back-projection noise (`anatomy.sample_acquisition`) with the case's standard
    deviation exactly: a random spectrum shaped by the case's filter on a half-size grid,
    transformed back and enlarged to the image (a quarter of the cost of a full-size FFT)."""
    size = case.params.image_size
    shaping = case.acquisition.noise_filter
    coefficients = _slice_rng(case, 1, index).standard_normal((2, *shaping.shape))
    spectrum = (coefficients[0] + 1j * coefficients[1]) * shaping
    half = np.fft.irfft2(spectrum, s=(shaping.shape[0], shaping.shape[0])).astype(np.float32)
    field = cv2.resize(half, (size, size), interpolation=cv2.INTER_LINEAR)
    field -= np.float32(field.mean())
    return field * np.float32(case.acquisition.noise_hu / max(float(field.std()), 1e-6))


def _sulci(
    anatomy: Anatomy, grid: CaseGrid, index: int, surface_depth: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sulci: clefts from the brain surface inwards, spaced around the cortex and bent by a
    smooth random field. Returns the open part (visible CSF) and the full-depth centre lines
    (lined by cortex)."""
    count = anatomy.sulcus_count
    z = float(anatomy.heights[index])
    size = grid.u.shape[0]
    mean_depth = (16.0 + 14.0 * z) * scale
    # Only the band a sulcus can reach is computed (a third or less of the image).
    reach = float(anatomy.sulcus_depth.max()) * mean_depth
    # Flat indices (`flat`): a fifth of the cost of indexing by rows and columns.
    band = np.flatnonzero((surface_depth >= 0.0) & (surface_depth < reach))
    folding = cv2.resize(anatomy.folding[index], (size, size), interpolation=cv2.INTER_CUBIC)
    phase = grid.sulcus_phase.take(band) + np.float32(2.2) * folding.take(band)
    for (_, amplitude, _, drift), sine, cosine in zip(
        anatomy.sulcus_meander, grid.meander_sin, grid.meander_cos, strict=True
    ):
        # amplitude * sin(order * angle + offset + drift * z), with the angle part cached.
        shift = drift * z
        phase += np.float32(amplitude * math.cos(shift)) * sine.take(band)
        phase += np.float32(amplitude * math.sin(shift)) * cosine.take(band)
    below = surface_depth.take(band)
    phase += below * np.float32(0.08 / scale)  # clefts bend as they go deeper
    nearest = np.floor(phase * np.float32(1.0 / (2 * np.pi)) + np.float32(0.5))
    radius_px = grid.radius_px.take(band)
    offset_px = np.abs(phase - nearest * np.float32(2 * np.pi)) * radius_px / np.float32(count)
    which = nearest.astype(np.int64) % count
    depth = anatomy.sulcus_depth.astype(np.float32)[which] * np.float32(mean_depth)
    inside = below < depth
    open_depth = depth * anatomy.sulcus_opening.astype(np.float32)[which]
    within = np.clip(1.0 - below / np.maximum(open_depth, 1e-3), 0.0, 1.0)
    half_width = anatomy.sulcus_width_px.astype(np.float32)[which] * (0.4 + 0.6 * np.sqrt(within))
    open_part = np.zeros((size, size), dtype=bool)
    lines = np.zeros((size, size), dtype=bool)
    flat(open_part)[band] = inside & (below < open_depth) & (offset_px < half_width)
    flat(lines)[band] = inside & (offset_px < 0.75 * scale)
    return open_part, lines


def _interhemispheric(
    anatomy: Anatomy, grid: CaseGrid, heights: SliceHeights, brain: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Interhemispheric fissure (CSF) and the falx in it; the corpus callosum interrupts
    them between the ventricles, above which they run the whole length."""
    offset_px = grid.falx_offset_px
    half_gap = 0.45 * anatomy.elongation * heights.at(lambda z: smoothstep(0.7, 0.62, z))
    back = heights.at(lambda z: z > 0.2)
    along = brain & ((grid.v < -half_gap) | ((grid.v > half_gap) & back))
    half_width = (1.3 + 1.0 * heights.at(lambda z: smoothstep(0.5, 0.95, z))) * scale
    falx = along & (offset_px < 0.8 * scale) & heights.at(lambda z: z > 0.12)
    fissure = along & (offset_px < half_width) & ~falx
    return fissure, falx


# The heights over which the tentorium rises from above the petrous ridges to the incisura;
# below its top the posterior fossa (cerebellum, vermis, brainstem) lies under it.
TENTORIUM_HEIGHTS = (0.1, 0.3)


def _tentorium_height(case: CaseModel, heights: SliceHeights) -> float:
    """The slice's height at the tentorium's middle: the tentorium and the posterior fossa
    under it are drawn at this height (not tilted along their own length)."""
    return heights.at_v(TENTORIUM_MIDDLE_V * case.anatomy.elongation)


def _tentorium_rise(z: float) -> float:
    """0 at TENTORIUM_HEIGHTS[0] (and below) .. 1 at its top."""
    low, high = TENTORIUM_HEIGHTS
    return min(max((z - low) / (high - low), 0.0), 1.0)


def _tentorium_points(rise: float) -> tuple[tuple[float, float], ...]:
    """The tentorium's line on one side at `rise` (`_tentorium_rise`), as (u, v over the
    elongation) points: from beside the midbrain back along the cerebellum to the
    straight sinus at the midline. Low down it follows the back of the skull round the
    cerebellar hemispheres; higher up it closes in on the vermis."""
    return (
        (0.45 - 0.3 * rise, 0.1 + 0.3 * rise),
        (0.75 - 0.55 * rise, 0.6 + 0.05 * rise),
        (0.0, 0.82),
    )


def _tentorium(grid: CaseGrid, anatomy: Anatomy, z: float, scale: float) -> np.ndarray:
    """The tentorium above the petrous ridges, as dense as the falx (`_tentorium_points`)."""
    tentorium = np.zeros(grid.u.shape, dtype=bool)
    low, high = TENTORIUM_HEIGHTS
    if not low < z < high:
        return tentorium
    rise = _tentorium_rise(z)
    elongation = anatomy.elongation
    half_width = np.float32(0.8 * scale / anatomy.half_width_px)  # the falx's, in head units
    points = _tentorium_points(rise)
    for side in (1, -1):
        line = [(side * u, v * elongation) for u, v in points]
        for start, end in itertools.pairwise(line):
            box = pixel_box(anatomy, np.array([start, end]), 0.0, tentorium.shape[0])
            if box is not None:
                distance, _ = _segment_distance(grid.u[box], grid.v[box], start, end)
                tentorium[box] |= distance < half_width
    return tentorium


def _basal_cisterns(grid: CaseGrid, anatomy: Anatomy, heights: SliceHeights) -> np.ndarray:
    """Suprasellar, ambient and quadrigeminal cisterns around the midbrain."""
    weight = heights.at(lambda z: smoothstep(0.09, 0.15, z)) * heights.at(
        lambda z: smoothstep(0.25, 0.17, z)
    )  # above the pons
    cisterns = np.zeros(grid.u.shape, dtype=bool)
    elongation = anatomy.elongation
    corners = _box_corners((-0.2, 0.2), (-0.3 * elongation, 0.3 * elongation))
    box = pixel_box(anatomy, corners, 0.0, cisterns.shape[0])
    if np.max(weight) <= 0.0 or box is None:
        return cisterns
    u, v, weight = grid.u[box], grid.v[box], _in_box(weight, box)
    midbrain = np.hypot(u / 0.12, (v - 0.05 * elongation) / 0.11)
    ambient = (midbrain > 1.0) & (midbrain < 1.0 + 0.3 * weight) & (v > 0.0)
    suprasellar = np.hypot(u / 0.13, (v + 0.14 * elongation) / 0.075) < weight
    quadrigeminal = np.hypot(u / 0.07, (v - 0.2 * elongation) / 0.045) < weight
    cisterns[box] = ambient | suprasellar | quadrigeminal
    return cisterns


def _paint_air_cells(
    air: np.ndarray,
    region: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    warp: tuple[np.ndarray, np.ndarray],
    cell: float,
) -> None:
    """Set `air` in `region` where it holds air cells about `cell` head units wide, between
    thin bony septa: septa along three directions 60 degrees apart (triangular cells), bent
    by the case's smooth warp fields so the cells are irregular."""
    rows, columns = np.nonzero(region)
    bent_u = u[rows, columns] + np.float32(0.9 * cell) * warp[0][rows, columns]
    bent_v = v[rows, columns] + np.float32(0.9 * cell) * warp[1][rows, columns]
    cells = np.ones(rows.shape, dtype=bool)
    for direction in (0.0, math.pi / 3, 2 * math.pi / 3):
        along = bent_u * np.float32(math.cos(direction) / cell)
        along += bent_v * np.float32(math.sin(direction) / cell)
        cells &= along - np.floor(along) > np.float32(0.16)
    air[rows[cells], columns[cells]] = True


def _box_corners(u_range: tuple[float, float], v_range: tuple[float, float]) -> np.ndarray:
    """The four corners of a head-unit rectangle, for `pixel_box` (rotation included)."""
    return np.array([(u, v) for u in u_range for v in v_range])


def _skull_base(
    grid: CaseGrid, anatomy: Anatomy, heights: SliceHeights, tentorium_z: float
) -> _SkullBase:
    """Orbits, sinuses, petrous bones with mastoid air cells, and the posterior fossa
    (brainstem, fourth ventricle, cerebellar folia) of the lowest slices, the fossa reaching
    up under the tentorium (its middle at `tentorium_z`); what lies between them (the
    temporal lobes in the middle fossae, the cerebellar hemispheres) is brain.
    Each part is computed in the pixel box it can reach, the air cells, folia and beam
    hardening on their regions' pixels only (speed)."""
    size = grid.u.shape[0]
    shape = anatomy.skull_base
    warp = (
        cv2.resize(shape.cell_warp[0], (size, size), interpolation=cv2.INTER_LINEAR),
        cv2.resize(shape.cell_warp[1], (size, size), interpolation=cv2.INTER_LINEAR),
    )
    parts = _SkullBase(
        *(np.zeros((size, size), dtype=bool) for _ in range(10)),
        beam_hardening_hu=np.zeros((size, size), dtype=np.float32),
    )
    elongation = anatomy.elongation
    # Below 0.35 only thin slivers of these bones would be left.
    base = np.where(heights.base >= 0.35, heights.base, np.float32(0.0))
    # Each part in the v range a tilted slice cuts it in.
    reach = heights.below(BASE_TOP, -0.3 * elongation, 1.1 * elongation)
    if np.max(base) > 0.0 and reach is not None:
        box = pixel_box(anatomy, _box_corners((-1.1, 1.1), reach), 0.0, size)
        if box is not None:
            _posterior_skull_base(grid, anatomy, _in_box(base, box), box, warp, parts)
    face = heights.at(lambda z: smoothstep(0.12, 0.04, z))
    reach = heights.below(0.12, -1.1 * elongation, -0.25 * elongation)
    if np.max(face) > 0.0 and reach is not None:
        box = pixel_box(anatomy, _box_corners((-0.8, 0.8), reach), 0.0, size)
        if box is not None:
            _face(grid, anatomy, _in_box(face, box), box, warp, parts)
    if tentorium_z < TENTORIUM_HEIGHTS[1]:
        _under_tentorium(grid, anatomy, tentorium_z, parts)
    parts.bone[parts.air] = False
    fossa = parts.posterior_fossa
    fossa &= ~(parts.bone | parts.air)
    for inside in (parts.csf, parts.brainstem):
        inside &= fossa
    _folia(grid, anatomy, fossa & ~parts.brainstem, warp[1], parts.folia)
    parts.beam_hardening_hu[~fossa] = 0.0
    return parts


# The pons behind the clivus (u and v half-axes in head units, v over the elongation, and its
# centre's v): white matter in the posterior fossa up to where the midbrain takes over.
PONS_AXES = (0.15, 0.12)
PONS_CENTRE_V = 0.15


def _pons_radius(u: np.ndarray, v: np.ndarray, elongation: float) -> np.ndarray:
    """Each point's radius relative to the pons' outline (PONS_AXES; below 1 inside)."""
    return np.hypot(u / PONS_AXES[0], (v - PONS_CENTRE_V * elongation) / PONS_AXES[1])


def _under_tentorium(grid: CaseGrid, anatomy: Anatomy, z: float, parts: _SkullBase) -> None:
    """The posterior fossa above the petrous ridges, added to `parts.posterior_fossa`: the
    cerebellum and vermis between the two sides' tentorium lines at height z
    (`_tentorium_points`), from the line joining their front ends back to the straight sinus;
    and the pons in front of it up to PONS_TOP."""
    elongation = anatomy.elongation
    points = _tentorium_points(_tentorium_rise(z))
    v_knots = np.array([v * elongation for _, v in points], dtype=np.float32)
    u_knots = np.array([u for u, _ in points], dtype=np.float32)
    front = PONS_CENTRE_V * elongation - PONS_AXES[1]
    corners = _box_corners((-float(u_knots.max()), float(u_knots.max())), (front, v_knots[-1]))
    box = pixel_box(anatomy, corners, 0.0, grid.u.shape[0])
    if box is None:
        return
    u, v = grid.u[box], grid.v[box]
    # A half-width of 0 outside the knots: nothing in front of the first or behind the last.
    half_width = np.interp(v, v_knots, u_knots, left=0.0, right=0.0).astype(np.float32)
    parts.posterior_fossa[box] |= np.abs(u) < half_width
    if z < PONS_TOP:
        pons = _pons_radius(u, v, elongation) < 0.8  # its size above the ridges
        parts.posterior_fossa[box] |= pons
        parts.brainstem[box] |= pons


def _folia(
    grid: CaseGrid, anatomy: Anatomy, cerebellum: np.ndarray, warp_v: np.ndarray, folia: np.ndarray
) -> None:
    """Set `folia` where the fine sulci of the cerebellum lie: curving around each
    hemisphere's root beside the fourth ventricle (meeting at an angle over the vermis),
    bent by the case's warp field."""
    shape = anatomy.skull_base
    pixels = np.flatnonzero(cerebellum)
    fu, fv = grid.u.take(pixels), grid.v.take(pixels)
    around = np.hypot(np.abs(fu) - np.float32(0.15), fv - np.float32(0.3 * anatomy.elongation))
    around += np.float32(shape.folia_period) * warp_v.take(pixels)
    phase = around * np.float32(2 * np.pi / shape.folia_period) + np.float32(shape.folia_phase)
    flat(folia)[pixels] = cos_f32(phase) > np.float32(0.75)


def _posterior_skull_base(
    grid: CaseGrid,
    anatomy: Anatomy,
    base: np.ndarray,
    box: tuple[slice, slice],
    warp: tuple[np.ndarray, np.ndarray],
    parts: _SkullBase,
) -> None:
    """Petrous ridges, mastoids, clivus and the posterior fossa, painted into `parts[box]`;
    `base` (one value, or one per pixel of the box on a tilted slice) is 0 where they are
    absent and grows to 1 at the lowest level."""
    u, v = grid.u[box], grid.v[box]
    shape = anatomy.skull_base
    elongation = anatomy.elongation
    bone, air = parts.bone[box], parts.air[box]
    # Petrous ridges, from the clivus back and out to the mastoids: a bony ridge that widens
    # laterally, ending in the mastoid behind the ear; both pneumatised laterally.
    start_v = -0.04 * elongation
    turn = math.cos(shape.petrous_angle), math.sin(shape.petrous_angle)
    reach_u, reach_v = 0.68, 0.32 * elongation
    end = (
        0.12 + reach_u * turn[0] - reach_v * turn[1],
        start_v + reach_u * turn[1] + reach_v * turn[0],
    )
    pneumatised = np.zeros_like(bone)
    for side in (1, -1):
        distance, along = _segment_distance(u, v, (side * 0.12, start_v), (side * end[0], end[1]))
        ridge = distance < (0.05 + 0.1 * along + 0.01 * warp[0][box]) * base
        mastoid = np.hypot(
            (u - side * (end[0] - 0.06)) / 0.15, (v - end[1] - 0.02 * elongation) / 0.14
        ) < np.sqrt(base)
        bone |= ridge | mastoid
        pneumatised |= mastoid | (ridge & (along > 0.5))
    _paint_air_cells(air, pneumatised, u, v, (warp[0][box], warp[1][box]), shape.mastoid_cell)
    fossa = v > start_v + (end[1] - start_v) / (end[0] - 0.12) * (np.abs(u) - 0.12)
    present = base > 0.0
    fossa &= present
    parts.posterior_fossa[box] = fossa
    bone |= np.hypot(u / 0.075, (v + 0.12 * elongation) / 0.09) < base  # clivus
    # The pons behind the clivus, the prepontine cistern between them; the fourth ventricle
    # behind the pons is one of anatomy.MIDLINE_VENTRICLES.
    pons = _pons_radius(u, v, elongation) / (0.8 + 0.2 * base)
    parts.brainstem[box] = (pons < 1.0) & present
    csf = parts.csf[box]
    csf |= (pons >= 1.0) & (pons < 1.08) & (v < 0.1 * elongation) & present
    # Between the cerebellar hemispheres: the vallecula and cisterna magna.
    csf |= (np.hypot(u / 0.05, (v - 0.84 * elongation) / 0.07) < 1.0) & present
    csf |= (np.abs(u) < 0.012) & (v > 0.6 * elongation) & present
    # Beam hardening: a dark band across the posterior fossa between the petrous bones.
    centre_v = np.float32(start_v + 0.5 * (end[1] - start_v) + 0.1 * elongation)
    rows, columns = np.nonzero(fossa)
    fu, fv = u[rows, columns], v[rows, columns]
    band = smoothstep(0.75, 0.4, np.abs(fu)) * exp_f32(-(((fv - centre_v) / np.float32(0.12)) ** 2))
    base = base[rows, columns] if np.ndim(base) == 2 else base
    parts.beam_hardening_hu[box][rows, columns] = band * np.float32(shape.beam_hardening_hu) * base


def _face(
    grid: CaseGrid,
    anatomy: Anatomy,
    face: np.ndarray,
    box: tuple[slice, slice],
    warp: tuple[np.ndarray, np.ndarray],
    parts: _SkullBase,
) -> None:
    """Orbits and sinuses, painted into `parts[box]`: a globe (vitreous, with its lens in
    front) in retro-orbital fat that narrows back to the apex, the medial and lateral recti
    along it, in a bony socket; the ethmoid air cells between the orbits, the sphenoid sinus
    behind them, the greater sphenoid wings towards the temples."""
    u, v = grid.u[box], grid.v[box]
    shape = anatomy.skull_base
    elongation = anatomy.elongation
    bone, eyes, lens = parts.bone[box], parts.eyes[box], parts.lens[box]
    fat, muscle = parts.fat[box], parts.muscle[box]
    sockets = np.zeros_like(bone)
    # `face`: one value, or one per pixel of the box on a tilted slice; 0 where it is absent.
    root = np.sqrt(face)
    globe_radius = 0.15 * root
    for side in (1, -1):
        radius = np.hypot(u - side * 0.4, v + 0.62 * elongation)
        eyes |= radius < globe_radius
        lens |= (
            np.hypot((u - side * 0.4) / 0.05, (v + 0.62 * elongation + 0.8 * globe_radius) / 0.025)
            < root
        )
        apex, along = _segment_distance(
            u, v, (side * 0.4, -0.62 * elongation), (side * 0.18, -0.36 * elongation)
        )
        cone = apex < 0.2 * root * (1.0 - 0.6 * along)
        fat |= (radius < 0.22 * root) | cone
        for wall in (-1, 1):  # medial and lateral rectus
            rectus, _ = _segment_distance(
                u,
                v,
                (side * (0.4 + wall * 0.13), -0.58 * elongation),
                (side * (0.18 + wall * 0.03), -0.38 * elongation),
            )
            muscle |= cone & (rectus < 0.025 * face)
        sockets |= (radius < 0.3 * face) | (apex < 0.27 * face * (1.0 - 0.5 * along))
        wing, _ = _segment_distance(
            u, v, (side * 0.16, -0.34 * elongation), (side * 0.7, -0.44 * elongation)
        )
        bone |= wing < 0.035 * face
    eyes &= ~lens
    fat &= ~(eyes | lens | muscle)
    orbit = eyes | lens | fat | muscle
    air = parts.air[box]
    present = face > 0.0
    ethmoid = (np.abs(u) < 0.12) & (v < -0.5 * elongation) & ~orbit & present
    _paint_air_cells(air, ethmoid, u, v, (warp[0][box], warp[1][box]), shape.ethmoid_cell)
    sphenoid = np.hypot(u / 0.12, (v + 0.38 * elongation) / 0.08) < face
    air |= sphenoid & (np.abs(u - np.float32(shape.sphenoid_septum_u)) > 0.012) & ~orbit
    front = v < (-0.5 + 0.35 * u * u) * elongation
    midline = (np.abs(u) < 0.1 + 0.1 * smoothstep(-0.3, -0.6, v / elongation)) & (
        v < -0.3 * elongation
    )
    bone |= front & (sockets | midline) & ~orbit & present
