"""The lesions: one 3-D hemorrhage or infarct per case, sampled from the case's generator,
and its region and HU change on each slice."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.classes import HEMORRHAGIC
from pipeline.numerics import sin_f32
from pipeline.params import PhantomParams
from pipeline.synthesize.anatomy import (
    PARENCHYMA,
    Anatomy,
    CaseGrid,
    Ellipsoid,
    Tissue,
    ellipse_field,
    pixel_box,
)

if TYPE_CHECKING:  # a type name only: rendering imports this module
    from pipeline.synthesize.rendering import CaseModel


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


def sample_lesion(
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


def wave_noise(waves: np.ndarray, u: np.ndarray, v: np.ndarray, t: float) -> np.ndarray:
    """Smooth random function of (u, v, t) with unit std: a sum of random plane waves."""
    total = np.zeros_like(u)
    for along_u, along_v, along_t, phase, amplitude in waves:
        total += np.float32(amplitude) * sin_f32(
            np.float32(along_u) * u + np.float32(along_v) * v + np.float32(along_t * t + phase)
        )
    return total


def add_lesion(
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
        variation = wave_noise(lesion.waves[2:], grid.u[mask], grid.v[mask], t)
        values = np.float32(lesion.hemorrhage.mean_hu) + 4.0 * variation
        hu[mask] = np.clip(values, *params.hemorrhage_hu)
        tissue[mask] = Tissue.HEMORRHAGE
        return mask
    if infarct is None or lesion.infarct is None:
        raise ValueError("an ischemic lesion needs its infarct region")
    mask = infarct & np.isin(tissue, PARENCHYMA)
    low, high = params.ischemic_drop_hu
    variation = wave_noise(lesion.waves[2:], grid.u[mask], grid.v[mask], t)
    hu[mask] -= np.clip(lesion.infarct.mean_drop_hu + 0.2 * (high - low) * variation, low, high)
    tissue[mask] = Tissue.ISCHEMIA
    return mask


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
        box = pixel_box(anatomy, np.array([blob.centre[:2]]), max(blob.axes[:2]) * 1.4, size)
        if box is None:
            continue
        u, v = grid.u[box], grid.v[box]
        field = ellipse_field(u, v, blob) + 0.3 * wave_noise(lesion.waves, u, v, t)
        region[box] |= field < 1.0 - t * t
    if bleed.extra_axial is not None:
        angle, half_angle, thickness_px = bleed.extra_axial
        most = thickness_px * anatomy.px_scale
        offset = _angle_offset(grid.angle, angle)
        candidates = np.nonzero(
            (inner_depth >= 0.0) & (inner_depth < 1.3 * most) & (offset < half_angle)
        )
        profile = np.clip(1.0 - (offset[candidates] / half_angle) ** 2 - t * t, 0.0, None)
        rough = 1.0 + 0.15 * wave_noise(lesion.waves, grid.u[candidates], grid.v[candidates], t)
        region[candidates] = inner_depth[candidates] < most * np.sqrt(profile) * rough
    return region


def infarct_region(
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
    rough = 1.0 + 0.25 * wave_noise(lesion.waves, grid.u[candidates], grid.v[candidates], t)
    taper = np.sqrt(np.minimum(radial[candidates], 1.0) + 0.1)
    wedge = np.zeros(grid.u.shape, dtype=bool)
    wedge[candidates] = offset[candidates] < widest * rough * taper
    return wedge
