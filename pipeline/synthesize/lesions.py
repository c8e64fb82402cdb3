"""The lesions: each case's hemorrhages or infarcts, drawn from a catalogue of subtypes and
territories (docs/phantom.md), and their region and HU change on each slice.

A case has one lesion, and with probability `phantom.extra_lesion_probability` a second one of
the same class within the first one's slices (multifocal contusions, several infarcts). Each
kind keeps to the heights where it occurs in patients; every kind is a smooth 3-D shape over a
run of consecutive slices, so a case's lesion slices stay consecutive."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.classes import HEMORRHAGIC
from pipeline.numerics import sin_f32
from pipeline.params import HEMORRHAGE_SUBTYPES, ISCHEMIA_TERRITORIES, PhantomParams, WedgeSize
from pipeline.synthesize.anatomy import (
    PARENCHYMA,
    PONS_TOP,
    TENTORIUM_MIDDLE_V,
    Anatomy,
    CaseGrid,
    Ellipsoid,
    Tissue,
    Tube,
    ellipse_field,
    flat,
    head_unit_mm,
    pixel_box,
    tissue_in,
)

# Heights (0 skull base .. 1 vertex) each kind occupies, from where it occurs in patients.
KIND_HEIGHTS: dict[str, tuple[float, float]] = {
    "intraparenchymal_lobar": (0.12, 0.85),
    "intraparenchymal_deep": (0.3, 0.55),  # basal ganglia and thalamus
    "intraventricular": (0.38, 0.56),  # atria and occipital horns
    "subarachnoid": (0.1, 0.85),
    "subdural": (0.1, 0.92),
    "epidural": (0.1, 0.9),
    "contusion": (0.14, 0.45),  # frontal and temporal poles
    "middle_cerebral": (0.2, 0.8),
    "anterior_cerebral": (0.35, 0.92),
    "posterior_cerebral": (0.15, 0.6),
    "watershed": (0.45, 0.85),
    "lacunar": (0.3, 0.44),  # basal ganglia, internal capsule, thalamus
    "posterior_fossa": (0.03, 0.22),  # cerebellum and brainstem
}
# A few millimetres thick, they fill only part of a 5 mm slice (`phantom.thin_bleed_fill`).
THIN_BLEEDS = ("subarachnoid", "subdural")
SCALP_HAEMATOMA_HU = 55.0
MIN_BLOB_AXIS_PX = 2.2  # see _blob_region  # the unlabelled swelling over an epidural haematoma
# A lesion's HU change at its labelled outline, as a share of the full change: annotators draw
# a lesion's edge where its contrast has fallen to about half (the half-maximum edge).
EDGE_SHARE = 0.5
# The fade is computed within this many e-folding depths of the outline (beyond, it is below
# 0.5 exp(-8) = 0.0002 of the change).
EDGE_REACH = 8.0
LESION_EDGE_STREAM = 4  # the case's seed and this: the edges' own generator (scanner.py: 3)
# A skull fracture over an epidural haematoma: a gap about a millimetre wide (px at the
# reference head), filled at the scalp haematoma's density.
FRACTURE_WIDTH_PX = 2.0


@dataclass(frozen=True)
class Shell:
    """A collection along the inner table: within `half_angle` of `angle` (radians from the
    head centre), `thickness_px` deep (at the reference head) in the middle; `power` 2 gives
    an epidural lens, higher powers a flat subdural crescent."""

    angle: float
    half_angle: float
    thickness_px: float
    power: float


@dataclass(frozen=True)
class Wedge:
    """A vascular territory: apex deep, base on the cortex, tapering at its ends."""

    angle: float  # direction of the territory from the head centre
    half_angle: float
    inner_radius: float  # apex depth, as a fraction of the brain radius
    side: int  # hemisphere the territory is confined to (+1 / -1), 0 when not confined


@dataclass(frozen=True)
class Lesion:
    """One 3-D lesion of kind `kind` spanning slices first..last (inclusive), edges roughened
    by `waves`. Its shape is a union of `blobs`, a `shell`, a `wedge`, the CSF spaces of a
    `sector` (subarachnoid: angle, half-angle) or the ventricles below `layer` (the
    intraventricular blood level, head units along gravity)."""

    kind: str
    first: int
    last: int
    waves: np.ndarray  # (k, 5): frequency along u, v and t, phase, amplitude
    blobs: tuple[Ellipsoid, ...]
    shell: Shell | None
    wedge: Wedge | None
    sector: tuple[float, float] | None
    layer: float | None
    level_hu: float  # hemorrhage: its mean HU; infarct: its mean drop below parenchyma
    edge_fill: float  # share of the lesion's HU change on its first and last slice
    body_fill: float  # share on the other slices (below 1 for thin layers: partial volume)
    oedema_px: float  # unlabelled oedema rim around a hemorrhage (0: none), reference head
    oedema_drop_hu: float
    grey_white_loss: float  # infarct: share of the cortex's extra density it loses
    # Epidural haematoma: the direction of its skull fracture (radians from the head centre),
    # drawn on the slices within `fracture_reach` of its middle (t in -1..1).
    fracture_angle: float | None
    fracture_reach: float
    # E-folding depth (px at the reference head) of the HU change's fade towards the outline:
    # drawn from a stream of its own (`with_soft_edges`); 0 is a crisp edge.
    edge_px: float = 0.0

    @property
    def hemorrhagic(self) -> bool:
        return self.kind in HEMORRHAGE_SUBTYPES

    def height(self, index: int) -> float | None:
        """Position t in (-1, 1) of slice `index` within the lesion; None outside it."""
        if not self.first <= index <= self.last:
            return None
        half = (self.last - self.first) / 2.0 + 0.5
        return (index - (self.first + self.last) / 2.0) / half

    def fill(self, index: int) -> float:
        """Share of the HU change on slice `index`: partial volume on the end slices."""
        ends = self.last > self.first and index in (self.first, self.last)
        return self.edge_fill * self.body_fill if ends else self.body_fill


def _choose(rng: np.random.Generator, shares: dict[str, float], names: tuple[str, ...]) -> str:
    weights = np.array([shares[name] for name in names], dtype=np.float64)
    return str(names[int(rng.choice(len(names), p=weights / weights.sum()))])


def _slices_within(
    heights: np.ndarray, low: float, high: float, first: int, last: int
) -> np.ndarray:
    """The slices of first..last whose heights lie within low..high (consecutive: heights rise
    with the index)."""
    indices = np.arange(first, last + 1)
    return indices[(heights[indices] >= low) & (heights[indices] <= high)]


def _slice_run(
    rng: np.random.Generator,
    heights: np.ndarray,
    kind: str,
    first: int,
    last: int,
    run_share: tuple[float, float],
) -> tuple[int, int]:
    """A run of consecutive slices within first..last whose heights suit `kind`: a share
    within `run_share` of the suitable ones, at least one (the nearest slice when none suits)."""
    low, high = KIND_HEIGHTS[kind]
    suitable = _slices_within(heights, low, high, first, last)
    if suitable.size == 0:
        indices = np.arange(first, last + 1)
        nearest = indices[int(np.argmin(np.abs(heights[indices] - (low + high) / 2.0)))]
        return int(nearest), int(nearest)
    shortest = max(1, math.ceil(run_share[0] * suitable.size))
    longest = max(shortest, math.floor(run_share[1] * suitable.size))
    span = int(rng.integers(shortest, longest + 1))
    start = int(suitable[0]) + int(rng.integers(0, suitable.size - span + 1))
    return start, start + span - 1


def _heights_at(
    lesion: Lesion, anatomy: Anatomy, tilt_slope: float
) -> tuple[np.ndarray, float, float]:
    """Each slice's height where the lesion lies, and the heights its kind occupies there. A
    tilted slice is higher behind and lower in front (z + tilt_slope * v); the lesion lies at
    its blobs' centre, or midway along its wedge, at the inner table under its shell, in the
    sulci of its sector. A posterior-fossa lesion lies where `rendering` draws the fossa (at the
    tentorium's middle), and a brainstem one ends with the pons."""
    low, high = KIND_HEIGHTS[lesion.kind]
    elongation = anatomy.elongation
    if lesion.kind == "posterior_fossa":
        fossa_v = TENTORIUM_MIDDLE_V * elongation
        return anatomy.heights + tilt_slope * fossa_v, low, min(high, PONS_TOP)
    if lesion.blobs:
        v = float(np.mean([blob.centre[1] for blob in lesion.blobs]))
        return anatomy.heights + tilt_slope * v, low, high
    if lesion.wedge is not None:
        angle, radius = lesion.wedge.angle, 0.92 * (1.0 + lesion.wedge.inner_radius) / 2.0
    elif lesion.shell is not None:
        angle, radius = lesion.shell.angle, 0.92
    else:
        assert lesion.sector is not None
        angle, radius = lesion.sector[0], 0.8
    ellipse = elongation / math.hypot(elongation * math.cos(angle), math.sin(angle))
    return anatomy.heights + tilt_slope * radius * ellipse * math.sin(angle), low, high


def _within_reach(
    lesion: Lesion, anatomy: Anatomy, tilt_slope: float, ranges: Sequence[tuple[int, int]]
) -> Lesion | None:
    """The lesion, its run moved to the nearest slices whose heights at the lesion
    (`_heights_at`) suit its kind when none of its own does: within the first of `ranges`
    (first, last) that holds such slices; None when none does. The run was chosen by the
    heights at the head's centre, so on a tilted stack of few slices a posterior-fossa run can
    lie above the fossa, a frontal one among the orbits, and the case would hold no lesion at
    all. A run that reaches its kind's heights stays as drawn, so the draws of such cases do
    not change."""
    heights, low, high = _heights_at(lesion, anatomy, tilt_slope)
    if _slices_within(heights, low, high, lesion.first, lesion.last).size:
        return lesion
    for first, last in ranges:
        suitable = _slices_within(heights, low, high, first, last)
        if suitable.size:
            span = min(lesion.last - lesion.first + 1, suitable.size)
            start = int(np.clip(lesion.first, suitable[0], suitable[-1] - span + 1))
            return dataclasses.replace(lesion, first=start, last=start + span - 1)
    return None


def sample_lesions(
    rng: np.random.Generator,
    class_name: str,
    params: PhantomParams,
    anatomy: Anatomy,
    tilt_slope: float,
) -> tuple[Lesion, ...]:
    """The case's lesions: the first over at most 1 - `lesion_free_slice_share` of the slices
    (never the lowest, the skull base of the montage, unless its kind reaches only that one),
    an optional second within its run. Each run reaches its kind's heights at the lesion
    itself (`_within_reach`); a kind no slice of the tilted stack reaches is drawn again from
    the others (a few tilted stacks of few slices miss the posterior fossa or the frontal
    pole)."""
    slices = params.slices_per_case
    longest = max(1, math.floor(slices * (1.0 - params.lesion_free_slice_share)))
    lowest = 1 if slices > 1 else 0
    names = HEMORRHAGE_SUBTYPES if class_name == HEMORRHAGIC else ISCHEMIA_TERRITORIES
    shares = (
        params.hemorrhage_subtype_share
        if class_name == HEMORRHAGIC
        else (params.ischemia_territory_share)
    )
    run_share = params.lesion_size.slice_run_share
    candidates = names
    while True:
        kind = _choose(rng, shares, candidates)
        first, last = _slice_run(rng, anatomy.heights, kind, lowest, slices - 1, run_share)
        if last - first + 1 > longest:
            first += int(rng.integers(0, last - first + 2 - longest))
            last = first + longest - 1
        drawn = _lesion(rng, kind, first, last, params, anatomy)
        reaching = _within_reach(drawn, anatomy, tilt_slope, ((lowest, slices - 1), (0, 0)))
        candidates = tuple(n for n in candidates if n != kind and shares[n] > 0.0)
        if reaching is not None or not candidates:
            lesion = drawn if reaching is None else reaching
            break
    first, last = lesion.first, lesion.last
    lesions = [lesion]
    if rng.uniform() < params.extra_lesion_probability:
        mid = float(anatomy.heights[(first + last) // 2])
        fitting = tuple(n for n in names if KIND_HEIGHTS[n][0] <= mid <= KIND_HEIGHTS[n][1])
        extra_kind = _choose(rng, shares, fitting or (kind,))
        extra_first, extra_last = _slice_run(
            rng, anatomy.heights, extra_kind, first, last, run_share
        )
        extra = _lesion(rng, extra_kind, extra_first, extra_last, params, anatomy)
        reaching = _within_reach(extra, anatomy, tilt_slope, ((first, last),))
        lesions.append(extra if reaching is None else reaching)
    return tuple(lesions)


def with_soft_edges(
    lesions: tuple[Lesion, ...], entropy: Sequence[int], params: PhantomParams
) -> tuple[Lesion, ...]:
    """The lesions with their edge fade drawn (`phantom.lesion_edge_mm`), from a generator of
    their own, so that every other draw of the case stays as it was."""
    rng = np.random.default_rng(np.random.SeedSequence([*entropy, LESION_EDGE_STREAM]))
    return tuple(
        dataclasses.replace(
            lesion, edge_px=float(rng.uniform(*params.lesion_edge_mm)) / params.pixel_spacing_mm
        )
        for lesion in lesions
    )


def _blob_cluster(
    rng: np.random.Generator, centre: tuple[float, float], radius: float, count: int
) -> tuple[Ellipsoid, ...]:
    """Irregular blob: a union of `count` ellipses around `centre` (head units)."""
    blobs = []
    for _ in range(count):
        offset = rng.normal(0.0, 0.35 * radius, size=2)
        axes = (radius * rng.uniform(0.55, 1.0), radius * rng.uniform(0.45, 0.85), 1.0)
        position = (centre[0] + offset[0], centre[1] + offset[1], 0.0)
        blobs.append(Ellipsoid(position, axes, rng.uniform(0, np.pi)))
    return tuple(blobs)


def _wedge(rng: np.random.Generator, angle: float, size: WedgeSize, side: int) -> Wedge:
    half_angle = rng.uniform(*size.half_angle_rad)
    return Wedge(float(angle), half_angle, rng.uniform(*size.apex_radius_share), side)


def _lesion(
    rng: np.random.Generator,
    kind: str,
    first: int,
    last: int,
    params: PhantomParams,
    anatomy: Anatomy,
) -> Lesion:
    waves = np.column_stack(
        [
            rng.normal(0.0, 22.0, size=(6, 2)),
            rng.normal(0.0, 1.5, size=6),
            rng.uniform(0, 2 * np.pi, size=6),
            rng.uniform(0.5, 1.0, size=6),
        ]
    )
    waves[:, 4] /= math.sqrt(float((waves[:, 4] ** 2).sum()) / 2.0)  # unit std
    elongation = anatomy.elongation
    side = 1 if rng.uniform() < 0.5 else -1
    blobs: tuple[Ellipsoid, ...] = ()
    shell = wedge = sector = layer = None
    oedema_px = oedema_drop_hu = grey_white_loss = fracture_reach = 0.0
    fracture_angle = None
    size = params.lesion_size
    if kind in HEMORRHAGE_SUBTYPES:
        density = getattr(params.hemorrhage_density_hu, kind.split("_")[0])
        level_hu = float(
            np.clip(density + rng.normal(0.0, params.hemorrhage_case_sd_hu), *params.hemorrhage_hu)
        )
    else:
        level_hu = float(rng.uniform(*params.ischemic_mean_drop_hu))
    if kind == "intraparenchymal_lobar":
        direction, distance = rng.uniform(-np.pi, np.pi), rng.uniform(0.3, 0.55)
        centre = (distance * math.cos(direction), distance * math.sin(direction) * elongation)
        radius = rng.uniform(*size.intraparenchymal_lobar.radius_head_units)
        blobs = _blob_cluster(rng, centre, radius, int(rng.integers(2, 5)))
    elif kind == "intraparenchymal_deep":
        centre = (side * rng.uniform(0.12, 0.28), rng.uniform(-0.12, 0.14) * elongation)
        radius = rng.uniform(*size.intraparenchymal_deep.radius_head_units)
        blobs = _blob_cluster(rng, centre, radius, int(rng.integers(2, 5)))
    elif kind == "contusion":  # several small foci at a frontal or a temporal pole
        frontal = rng.uniform() < 0.5
        centre = (side * 0.22, -0.6 * elongation) if frontal else (side * 0.55, -0.2 * elongation)
        blobs = tuple(
            blob
            for _ in range(int(rng.integers(2, 5)))
            for blob in _blob_cluster(
                rng,
                (centre[0] + rng.normal(0.0, 0.05), centre[1] + rng.normal(0.0, 0.05)),
                rng.uniform(*size.contusion.radius_head_units),
                2,
            )
        )
    elif kind == "intraventricular":  # blood layering in the dependent atria and horns
        sides = (side,) if rng.uniform() < 0.5 else (1, -1)
        blobs = tuple(
            Ellipsoid((s * 0.19, 0.33 * elongation, 0.0), (0.07, 0.09, 1.0), s * 0.4) for s in sides
        )
        # The level (head units along gravity, image down) lies above the blobs' centres, so
        # their dependent part always holds blood.
        cos, sin = math.cos(anatomy.rotation), math.sin(anatomy.rotation)
        lowest = min(s * 0.19 * sin + 0.33 * elongation * cos for s in sides)
        layer = lowest + rng.uniform(-0.06, 0.0)
    elif kind == "subarachnoid":
        angle = float(rng.uniform(-np.pi, np.pi))
        sector = (angle, float(rng.uniform(*size.subarachnoid.half_angle_rad)))
    elif kind in ("subdural", "epidural"):  # a flat crescent, a lens
        shell_size = getattr(size, kind)
        angle = float(rng.uniform(-np.pi, np.pi))
        half_angle = rng.uniform(*shell_size.half_angle_rad)
        thickness_px = rng.uniform(*shell_size.thickness_mm) / params.pixel_spacing_mm
        shell = Shell(angle, half_angle, thickness_px, 6.0 if kind == "subdural" else 2.0)
        if kind == "epidural":
            fracture_angle = angle + float(rng.uniform(-0.5, 0.5)) * half_angle
            fracture_reach = float(rng.uniform(*params.epidural_fracture_reach))
    elif kind == "middle_cerebral":
        angle = (0.0 if side > 0 else np.pi) + rng.normal(0.0, 0.25)
        wedge = _wedge(rng, angle, size.middle_cerebral, 0)
    elif kind == "anterior_cerebral":
        angle = -np.pi / 2 + side * rng.uniform(0.12, 0.3)
        wedge = _wedge(rng, angle, size.anterior_cerebral, side)
    elif kind == "posterior_cerebral":
        angle = np.pi / 2 - side * rng.uniform(0.15, 0.45)
        wedge = _wedge(rng, angle, size.posterior_cerebral, side)
    elif kind == "watershed":  # the border zone between the anterior and middle territories
        angle = -np.pi / 2 + side * rng.uniform(0.7, 1.0)
        wedge = _wedge(rng, angle, size.watershed, side)
    elif kind == "lacunar":
        centres = ((0.2, -0.05), (0.16, 0.02), (0.1, 0.11))  # lentiform, capsule, thalamus
        u, v = centres[int(rng.integers(0, len(centres)))]
        radius = rng.uniform(*size.lacunar.radius_head_units)
        blobs = _blob_cluster(rng, (side * u, v * elongation), radius, int(rng.integers(1, 3)))
    else:  # posterior_fossa: a cerebellar hemisphere or the brainstem
        fossa = size.posterior_fossa
        if rng.uniform() < 0.75:
            # A cerebellar artery's territory (superior or posterior inferior: 52 % and 49 % of
            # 293 cerebellar infarcts, the anterior inferior 20 %; Tohgi et al., Stroke 1993):
            # like a cerebral territory, deep at its apex and broad on the hemisphere's
            # posterolateral surface against the occipital bone, not a blob inside the
            # cerebellum; `_infarct_shape` keeps it in the posterior fossa.
            angle = np.pi / 2 - side * rng.uniform(0.3, 0.8)
            wedge = Wedge(
                float(angle),
                rng.uniform(*fossa.cerebellar_half_angle_rad),
                rng.uniform(*fossa.cerebellar_apex_radius_share),
                side,
            )
        else:
            radius = rng.uniform(*fossa.brainstem_radius_head_units)
            blobs = _blob_cluster(rng, (0.0, 0.2 * elongation), radius, int(rng.integers(2, 4)))
    if kind in ("intraparenchymal_lobar", "intraparenchymal_deep", "contusion"):
        oedema_px = float(rng.uniform(*params.oedema_rim_px))
        oedema_drop_hu = float(rng.uniform(*params.oedema_drop_hu))
    if kind in ISCHEMIA_TERRITORIES:
        grey_white_loss = float(rng.uniform(*params.ischemic_grey_white_loss))
    return Lesion(
        kind=kind,
        first=first,
        last=last,
        waves=waves,
        blobs=blobs,
        shell=shell,
        wedge=wedge,
        sector=sector,
        layer=layer,
        level_hu=level_hu,
        edge_fill=float(rng.uniform(*params.edge_slice_fill)),
        body_fill=float(rng.uniform(*params.thin_bleed_fill)) if kind in THIN_BLEEDS else 1.0,
        oedema_px=oedema_px,
        oedema_drop_hu=oedema_drop_hu,
        grey_white_loss=grey_white_loss,
        fracture_angle=fracture_angle,
        fracture_reach=fracture_reach,
    )


# Kinds whose mass shifts the midline; the largest size `phantom.lesion_size` allows them gives
# the largest shift.
MASS_KINDS = ("intraparenchymal_lobar", "intraparenchymal_deep", "subdural", "epidural")


def mass_effect(
    rng: np.random.Generator, anatomy: Anatomy, lesions: tuple[Lesion, ...], params: PhantomParams
) -> Anatomy:
    """The anatomy with the first lesion's mass effect: a hematoma pushes the falx and the
    ventricles to the other side, by up to `phantom.midline_shift_max_mm` for the largest
    (0 to that, scaled by its size), and compresses the ventricle on its own side."""
    lesion = lesions[0]
    if lesion.kind not in MASS_KINDS:
        return anatomy
    sizes = params.lesion_size
    if lesion.shell is not None:
        side = 1.0 if math.cos(lesion.shell.angle) >= 0.0 else -1.0
        thickest_mm = max(sizes.subdural.thickness_mm[1], sizes.epidural.thickness_mm[1])
        thickest_px = thickest_mm / params.pixel_spacing_mm
        size = min(1.0, lesion.shell.thickness_px / thickest_px)
    else:
        side = 1.0 if np.mean([blob.centre[0] for blob in lesion.blobs]) >= 0.0 else -1.0
        largest = max(
            sizes.intraparenchymal_lobar.radius_head_units[1],
            sizes.intraparenchymal_deep.radius_head_units[1],
        )
        size = min(1.0, max(blob.axes[0] for blob in lesion.blobs) / largest)
    unit_mm = head_unit_mm(params)
    shift = -side * size * rng.uniform(0.0, params.midline_shift_max_mm) / unit_mm
    if shift == 0.0:
        return anatomy

    squeeze = 1.0 - 0.5 * abs(shift) * unit_mm / max(params.midline_shift_max_mm, 1e-6)

    def moved(tube: Tube) -> Tube:
        points = tube.points.copy()
        if np.sign(points[:, 0].mean()) == side:  # the lesion's side: compressed
            points[:, 3] *= squeeze
        along = np.clip(1.0 - (points[:, 1] / anatomy.elongation) ** 2, 0.0, 1.0)
        points[:, 0] += shift * along
        return Tube(points)

    third = tuple(
        dataclasses.replace(e, centre=(e.centre[0] + shift, *e.centre[1:]))
        for e in anatomy.small_ventricles
    )
    return dataclasses.replace(
        anatomy,
        midline_shift=shift,
        ventricles=tuple(moved(tube) for tube in anatomy.ventricles),
        small_ventricles=third,
    )


def wave_noise(waves: np.ndarray, u: np.ndarray, v: np.ndarray, t: float) -> np.ndarray:
    """Smooth random function of (u, v, t) with unit std: a sum of random plane waves."""
    total = np.zeros_like(u)
    for along_u, along_v, along_t, phase, amplitude in waves:
        total += np.float32(amplitude) * sin_f32(
            np.float32(along_u) * u + np.float32(along_v) * v + np.float32(along_t * t + phase)
        )
    return total


@dataclass(frozen=True)
class Spaces:
    """The parts of a slice a lesion is drawn into."""

    brain_space: np.ndarray  # the cranial cavity less skull-base bone, air and orbits
    brain: np.ndarray  # brain_space less the outer CSF gap
    inner_depth: np.ndarray  # pixels below the skull's inner table
    rho: np.ndarray  # radius relative to the head outline
    csf: np.ndarray  # sulci, fissures, cisterns and the gap under the skull
    ventricles: np.ndarray
    grey_share: np.ndarray  # 0 white .. 1 grey matter, where the parenchyma is
    posterior_fossa: np.ndarray | None  # under the tentorium (None: the slice is above it)


def infarct_region(
    lesions: Sequence[Lesion],
    anatomy: Anatomy,
    grid: CaseGrid,
    index: int,
    brain: np.ndarray,
    rho: np.ndarray,
    posterior_fossa: np.ndarray | None,
) -> np.ndarray:
    """Where the case's infarcts cut slice `index`, before the parenchyma is known (the
    caller effaces the sulci there); `add_lesions` keeps its parenchyma."""
    region = np.zeros(brain.shape, dtype=bool)
    for lesion in lesions:
        t = lesion.height(index)
        if t is not None and not lesion.hemorrhagic:
            region |= _infarct_shape(lesion, anatomy, grid, t, rho, posterior_fossa)
    return region & brain


def _infarct_shape(
    lesion: Lesion,
    anatomy: Anatomy,
    grid: CaseGrid,
    t: float,
    rho: np.ndarray,
    posterior_fossa: np.ndarray | None,
) -> np.ndarray:
    """The infarct's territory on the slice; a posterior-fossa infarct stays under the
    tentorium (none on a slice above it)."""
    region = _blob_region(lesion, anatomy, grid, t)
    if lesion.wedge is not None:
        region |= _wedge_region(lesion, lesion.wedge, grid, rho, t)
    if lesion.kind == "posterior_fossa":
        region = np.zeros_like(region) if posterior_fossa is None else region & posterior_fossa
    return region


def add_lesions(
    hu: np.ndarray,
    tissue: np.ndarray,
    lesions: Sequence[Lesion],
    anatomy: Anatomy,
    grid: CaseGrid,
    params: PhantomParams,
    index: int,
    spaces: Spaces,
) -> np.ndarray:
    """Paint the case's lesions on slice `index` and return their mask: exactly the pixels
    they changed. Unlabelled context (the oedema rim of a hemorrhage, the scalp swelling and
    skull fracture over an epidural haematoma) goes on before the caller copies the baseline,
    so call `add_context` first. A hemorrhage replaces whatever the cranial cavity holds; an
    infarct lowers the parenchyma of its region by a drop within `ischemic_drop_hu`, its grey
    matter further by a share of its extra density over white matter (grey-white loss)."""
    mask = np.zeros(hu.shape, dtype=bool)
    for lesion in lesions:
        t = lesion.height(index)
        if t is None:
            continue
        fill = np.float32(lesion.fill(index))
        if lesion.hemorrhagic:
            # Calcifications and vessels stay visible within a bleed.
            region = hemorrhage_region(lesion, anatomy, grid, t, spaces) & ~mask
            region &= ~tissue_in(tissue, (Tissue.BONE, Tissue.VESSEL))
            fill = fill * _edge_share(region, tissue, lesion.edge_px * anatomy.px_scale)
            variation = wave_noise(lesion.waves[2:], grid.u[region], grid.v[region], t)
            bleed = np.clip(
                np.float32(lesion.level_hu) + np.float32(params.hemorrhage_texture_hu) * variation,
                *params.hemorrhage_hu,
            )
            hu[region] += fill * (bleed - hu[region])
            tissue[region] = Tissue.HEMORRHAGE
        else:
            region = _infarct_shape(lesion, anatomy, grid, t, spaces.rho, spaces.posterior_fossa)
            region &= spaces.brain & ~mask
            region &= tissue_in(tissue, PARENCHYMA)
            fill = fill * _edge_share(region, tissue, lesion.edge_px * anatomy.px_scale)
            low, high = params.ischemic_drop_hu
            variation = wave_noise(lesion.waves[2:], grid.u[region], grid.v[region], t)
            drop = np.clip(lesion.level_hu + 0.2 * (high - low) * variation, low, high)
            # Grey-white loss: grey matter drops by a share of its excess over white matter,
            # the whole drop still within ischemic_drop_hu.
            lost_hu = np.float32(lesion.grey_white_loss * (anatomy.grey_hu - anatomy.white_hu))
            lost_hu = fill * lost_hu * spaces.grey_share[region]
            hu[region] -= np.minimum(np.maximum(fill * drop, np.float32(low)) + lost_hu, high)
            tissue[region] = Tissue.ISCHEMIA
        mask |= region
    return mask


def _edge_share(region: np.ndarray, tissue: np.ndarray, edge_px: float) -> np.ndarray | np.float32:
    """Share of a lesion's full HU change at each pixel of `region` (in its order):
    1 - (1 - EDGE_SHARE) exp(-depth / edge_px), depth being the distance from the pixel's centre
    to the outline where the region meets brain or CSF. Where it meets bone, air, a vessel or
    another lesion its density runs up to the border, as on real CT. A crisp edge (edge_px 0,
    the default) is the scalar 1: no work per slice."""
    if edge_px <= 0.0 or not region.any():
        return np.float32(1.0)
    rows, columns = np.nonzero(region)
    margin = math.ceil(EDGE_REACH * edge_px) + 1
    box = (
        slice(max(int(rows.min()) - margin, 0), int(rows.max()) + margin + 1),
        slice(max(int(columns.min()) - margin, 0), int(columns.max()) + margin + 1),
    )
    inside = region[box]
    outline = tissue_in(tissue[box], (*PARENCHYMA, Tissue.CSF)) & ~inside
    # Distance to the nearest outline pixel's centre; a border pixel's own centre lies half a
    # pixel inside the outline.
    distance = cv2.distanceTransform(
        (~outline).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
    )
    depth = distance[inside] - np.float32(0.5)
    fade = np.exp(-depth / np.float32(edge_px)).astype(np.float32)
    return np.float32(1.0) - np.float32(1.0 - EDGE_SHARE) * fade


def add_context(
    hu: np.ndarray,
    tissue: np.ndarray,
    lesions: Sequence[Lesion],
    anatomy: Anatomy,
    grid: CaseGrid,
    params: PhantomParams,
    index: int,
    spaces: Spaces,
    head: np.ndarray,
) -> None:
    """Unlabelled changes a lesion brings: an oedema rim below parenchyma around a
    hemorrhage; a scalp haematoma over an epidural one, and on its middle slices a fracture
    line through the skull."""
    scale = anatomy.px_scale
    low = np.float32(params.parenchyma_hu[0])
    for lesion in lesions:
        t = lesion.height(index)
        if t is None or not lesion.hemorrhagic:
            continue
        if lesion.oedema_px > 0.0:
            region = hemorrhage_region(lesion, anatomy, grid, t, spaces)
            reach = max(1, round(lesion.oedema_px * scale))
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
            rim = cv2.dilate(region.astype(np.uint8), kernel).astype(bool) & ~region
            rim &= tissue_in(tissue, PARENCHYMA)
            hu[rim] = np.maximum(hu[rim] - np.float32(lesion.oedema_drop_hu), low)
        if lesion.kind == "epidural" and lesion.shell is not None:
            offset = _angle_offset(grid.angle, lesion.shell.angle)
            swelling = head & (spaces.inner_depth < 0.0) & (offset < lesion.shell.half_angle)
            swelling &= tissue_in(tissue, (Tissue.FAT, Tissue.SOFT_TISSUE))
            hu[swelling] = SCALP_HAEMATOMA_HU
            tissue[swelling] = Tissue.SOFT_TISSUE
            if lesion.fracture_angle is not None and abs(t) <= lesion.fracture_reach:
                fracture = _fracture(lesion.fracture_angle, anatomy, grid)
                fracture &= head & (spaces.inner_depth < 0.0) & (tissue == Tissue.BONE)
                hu[fracture] = SCALP_HAEMATOMA_HU
                tissue[fracture] = Tissue.SOFT_TISSUE


def _fracture(angle: float, anatomy: Anatomy, grid: CaseGrid) -> np.ndarray:
    """A straight gap FRACTURE_WIDTH_PX wide (at least a pixel) from the head centre outwards
    in direction `angle`."""
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    across_px = np.abs(grid.v * cos - grid.u * sin) * np.float32(anatomy.half_width_px)
    half_width_px = max(0.5, 0.5 * FRACTURE_WIDTH_PX * anatomy.px_scale)
    return (grid.u * cos + grid.v * sin > 0.0) & (across_px < half_width_px)


def _angle_offset(angle: np.ndarray, towards: float) -> np.ndarray:
    """Absolute angular distance (radians, 0..pi) from `towards`."""
    return np.abs(np.remainder(angle - np.float32(towards - np.pi), np.float32(2 * np.pi)) - np.pi)


def _blob_region(lesion: Lesion, anatomy: Anatomy, grid: CaseGrid, t: float) -> np.ndarray:
    """The blobs at height t, their outlines roughened by up to 40 % of their radius. A blob
    keeps a radius of at least 0.77 px on every slice of its run (axes of 2.2 px or more,
    shrinking to no less than 0.59 of them at its ends, roughened by no less than 0.6), so it
    always covers the pixel nearest its centre: a lesion never vanishes at a small image size."""
    size = grid.u.shape[0]
    region = np.zeros((size, size), dtype=bool)
    shortest = MIN_BLOB_AXIS_PX / anatomy.half_width_px
    threshold = np.float32(max(1.0 - t * t, 0.35))
    for drawn in lesion.blobs:
        axes = (max(drawn.axes[0], shortest), max(drawn.axes[1], shortest), drawn.axes[2])
        blob = Ellipsoid(drawn.centre, axes, drawn.angle)
        box = pixel_box(anatomy, np.array([blob.centre[:2]]), max(axes[:2]) * 1.4, size)
        if box is None:
            continue
        u, v = grid.u[box], grid.v[box]
        rough = np.clip(1.0 + 0.25 * wave_noise(lesion.waves, u, v, t), 0.6, 1.4)
        region[box] |= ellipse_field(u, v, blob) < threshold * rough * rough
    return region


def hemorrhage_region(
    lesion: Lesion, anatomy: Anatomy, grid: CaseGrid, t: float, spaces: Spaces
) -> np.ndarray:
    """Blobs in the parenchyma or ventricles, a shell along the skull, or the blood-filled CSF
    spaces of a sector, within the cranial cavity."""
    region = _blob_region(lesion, anatomy, grid, t)
    if lesion.layer is not None:  # blood sinks: below the level along gravity (image down)
        cos, sin = np.float32(math.cos(anatomy.rotation)), np.float32(math.sin(anatomy.rotation))
        region = (region | spaces.ventricles) & (grid.u * sin + grid.v * cos > lesion.layer)
    if lesion.shell is not None:
        shell = lesion.shell
        most = shell.thickness_px * anatomy.px_scale
        offset = _angle_offset(grid.angle, shell.angle)
        candidates = np.flatnonzero(
            (spaces.inner_depth >= 0.0)
            & (spaces.inner_depth < 1.3 * most)
            & (offset < shell.half_angle)
        )
        profile = np.clip(
            1.0 - (offset.take(candidates) / shell.half_angle) ** shell.power - t * t, 0.0, None
        )
        rough = 1.0 + 0.15 * wave_noise(
            lesion.waves, grid.u.take(candidates), grid.v.take(candidates), t
        )
        # At least a pixel deep wherever the profile is open: no slice of its run is empty.
        thickness = np.where(profile > 0.0, np.maximum(most * np.sqrt(profile) * rough, 1.0), 0.0)
        flat(region)[candidates] = spaces.inner_depth.take(candidates) < thickness
    if lesion.sector is not None:
        angle, half_angle = lesion.sector
        widest = half_angle * math.sqrt(max(0.0, 1.0 - t * t))
        # The CSF spaces, and a pixel-thin film under the skull so that no slice is empty.
        film = spaces.inner_depth < max(1.0, anatomy.gap_px)
        region = (spaces.csf | film) & (_angle_offset(grid.angle, angle) < widest)
    return region & spaces.brain_space


def _wedge_region(
    lesion: Lesion, wedge: Wedge, grid: CaseGrid, rho: np.ndarray, t: float
) -> np.ndarray:
    """Wedge of a vascular territory: apex deep, base on the cortex, tapering at its ends."""
    radial = (rho * np.float32(1.0 / 0.92) - wedge.inner_radius) / (1.0 - wedge.inner_radius)
    offset = _angle_offset(grid.angle, wedge.angle)
    widest = wedge.half_angle * math.sqrt(max(0.0, 1.0 - t * t))
    near = (radial > 0.0) & (offset < 1.6 * widest)
    if wedge.side:
        near &= np.sign(grid.u) == wedge.side
    candidates = np.flatnonzero(near)
    u, v = grid.u.take(candidates), grid.v.take(candidates)
    rough = 1.0 + 0.25 * wave_noise(lesion.waves, u, v, t)
    taper = np.sqrt(np.minimum(radial.take(candidates), 1.0) + 0.1)
    region = np.zeros(grid.u.shape, dtype=bool)
    flat(region)[candidates] = offset.take(candidates) < widest * rough * taper
    return region
