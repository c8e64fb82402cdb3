"""The phantom's scalp, skull, ears, head holder, streaks and out-of-plane tilt
(pipeline/synthesize/scanner.py and their painting in rendering.py)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from pipeline.params import ParamsError
from pipeline.synthesize.anatomy import (
    PARENCHYMA,
    SKIN_HU,
    Tissue,
    head_scale,
    head_unit_mm,
)
from pipeline.synthesize.layout import plan_cases
from pipeline.synthesize.rendering import (
    TENTORIUM_HEIGHTS,
    CaseModel,
    SliceHeights,
    _skull_base,
    build_case,
    render_slice,
)
from pipeline.synthesize.scanner import EAR_CANAL_HEIGHT, height_unit_mm
from tests.conftest import project_params
from tests.test_synthesize import small_params

UNTILTED = {"tilt_deg": [0.0, 0.0]}
# Drawn after the streaks from the scanner's stream: pinned where a test compares two cases
# whose streak draws differ.
NO_HALO = {"inner_table_halo_hu": [0.0, 0.0]}


def _cases(count: int = 3, **overrides: object) -> list[CaseModel]:
    params = small_params(image_size=256, slices_per_case=12, **overrides)
    return [build_case(spec, params) for spec in plan_cases(params, seed=4)[:count]]


def _head(case: CaseModel, index: int) -> np.ndarray:
    """Inside the skin on slice `index` (untilted cases)."""
    z = float(case.anatomy.heights[index])
    radius = np.hypot(case.grid.u, case.grid.v)
    return radius < case.grid.outline_radius * np.float32(head_scale(z))


def _ear_slices(case: CaseModel) -> list[int]:
    return [i for i, z in enumerate(case.anatomy.heights) if abs(z - EAR_CANAL_HEIGHT) < 0.04]


def test_the_scalp_is_soft_tissue_with_a_fat_layer_of_the_drawn_thickness():
    """Away from the temporal muscles, the skull starts phantom.scalp_mm below the skin: no
    bone above that depth, bone just below it, fat inside the scalp."""
    scalp_mm, fat_share = 6.0, 0.4
    overrides = dict(UNTILTED, scalp_mm=[scalp_mm, scalp_mm], scalp_fat_share=[fat_share] * 2)
    for case in _cases(**overrides, head_holder_probability=0.0):
        anatomy = case.anatomy
        scalp_px = scalp_mm / case.params.pixel_spacing_mm * anatomy.px_scale
        assert anatomy.skin_px + anatomy.fat_px + anatomy.galea_px == pytest.approx(scalp_px)
        assert anatomy.fat_px == pytest.approx(fat_share * scalp_px)
        index = len(anatomy.heights) - 4  # above the skull base and the temporal muscles
        tissue = render_slice(case, index).tissue
        head = _head(case, index)
        depth = cv2.distanceTransform(head.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
        front_back = head & (case.grid.temporal_muscle == 0.0)
        scalp = front_back & (depth < scalp_px - 1.5)
        assert not np.any(tissue[scalp] == Tissue.BONE)
        assert np.any(tissue[scalp] == Tissue.FAT) and np.any(tissue[scalp] == Tissue.SOFT_TISSUE)
        under = front_back & (depth > scalp_px + 1.5) & (depth < scalp_px + 3.0)
        assert np.mean(tissue[under] == Tissue.BONE) > 0.9


def test_the_skull_vault_is_as_thick_as_drawn():
    """phantom.skull_mm sets the vault's thickness: on a mid-height slice, away from the
    temporal muscles, every pixel from the scalp down to skull_mm times the case's skull
    profile (thinner at the temples) is bone, and no bone lies deeper, for a thin and a thick
    skull alike."""
    for skull_mm in (4.0, 8.0):
        overrides = dict(UNTILTED, skull_mm=[skull_mm] * 2, scalp_mm=[5.0, 5.0])
        for case in _cases(2, **overrides, head_holder_probability=0.0):
            anatomy = case.anatomy
            index = int(np.argmin(np.abs(anatomy.heights - 0.5)))  # no skull base, no vertex
            tissue = render_slice(case, index).tissue
            head = _head(case, index)
            depth = cv2.distanceTransform(head.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
            scalp_px = 5.0 / case.params.pixel_spacing_mm * anatomy.px_scale
            skull_px = skull_mm / case.params.pixel_spacing_mm * anatomy.px_scale
            inner_table = scalp_px + skull_px * case.grid.skull_profile
            vault = head & (case.grid.temporal_muscle == 0.0) & (depth < scalp_px + 2.0 * skull_px)
            inside_skull = vault & (depth >= scalp_px + 0.5) & (depth < inner_table - 0.5)
            assert np.all(tissue[inside_skull] == Tissue.BONE)
            bone = vault & (tissue == Tissue.BONE)
            assert np.all(depth[bone] < inner_table[bone] + 0.5)


def test_ears_stick_out_at_ear_level_with_their_canals_and_grow_with_their_length():
    """Soft tissue outside the skin beside the head on the slices near the ear canal's height
    (and nowhere higher), air in the scalp there (the canal); longer ears (phantom.ear_length_mm)
    reach further out from the same case's head."""
    reach = {}
    for length_mm in (50.0, 75.0):
        # Heads narrow enough that the field of view does not crop the ears.
        overrides = dict(UNTILTED, ear_length_mm=[length_mm] * 2, head_width_share=[0.6, 0.6])
        reach[length_mm] = []
        for case in _cases(**overrides, head_holder_probability=0.0):
            farthest = 0.0
            for index in range(len(case.anatomy.heights)):
                rendered = render_slice(case, index)
                outside = ~_head(case, index) & (rendered.tissue == Tissue.SOFT_TISSUE)
                z = float(case.anatomy.heights[index])
                if z > EAR_CANAL_HEIGHT + 0.25:
                    assert not outside.any(), z
                if index in _ear_slices(case):
                    beside = outside & (np.abs(case.grid.u) > 0.85)
                    assert beside.sum() > 20 and np.all(rendered.clean_hu[beside] == SKIN_HU)
                    skin_deep = _head(case, index) & (np.abs(case.grid.u) > 0.8)
                    assert np.any(skin_deep & (rendered.tissue == Tissue.AIR))
                    farthest = max(farthest, float(np.abs(case.grid.u[beside]).max()))
            reach[length_mm].append(farthest)
    assert all(long > short + 0.03 for short, long in zip(reach[50.0], reach[75.0], strict=True))


HOLDER_SLICE = 6  # mid-head, above the ears


def test_the_head_holder_cradles_the_back_of_the_head_only_when_drawn():
    """With phantom.head_holder_probability 1: a cradle (its own density, table label) below
    the head's centre, with a foam pad at fat density between it and the head; with 0: no
    holder and no fat outside the head."""
    for case in _cases(**UNTILTED, head_holder_probability=1.0, head_holder_hu=[-50.0, 80.0]):
        holder = case.scanner.holder
        assert holder is not None and -50.0 <= holder.hu <= 80.0
        rendered = render_slice(case, HOLDER_SLICE)
        tissue, clean = rendered.tissue, rendered.clean_hu
        cradle = (tissue == Tissue.TABLE) & (clean == np.float32(holder.hu))
        pad = (tissue == Tissue.FAT) & ~_head(case, HOLDER_SLICE)
        assert cradle.sum() > 100 and pad.sum() > 100
        assert np.nonzero(cradle | pad)[0].min() > case.anatomy.centre[1]
        assert np.all(clean[pad] == np.float32(-90.0))
    for case in _cases(**UNTILTED, head_holder_probability=0.0):
        assert case.scanner.holder is None
        tissue = render_slice(case, HOLDER_SLICE).tissue
        assert not np.any((tissue == Tissue.FAT) & ~_head(case, HOLDER_SLICE))


def test_streaks_cross_the_skull_base_slices_only_when_drawn():
    """phantom.streak_probability 1 against 0 (the same cases otherwise): the final images
    differ on the skull-base slices only, in and just around the head (blur), by at most the
    streaks' summed amplitude, along thin lines; the tissue model, labels and lesion masks are
    the same (a scanner artefact, unlabelled)."""
    with_streaks = _cases(streak_probability=1.0, streak_hu=[30.0, 30.0], **UNTILTED, **NO_HALO)
    without = _cases(streak_probability=0.0, **UNTILTED, **NO_HALO)
    changed_slices = 0
    for case, plain in zip(with_streaks, without, strict=True):
        assert case.scanner.streaks and not plain.scanner.streaks
        assert all(abs(streak.hu) == 30.0 for streak in case.scanner.streaks)
        for index, z in enumerate(case.anatomy.heights):
            streaked, clean = render_slice(case, index), render_slice(plain, index)
            for name in ("tissue", "lesion", "clean_hu", "baseline_hu"):
                assert np.array_equal(getattr(streaked, name), getattr(clean, name)), name
            difference = streaked.hu - clean.hu
            changed = np.abs(difference) > 1.0
            if z > 0.17:
                assert not changed.any(), z
                continue
            near_head = cv2.dilate(_head(case, index).astype(np.uint8), np.ones((9, 9), np.uint8))
            assert not np.any(changed & (near_head == 0))
            assert np.all(np.abs(difference) <= 30.0 * len(case.scanner.streaks) + 1e-3)
            changed_slices += int(changed.any())
            assert changed.sum() < 0.3 * _head(case, index).sum()  # thin lines
    assert changed_slices >= 3


def test_the_inner_table_halo_brightens_the_cavity_along_the_bone_only_when_drawn():
    """phantom.inner_table_halo_hu 10 against 0 (the same cases otherwise: drawn last from
    the scanner's stream): the final images differ inside the head only, by at most 10 HU;
    brain and CSF within a few pixels of the vault gain several HU, brain far inside none;
    the tissue model, labels and lesion masks are the same (unlabelled)."""
    halo_mm = {"inner_table_halo_mm": [4.0, 4.0], **UNTILTED}
    with_halo = _cases(inner_table_halo_hu=[10.0, 10.0], **halo_mm)
    without = _cases(inner_table_halo_hu=[0.0, 0.0], **halo_mm)
    for case, plain in zip(with_halo, without, strict=True):
        assert case.scanner.inner_table_halo_hu == 10.0 and plain.scanner.inner_table_halo_hu == 0
        for index in range(0, len(case.anatomy.heights), 3):
            bright, clean = render_slice(case, index), render_slice(plain, index)
            for name in ("tissue", "lesion", "clean_hu", "baseline_hu"):
                assert np.array_equal(getattr(bright, name), getattr(clean, name)), name
            difference = bright.hu - clean.hu
            assert difference.min() > -1e-3 and difference.max() <= 10.0 + 1e-3
            near_head = (
                cv2.dilate(_head(case, index).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
            )
            assert not np.any((difference > 0.01) & ~near_head)
            cavity = np.isin(bright.tissue, [*PARENCHYMA, Tissue.CSF])
            from_bone = cv2.distanceTransform(
                (bright.tissue != Tissue.BONE).astype(np.uint8), cv2.DIST_L2, 5
            )
            z = float(case.anatomy.heights[index])
            rho = np.hypot(case.grid.u, case.grid.v) / (case.grid.outline_radius * head_scale(z))
            along = cavity & (from_bone <= 3.0) & (rho > 0.75)  # the vault, not skull-base bones
            deep = cavity & (from_bone > 40.0)
            assert difference[along].mean() > 3.0, index
            if deep.any():
                assert difference[deep].max() < 0.1, index


def _skull_base_tissue(case: CaseModel, index: int) -> np.ndarray:
    """The skull base's bone, air, fat, globes and posterior fossa behind the petrous ridges
    on slice `index`; not the posterior fossa above the ridges, which is drawn at the
    tentorium's middle height, not tilted (a tentorium height at its top leaves it out)."""
    parts = _skull_base(case.grid, case.anatomy, SliceHeights(case, index), TENTORIUM_HEIGHTS[1])
    return parts.bone | parts.air | parts.fat | parts.eyes | parts.posterior_fossa


def test_a_tilted_slice_reaches_the_skull_base_on_its_lower_side_only():
    """Tilted by phantom.tilt_deg, a slice's height grows along the head's front-back axis
    at tan(tilt) (in head over height units); on slices at heights 0.2-0.3 (above the skull
    base when untilted) the skull base shows on the side the slice dips to, never on the
    other, and the image differs from the untilted one."""
    tilted = _cases(count=6, tilt_deg=[15.0, 15.0])
    untilted = _cases(count=6, **UNTILTED)
    signs = set()
    for case, plain in zip(tilted, untilted, strict=True):
        scanner = case.scanner
        assert abs(scanner.tilt_deg) == 15.0 and plain.scanner.tilt_slope == 0.0
        ratio = head_unit_mm(case.params) / height_unit_mm(case.params)
        assert scanner.tilt_slope == pytest.approx(math.tan(math.radians(scanner.tilt_deg)) * ratio)
        signs.add(np.sign(scanner.tilt_deg))
        lower_side = case.grid.v * np.float32(np.sign(scanner.tilt_deg)) < 0.0
        checked = 0
        for index, z in enumerate(case.anatomy.heights):
            if not 0.2 < z < 0.3:
                continue
            assert not _skull_base_tissue(plain, index).any()
            shown = _skull_base_tissue(case, index)
            assert shown.sum() > 50 and not np.any(shown & ~lower_side)
            assert not np.array_equal(
                render_slice(case, index).tissue, render_slice(plain, index).tissue
            )
            checked += 1
        assert checked >= 1
    assert signs == {-1.0, 1.0}


@pytest.mark.parametrize(
    ("phantom", "expected"),
    [
        ({"streak_hu": [40.0, 10.0]}, "streak_hu must be [low, high]"),
        ({"streak_probability": 1.5}, "phantom.streak_probability"),
        ({"tilt_deg": [0.0, 45.0]}, "phantom.tilt_deg"),
        ({"scalp_mm": [0.0, 5.0]}, "phantom.scalp_mm"),
        ({"skull_mm": [8.0, 5.0]}, "skull_mm must be [low, high]"),
        ({"scalp_fat_share": [0.5, 0.9]}, "phantom.scalp_fat_share"),
        ({"ear_length_mm": [70.0, 50.0]}, "ear_length_mm must be [low, high]"),
        ({"head_holder_probability": -0.1}, "phantom.head_holder_probability"),
        ({"head_holder_hu": [-900.0, 0.0]}, "phantom.head_holder_hu"),
        ({"inner_table_halo_hu": [12.0, 0.0]}, "inner_table_halo_hu must be [low, high]"),
        ({"inner_table_halo_hu": [-1.0, 5.0]}, "phantom.inner_table_halo_hu"),
        ({"inner_table_halo_mm": [0.0, 4.0]}, "phantom.inner_table_halo_mm"),
        ({"ears": True}, "phantom.ears: unknown key"),
    ],
)
def test_scanner_params_errors_name_the_key(phantom, expected):
    with pytest.raises(ParamsError) as caught:
        project_params({"phantom": phantom})
    assert expected in str(caught.value)
