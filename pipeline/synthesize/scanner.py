"""What lies around the head and what the scanner adds to a case: the ears, a head holder
(a plastic cradle behind the occiput on a foam pad), straight streak artefacts between the
skull-base bones, a faint brightening of the cranial cavity along the inner table, and the
out-of-plane tilt of the slices (`rendering` draws them).

They are drawn from a stream of their own (the case's seed and SCANNER_STREAM), before the
lesions and the same way for both classes, so adding them changes none of the case's other
draws."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.params import PhantomParams
from pipeline.synthesize.anatomy import (
    Tube,
    head_scale,
    head_unit_mm,
)

SCANNER_STREAM = 3  # rendering._slice_rng uses 1 and 2, with the slice index after them
# Heights (z, 0 skull base .. 1 vertex) of the ear canal and the auricle's half-height for
# a mean ear, in the phantom's height units: the canal at the petrous bones, the helix up
# to about the suprasellar cistern (the phantom's skull base is compressed in height, so these
# follow its landmarks, not millimetres).
EAR_CANAL_HEIGHT = 0.05
EAR_HALF_HEIGHT = 0.14
MEAN_EAR_LENGTH_MM = 62.0
# An auricle's centre line in an axial cut (mm lateral from the skin, mm posterior), from
# inside the scalp out and back round the helix, and its half-thickness (skin on cartilage).
AURICLE_MM = ((-8.0, 0.0), (0.0, 0.0), (7.0, 4.0), (13.0, 12.0), (16.0, 22.0), (14.0, 30.0))
AURICLE_HALF_THICKNESS_MM = 2.0
EAR_CANAL_RADIUS_MM = 3.5
EAR_CANAL_DEPTH_MM = 14.0  # through the scalp into the tympanic bone
# Where streaks run (head units; v over the elongation): between dense skull-base bones,
# the petrous ridges, mastoids, clivus, sphenoid wings and the occipital protuberance.
STREAK_PATHS = (
    ((-0.45, 0.12), (0.45, 0.12)),  # between the petrous ridges
    ((-0.7, 0.35), (0.7, 0.35)),  # between the mastoids
    ((-0.45, 0.12), (0.7, 0.35)),  # petrous ridge to the other mastoid
    ((0.45, 0.12), (-0.7, 0.35)),
    ((0.0, -0.12), (0.0, 0.9)),  # clivus to the occipital protuberance
    ((-0.45, -0.4), (0.45, -0.4)),  # between the sphenoid wings
)
STREAK_DARK_SHARE = 0.7  # streaks joining dense objects are mostly dark


@dataclass(frozen=True)
class HeadHolder:
    """A cradle arc centred on the head centre below it, lengths in reference pixels."""

    pad_px: float  # foam between the back of the head and the cradle
    thickness_px: float
    half_span: float  # radians either side of straight down
    hu: float


@dataclass(frozen=True)
class Streak:
    """A straight streak along start-end (head units), fading past its ends."""

    start: tuple[float, float]
    end: tuple[float, float]
    hu: float  # signed: dark below 0
    width_px: float  # reference pixels


@dataclass(frozen=True)
class Scanner:
    """What a case draws around its head and from the scanner (the module's docstring)."""

    ears: tuple[Tube, ...]  # auricles (3-D tubes, head units)
    ear_canals: tuple[Tube, ...]
    holder: HeadHolder | None
    streaks: tuple[Streak, ...]
    tilt_deg: float  # signed: above 0 the back of the image is cut higher than the front
    tilt_slope: float  # height units per head unit of v
    # Inside the inner table the cavity reads this much denser, fading exponentially inwards
    # over the reach (mm at the reference head): the skull's partial volume where the curved
    # vault is cut obliquely, and residual beam-hardening cupping next to bone.
    inner_table_halo_hu: float
    inner_table_halo_mm: float


def height_unit_mm(params: PhantomParams) -> float:
    """Millimetres of one height unit: the slices span heights 0.02-0.895 on average."""
    return (params.slices_per_case - 1) * params.slice_thickness_mm / 0.875


def sample_scanner(entropy: tuple[int, ...], params: PhantomParams, elongation: float) -> Scanner:
    """Ears, head holder, streaks and tilt of the case with seed `entropy` (its own stream)."""
    rng = np.random.default_rng(np.random.SeedSequence([*entropy, SCANNER_STREAM]))
    unit_mm = head_unit_mm(params)
    ear_scale = rng.uniform(*params.ear_length_mm) / MEAN_EAR_LENGTH_MM
    protrusion = rng.uniform(0.7, 1.3)
    attach_v = rng.uniform(0.08, 0.16) * elongation
    skin_u = head_scale(EAR_CANAL_HEIGHT)  # the head's side at the ear's level
    ears, canals = [], []
    for side in (1, -1):
        points = [
            (
                side * (skin_u + protrusion * ear_scale * lateral / unit_mm),
                attach_v + ear_scale * back / unit_mm,
                EAR_CANAL_HEIGHT,
                AURICLE_HALF_THICKNESS_MM / unit_mm,
                EAR_HALF_HEIGHT * ear_scale,
            )
            for lateral, back in AURICLE_MM
        ]
        ears.append(Tube(np.array(points)))
        radius = EAR_CANAL_RADIUS_MM / unit_mm
        canals.append(
            Tube(
                np.array(
                    [
                        (side * (skin_u + 0.05), attach_v, EAR_CANAL_HEIGHT, radius, 0.04),
                        (
                            side * (skin_u - EAR_CANAL_DEPTH_MM / unit_mm),
                            attach_v,
                            EAR_CANAL_HEIGHT,
                            radius,
                            0.04,
                        ),
                    ]
                )
            )
        )
    holder = None
    if rng.uniform() < params.head_holder_probability:
        to_px = 1.0 / params.pixel_spacing_mm  # reference pixels per mm
        holder = HeadHolder(
            pad_px=rng.uniform(5.0, 15.0) * to_px,
            thickness_px=rng.uniform(3.0, 6.0) * to_px,
            half_span=math.radians(rng.uniform(45.0, 70.0)),
            hu=rng.uniform(*params.head_holder_hu),
        )
    streaks: list[Streak] = []
    if rng.uniform() < params.streak_probability:
        for _ in range(int(rng.integers(1, 5))):
            start, end = STREAK_PATHS[int(rng.integers(len(STREAK_PATHS)))]
            jitter = rng.normal(0.0, 0.03, size=4)
            sign = -1.0 if rng.uniform() < STREAK_DARK_SHARE else 1.0
            streaks.append(
                Streak(
                    start=(start[0] + jitter[0], start[1] * elongation + jitter[1]),
                    end=(end[0] + jitter[2], end[1] * elongation + jitter[3]),
                    hu=sign * rng.uniform(*params.streak_hu),
                    width_px=rng.uniform(0.8, 2.0),
                )
            )
    tilt_deg = rng.uniform(*params.tilt_deg) * (1.0 if rng.uniform() < 0.5 else -1.0)
    # Drawn last, so that the draws above stay those of a phantom without it.
    halo_hu = rng.uniform(*params.inner_table_halo_hu)
    halo_mm = rng.uniform(*params.inner_table_halo_mm)
    return Scanner(
        ears=tuple(ears),
        ear_canals=tuple(canals),
        holder=holder,
        streaks=tuple(streaks),
        tilt_deg=tilt_deg,
        tilt_slope=math.tan(math.radians(tilt_deg)) * unit_mm / height_unit_mm(params),
        inner_table_halo_hu=halo_hu,
        inner_table_halo_mm=halo_mm,
    )
