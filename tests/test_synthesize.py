"""Stage `synthesize` (pipeline/synthesize/): tissue densities, lesion masks, determinism and the
Kaggle archive layout of the CT phantom."""

from __future__ import annotations

import functools
import io
import re
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.io import SPACING_FILE, parse_spacing_json, window_to_uint8
from pipeline.params import (
    HEMORRHAGE_SUBTYPES,
    ISCHEMIA_TERRITORIES,
    ParamsError,
    PhantomParams,
)
from pipeline.synthesize.anatomy import (
    BASE_TOP,
    LENS_HU,
    MUSCLE_HU,
    PARENCHYMA,
    TABLE_HU,
    VITREOUS_HU,
    Tissue,
    flat,
    sample_acquisition,
    sample_anatomy,
    smoothstep,
    tissue_in,
)
from pipeline.synthesize.archive import SortedZipWriter, synthesize_archive
from pipeline.synthesize.layout import ARCHIVE_ROOT, CT_DATA_ROOT, plan_cases
from pipeline.synthesize.lesions import KIND_HEIGHTS
from pipeline.synthesize.montage import phantom_montage
from pipeline.synthesize.rendering import (
    TENTORIUM_HEIGHTS,
    CaseModel,
    PhantomSlice,
    SliceHeights,
    _skull_base,
    _tentorium_height,
    build_case,
    render_slice,
)
from pipeline.synthesize.statistics import lesion_contrast_hu, summarise
from tests.conftest import project_params, run_stage_command

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "image_size": 64,
    "hemorrhagic_cases": 3,
    "ischemic_cases": 3,
    "slices_per_case": 6,
    "hemorrhagic_cases_without_mask": 1,
    "testing_cases_per_class": 1,
    "files_per_other_modality": 3,
    "workers": 1,
}


SMALL_HEAD_WIDTH = (0.55, 0.95)  # params.yaml's phantom.head_width_share


def small_params(**overrides: object) -> PhantomParams:
    return project_params({"phantom": {**SMALL, **overrides}}).phantom


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("phantom") / "phantom.zip"
    summary, cases = synthesize_archive(path, small_params(), seed=7)
    return path, summary, cases


@pytest.fixture(scope="module")
def rendered_slices() -> list[tuple[PhantomParams, object]]:
    """Every slice of four cases (two per class) at 256 px, with their params: at 128 px the
    cortex ribbon of the smallest heads (0.55 of the image) is a pixel or two wide."""
    params = small_params(image_size=256)
    cases = plan_cases(params, seed=3)
    chosen = [c for c in cases if c.class_name == "Hemorrhagic"][:2]
    chosen += [c for c in cases if c.class_name == "Ischemic"][:2]
    slices = []
    for spec in chosen:
        case = build_case(spec, params)
        slices += [(spec, render_slice(case, i)) for i in range(params.slices_per_case)]
    return [(params, spec, rendered) for spec, rendered in slices]


def test_window_maps_the_brain_window_to_8_bit():
    hu = np.array([-1000.0, 0.0, 40.0, 80.0, 1000.0, 20.0], dtype=np.float32)
    assert window_to_uint8(hu, 40.0, 80.0).tolist() == [0, 0, 128, 255, 255, 64]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-2000, 3000, width=32), min_size=2, max_size=20),
    st.floats(-50, 100),
    st.floats(1, 400),
)
def test_window_is_monotonic_and_clipped(values, level, width):
    hu = np.sort(np.array(values, dtype=np.float32))
    image = window_to_uint8(hu, level, width)
    assert image.dtype == np.uint8
    assert np.all(np.diff(image.astype(int)) >= 0)
    assert image[hu <= level - width / 2].max(initial=0) == 0
    assert image[hu >= level + width / 2].min(initial=255) == 255


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    labels=st.lists(st.sampled_from(list(Tissue)), max_size=len(Tissue)),
    box=st.tuples(st.integers(0, 20), st.integers(1, 40), st.integers(0, 20), st.integers(1, 40)),
)
def test_tissue_in_is_isin_on_whole_maps_and_windows(seed, labels, box):
    """The lookup-table membership the renderer uses in place of np.isin (speed) answers as
    np.isin does, for any label set (none and all included), on a window of a map as well."""
    tissue = np.random.default_rng(seed).integers(0, 256, (60, 61), dtype=np.uint8)
    top, height, left, width = box
    for tissue_map in (tissue, tissue[top : top + height, left : left + width]):
        found = tissue_in(tissue_map, labels)
        assert found.dtype == bool
        assert np.array_equal(found, np.isin(tissue_map, labels))


def test_flat_writes_reach_the_array_and_refuse_a_window():
    """`flat` is a view (a write at flat indices lands in the array); on a window of an array,
    where `ravel()` would copy and the write be lost, it refuses."""
    image = np.zeros((4, 5), dtype=np.float32)
    flat(image)[[0, 7]] = 1.0
    assert image[0, 0] == 1.0 and image[1, 2] == 1.0 and image.sum() == 2.0
    with pytest.raises(ValueError, match="contiguous"):
        flat(image[:, 1:3])


def test_slice_arrays_have_the_image_shape(rendered_slices):
    for params, _, rendered in rendered_slices:
        size = params.image_size
        for array in (rendered.hu, rendered.clean_hu, rendered.baseline_hu):
            assert array.shape == (size, size) and array.dtype == np.float32
        assert rendered.tissue.shape == (size, size) and rendered.tissue.dtype == np.uint8
        assert rendered.lesion.shape == (size, size) and rendered.lesion.dtype == bool


def test_tissue_densities_follow_the_params(rendered_slices):
    seen: set[Tissue] = set()
    for params, _, rendered in rendered_slices:
        tissue, clean = rendered.tissue, rendered.clean_hu
        seen |= {Tissue(value) for value in np.unique(tissue)}

        def values(label: Tissue, clean=clean, tissue=tissue) -> np.ndarray:
            return clean[tissue == label]

        assert np.all(values(Tissue.AIR) <= -900)
        assert np.all(values(Tissue.FAT) < -50)
        assert np.all((values(Tissue.SOFT_TISSUE) >= 0) & (values(Tissue.SOFT_TISSUE) <= 60))
        assert np.all(values(Tissue.BONE) >= 300), "skull must saturate far above 80 HU"
        low, high = params.head_holder_hu  # the table, or a head holder's cradle
        table = values(Tissue.TABLE)
        assert np.all((table == TABLE_HU) | ((table >= low) & (table <= high)))
        low, high = params.csf_hu
        assert np.all((values(Tissue.CSF) >= low) & (values(Tissue.CSF) <= high))
        low, high = params.parenchyma_hu
        for label in PARENCHYMA:
            assert np.all((values(label) >= low) & (values(label) <= high))
        assert np.all(values(Tissue.FALX) == params.falx_hu)
        # Arteries sit 8 HU below the sinuses, or up to 5 HU above them (hyperdense sign).
        low, high = params.sinus_hu
        vessels = values(Tissue.VESSEL)
        assert np.all((vessels >= low - 8.0) & (vessels <= high + 5.0))
        # A bleed replaces what was there (by edge_slice_fill on its end slices: partial
        # volume), so it lies between that and hemorrhage_hu.
        low, high = params.hemorrhage_hu
        bleeding = tissue == Tissue.HEMORRHAGE
        bleed, before = clean[bleeding], rendered.baseline_hu[bleeding]
        assert np.all((bleed >= np.minimum(before, low) - 1e-4) & (bleed <= high + 1e-4))
        infarct = tissue == Tissue.ISCHEMIA
        drop = rendered.baseline_hu[infarct] - clean[infarct]
        low, high = params.ischemic_drop_hu
        assert np.all((drop >= low - 1e-4) & (drop <= high + 1e-4))
        # The infarct sits in parenchyma: without it, those pixels are grey or white matter.
        assert np.all((rendered.baseline_hu[infarct] >= 25) & (rendered.baseline_hu[infarct] <= 40))
    assert seen >= set(Tissue), f"tissues never rendered: {set(Tissue) - seen}"


def test_cortex_is_brighter_than_white_matter(rendered_slices):
    """Above the skull base: below it the grey label also holds the cerebellum, between grey
    and white, and the white one its folia and the brainstem."""
    heights = {}
    for position, (params, spec, rendered) in enumerate(rendered_slices):
        if spec not in heights:
            heights[spec] = build_case(spec, params).anatomy.heights
        if heights[spec][position % params.slices_per_case] < BASE_TOP:
            continue
        grey = rendered.clean_hu[rendered.tissue == Tissue.GREY_MATTER]
        white = rendered.clean_hu[rendered.tissue == Tissue.WHITE_MATTER]
        if grey.size > 50 and white.size > 50:
            assert grey.mean() > white.mean() + 3


def test_noise_on_top_of_the_blurred_tissue_model_is_within_range(rendered_slices):
    """The image is the blurred tissue model plus noise of the case's SD, once the scanner's
    other additions are off: the inner-table halo (drawn last from the scanner's stream, so
    pinning it changes nothing else) and the streaks (both tests/test_phantom_scanner.py)."""
    params = rendered_slices[0][0].model_copy(update={"inner_table_halo_hu": (0.0, 0.0)})
    specs = {spec.case_id: spec for _, spec, _ in rendered_slices}
    checked = 0
    for spec in specs.values():
        case = build_case(spec, params)
        if case.scanner.streaks:
            continue
        acquisition = case.acquisition
        low, high = params.noise_hu
        assert low <= acquisition.noise_hu <= high
        sigma = acquisition.blur_sigma_px * params.image_size / 512
        for index in range(params.slices_per_case):
            rendered = render_slice(case, index)
            blurred = cv2.GaussianBlur(
                rendered.clean_hu, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE
            )
            noise = float((rendered.hu - blurred).std())
            assert noise == pytest.approx(acquisition.noise_hu, abs=0.01)
            checked += 1
    assert checked >= params.slices_per_case


def test_mask_is_exactly_the_lesion(rendered_slices):
    for _, spec, rendered in rendered_slices:
        lesion_label = Tissue.HEMORRHAGE if spec.class_name == "Hemorrhagic" else Tissue.ISCHEMIA
        assert np.array_equal(rendered.lesion, rendered.tissue == lesion_label)
        assert np.array_equal(rendered.lesion, rendered.clean_hu != rendered.baseline_hu)
        other = Tissue.ISCHEMIA if lesion_label == Tissue.HEMORRHAGE else Tissue.HEMORRHAGE
        assert not np.any(rendered.tissue == other), "a case holds lesions of its class only"


def test_lesions_stay_inside_the_cranium(rendered_slices):
    outside = [Tissue.AIR, Tissue.FAT, Tissue.SOFT_TISSUE, Tissue.BONE, Tissue.TABLE]
    for _, _, rendered in rendered_slices:
        baseline_tissue_hu = rendered.baseline_hu[rendered.lesion]
        assert np.all((baseline_tissue_hu >= 0) & (baseline_tissue_hu <= 60))
        assert not np.any(np.isin(rendered.tissue[rendered.lesion], outside))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), slices=st.integers(4, 12), share=st.floats(0.05, 0.6))
# Tilted stacks of few slices on which a lesion run chosen by the heights at the head's centre
# held no lesion pixel (posterior-fossa runs above the fossa or the pons, a frontal contusion and
# a posterior cerebral infarct above their kinds' heights), and one whose second lesion would
# have moved out of the first one's run.
@example(seed=2007792139, slices=12, share=0.43)
@example(seed=1146852450, slices=9, share=0.43)
@example(seed=1481240446, slices=4, share=0.15)
@example(seed=353079649, slices=5, share=0.58)
@example(seed=281418253, slices=4, share=0.25)
@example(seed=207140649, slices=4, share=0.21)
@example(seed=2082004706, slices=4, share=0.17)
def test_lesion_spans_consecutive_slices_and_leaves_some_free(seed, slices, share):
    params = project_params(
        {
            "phantom": {
                "image_size": 64,
                "hemorrhagic_cases": 1,
                "ischemic_cases": 1,
                "hemorrhagic_cases_without_mask": 0,
                "testing_cases_per_class": 0,
                "slices_per_case": slices,
                "lesion_free_slice_share": share,
            }
        }
    ).phantom
    for spec in plan_cases(params, seed):
        case = build_case(spec, params)
        present = [bool(render_slice(case, i).lesion.any()) for i in range(slices)]
        assert any(present), f"{spec.case_id}: no lesion at all"
        assert sum(not p for p in present) >= max(1, int(share * slices))
        first, last = present.index(True), len(present) - 1 - present[::-1].index(True)
        assert all(present[first : last + 1]), f"{spec.case_id}: lesion not one 3-D blob {present}"


def test_archive_is_deterministic_and_independent_of_workers(tmp_path, small_archive):
    path, _, _ = small_archive
    again = tmp_path / "again.zip"
    synthesize_archive(again, small_params(workers=2), seed=7)
    assert again.read_bytes() == path.read_bytes()
    other = tmp_path / "other.zip"
    synthesize_archive(other, small_params(), seed=8)
    assert other.read_bytes() != path.read_bytes()


def _zip_bytes(members: list[tuple[str, bytes]], names: list[str] | None = None) -> bytes:
    """The archive SortedZipWriter makes of `members` added in the given order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, tempfile.TemporaryFile() as spill:
        writer = SortedZipWriter(archive, names or [name for name, _ in members], spill)
        for name, data in members:
            writer.add(name, data)
        writer.finish()
    return buffer.getvalue()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.binary(max_size=40), min_size=1, max_size=12).flatmap(
        lambda contents: st.permutations(
            [(f"case/{index:02d}.png", data) for index, data in enumerate(contents)]
        )
    )
)
def test_sorted_zip_writer_gives_the_sorted_archive_whatever_the_arrival_order(members):
    """Members arriving in any order (workers finishing out of turn) give the bytes of the same
    members written in name order, which is what every earlier phantom archive holds."""
    assert _zip_bytes(members) == _zip_bytes(sorted(members))
    with zipfile.ZipFile(io.BytesIO(_zip_bytes(members))) as archive:
        assert archive.namelist() == sorted(name for name, _ in members)
        assert all(archive.read(name) == data for name, data in members)


def test_sorted_zip_writer_refuses_unexpected_twice_added_and_missing_members():
    with pytest.raises(ValueError, match=r"b\.png: not an expected archive member"):
        _zip_bytes([("a.png", b"1"), ("b.png", b"2")], names=["a.png"])
    with pytest.raises(ValueError, match=r"a\.png: not an expected archive member, or added twice"):
        _zip_bytes([("a.png", b"1"), ("a.png", b"2")], names=["a.png", "b.png"])
    with pytest.raises(RuntimeError, match=r"1 archive members never added, first b\.png"):
        _zip_bytes([("a.png", b"1")], names=["a.png", "b.png"])
    with pytest.raises(ValueError, match="listed twice"):
        _zip_bytes([], names=["a.png", "a.png"])


def test_archive_layout_matches_the_kaggle_download(small_archive):
    path, summary, _ = small_archive
    params = small_params()
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        assert names == sorted(names)
        assert all(info.compress_type == zipfile.ZIP_STORED for info in infos)
        assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
        assert all(name.startswith(ARCHIVE_ROOT + "/") for name in names)

        pattern = re.compile(
            re.escape(CT_DATA_ROOT)
            + r"/(Training|Testing)/(Hemorrhagic|Ischemic)/(images|mask)/(\d+)/(\d{3})\.png"
        )
        spacing_name = f"{CT_DATA_ROOT}/{SPACING_FILE}"
        assert parse_spacing_json(archive.read(spacing_name), spacing_name) == {
            "pixel_spacing_mm": params.pixel_spacing_mm,
            "slice_thickness_mm": params.slice_thickness_mm,
        }, "the phantom declares the geometry it stands for"
        ct = [
            pattern.fullmatch(name)
            for name in names
            if name.startswith(CT_DATA_ROOT) and name != spacing_name
        ]
        assert all(ct), "every CT member follows subset/class/images|mask/case/slice.png"
        cases: dict[tuple[str, str, str], dict[str, set[str]]] = {}
        for match in ct:
            subset, class_name, kind, case_id, stem = match.groups()
            digits = 3 if class_name == "Hemorrhagic" else 7
            assert len(case_id) == digits
            folders = cases.setdefault(
                (subset, class_name, case_id), {"images": set(), "mask": set()}
            )
            folders[kind].add(stem)
        for class_name, training in (("Hemorrhagic", 3), ("Ischemic", 3)):
            for subset, count in (("Training", training), ("Testing", 1)):
                ids = sorted(c for s, k, c in cases if s == subset and k == class_name)
                assert len(ids) == count, (subset, class_name)
        for key, folders in cases.items():
            assert len(folders["images"]) == params.slices_per_case, key
            assert folders["mask"] in (set(), folders["images"]), f"{key}: masks pair by name"
        unmasked = [key for key, folders in cases.items() if not folders["mask"]]
        assert len(unmasked) == params.hemorrhagic_cases_without_mask
        assert all(s == "Training" and k == "Hemorrhagic" for s, k, _ in unmasked)
        ischemic_ids = [int(c) for s, k, c in sorted(cases) if k == "Ischemic" and s == "Training"]
        assert ischemic_ids == sorted(set(ischemic_ids))

        others = [n for n in names if not n.startswith(f"{ARCHIVE_ROOT}/CT Images/")]
        for modality in ("MRI Images", "PET Images"):
            files = [n for n in others if n.startswith(f"{ARCHIVE_ROOT}/{modality}/")]
            assert len(files) == params.files_per_other_modality
            assert {Path(n).suffix for n in files} == {".png", ".jpg", ".txt"}
        assert len(others) == 2 * params.files_per_other_modality

        for name in names:
            if "/mask/" in name or "/images/" in name:
                array = cv2.imdecode(
                    np.frombuffer(archive.read(name), np.uint8), cv2.IMREAD_UNCHANGED
                )
                assert array.shape == (64, 64) and array.dtype == np.uint8, name
                if "/mask/" in name:
                    assert set(np.unique(array).tolist()) <= {0, 255}, name
    assert summary.slices == 8 * params.slices_per_case
    assert summary.masks == 7 * params.slices_per_case
    assert summary.archive_bytes == path.stat().st_size


def test_case_plan_invariants():
    @settings(max_examples=25, deadline=None)
    @given(
        seed=st.integers(0, 2**32 - 1),
        hemorrhagic=st.integers(1, 12),
        ischemic=st.integers(1, 40),
        testing=st.integers(0, 4),
        data=st.data(),
    )
    def check(seed, hemorrhagic, ischemic, testing, data):
        unmasked = data.draw(st.integers(0, hemorrhagic - 1))
        params = project_params(
            {
                "phantom": {
                    "hemorrhagic_cases": hemorrhagic,
                    "ischemic_cases": ischemic,
                    "testing_cases_per_class": testing,
                    "hemorrhagic_cases_without_mask": unmasked,
                }
            }
        ).phantom
        cases = plan_cases(params, seed)
        assert len(cases) == hemorrhagic + ischemic + 2 * testing
        assert len({(c.class_name, c.case_id) for c in cases}) == len(cases)
        assert len({c.entropy for c in cases}) == len(cases)
        for class_name, digits in (("Hemorrhagic", 3), ("Ischemic", 7)):
            ids = [c.case_id for c in cases if c.class_name == class_name]
            assert all(len(i) == digits and i.isdigit() for i in ids)
            assert ids == sorted(ids)
            subsets = [c.subset for c in cases if c.class_name == class_name]
            assert subsets.count("Testing") == testing
        assert sum(not c.has_mask for c in cases) == unmasked
        assert all(c.has_mask for c in cases if c.subset == "Testing")
        assert plan_cases(params, seed) == cases

    check()


@pytest.mark.parametrize(
    ("phantom", "expected"),
    [
        ({"slices_per_case": 2}, "phantom.slices_per_case: Input should be greater than or equal"),
        ({"slices": 3}, "phantom.slices: unknown key"),
        ({"csf_hu": [15, 0]}, "csf_hu must be [low, high]"),
        ({"noise_hu": "loud"}, "phantom.noise_hu: Input should be a valid"),
        (
            {"hemorrhagic_cases": 5, "hemorrhagic_cases_without_mask": 5},
            "hemorrhagic_cases_without_mask must be below",
        ),
        ({"grey_matter_hu": 45.0}, "grey_matter_hu must lie within parenchyma_hu"),
        ({"first_hemorrhagic_case": 995}, "first_hemorrhagic_case"),
        ({"workers": -1}, "phantom.workers: Input should be greater than or equal to 0"),
        ({"lesion_free_slice_share": 1.0}, "phantom.lesion_free_slice_share"),
        (
            {"lesion_size": {"subdural": {"thickness_mm": [20.0, 5.0]}}},
            "phantom.lesion_size.subdural: Value error, thickness_mm must be [low, high]",
        ),
        (
            {"lesion_size": {"lacunar": {"radius_mm": [1.0, 2.0]}}},
            "phantom.lesion_size.lacunar.radius_mm: unknown key",
        ),
        (
            {"lesion_size": {"lacunar": {"radius_head_units": [0.0, 0.06]}}},
            "phantom.lesion_size.lacunar.radius_head_units[0]: Input should be greater than 0",
        ),
        ({"lesion_size": {"slice_run_share": [0.9, 0.5]}}, "slice_run_share must be [low, high]"),
        ({"ischemic_grey_white_loss": [1.0, 0.3]}, "ischemic_grey_white_loss must be [low, high]"),
        ({"epidural_fracture_reach": [0.2, 1.0]}, "phantom.epidural_fracture_reach[0]"),
    ],
)
def test_params_errors_name_the_key(phantom, expected):
    with pytest.raises(ParamsError) as caught:
        project_params({"phantom": phantom})
    assert expected in str(caught.value)
    assert "phantom" in str(caught.value)


def test_montage_shows_both_classes_in_their_display_colours(small_archive):
    path, _, cases = small_archive
    picture = phantom_montage(path, cases)
    assert picture.ndim == 3 and picture.dtype == np.uint8
    red, green = picture[..., 0].astype(int), picture[..., 1].astype(int)
    # Overlaid at alpha 0.45, tab:red lifts red over green by 0.45 * 175 = 79, tab:green
    # green over red by 0.45 * 121 = 54.
    assert np.sum(red - green > 40) > 10, "hemorrhage overlaid in red"
    assert np.sum(green - red > 40) > 10, "infarct overlaid in green"


@pytest.mark.parametrize("wide_share", [0.0, 0.3, 1.0])
def test_each_case_gets_a_brain_window_or_a_wide_export(wide_share: float) -> None:
    """The window mixture: widths from `window_width_hu` or, with probability
    `wide_window_share`, from `wide_window_width_hu`, never in between; level = low + width/2."""
    params = project_params({"phantom": {"wide_window_share": wide_share}}).phantom
    rng = np.random.default_rng(7)
    draws = [sample_acquisition(rng, params) for _ in range(400)]
    widths = np.array([draw.window_width_hu for draw in draws])
    wide = widths >= params.wide_window_width_hu[0]
    assert np.all(wide | (widths <= params.window_width_hu[1]))
    assert np.all(widths[wide] <= params.wide_window_width_hu[1])
    assert wide.mean() == pytest.approx(wide_share, abs=0.07)
    lows = np.array([draw.window_level_hu - draw.window_width_hu / 2 for draw in draws])
    assert np.all(
        (lows >= params.window_low_hu[0] - 1e-9) & (lows <= params.window_low_hu[1] + 1e-9)
    )


def test_default_size_slice_looks_like_brain_window_ct():
    """One 512 px slice at the ventricle level, against grey-level statistics measured on the
    reference's eight mini_test slices (four are in tests/data/real-ct): black ~50-60 %,
    saturated white 3-15 %, brain median 105-127. Those slices are in W 80 / L 40, so this
    case is too (the default params draw each case's window from a range), with a head 0.75 of
    the image wide (the reference's heads fill 0.64-0.95 of it; the drawn width is not what this
    test is about)."""
    params = project_params(
        {
            "phantom": {
                "head_width_share": [0.75, 0.75],
                "window_low_hu": [0.0, 0.0],
                "window_width_hu": [80.0, 80.0],
                "wide_window_share": 0.0,
            }
        }
    ).phantom
    spec = next(c for c in plan_cases(params, seed=42) if c.class_name == "Ischemic")
    rendered = render_slice(build_case(spec, params), index=params.slices_per_case // 2)
    image = window_to_uint8(rendered.hu, rendered.window_level_hu, rendered.window_width_hu)
    assert image.shape == (512, 512)
    assert 0.4 < np.mean(image == 0) < 0.75
    assert 0.01 < np.mean(image == 255) < 0.2
    brain = np.isin(rendered.tissue, [*PARENCHYMA, Tissue.ISCHEMIA])
    assert brain.mean() > 0.25
    assert 90 <= np.median(image[brain]) <= 130
    ventricles = (rendered.tissue == Tissue.CSF) & (rendered.clean_hu < 20)
    assert ventricles.sum() > 200, "CSF spaces visible at the ventricle level"


def test_stage_writes_the_archive_and_the_montage(tmp_path):
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["phantom"].update(SMALL)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run_stage_command("synthesize", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "INFO stages.synthesize: synthesize: " in result.stderr and "slices/s" in result.stderr
    assert zipfile.is_zipfile(tmp_path / "data/raw/phantom.zip")
    assert (tmp_path / "data/raw/phantom_dicom/cases.csv").is_file()  # tests/test_dicom.py
    montage = cv2.imread(str(tmp_path / "reports/phantom_montage.png"))
    assert montage is not None and montage.shape[2] == 3

    params["phantom"]["slices_per_case"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run_stage_command("synthesize", tmp_path)
    assert failed.returncode == 1
    assert "phantom.slices_per_case" in failed.stderr


# ---- the lesion catalogue, nuisance factors and metrics/synthesize.json -----------------------


@functools.cache
def _many_cases() -> tuple[PhantomParams, list]:
    """250 cases a class at 64 px (their models only): two seeds of 125, as ischemic case ids
    must fit in 7 digits."""
    params = small_params(
        hemorrhagic_cases=125,
        ischemic_cases=125,
        hemorrhagic_cases_without_mask=0,
        testing_cases_per_class=0,
        slices_per_case=16,
        first_ischemic_case=0,
    )
    specs = [spec for seed in (11, 12) for spec in plan_cases(params, seed)]
    return params, [build_case(spec, params) for spec in specs]


NUISANCE_FACTORS = {
    "head width": lambda case: case.anatomy.half_width_px,
    "rotation": lambda case: case.anatomy.rotation,
    "centre x": lambda case: case.anatomy.centre[0],
    "centre y": lambda case: case.anatomy.centre[1],
    "elongation": lambda case: case.anatomy.elongation,
    "skull": lambda case: case.anatomy.skull_px,
    "atrophy (gap)": lambda case: case.anatomy.gap_px,
    "sulci": lambda case: case.anatomy.sulcus_count,
    "table": lambda case: case.anatomy.table is not None,
    "calcifications": lambda case: len(case.anatomy.lookalikes.calcifications),
    "old infarcts": lambda case: len(case.anatomy.lookalikes.old_infarcts),
    "sinus density": lambda case: case.anatomy.lookalikes.sinus_hu,
    "transverse sinus": lambda case: case.anatomy.lookalikes.transverse_sinus_px,
    "artery density": lambda case: case.anatomy.lookalikes.artery_hu,
    "periventricular": lambda case: case.anatomy.lookalikes.periventricular_drop_hu,
    "petrous ridges": lambda case: case.anatomy.skull_base.petrous_angle,
    "air cells": lambda case: case.anatomy.skull_base.mastoid_cell,
    "folia": lambda case: case.anatomy.skull_base.folia_period,
    "beam hardening": lambda case: case.anatomy.skull_base.beam_hardening_hu,
    "scalp": lambda case: case.anatomy.skin_px + case.anatomy.fat_px + case.anatomy.galea_px,
    "scalp fat": lambda case: case.anatomy.fat_px,
    "ears": lambda case: float(np.ptp(case.scanner.ears[0].points[:, 0])),
    "head holder": lambda case: case.scanner.holder is not None,
    "streaks": lambda case: sum(streak.hu for streak in case.scanner.streaks),
    "inner-table halo": lambda case: case.scanner.inner_table_halo_hu,
    "tilt": lambda case: case.scanner.tilt_deg,
    "window level": lambda case: case.acquisition.window_level_hu,
    "window width": lambda case: case.acquisition.window_width_hu,
    "noise": lambda case: case.acquisition.noise_hu,
    "noise cut-off": lambda case: float(case.acquisition.noise_filter.argmin()),
    "blur": lambda case: case.acquisition.blur_sigma_px,
}


def _skull_base_slices(
    class_name: str = "Ischemic", **overrides: object
) -> list[tuple[CaseModel, int, PhantomSlice]]:
    """The slices of four cases of a class at 256 px where the petrous ridges are drawn
    (untilted unless `overrides` say otherwise: these check the anatomy's own layout)."""
    params = small_params(
        image_size=256, slices_per_case=12, **{"tilt_deg": [0.0, 0.0], **overrides}
    )
    found = []
    for spec in [spec for spec in plan_cases(params, seed=5) if spec.class_name == class_name][:4]:
        case = build_case(spec, params)
        for index, z in enumerate(case.anatomy.heights):
            if smoothstep(BASE_TOP, 0.02, z) >= 0.35:
                found.append((case, index, render_slice(case, index)))
    return found


def _skull_base_at(case: CaseModel, index: int):
    """The skull-base structures `render_slice` draws on slice `index`."""
    heights = SliceHeights(case, index)
    return _skull_base(case.grid, case.anatomy, heights, _tentorium_height(case, heights))


def test_skull_base_slices_hold_orbits_air_cells_and_posterior_fossa():
    """The lowest slice shows globes with a denser lens in retro-orbital fat and muscle, air
    cells (many small pockets of air, with bony septa between them), the fourth ventricle
    and a cerebellum striped by its folia (without beam hardening, which darkens both)."""
    for case, index, rendered in _skull_base_slices(beam_hardening_hu=[0.0, 0.0]):
        if index > 0:
            continue
        tissue, clean = rendered.tissue, rendered.clean_hu
        soft = tissue == Tissue.SOFT_TISSUE
        assert np.any(soft & (clean == LENS_HU)) and np.any(soft & (clean == VITREOUS_HU))
        assert np.any(soft & (clean == MUSCLE_HU)) and np.any(tissue == Tissue.FAT)
        head_air = (tissue == Tissue.AIR) & (rendered.baseline_hu < -900)
        head = cv2.morphologyEx(
            (tissue != Tissue.AIR).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8)
        )
        pockets, _ = cv2.connectedComponents((head_air & (head > 0)).astype(np.uint8))
        assert pockets - 1 >= 20, "air cells: many pockets split by septa"
        fossa = _skull_base_at(case, index)
        cerebellum = fossa.posterior_fossa & ~fossa.brainstem & np.isin(tissue, PARENCHYMA)
        folia = cerebellum & fossa.folia
        assert folia.sum() > 0.1 * cerebellum.sum()
        assert clean[folia].mean() < clean[cerebellum & ~fossa.folia].mean() - 2.0


def test_beam_hardening_darkens_parenchyma_between_the_petrous_bones():
    """The band lowers parenchyma by at most the case's drop (its centre at full skull base),
    never below phantom.parenchyma_hu, in the posterior fossa only; nothing else changes."""
    plain = _skull_base_slices(beam_hardening_hu=[0.0, 0.0], streak_probability=0.0)
    dark = _skull_base_slices(beam_hardening_hu=[12.0, 12.0], streak_probability=0.0)
    assert len(plain) == len(dark) > 0
    darkened = 0
    for (case, index, before), (_, _, after) in zip(plain, dark, strict=True):
        drop = before.baseline_hu - after.baseline_hu
        assert np.all((drop >= 0.0) & (drop <= 12.0 + 1e-4))
        assert np.all(after.baseline_hu[drop > 0] >= case.params.parenchyma_hu[0])
        assert np.array_equal(before.tissue, after.tissue)
        fossa = _skull_base_at(case, index)
        assert not np.any((drop > 0) & ~fossa.posterior_fossa)
        darkened += int(np.count_nonzero(drop > 2.0))
    assert darkened > 100


def test_transverse_sinuses_follow_their_depth_param():
    """`transverse_sinus_mm` sets how deep the transverse sinuses reach under the occipital inner
    table on the skull-base slices: deeper ones add vessel pixels behind the cerebellum and
    change nothing else of the tissue map (their depth has a generator of its own)."""
    shallow = _skull_base_slices(transverse_sinus_mm=[1.8, 1.8])
    deep = _skull_base_slices(transverse_sinus_mm=[6.0, 6.0])
    assert len(shallow) == len(deep) > 0
    added_px = 0
    for (case, _, before), (deep_case, _, after) in zip(shallow, deep, strict=True):
        assert deep_case.anatomy.lookalikes.transverse_sinus_px == pytest.approx(
            6.0 / case.params.pixel_spacing_mm
        )
        added = (after.tissue == Tissue.VESSEL) & (before.tissue != Tissue.VESSEL)
        assert np.array_equal(before.tissue[~added], after.tissue[~added])
        assert np.all(case.grid.v[added] > 0.55 * case.anatomy.elongation)  # the back only
        added_px += int(np.count_nonzero(added))
    assert added_px > 100


def test_the_tentorium_shows_above_the_petrous_ridges():
    """Falx-dense lines off the midline, in the back half, between heights 0.1 and 0.3."""
    params = small_params(image_size=256, slices_per_case=16, tilt_deg=[0.0, 0.0])
    seen = 0
    for spec in plan_cases(params, seed=5)[:4]:
        case = build_case(spec, params)
        for index, z in enumerate(case.anatomy.heights):
            if not 0.12 < z < 0.28:
                continue
            tissue = render_slice(case, index).tissue
            off_midline = (tissue == Tissue.FALX) & (np.abs(case.grid.u) > 0.1)
            assert np.any(off_midline & (case.grid.v > 0.2)), z
            seen += 1
    assert seen >= 4


def test_posterior_fossa_infarcts_lie_in_the_cerebellum_or_brainstem():
    """A posterior-fossa infarct lies behind the petrous ridges on the slices that have them
    (in a cerebellar hemisphere or the brainstem, not in the temporal lobes or bone), and
    under the tentorium (inside its V) on the slices above them: on every slice, inside the
    posterior fossa that `render_slice` draws, and nowhere on a slice above the tentorium."""
    territories = {kind: 0.0 for kind in ISCHEMIA_TERRITORIES} | {"posterior_fossa": 1.0}
    overrides = dict(
        hemorrhagic_cases=2,
        ischemic_cases=6,
        ischemia_territory_share=territories,
        extra_lesion_probability=0.0,
    )
    lesion_px = 0
    for case, index, rendered in _skull_base_slices(**overrides):
        fossa = _skull_base_at(case, index)
        assert not np.any(rendered.lesion & ~fossa.posterior_fossa)
        lesion_px += int(rendered.lesion.sum())
    assert lesion_px > 500
    params = small_params(image_size=256, slices_per_case=12, **overrides)
    above_the_ridges = 0
    for spec in [spec for spec in plan_cases(params, seed=5) if spec.class_name == "Ischemic"]:
        case = build_case(spec, params)
        for index in range(len(case.anatomy.heights)):
            lesion = render_slice(case, index).lesion
            if _tentorium_height(case, SliceHeights(case, index)) >= TENTORIUM_HEIGHTS[1]:
                assert not lesion.any(), index
                continue
            fossa = _skull_base_at(case, index)
            assert not np.any(lesion & ~fossa.posterior_fossa), index
            if smoothstep(BASE_TOP, 0.02, case.anatomy.heights[index]) < 0.35:
                above_the_ridges += int(lesion.sum())
    assert above_the_ridges > 500


def test_cerebellar_infarcts_are_territories_on_the_hemisphere_surface():
    """A cerebellar infarct is an artery's territory, as real ones are: on its largest slice
    it lies on one side of the midline and reaches the hemisphere's posterior surface (the
    occipital bone behind the fourth ventricle is within a few pixels), not a blob inside
    the cerebellum."""
    territories = {kind: 0.0 for kind in ISCHEMIA_TERRITORIES} | {"posterior_fossa": 1.0}
    params = small_params(
        image_size=256,
        slices_per_case=12,
        ischemic_cases=8,
        ischemia_territory_share=territories,
        extra_lesion_probability=0.0,
    )
    near = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    cerebellar = 0
    for spec in [spec for spec in plan_cases(params, seed=3) if spec.class_name == "Ischemic"]:
        case = build_case(spec, params)
        (lesion,) = case.lesions
        if lesion.wedge is None:  # a brainstem infarct
            continue
        slices = [render_slice(case, index) for index in range(lesion.first, lesion.last + 1)]
        largest = max(slices, key=lambda rendered: int(rendered.lesion.sum()))
        mask = largest.lesion > 0
        assert mask.sum() > 0, spec.case_id
        assert np.all(np.sign(case.grid.u[mask]) == lesion.wedge.side), spec.case_id
        around = cv2.dilate(mask.astype(np.uint8), near) > 0
        behind = case.grid.v > 0.5 * case.anatomy.elongation
        assert np.any(around & behind & (largest.tissue == Tissue.BONE)), spec.case_id
        cerebellar += 1
    assert cerebellar >= 4


def test_the_cerebellum_reaches_up_under_the_tentorium():
    """Above the petrous ridges and below the tentorium's top, the slice holds a posterior
    fossa (cerebellum inside the tentorium's V, striped by folia, without the cerebrum's
    sulci); it shrinks as the slices rise, and there is none above the top."""
    params = small_params(image_size=256, slices_per_case=16, tilt_deg=[0.0, 0.0])
    seen = 0
    for spec in plan_cases(params, seed=5)[:4]:
        case = build_case(spec, params)
        areas = []
        for index, z in enumerate(case.anatomy.heights):
            if z < 0.12:  # the ridges' own slices: test_skull_base_slices_hold_...
                continue
            rendered = render_slice(case, index)
            parts = _skull_base_at(case, index)
            fossa = parts.posterior_fossa
            if z >= TENTORIUM_HEIGHTS[1]:
                assert not fossa.any(), z
                continue
            cerebellum = fossa & np.isin(rendered.tissue, PARENCHYMA)
            assert cerebellum.sum() > 200, z
            # No CSF-filled sulcus inside it: CSF only in the thin gap under the skull (the
            # fourth ventricle and cisterns, near the midline, aside).
            intracranial = np.isin(rendered.tissue, (*PARENCHYMA, Tissue.CSF, Tissue.FALX))
            deep = cv2.erode(intracranial.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
            behind = deep & fossa & (np.abs(case.grid.u) > 0.2) & (case.grid.v > 0.35)
            assert not np.any(behind & (rendered.tissue == Tissue.CSF)), z
            folia = parts.folia & cerebellum
            assert folia.sum() > 0.1 * cerebellum.sum(), z
            areas.append(int(cerebellum.sum()))
            seen += 1
        assert areas == sorted(areas, reverse=True)
    assert seen >= 8


def test_nuisance_factors_do_not_depend_on_the_class():
    """Pose, anatomy and acquisition are drawn the same way for both classes (issue 21, item 4):
    a two-sample Kolmogorov-Smirnov test over 250 cases a class finds no difference for any of
    them (p > 0.001; the draws are fixed by the seed, so this is not flaky)."""
    from scipy.stats import ks_2samp

    _, cases = _many_cases()
    for name, factor in NUISANCE_FACTORS.items():
        values = {
            class_name: [float(factor(c)) for c in cases if c.spec.class_name == class_name]
            for class_name in ("Hemorrhagic", "Ischemic")
        }
        result = ks_2samp(values["Hemorrhagic"], values["Ischemic"])
        assert result.pvalue > 0.001, f"{name} differs between the classes: {result}"


@pytest.mark.parametrize("power", [1.6, 0.8])
def test_slice_height_power_moves_slices_towards_the_skull_base(power):
    """The same case's slices span the same heights; at a power above 1 more of them lie in
    the skull base (below anatomy.BASE_TOP), below 1 fewer; their positions are s**power."""
    slices = 16
    anatomies = {
        p: sample_anatomy(
            np.random.default_rng(7), small_params(slices_per_case=slices, slice_height_power=p)
        )
        for p in (1.0, power)
    }
    even, moved = anatomies[1.0].heights, anatomies[power].heights
    assert moved[0] == pytest.approx(even[0]) and moved[-1] == pytest.approx(even[-1])
    assert np.all(np.diff(moved) > 0)
    share = (moved - moved[0]) / (moved[-1] - moved[0])
    assert share == pytest.approx(np.linspace(0.0, 1.0, slices) ** power, abs=1e-9)
    below_even, below_moved = np.sum(even < BASE_TOP), np.sum(moved < BASE_TOP)
    assert below_moved > below_even if power > 1 else below_moved < below_even


def test_lesion_kinds_follow_their_shares_and_heights():
    params, cases = _many_cases()
    kinds = [lesion.kind for case in cases for lesion in case.lesions[:1]]
    for class_name, shares in (
        ("Hemorrhagic", params.hemorrhage_subtype_share),
        ("Ischemic", params.ischemia_territory_share),
    ):
        drawn = [
            lesion.kind
            for c in cases
            if c.spec.class_name == class_name
            for lesion in c.lesions[:1]
        ]
        assert set(drawn) <= set(shares)
        for kind, share in shares.items():
            # Within 4 binomial standard deviations of its share.
            tolerance = 4.0 * np.sqrt(share * (1.0 - share) / len(drawn))
            assert abs(drawn.count(kind) / len(drawn) - share) <= tolerance, kind
    assert len(kinds) == len(cases)
    assert any(len(case.lesions) > 1 for case in cases), "some cases hold several lesions"
    for case in cases:
        for lesion in case.lesions:
            low, high = KIND_HEIGHTS[lesion.kind]
            heights = case.anatomy.heights[lesion.first : lesion.last + 1]
            # The nearest slice stands in when none lies within the kind's heights.
            step = float(np.diff(case.anatomy.heights).max())
            assert np.all((heights >= low - step) & (heights <= high + step)), lesion.kind


def test_hemorrhage_densities_and_ischemic_drops_follow_the_params():
    params, cases = _many_cases()
    for case in cases:
        for lesion in case.lesions:
            if lesion.hemorrhagic:
                low, high = params.hemorrhage_hu
                assert low <= lesion.level_hu <= high
            else:
                low, high = params.ischemic_mean_drop_hu
                assert low <= lesion.level_hu <= high
    epidural = [c.lesions[0].level_hu for c in cases if c.lesions[0].kind == "epidural"]
    ventricular = [c.lesions[0].level_hu for c in cases if c.lesions[0].kind == "intraventricular"]
    assert np.mean(epidural) > np.mean(ventricular) + 10, "EDH (60 HU) denser than IVH (40 HU)"


def test_lesion_contrast_is_lesion_mean_minus_its_ring():
    size = 128
    hu = np.full((size, size), 30.0, dtype=np.float32)
    lesion = np.zeros((size, size), dtype=bool)
    lesion[50:60, 50:60] = True
    hu[lesion] = 55.0
    tissue = np.full((size, size), Tissue.GREY_MATTER, dtype=np.uint8)
    tissue[:, :52] = Tissue.BONE  # bone in the ring is left out
    hu[tissue == Tissue.BONE] = 1000.0
    hu[lesion] = 55.0
    rendered = PhantomSlice(hu, hu, hu, tissue, lesion, 40.0, 80.0)
    assert lesion_contrast_hu(rendered) == pytest.approx(25.0)
    # Measured as the PNG shows it: within the case's window (here 0-50 HU).
    narrow = PhantomSlice(hu, hu, hu, tissue, lesion, 25.0, 50.0)
    assert lesion_contrast_hu(narrow) == pytest.approx(20.0)
    empty = PhantomSlice(hu, hu, hu, tissue, np.zeros_like(lesion), 40.0, 80.0)
    assert lesion_contrast_hu(empty) is None


def test_synthesize_metrics_count_every_case_and_lesion(small_archive):
    _, summary, cases = small_archive
    metrics = summarise([case.statistics for case in cases])
    assert metrics["cases"] == summary.cases
    for class_name in ("hemorrhagic", "ischemic"):
        assert metrics[f"cases_{class_name}"] == 4
        kinds = sum(
            v for k, v in metrics.items() if k.startswith("lesions_") and k.endswith(class_name)
        )
        assert kinds >= 4
        assert metrics[f"lesion_slices_{class_name}"] == sum(
            bool(pixels)
            for case in cases
            if case.spec.class_name.lower() == class_name
            for pixels in case.lesion_pixels
        )
        assert metrics[f"lesion_area_min_px_{class_name}"] >= 1
    low, high = SMALL_HEAD_WIDTH
    assert low <= metrics["head_width_share_min"] <= metrics["head_width_share_max"] <= high
    assert all(key == key.lower() for key in metrics)


def test_a_haematoma_pushes_the_midline_to_the_other_side():
    params, cases = _many_cases()
    pushed = [
        case
        for case in cases
        if case.lesions[0].kind in ("intraparenchymal_lobar", "intraparenchymal_deep")
    ]
    assert pushed and all(case.anatomy.midline_shift != 0.0 for case in pushed)
    unit_mm = params.pixel_spacing_mm * 512 * 0.66 / 2.0
    for case in pushed:
        lesion_side = np.sign(np.mean([blob.centre[0] for blob in case.lesions[0].blobs]))
        assert np.sign(case.anatomy.midline_shift) == -lesion_side
        assert abs(case.anatomy.midline_shift) * unit_mm <= params.midline_shift_max_mm
    assert all(
        case.anatomy.midline_shift == 0.0 for case in cases if not case.lesions[0].hemorrhagic
    )
    # Rendered at 256 px: the falx moves with it, away from the bleed.
    case = max(pushed, key=lambda c: abs(c.anatomy.midline_shift))
    larger = params.model_copy(update={"image_size": 256})
    still = larger.model_copy(update={"midline_shift_max_mm": 0.0})
    index = (case.lesions[0].first + case.lesions[0].last) // 2
    columns = [
        np.nonzero(render_slice(build_case(case.spec, p), index).tissue == Tissue.FALX)[1].mean()
        for p in (larger, still)
    ]
    turn = np.sign(np.cos(case.anatomy.rotation))
    assert np.sign(columns[0] - columns[1]) == np.sign(case.anatomy.midline_shift) * turn


def test_default_phantom_meets_validate_lesion_slice_share():
    """The default phantom passes `validate`'s lesion_slice_share_per_class expectation: each
    class holds a lesion on at least validate.min_lesion_slice_share of its slices (a kind's
    heights and run length set it; lesions cover every slice of their run)."""
    params = project_params()
    for class_name in ("Hemorrhagic", "Ischemic"):
        specs = [s for s in plan_cases(params.phantom, params.seed) if s.class_name == class_name]
        lesion_slices = 0
        for spec in specs:
            case = build_case(spec, params.phantom)
            lesion_slices += len(
                {i for lesion in case.lesions for i in range(lesion.first, lesion.last + 1)}
            )
        share = lesion_slices / (len(specs) * params.phantom.slices_per_case)
        assert share >= params.validate.min_lesion_slice_share + 0.05, (class_name, share)


def _one_kind_cases(kind: str, image_size: int, cases: int, **overrides: object):
    """`cases` cases whose single lesion is of `kind`, with their params."""
    hemorrhagic = kind in HEMORRHAGE_SUBTYPES
    names = HEMORRHAGE_SUBTYPES if hemorrhagic else ISCHEMIA_TERRITORIES
    shares = {name: float(name == kind) for name in names}
    params = small_params(
        image_size=image_size,
        slices_per_case=12,
        hemorrhagic_cases=cases + 1 if hemorrhagic else 2,
        ischemic_cases=2 if hemorrhagic else cases,
        extra_lesion_probability=0.0,
        **{"hemorrhage_subtype_share" if hemorrhagic else "ischemia_territory_share": shares},
        **overrides,
    )
    class_name = "Hemorrhagic" if hemorrhagic else "Ischemic"
    specs = [s for s in plan_cases(params, seed=4) if s.class_name == class_name][:cases]
    return [build_case(spec, params) for spec in specs]


def _middle_slice(case: CaseModel) -> PhantomSlice:
    lesion = case.lesions[0]
    return render_slice(case, (lesion.first + lesion.last) // 2)


@pytest.mark.parametrize(
    ("kind", "small", "large"),
    [
        (
            "intraparenchymal_lobar",
            {"radius_head_units": [0.08, 0.1]},
            {"radius_head_units": [0.2, 0.25]},
        ),
        ("subdural", {"thickness_mm": [3.0, 4.0]}, {"thickness_mm": [12.0, 15.0]}),
        ("lacunar", {"radius_head_units": [0.03, 0.04]}, {"radius_head_units": [0.08, 0.1]}),
        ("middle_cerebral", {"half_angle_rad": [0.2, 0.25]}, {"half_angle_rad": [0.5, 0.6]}),
    ],
)
def test_a_larger_lesion_size_param_draws_larger_lesions(kind, small, large):
    """The same cases drawn with a kind's `phantom.lesion_size` range raised cover more pixels
    on their lesion's middle slice, case by case."""
    areas = {}
    for name, size in (("small", small), ("large", large)):
        cases = _one_kind_cases(kind, 256, 6, lesion_size={kind: size})
        assert all(case.lesions[0].kind == kind for case in cases)
        areas[name] = np.array([int(_middle_slice(case).lesion.sum()) for case in cases])
    assert np.all(areas["small"] > 0)
    assert np.all(areas["large"] > areas["small"]), areas
    assert areas["large"].sum() > 2 * areas["small"].sum(), areas


def _grey_white_difference_hu(rendered: PhantomSlice) -> float:
    """Inside the lesion: mean HU of its greyer half (by the lesion-free baseline) minus that
    of its whiter half."""
    baseline = rendered.baseline_hu[rendered.lesion]
    drawn = rendered.clean_hu[rendered.lesion]
    greyer = baseline >= np.median(baseline)
    return float(drawn[greyer].mean() - drawn[~greyer].mean())


def test_grey_white_loss_lowers_the_grey_white_difference_inside_infarcts():
    """Issue 21 item 1: an infarct loses its grey-white differentiation. The same middle
    cerebral infarcts drawn with `ischemic_grey_white_loss` 1 keep at most half the grey-white
    difference they keep with 0 (a shallow drop, so that the 12 HU cap on an infarct's drop
    does not cut the loss), and the loss stays within the lesion mask."""
    kept = {}
    for loss in (0.0, 1.0):
        cases = _one_kind_cases(
            "middle_cerebral",
            256,
            4,
            ischemic_grey_white_loss=[loss, loss],
            ischemic_mean_drop_hu=[3.0, 4.0],  # deep enough below 12 HU to leave room for it
        )
        rendered = [_middle_slice(case) for case in cases]
        for slice_ in rendered:
            assert np.array_equal(slice_.lesion, slice_.clean_hu != slice_.baseline_hu)
        kept[loss] = [_grey_white_difference_hu(slice_) for slice_ in rendered]
    assert all(difference > 2.0 for difference in kept[0.0]), kept
    assert all(full < 0.5 * none for full, none in zip(kept[1.0], kept[0.0], strict=True)), kept


def _tissue_along_ray(case: CaseModel, rendered: PhantomSlice, angle: float) -> np.ndarray:
    """Tissue labels along a ray from the head centre in direction `angle` (head frame)."""
    turned = angle + case.anatomy.rotation
    steps = np.arange(0.0, case.params.image_size, 0.25)
    x = np.rint(case.anatomy.centre[0] + steps * np.cos(turned)).astype(int)
    y = np.rint(case.anatomy.centre[1] + steps * np.sin(turned)).astype(int)
    inside = (x >= 0) & (x < case.params.image_size) & (y >= 0) & (y < case.params.image_size)
    return rendered.tissue[y[inside], x[inside]]


def test_a_fracture_crosses_the_skull_over_an_epidural_haematoma():
    """Issue 21 item 1: an epidural haematoma comes with a skull fracture. On its middle slice
    the ray from the head centre along the fracture meets the haematoma, then no bone up to
    the air outside the head (the gap is unlabelled: no lesion pixel in the skull), while rays
    a little to either side cross the skull."""
    for case in _one_kind_cases("epidural", 512, 3):
        lesion = case.lesions[0]
        assert lesion.fracture_angle is not None
        assert abs(lesion.fracture_angle - lesion.shell.angle) <= lesion.shell.half_angle
        rendered = _middle_slice(case)
        along = _tissue_along_ray(case, rendered, lesion.fracture_angle)
        bleed = np.nonzero(along == Tissue.HEMORRHAGE)[0]
        assert bleed.size, "the fracture lies over the haematoma"
        assert not np.any(along[bleed[-1] :] == Tissue.BONE)
        for side in (-1, 1):
            beside = _tissue_along_ray(case, rendered, lesion.fracture_angle + side * 0.06)
            assert np.any(beside == Tissue.BONE)
        assert not np.any(rendered.lesion & (rendered.tissue == Tissue.SOFT_TISSUE))


@settings(max_examples=15, deadline=None)
@given(
    thickness_mm=st.tuples(st.floats(1.0, 30.0), st.floats(0.0, 20.0)),
    half_angle_rad=st.tuples(st.floats(0.05, 1.5), st.floats(0.0, 1.0)),
)
def test_drawn_shells_and_wedges_keep_within_their_size_ranges(thickness_mm, half_angle_rad):
    """Whatever `phantom.lesion_size` ranges say, the drawn subdural haematomas' thickness and
    the middle cerebral infarcts' half-angle lie within them."""
    thickness = [thickness_mm[0], thickness_mm[0] + thickness_mm[1]]
    angles = [half_angle_rad[0], half_angle_rad[0] + half_angle_rad[1]]
    subdural = _one_kind_cases(
        "subdural", 64, 3, lesion_size={"subdural": {"thickness_mm": thickness}}
    )
    for case in subdural:
        spacing_mm = case.params.pixel_spacing_mm
        assert thickness[0] - 1e-9 <= case.lesions[0].shell.thickness_px * spacing_mm
        assert case.lesions[0].shell.thickness_px * spacing_mm <= thickness[1] + 1e-9
    wedges = _one_kind_cases(
        "middle_cerebral", 64, 3, lesion_size={"middle_cerebral": {"half_angle_rad": angles}}
    )
    for case in wedges:
        assert angles[0] <= case.lesions[0].wedge.half_angle <= angles[1]


@pytest.mark.parametrize("kind", ["intraparenchymal_lobar", "middle_cerebral"])
def test_a_lesions_change_fades_to_about_half_at_its_outline(kind):
    """Issue 21: real lesions fade towards their outline, drawn where their contrast is about
    half. The same cases drawn with `lesion_edge_mm` 1.35 (3 px at 0.45 mm) and 0 (a crisp
    edge) keep the same mask, exactly the changed pixels; pixel by pixel the first changes by
    1 - 0.5 exp(-depth / e) of what the second does, e = 3 px times the case's head scale: on
    the border against brain or CSF, depth 0.5 px (0.91 diagonally); nearly all of it (0.99)
    4 e-folds deep."""
    crisp, soft = (
        _one_kind_cases(kind, 512, 3, lesion_edge_mm=[edge_mm, edge_mm])
        for edge_mm in (0.0, 1.35)
    )
    for sharp_case, soft_case in zip(crisp, soft, strict=True):
        assert soft_case.lesions[0].edge_px == pytest.approx(1.35 / 0.45)
        sharp, faded = _middle_slice(sharp_case), _middle_slice(soft_case)
        mask = faded.lesion
        assert np.array_equal(mask, sharp.lesion)
        assert np.array_equal(mask, faded.clean_hu != faded.baseline_hu)
        sharp_change = sharp.clean_hu - sharp.baseline_hu
        share = (faded.clean_hu - faded.baseline_hu)[mask] / sharp_change[mask]
        open_tissue = np.isin(faded.tissue, (*PARENCHYMA, Tissue.CSF)).astype(np.uint8)
        border = (cv2.dilate(open_tissue, np.ones((3, 3), np.uint8)) > 0)[mask]
        depth_px = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)[mask]
        measurable = np.abs(sharp_change[mask]) > 1.0  # an infarct's drop floor aside
        efold_px = 3.0 * soft_case.anatomy.px_scale
        edge, deep = border & measurable, (depth_px > 4 * efold_px + 1) & measurable
        assert edge.sum() > 50 and deep.sum() > 20, (kind, edge.sum(), deep.sum())
        lowest, highest = (1 - 0.5 * np.exp(-depth / efold_px) for depth in (0.5, 2**0.5 - 0.5))
        assert lowest - 0.02 < np.median(share[edge]) < highest + 0.02, kind
        assert np.median(share[deep]) == pytest.approx(1.0, abs=0.015), kind
