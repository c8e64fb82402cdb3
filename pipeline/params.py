"""Typed, validated view of params.yaml.

The file is validated once, here, into frozen pydantic models. Unknown keys, wrong types and
out-of-range values raise `ParamsError` with the full dotted key path and what is allowed, so a
typo never falls back silently to a default (the reference's `eval()`-and-default config did).
params.yaml is the one place values live: these models hold types, ranges and documentation,
and every field is required (a missing key is an error naming it), so no value here can drift
from the file's.

Validation is strict: a value must already have its type in YAML (`lr: "0.001"`, `epochs: 3.0`
and `residual: "yes"` are refused, naming the key). The one widening allowed is the
conventional one: an integer where a float is expected (`lr: 1`). Floats are read by YAML 1.2's
rule, as DVC reads them, so `lr: 7e-05` (what `dvc exp run -S lr=7e-5` writes) is a number.
Cross-field rules that decide whether a run can work at all (the UNet's working size) are
checked here too, so `dvc repro` stops at its first stage rather than in `train` after
rerunning the data stages.

The file itself is read defensively: at most `MAX_PARAMS_BYTES`, no YAML anchors or aliases (an
alias bomb expands to gigabytes once anything walks the values), bounded nesting, and error
messages quote at most a short excerpt of a bad value.
"""

from __future__ import annotations

import math
import re
import reprlib
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline import classes

DEFAULT_PARAMS_PATH = Path("params.yaml")
# params.yaml is a few KB; the caps bound what a hostile or broken file can cost to read.
MAX_PARAMS_BYTES = 1_000_000
MAX_PARAMS_DEPTH = 16

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
HuRange = tuple[float, float]
# A [low, high] share of the image, both above 0 (head width: a head of zero width is no head).
ShareRange = tuple[Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]]
Rgb = tuple[
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
]


class ParamsError(ValueError):
    """params.yaml is missing, malformed, or holds a key or value that is not allowed."""


def _tuples(value: Any, converted: dict[int, Any] | None = None) -> Any:
    """YAML lists as tuples, nested ones too: YAML has no tuple, and the sequences of these
    frozen models are tuples, which strict mode would otherwise refuse to build from lists.
    A list or mapping that appears many times (shared references) is converted once, so the
    cost follows the document's size, not what its references would expand to."""
    if not isinstance(value, list | dict):
        return value
    converted = {} if converted is None else converted
    if id(value) not in converted:
        if isinstance(value, list):
            converted[id(value)] = tuple(_tuples(item, converted) for item in value)
        else:
            converted[id(value)] = {key: _tuples(item, converted) for key, item in value.items()}
    return converted[id(value)]


class StrictModel(BaseModel):
    """Unknown keys are errors, instances are frozen, and values are not coerced: a string is
    never read as a number or a boolean. Sequence fields are tuples (lists arrive as tuples)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _lists_as_tuples(cls, data: Any) -> Any:
        return _tuples(data) if isinstance(data, dict) else data


def _ordered_range(value: HuRange, name: str) -> None:
    if value[0] > value[1]:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {list(value)}")


# The phantom's lesion catalogue (pipeline/synthesize/lesions.py; docs/phantom.md).
HEMORRHAGE_SUBTYPES = (
    "intraparenchymal_lobar",
    "intraparenchymal_deep",
    "intraventricular",
    "subarachnoid",
    "subdural",
    "epidural",
    "contusion",
)
ISCHEMIA_TERRITORIES = (
    "middle_cerebral",
    "anterior_cerebral",
    "posterior_cerebral",
    "watershed",
    "lacunar",
    "posterior_fossa",
)
HemorrhageSubtype = Literal[HEMORRHAGE_SUBTYPES]  # type: ignore[valid-type]
IschemiaTerritory = Literal[ISCHEMIA_TERRITORIES]  # type: ignore[valid-type]


def _shares(shares: dict[str, float], names: tuple[str, ...], name: str) -> None:
    """Every kind listed, shares summing to 1."""
    missing = [kind for kind in names if kind not in shares]
    if missing:
        raise ValueError(f"{name} must give a share for every kind; missing {missing}")
    if abs(sum(shares.values()) - 1.0) > 1e-6:
        raise ValueError(f"{name} shares must sum to 1, got {sum(shares.values()):g}")


class HemorrhageDensities(StrictModel):
    """Mean density (HU) of each hemorrhage subtype: the BHSD-fitted peaks of
    DIDSR/InSilicoICH (docs/phantom.md); contusions bleed like parenchymal haematomas."""

    intraparenchymal: float
    intraventricular: float
    subarachnoid: float
    subdural: float
    epidural: float
    contusion: float


# A [low, high] range of positive sizes, of angles (radians) up to a half turn, and of shares
# strictly between 0 and 1.
SizeRange = tuple[PositiveFloat, PositiveFloat]
AngleRange = tuple[
    Annotated[float, Field(gt=0.0, le=math.pi)], Annotated[float, Field(gt=0.0, le=math.pi)]
]
ShareRange = tuple[
    Annotated[float, Field(gt=0.0, lt=1.0)], Annotated[float, Field(gt=0.0, lt=1.0)]
]


class _SizeRanges(StrictModel):
    """Size ranges of one lesion kind, each [low, high] with low <= high."""

    @model_validator(mode="after")
    def _check_ranges(self) -> _SizeRanges:
        for name in type(self).model_fields:
            _ordered_range(getattr(self, name), name)
        return self


class BlobSize(_SizeRanges):
    """A cluster of ellipses (one focus of a contusion): the radius it is drawn around, in head
    units (half the head's width: 76 mm at the reference head, docs/phantom.md)."""

    radius_head_units: SizeRange


class ShellSize(_SizeRanges):
    """A collection along the inner table: its greatest depth (mm at `pixel_spacing_mm`) and
    its half-angle seen from the head centre."""

    thickness_mm: SizeRange
    half_angle_rad: AngleRange


class SectorSize(_SizeRanges):
    """Subarachnoid blood: the half-angle of the sector of CSF spaces it fills."""

    half_angle_rad: AngleRange


class WedgeSize(_SizeRanges):
    """A vascular territory: its half-angle, and its apex's radius as a share of the brain's."""

    half_angle_rad: AngleRange
    apex_radius_share: ShareRange


class PosteriorFossaSize(_SizeRanges):
    """An infarct of a cerebellar hemisphere (a territory like `WedgeSize`'s, inside the
    posterior fossa) or of the brainstem (head units)."""

    cerebellar_half_angle_rad: AngleRange
    cerebellar_apex_radius_share: ShareRange
    brainstem_radius_head_units: SizeRange


class LesionSizes(StrictModel):
    """The size of each lesion kind (docs/phantom.md names each range's source). An
    intraventricular bleed has none of its own: it fills the ventricles below its level."""

    intraparenchymal_lobar: BlobSize
    intraparenchymal_deep: BlobSize
    subarachnoid: SectorSize
    subdural: ShellSize
    epidural: ShellSize
    contusion: BlobSize
    middle_cerebral: WedgeSize
    anterior_cerebral: WedgeSize
    posterior_cerebral: WedgeSize
    watershed: WedgeSize
    lacunar: BlobSize
    posterior_fossa: PosteriorFossaSize
    # Share of the slices at a kind's heights that its run of slices covers.
    slice_run_share: tuple[
        Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]
    ]

    @model_validator(mode="after")
    def _check(self) -> LesionSizes:
        _ordered_range(self.slice_run_share, "slice_run_share")
        return self


# Largest random step between consecutive ischemic case ids of the phantom.
ISCHEMIC_ID_MAX_STEP = 60_000


class PhantomParams(StrictModel):
    """Synthetic non-contrast head CT laid out like the Kaggle archive (stage `synthesize`)."""

    image_size: Annotated[int, Field(ge=32, le=1024)]
    # Pose, drawn per case the same way for both classes (docs/phantom.md): head width
    # at its widest level over image width (real slices 0.64-0.95), in-plane rotation drawn
    # uniformly within +-rotation_max_deg, centre shift (std, share of the image size).
    head_width_share: ShareRange
    rotation_max_deg: Annotated[float, Field(ge=0.0, le=45.0)]
    centre_shift_share: Annotated[float, Field(ge=0.0, le=0.2)]
    # Masked cases (42 - 1 and 56) split 0.5 / 0.2 / 0.3 give test 12 + 17 and valid 8 + 11
    # cases and 896 training slices after augmentation (784 before). Twice the cases of
    # 21 and 28 was the largest gain on real slices of all the defaults tried (docs/phantom.md,
    # "Choosing the defaults"), and `make repro` stays under 10 minutes on 2 cores.
    hemorrhagic_cases: PositiveInt
    ischemic_cases: PositiveInt
    slices_per_case: Annotated[int, Field(ge=4, le=64)]
    # A case's slice heights (0 skull base .. 1 vertex) are low + (high - low) * s**power over
    # evenly spaced s. The slices stay slice_thickness_mm apart: the power sets the head's
    # proportions along them. 1 spaces the heights evenly; above 1 stretches the skull base and
    # posterior fossa (below anatomy.BASE_TOP) over more slices (in real heads orbits, petrous
    # bones and cerebellum span 40-50 mm of the 130-150 mm from foramen magnum to vertex).
    slice_height_power: Annotated[float, Field(ge=0.5, le=3.0)]
    hemorrhagic_cases_without_mask: NonNegativeInt
    testing_cases_per_class: NonNegativeInt
    files_per_other_modality: NonNegativeInt
    first_hemorrhagic_case: NonNegativeInt
    first_ischemic_case: NonNegativeInt
    # Acquisition, drawn per case (the same way for both classes): the window of the PNGs, as
    # its lower edge and width (level = low + width / 2): a brain window (W 80-120, starting
    # near 0 HU), or with probability wide_window_share a wide export (as wide as HU 0-255
    # stored as grey 0-255, as BHSD's PNGs are); noise std and the cut-off of its
    # filtered-back-projection spectrum (ramp times a Hann window; the noise is drawn at half
    # resolution, hence at most 0.25), Gaussian blur. The noise std is the field's own; what
    # survives a 5x5 median (the fine noise a slice shows) is about a third of it, so 2-8 HU
    # reads 1.0-2.8 HU, within real slices' 0.9-4.6 (docs/phantom.md, row 48).
    window_low_hu: HuRange
    window_width_hu: tuple[PositiveFloat, PositiveFloat]
    wide_window_share: Annotated[float, Field(ge=0.0, le=1.0)]
    wide_window_width_hu: tuple[PositiveFloat, PositiveFloat]
    noise_hu: HuRange
    noise_cutoff_cycles_per_px: tuple[
        Annotated[float, Field(gt=0.0, le=0.25)], Annotated[float, Field(gt=0.0, le=0.25)]
    ]
    blur_sigma_px: tuple[
        Annotated[float, Field(ge=0.0, le=5.0)], Annotated[float, Field(ge=0.0, le=5.0)]
    ]
    skull_hu: float
    grey_matter_hu: float
    white_matter_hu: float
    csf_hu: HuRange
    parenchyma_hu: HuRange
    texture_hu: Annotated[float, Field(ge=0.0, le=10.0)]
    falx_hu: float
    # Dark beam-hardening band between the petrous bones across the posterior fossa: the drop
    # of parenchyma at its centre, drawn per case (docs/phantom.md).
    beam_hardening_hu: tuple[NonNegativeFloat, NonNegativeFloat]
    # Lesions (docs/phantom.md, for each range's source): the share of each kind, the
    # density of each hemorrhage subtype, a case's spread around it (std) and the bleed's
    # internal texture (std); every bleed within hemorrhage_hu. An infarct lowers parenchyma
    # by a case mean drawn from ischemic_mean_drop_hu, each pixel within ischemic_drop_hu.
    hemorrhage_subtype_share: dict[HemorrhageSubtype, Probability]
    ischemia_territory_share: dict[IschemiaTerritory, Probability]
    hemorrhage_density_hu: HemorrhageDensities
    lesion_size: LesionSizes
    hemorrhage_case_sd_hu: Annotated[float, Field(ge=0.0, le=30.0)]
    hemorrhage_texture_hu: Annotated[float, Field(ge=0.0, le=20.0)]
    hemorrhage_hu: HuRange
    ischemic_mean_drop_hu: HuRange
    ischemic_drop_hu: HuRange
    # Loss of grey-white differentiation inside an infarct: the share of the cortex's extra
    # density over white matter it loses, drawn per infarct.
    ischemic_grey_white_loss: tuple[Probability, Probability]
    # An epidural haematoma's skull fracture runs over the middle of its slices: those within
    # this share of its half-height, drawn per haematoma (at least the middle slice).
    epidural_fracture_reach: tuple[
        Annotated[float, Field(ge=0.5, le=1.0)], Annotated[float, Field(ge=0.5, le=1.0)]
    ]
    extra_lesion_probability: Probability
    # Mass effect of a haematoma: midline shift (falx and ventricles) up to this, for the largest.
    midline_shift_max_mm: Annotated[float, Field(ge=0.0, le=30.0)]
    # Unlabelled oedema rim around parenchymal bleeds: width (px at the reference head), drop.
    oedema_rim_px: tuple[NonNegativeFloat, NonNegativeFloat]
    oedema_drop_hu: tuple[NonNegativeFloat, NonNegativeFloat]
    # A lesion's HU change fades towards its outline, as on real CT, to about half at the
    # labelled edge (where annotators draw it): 1 - 0.5 exp(-depth / edge), the e-folding depth
    # `edge` drawn per lesion in mm; 0 draws a step (docs/phantom.md: what 0.7-2.0 did).
    lesion_edge_mm: tuple[NonNegativeFloat, NonNegativeFloat]
    # Partial volume: share of a lesion's HU change on its first and last slice, and on
    # every slice of a thin subarachnoid or subdural layer.
    edge_slice_fill: tuple[
        Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]
    ]
    thin_bleed_fill: tuple[
        Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]
    ]
    # Unlabelled look-alikes, in both classes alike (docs/phantom.md): calcified choroid
    # plexus and pineal (each with calcification_probability), a calcified falx; dural sinuses
    # and arteries at blood density, the transverse sinuses this deep under the occipital inner
    # table, a hyperdense middle cerebral artery; an old infarct at CSF density; periventricular
    # hypodensity (more likely with atrophy).
    calcification_probability: Probability
    falx_calcification_probability: Probability
    calcification_hu: HuRange
    sinus_hu: HuRange
    transverse_sinus_mm: tuple[PositiveFloat, PositiveFloat]
    hyperdense_artery_probability: Probability
    old_infarct_probability: Probability
    periventricular_hypodensity_probability: Probability
    periventricular_drop_hu: tuple[NonNegativeFloat, NonNegativeFloat]
    table_probability: Probability
    # Around the head and from the scanner (docs/phantom.md), drawn per case for both classes
    # alike: scalp thickness (skin to skull) and the share of it that is fat; auricle length;
    # a head holder (a plastic cradle behind the occiput on a foam pad) with its density;
    # straight streaks between the skull-base bones, their amplitude (sign drawn); and the
    # out-of-plane tilt of the slices (gantry tilt or head flexion; sign drawn). The skull's
    # mean thickness over the vault, before its profile (thinner at the temples).
    skull_mm: tuple[PositiveFloat, PositiveFloat]
    scalp_mm: tuple[PositiveFloat, PositiveFloat]
    scalp_fat_share: tuple[
        Annotated[float, Field(ge=0.0, le=0.8)], Annotated[float, Field(ge=0.0, le=0.8)]
    ]
    ear_length_mm: tuple[PositiveFloat, PositiveFloat]
    head_holder_probability: Probability
    head_holder_hu: tuple[
        Annotated[float, Field(ge=-500.0, le=500.0)], Annotated[float, Field(ge=-500.0, le=500.0)]
    ]
    streak_probability: Probability
    streak_hu: tuple[NonNegativeFloat, NonNegativeFloat]
    inner_table_halo_hu: tuple[NonNegativeFloat, NonNegativeFloat]
    inner_table_halo_mm: tuple[PositiveFloat, PositiveFloat]
    tilt_deg: tuple[
        Annotated[float, Field(ge=0.0, le=30.0)], Annotated[float, Field(ge=0.0, le=30.0)]
    ]
    lesion_free_slice_share: Annotated[float, Field(ge=0.0, lt=1.0)]
    # The physical scale the phantom declares for its images (written into the archive for
    # `extract` as spacing.json, and into the DICOM series as PixelSpacing, SliceThickness and
    # slice positions): at 512 px and 0.45 mm the head is about 15 cm wide, as an adult's.
    pixel_spacing_mm: PositiveFloat
    slice_thickness_mm: PositiveFloat
    # Cases of these subsets are also written as DICOM CT series (data/raw/phantom_dicom);
    # Testing, the cases no stage trains on, in params.yaml: all cases would double the stage's
    # time and add ~300 MB (docs/phantom.md).
    dicom_subsets: tuple[Literal["Training", "Testing"], ...]
    workers: NonNegativeInt  # 0 = one per core

    @model_validator(mode="after")
    def _check(self) -> PhantomParams:
        for name in (
            "head_width_share",
            "window_low_hu",
            "window_width_hu",
            "wide_window_width_hu",
            "noise_hu",
            "noise_cutoff_cycles_per_px",
            "blur_sigma_px",
            "csf_hu",
            "hemorrhage_hu",
            "ischemic_mean_drop_hu",
            "ischemic_drop_hu",
            "ischemic_grey_white_loss",
            "epidural_fracture_reach",
            "oedema_rim_px",
            "oedema_drop_hu",
            "lesion_edge_mm",
            "edge_slice_fill",
            "thin_bleed_fill",
            "parenchyma_hu",
            "calcification_hu",
            "sinus_hu",
            "transverse_sinus_mm",
            "periventricular_drop_hu",
            "beam_hardening_hu",
            "skull_mm",
            "scalp_mm",
            "scalp_fat_share",
            "ear_length_mm",
            "head_holder_hu",
            "streak_hu",
            "inner_table_halo_hu",
            "inner_table_halo_mm",
            "tilt_deg",
        ):
            _ordered_range(getattr(self, name), name)
        _shares(self.hemorrhage_subtype_share, HEMORRHAGE_SUBTYPES, "hemorrhage_subtype_share")
        _shares(self.ischemia_territory_share, ISCHEMIA_TERRITORIES, "ischemia_territory_share")
        if self.ischemic_drop_hu[0] <= 0.0:
            raise ValueError("ischemic_drop_hu must start above 0: an infarct changes its pixels")
        low, high = self.ischemic_drop_hu
        if not low <= self.ischemic_mean_drop_hu[0] <= self.ischemic_mean_drop_hu[1] <= high:
            raise ValueError("ischemic_mean_drop_hu must lie within ischemic_drop_hu")
        _distinct(self.dicom_subsets, "dicom_subsets")
        if self.hemorrhagic_cases_without_mask >= self.hemorrhagic_cases:
            raise ValueError("hemorrhagic_cases_without_mask must be below hemorrhagic_cases")
        low, high = self.parenchyma_hu
        for name in ("grey_matter_hu", "white_matter_hu"):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} must lie within parenchyma_hu {list(self.parenchyma_hu)}")
        if (
            self.first_hemorrhagic_case + self.hemorrhagic_cases + self.testing_cases_per_class
            > 1000
        ):
            raise ValueError("hemorrhagic case ids must fit in 3 digits (first_hemorrhagic_case)")
        ischemic_total = self.ischemic_cases + self.testing_cases_per_class
        if self.first_ischemic_case + ISCHEMIC_ID_MAX_STEP * ischemic_total > 9_999_999:
            raise ValueError("ischemic case ids must fit in 7 digits (first_ischemic_case)")
        return self


class StoredWindow(StrictModel):
    """Display window for 16-bit images, in the file's stored units (not HU): `level -
    width/2` becomes 0 and `level + width/2` becomes 255. CT stored as HU + 1024 (the usual
    16-bit PNG export) gets the training slices' brain window, W 80 / L 40 HU, from 1064/80."""

    level: float
    width: PositiveFloat


class ExtractParams(StrictModel):
    """Stage `extract`: the archive (zip or unpacked folder) and which CT subsets to read.

    `max_pixels` and `window_16bit` also govern the new-images command (`python -m
    stages.infer --input ...`), so new slices are read exactly as the training slices were.
    """

    archive: Annotated[str, Field(min_length=1)]
    subsets: tuple[Literal["Training", "Testing"], ...]
    mask_suffix: Annotated[str, Field(pattern=r"^[\w.()+-]*$")]
    max_uncompressed_mb: PositiveFloat
    # Files and folders of the archive (zip members, or entries of an unpacked folder): each
    # costs memory when listed, whatever its size, so more are refused before listing them
    # all. The reference reports 7,745 CT slices after its augmentation, about 15,000 files
    # with their masks; the default leaves room for the MRI and PET folders (not counted).
    max_entries: PositiveInt
    # Width x height read from each file's header; larger images are refused undecoded.
    max_pixels: PositiveInt
    window_16bit: StoredWindow
    # Geometry of archives that carry none (the Kaggle PNGs): typical head CT, a 512 px field
    # of view of about 23 cm and 5 mm axial slices. An archive's spacing.json overrides both.
    pixel_spacing_mm: PositiveFloat
    slice_thickness_mm: PositiveFloat
    # Processes that decode, convert and write the pairs (the archive is read by one).
    workers: NonNegativeInt  # 0 = one per core

    @field_validator("subsets")
    @classmethod
    def _check_subsets(cls, subsets: tuple[str, ...]) -> tuple[str, ...]:
        if not subsets:
            raise ValueError("must name at least one of Training, Testing")
        if len(set(subsets)) != len(subsets):
            raise ValueError(f"lists a subset twice: {list(subsets)}")
        return subsets


class CountBounds(StrictModel):
    min: NonNegativeInt
    max: PositiveInt

    @model_validator(mode="after")
    def _check(self) -> CountBounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class ValidateParams(StrictModel):
    """Stage `validate`: bounds of the Great Expectations data-quality suite."""

    min_side: PositiveInt
    max_side: PositiveInt
    slices_per_class: CountBounds
    cases_per_class: CountBounds
    min_lesion_slice_share: Probability
    workers: NonNegativeInt  # 0 = one per core

    @model_validator(mode="after")
    def _check(self) -> ValidateParams:
        if self.min_side > self.max_side:
            raise ValueError(
                f"min_side ({self.min_side}) must not exceed max_side ({self.max_side})"
            )
        return self


class HeadCropParams(StrictModel):
    """Each slice cropped to a square round its head before the resize to `image_size`
    (pipeline/headcrop.py), in `colorize` and in the new-images command alike."""

    # The most a head is enlarged (the square's side is at least the slice's shorter side over
    # it); 1.0 keeps every slice whole.
    max_zoom: Annotated[float, Field(ge=1.0, le=4.0)]


class ColorizeParams(StrictModel):
    """Stage `colorize`: image resize interpolation (masks always use nearest)."""

    image_interpolation: Literal["area", "linear"]
    workers: NonNegativeInt  # 0 = one per core


SplitShare = Annotated[float, Field(gt=0.0, lt=1.0)]


class SplitRatios(StrictModel):
    """Shares of each class's cases per split; all three > 0 so every split has every class."""

    train: SplitShare
    valid: SplitShare
    test: SplitShare

    @model_validator(mode="after")
    def _check(self) -> SplitRatios:
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + valid + test must be 1.0, got {total:g}")
        return self


class SplitParams(StrictModel):
    """Stage `split`: case-level (patient-level) split, stratified by class.

    `mini_test_per_class` test slices with lesions per class form `mini_test`, the slices
    that training previews after every epoch and that `infer` shows.
    """

    ratios: SplitRatios
    mini_test_per_class: PositiveInt


def _distinct(values: tuple, name: str) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must be distinct, got {list(values)}")


class BarrelParams(StrictModel):
    """Barrel (amount > 0) and pincushion (amount < 0) distortion, the reference's formula.

    `radius` is a share of the image width; `centres` are (x, y) shares of width and height.
    Amount -1 is excluded: there the formula's limit at the centre is a circle, not a point,
    so the warp would tear the image open.
    """

    radius: Annotated[float, Field(gt=0.0, le=1.0)]
    amounts: tuple[Annotated[float, Field(gt=-1.0, le=1.0)], ...]
    centres: tuple[tuple[Probability, Probability], ...]

    @model_validator(mode="after")
    def _check(self) -> BarrelParams:
        if 0.0 in self.amounts:
            raise ValueError("amounts must be non-zero (amount 0 is the identity: a plain copy)")
        _distinct(self.amounts, "amounts")
        _distinct(self.centres, "centres")
        return self


class ElasticParams(StrictModel):
    """Elastic deformation (Simard et al. 2003): uniform noise smoothed by a Gaussian of
    `sigma` pixels, scaled by `alpha` pixels; `variants` random fields per original."""

    alpha: PositiveFloat
    sigma: PositiveFloat
    variants: PositiveInt


class AugmentParams(StrictModel):
    """Stage `augment`: offline distortion of the hemorrhagic training slices.

    `target_ratio` is the wanted hemorrhagic:ischemic slice ratio in train (1.0 = balanced).
    """

    target_ratio: Annotated[float, Field(gt=0.0, le=10.0)]
    transforms: tuple[Literal["barrel", "pincushion", "elastic"], ...]
    barrel: BarrelParams
    elastic: ElasticParams
    workers: NonNegativeInt  # 0 = one per core

    @model_validator(mode="after")
    def _check(self) -> AugmentParams:
        if not self.transforms:
            raise ValueError("transforms must name at least one of barrel, pincushion, elastic")
        _distinct(self.transforms, "transforms")
        amounts = self.barrel.amounts
        if "barrel" in self.transforms and not any(a > 0 for a in amounts):
            raise ValueError("transforms lists barrel but barrel.amounts has no positive amount")
        if "pincushion" in self.transforms and not any(a < 0 for a in amounts):
            raise ValueError(
                "transforms lists pincushion but barrel.amounts has no negative amount"
            )
        return self


class ModelParams(StrictModel):
    """FlexUNet knobs (pipeline/model/network.py). The reference is base_filters 16, base_kernels 9,
    num_layers 8, dropout_rate 0.05, dilation 1, normalization none, no input_normalize, and a
    max_working_size of at least its image size."""

    base_filters: PositiveInt
    base_kernels: Annotated[int, Field(ge=1, le=15)]  # k: level i uses max(3, k - 2i)
    num_layers: Annotated[int, Field(ge=2, le=9)]  # levels, the bridge included
    dropout_rate: Annotated[float, Field(ge=0.0, lt=1.0)]  # level i drops rate * i
    dilation: PositiveInt
    # after every conv: batch (statistics over the batch, running means at inference),
    # instance (each image's own statistics, in training and inference alike) or none
    normalization: Literal["batch", "instance", "none"]
    input_normalize: bool  # x / 255 inside the model
    residual: bool  # 1x1-projected shortcut around every conv block
    # Larger inputs run the UNet behind a strided stem at <= this size (plus one full-size conv)
    max_working_size: Annotated[int, Field(ge=16)]
    # Starting probability of each lesion class: the softmax head's bias is set to the log of
    # these priors (0 = zero bias, every class a third, as the reference starts).
    head_foreground_prior: Annotated[float, Field(ge=0.0, lt=0.5)]

    @model_validator(mode="after")
    def _check(self) -> ModelParams:
        deepest = self.dropout_rate * (self.num_layers - 1)
        if deepest >= 1.0:
            raise ValueError(
                f"dropout_rate {self.dropout_rate} x (num_layers - 1) = {deepest:g} must stay "
                "below 1: the deepest level would drop every activation"
            )
        return self


def stem_stride(image_size: int, max_working_size: int) -> int:
    """Stride of the FlexUNet's stem (pipeline/model/network.py): the smallest power of two
    that brings image_size down to max_working_size or less, so the UNet itself runs at
    image_size / stride.
    """
    stride = 1
    while image_size // stride > max_working_size:
        stride *= 2
    return stride


class ReduceLrParams(StrictModel):
    """ReduceLROnPlateau on val_dice_mean (mode max); needs lr_schedule constant."""

    enabled: bool
    factor: Annotated[float, Field(gt=0.0, lt=1.0)]
    patience: NonNegativeInt


class EarlyStoppingParams(StrictModel):
    """EarlyStopping on val_dice_mean (mode max)."""

    enabled: bool
    patience: NonNegativeInt


class RandomAffineParams(StrictModel):
    """Online rotation and scaling of training slices about their centre, each slice with
    probability `probability`; the scale is drawn log-uniformly within `scale`."""

    probability: Probability
    rotation_max_deg: Annotated[float, Field(ge=0.0, le=180.0)]
    scale: tuple[PositiveFloat, PositiveFloat]

    @model_validator(mode="after")
    def _check(self) -> RandomAffineParams:
        _ordered_range(self.scale, "scale")
        return self


class RandomIntensityParams(StrictModel):
    """Online re-windowing of training slices, each with probability `probability`: grey
    g -> ((g / 255) ** gamma - 0.5) * contrast * 255 + 127.5 + brightness, clipped to 0-255;
    gamma and contrast drawn log-uniformly, brightness uniformly."""

    probability: Probability
    contrast: tuple[PositiveFloat, PositiveFloat]
    brightness_grey: tuple[float, float]
    gamma: tuple[PositiveFloat, PositiveFloat]

    @model_validator(mode="after")
    def _check(self) -> RandomIntensityParams:
        for name in ("contrast", "brightness_grey", "gamma"):
            _ordered_range(getattr(self, name), name)
        return self


REGION_LOSS_NAMES = ("dice", "tversky")  # the losses without a cross-entropy term


class TrainParams(StrictModel):
    """Stage `train` (the learning rate is the top-level `lr`)."""

    epochs: PositiveInt
    batch_size: PositiveInt
    loss: Literal["categorical_crossentropy", "dice", "dice_ce", "focal", "tversky"]
    # Each class's pixels weigh this much in the loss's cross-entropy term, one weight per
    # rgb_map key (background included); all 1 is the plain cross-entropy.
    cross_entropy_class_weights: dict[str, PositiveFloat]
    optimizer: Literal["adam", "adamw"]
    weight_decay: Annotated[float, Field(ge=0.0)]  # AdamW only
    clipvalue: Annotated[float, Field(gt=0.0)]
    lr_schedule: Literal["constant", "cosine"]
    # The rate rises linearly from 0 to `lr` over this many epochs first (a fraction is a
    # share of an epoch's steps; a run of fewer epochs ends before the rate reaches `lr`);
    # 0 = from `lr` at once.
    warmup_epochs: Annotated[float, Field(ge=0.0)]
    # The floor of the learning rate: where the cosine schedule ends, or the lowest rate
    # ReduceLROnPlateau may set.
    min_lr: Annotated[float, Field(ge=0.0)]
    reduce_lr: ReduceLrParams
    early_stopping: EarlyStoppingParams
    balanced_sampling: bool  # draw Hemorrhagic and Ischemic slices equally often
    # This share of the training slices is drawn from those holding a lesion, split evenly
    # over the lesion classes (nnU-Net's foreground oversampling, a third there); 0 = none.
    foreground_oversampling: Annotated[float, Field(ge=0.0, lt=1.0)]
    random_flip: bool  # left-right flips of training slices
    random_affine: RandomAffineParams
    random_intensity: RandomIntensityParams
    shuffle_buffer: PositiveInt
    cache: Literal["auto", "memory", "disk", "none"]  # decoded slices
    cache_memory_mb: PositiveFloat  # `auto` caches in memory up to this size
    mixed_precision: bool  # mixed_float16 (GPU); the softmax head stays float32
    jit_compile: bool  # XLA
    intra_op_threads: NonNegativeInt  # 0 = TensorFlow's default (all cores)
    inter_op_threads: NonNegativeInt
    epoch_change_infer: bool  # predict the mini_test slices after every epoch
    # tf.distribute: auto = one device, or all local GPUs mirrored; multi_worker reads TF_CONFIG
    strategy: Literal["auto", "mirrored", "multi_worker"]

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if self.lr_schedule == "cosine" and self.reduce_lr.enabled:
            raise ValueError(
                "lr_schedule cosine and reduce_lr.enabled both set the learning rate; "
                "disable one of them"
            )
        if self.warmup_epochs > 0.0 and self.reduce_lr.enabled:
            raise ValueError(
                "warmup_epochs and reduce_lr.enabled both set the learning rate; "
                "set warmup_epochs to 0 or disable reduce_lr"
            )
        weights_other_than_one = set(self.cross_entropy_class_weights.values()) - {1.0}
        if self.loss in REGION_LOSS_NAMES and weights_other_than_one:
            raise ValueError(
                f"cross_entropy_class_weights: loss {self.loss} has no cross-entropy term to "
                "weigh; set every weight to 1 or use categorical_crossentropy, dice_ce or focal"
            )
        return self


class EvaluateParams(StrictModel):
    """Stage `evaluate`: surface-metric tolerance, bootstrap size, best/worst slices shown."""

    nsd_tolerance_mm: PositiveFloat
    bootstrap_samples: Annotated[int, Field(ge=100, le=1_000_000)]
    overlay_slices: PositiveInt
    batch_size: PositiveInt


class InferParams(StrictModel):
    """Stage `infer` and the new-images command."""

    tta_flip: bool
    batch_size: PositiveInt
    latency_repeats: PositiveInt
    overlay_alpha: Probability
    # DICOM input: the brain window applied to HU before the model (the training window).
    window_level_hu: float
    window_width_hu: PositiveFloat
    # "Hemorrhage present" when the predicted hemorrhage volume reaches this many mL. Used only
    # when metrics/evaluate.json holds no validated `triage_threshold_ml_hemorrhagic`; not
    # validated itself: 0.1 mL (about 100 voxels of 0.45 x 0.45 x 5 mm) ignores a few stray
    # pixels.
    triage_threshold_ml_hemorrhagic: Annotated[float, Field(ge=0.0)]
    max_dicom_file_mb: PositiveFloat  # larger input files are refused unread
    # A DICOM series of more pixels (slices x rows x columns) is refused before any is decoded:
    # memory per series grows with its pixels (docs/real-data.md, "Segmenting a CT series").
    max_series_pixels: PositiveInt


# Each section is named for its stage, `validate` too: an instance's `params.validate` is the
# section, while `Params.validate`, pydantic's deprecated v1 classmethod, stays unused. Pydantic
# warns about that shadowing when it builds the class; this one name, and no other, is allowed.
warnings.filterwarnings(
    "ignore", message='Field name "validate" in "Params" shadows', category=UserWarning
)


class Params(StrictModel):
    seed: NonNegativeInt
    lr: Annotated[float, Field(gt=0.0, le=1.0)]
    image_size: Annotated[int, Field(ge=16, le=1024)]
    rgb_map: dict[str, Rgb]
    phantom: PhantomParams
    extract: ExtractParams
    validate: ValidateParams  # see the note above the class
    head_crop: HeadCropParams
    colorize: ColorizeParams
    split: SplitParams
    augment: AugmentParams
    model: ModelParams
    train: TrainParams
    evaluate: EvaluateParams
    infer: InferParams

    @field_validator("rgb_map")
    @classmethod
    def _check_rgb_map(cls, rgb_map: dict[str, Rgb]) -> dict[str, Rgb]:
        # The order fixes the class indices; the source classes keep 1, 2, ... so the data
        # stages' masks mean the same whatever classes follow them (pipeline/classes.py).
        expected = [classes.BACKGROUND, *classes.SOURCE_CLASSES]
        if list(rgb_map)[: len(expected)] != expected:
            raise ValueError(
                f"must start with {expected} in this order (it fixes the class indices "
                f"0, 1, 2; further lesion classes may follow), got {list(rgb_map)}"
            )
        misnamed = [name for name in list(rgb_map)[1:] if not re.match(classes.NAME_PATTERN, name)]
        if misnamed:
            raise ValueError(
                f"lesion class names must match {classes.NAME_PATTERN} (they become folder "
                f"names and, lower-cased, metric keys), got {misnamed}"
            )
        if len(set(rgb_map.values())) != len(rgb_map):
            raise ValueError("colours must be distinct")
        return rgb_map

    @model_validator(mode="after")
    def _check_class_weights(self) -> Params:
        weighted = list(self.train.cross_entropy_class_weights)
        if sorted(weighted) != sorted(self.rgb_map):
            raise ValueError(
                f"train.cross_entropy_class_weights must weigh exactly the classes of rgb_map "
                f"{list(self.rgb_map)}, got {weighted}"
            )
        return self

    @model_validator(mode="after")
    def _check_runnable(self) -> Params:
        """Rules across sections that decide whether the pipeline can run at all."""
        model = self.model
        stride = stem_stride(self.image_size, model.max_working_size)
        downsampling = stride * 2 ** (model.num_layers - 1)
        if self.image_size % downsampling:
            lower = self.image_size - self.image_size % downsampling
            raise ValueError(
                f"image_size {self.image_size} must be divisible by {downsampling}: the UNet "
                f"halves it {model.num_layers - 1} times (model.num_layers {model.num_layers})"
                + (
                    f" behind a stem of stride {stride} (image_size above "
                    f"model.max_working_size {model.max_working_size})"
                    if stride > 1
                    else ""
                )
                + f"; use image_size {lower or downsampling} or {lower + downsampling}, "
                "or fewer model.num_layers"
            )
        return self

    @property
    def palette(self) -> tuple[Rgb, ...]:
        """Mask colours by class index (pipeline/classes.py)."""
        return classes.palette(self.rgb_map)

    @property
    def lesion_classes(self) -> tuple[classes.LesionClass, ...]:
        """The lesion classes of rgb_map, in class-index order (pipeline/classes.py)."""
        return classes.lesion_classes(self.rgb_map)


def _format_location(location: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in location:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<top level>"


def _allowed_keys(location: tuple[int | str, ...]) -> list[str]:
    """Keys the model at `location` accepts, for unknown-key messages."""
    model: type[BaseModel] | None = Params
    for item in location:
        field = model.model_fields.get(str(item)) if model else None
        annotation = field.annotation if field else None
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    if model is None:
        return []
    return list(model.model_fields)


def _excerpt_repr() -> reprlib.Repr:
    shortened = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
    shortened.maxlevel = 2
    shortened.maxlist = shortened.maxtuple = shortened.maxdict = shortened.maxset = 4
    shortened.maxstring = shortened.maxother = shortened.maxlong = 40
    return shortened


_EXCERPT = _excerpt_repr()
MAX_EXCERPT_CHARS = 80


def excerpt(value: object) -> str:
    """A repr of at most MAX_EXCERPT_CHARS characters that never walks the whole value, so a
    huge or deeply shared value costs nothing to quote in an error message."""
    text = _EXCERPT.repr(value)
    return text if len(text) <= MAX_EXCERPT_CHARS else text[: MAX_EXCERPT_CHARS - 3] + "..."


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for item in error.errors():
        location = tuple(item["loc"])
        key = _format_location(location)
        if item["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(location[:-1]))
            lines.append(f"  {key}: unknown key (allowed here: {allowed})")
        elif item["type"] == "value_error" and not location:
            # A cross-field rule: its message names the keys, and the input is the whole file.
            lines.append(f"  {item['msg']}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {excerpt(item.get('input'))})")
    return "\n".join(lines)


def parse_params(raw: object, source: str = "params.yaml") -> Params:
    """Validate an already-loaded YAML document into `Params`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_format_errors(error, source)) from None


class _RefusedYaml(Exception):
    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(f"line {mark.line + 1}: {message}" if mark else message)


class _ParamsLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases and caps nesting as it composes, before a
    single value is built: `yaml.safe_load` has no alias limit, and an alias bomb of a few
    hundred bytes expands to gigabytes as soon as anything walks the values."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _RefusedYaml(
                "YAML anchors and aliases (&name, *name) are not allowed in params: write each "
                "value out",
                event.start_mark,
            )
        self.depth += 1
        try:
            if self.depth > MAX_PARAMS_DEPTH:
                raise _RefusedYaml(
                    f"nested deeper than {MAX_PARAMS_DEPTH} levels", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


# YAML 1.1 (PyYAML's default) reads a float only with a dot in it, so `7e-05`, which DVC writes
# for `dvc exp run -S lr=7e-5`, would load as a string. DVC reads params.yaml as YAML 1.2
# (ruamel.yaml), so floats resolve here by the YAML 1.2 rule, the very pattern ruamel uses: the
# loader and `dvc params diff` see the same number. Quoted scalars stay strings.
_FLOAT_TAG = "tag:yaml.org,2002:float"
_YAML_12_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_ParamsLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ParamsLoader.add_implicit_resolver(_FLOAT_TAG, _YAML_12_FLOAT, list("-+0123456789."))


def parse_params_yaml(text: str, source: str = "params.yaml") -> object:
    """The YAML document `text` as DVC reads params (floats by YAML 1.2), refusing anchors,
    aliases and deep nesting; errors raise `ParamsError` naming `source`."""
    loader = _ParamsLoader(text)
    try:
        return loader.get_single_data()
    except _RefusedYaml as error:
        raise ParamsError(f"{source}: {error}") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{source}: not valid YAML: {error}") from None
    except ValueError as error:  # e.g. an integer beyond Python's 4300-digit conversion limit
        raise ParamsError(f"{source}: unreadable value: {excerpt(str(error))}") from None
    finally:
        loader.dispose()


def load_params(path: Path | str = DEFAULT_PARAMS_PATH) -> Params:
    """Read and validate params.yaml; every stage calls this once at start."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_PARAMS_BYTES + 1)
    except OSError as error:
        raise ParamsError(f"{path}: cannot read parameters file ({error.strerror})") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ParamsError(f"{path}: larger than the {MAX_PARAMS_BYTES:,}-byte limit for params")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ParamsError(f"{path}: not UTF-8 text (byte {error.start})") from None
    return parse_params(parse_params_yaml(text, source=str(path)), source=str(path))
