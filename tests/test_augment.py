"""Stage `augment`: warp invariants, balance planning, no leakage, determinism, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.augment import (
    Transform,
    augment_training_set,
    barrel_map,
    barrel_source,
    centre_in_pixels,
    elastic_generator,
    elastic_map,
    lesion_pixel_count,
    plan_augmentation,
    transform_grid,
    transform_map,
    warp_pair,
)
from pipeline.data.split import split_manifest
from pipeline.io import DataError, read_image, read_manifest, resolve_path, write_manifest
from pipeline.params import (
    ParamsError,
)
from stages import augment as augment_stage
from tests.conftest import project_params, rehash_manifest
from tests.test_split import case_keys, write_colorized

PALETTE = project_params().palette
BACKGROUND = PALETTE[0]
SIZE = 32

amounts = st.floats(min_value=-0.95, max_value=1.0).filter(lambda a: abs(a) > 1e-3)
centres = st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
radii = st.floats(min_value=0.05, max_value=1.0)


@st.composite
def warps(draw) -> Transform:
    """Any transform of the grid's kinds, with parameters drawn from their allowed ranges."""
    kind = draw(st.sampled_from(["barrel", "elastic"]))
    if kind == "elastic":
        alpha = draw(st.floats(min_value=0.5, max_value=40.0))
        sigma = draw(st.floats(min_value=0.5, max_value=8.0))
        return Transform("elastic", alpha=alpha, sigma=sigma, variant=draw(st.integers(0, 3)))
    amount = draw(amounts)
    kind = "barrel" if amount > 0 else "pincushion"
    return Transform(kind, radius=draw(radii), amount=amount, centre=draw(centres))


@st.composite
def palette_masks(draw) -> np.ndarray:
    """RGB mask of random discs of the three palette colours."""
    index = np.zeros((SIZE, SIZE), np.uint8)
    for _ in range(draw(st.integers(1, 5))):
        centre = (draw(st.integers(0, SIZE - 1)), draw(st.integers(0, SIZE - 1)))
        cv2.circle(index, centre, draw(st.integers(1, SIZE // 2)), draw(st.integers(0, 2)), -1)
    return np.asarray(PALETTE, np.uint8)[index]


def palette_set(mask: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in colour) for colour in np.unique(mask.reshape(-1, 3), axis=0)}


def grey_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)


@settings(max_examples=60, deadline=None)
@given(palette_masks(), warps(), st.integers(0, 2**31))
def test_warped_masks_keep_an_exact_palette(mask, transform, seed):
    warp = transform_map(transform, SIZE, SIZE, seed, "Hemorrhagic_049_001")
    _, warped = warp_pair(grey_image(seed), mask, warp, BACKGROUND)
    assert palette_set(warped) <= set(PALETTE)


@settings(max_examples=40, deadline=None)
@given(palette_masks(), radii, centres, st.floats(0.5, 8.0), st.integers(0, 2**31))
def test_zero_amount_and_zero_alpha_are_the_identity(mask, radius, centre, sigma, seed):
    image = grey_image(seed)
    identities = [
        barrel_map(SIZE, SIZE, centre, radius, 0.0),
        elastic_map(SIZE, SIZE, 0.0, sigma, np.random.default_rng(seed)),
    ]
    for warp in identities:
        warped_image, warped_mask = warp_pair(image, mask, warp, BACKGROUND)
        np.testing.assert_array_equal(warped_image, image)
        np.testing.assert_array_equal(warped_mask, mask)


@settings(max_examples=60, deadline=None)
@given(centres, radii, amounts, st.lists(st.tuples(st.floats(-64, 64), st.floats(-64, 64))))
def test_barrel_displacement_is_zero_outside_the_radius_and_at_the_centre(
    centre, radius, amount, offsets
):
    centre_px = centre_in_pixels(centre, SIZE, SIZE)
    radius_px = radius * SIZE
    x = np.array([centre_px[0] + dx for dx, _ in offsets] + [centre_px[0]])
    y = np.array([centre_px[1] + dy for _, dy in offsets] + [centre_px[1]])
    source_x, source_y = barrel_source(x, y, centre_px, radius_px, amount)
    r = np.hypot(x - centre_px[0], y - centre_px[1])
    still = (r >= radius_px) | (r == 0)
    np.testing.assert_array_equal(source_x[still], x[still])
    np.testing.assert_array_equal(source_y[still], y[still])
    assert source_x[-1] == centre_px[0] and source_y[-1] == centre_px[1]
    # Inside, the source stays on the ray from the centre and inside the disc (no clipping
    # needed, even for pincushion where the factor grows without bound near the centre).
    distance = np.hypot(source_x - centre_px[0], source_y - centre_px[1])
    inside = ~still
    assert np.all(np.isfinite(distance)) and np.all(distance[inside] <= radius_px * (1 + 1e-9))
    if amount > 0:  # barrel pulls sources towards the centre, pincushion pushes them out
        assert np.all(distance[inside] <= r[inside] + 1e-9)
    else:
        assert np.all(distance[inside] >= r[inside] - 1e-9)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), centres, radii, amounts)
def test_barrel_warp_leaves_pixels_outside_the_disc_untouched(seed, centre, radius, amount):
    image = grey_image(seed)
    mask = np.asarray(PALETTE, np.uint8)[np.random.default_rng(seed).integers(0, 3, image.shape)]
    warped_image, warped_mask = warp_pair(
        image, mask, barrel_map(SIZE, SIZE, centre, radius, amount), BACKGROUND
    )
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    centre_x, centre_y = centre_in_pixels(centre, SIZE, SIZE)
    outside = np.hypot(xs - centre_x, ys - centre_y) >= radius * SIZE
    np.testing.assert_array_equal(warped_image[outside], image[outside])
    np.testing.assert_array_equal(warped_mask[outside], mask[outside])


@settings(max_examples=60, deadline=None)
@given(palette_masks(), warps(), st.integers(0, 2**31))
def test_image_and_mask_stay_registered(mask, transform, seed):
    """An image equal to its mask: wherever the bilinear image is unambiguous (a pure palette
    colour), the nearest-neighbour mask holds that very colour."""
    warp = transform_map(transform, SIZE, SIZE, seed, "Hemorrhagic_049_001")
    warped_image, warped_mask = warp_pair(mask, mask, warp, BACKGROUND)
    pure = np.zeros((SIZE, SIZE), bool)
    for colour in PALETTE:
        pure |= np.all(warped_image == colour, axis=-1)
    np.testing.assert_array_equal(warped_image[pure], warped_mask[pure])
    # Only pixels straddling a colour edge are ambiguous; most pixels are pure.
    assert pure.mean() > 0.5


def test_transform_grid_and_output_names():
    grid = transform_grid(project_params().augment)
    names = [transform.output_id("Hemorrhagic_049_012") for transform in grid]
    assert len(grid) == 5 + 5 + 2 and len(set(names)) == len(names)
    # Kinds interleaved, so that a short plan still uses each of them.
    assert names[:4] == [
        "barrel_r0.3_a0.3_c0.3-0.3_Hemorrhagic_049_012",
        "pincushion_r0.3_a-0.3_c0.3-0.3_Hemorrhagic_049_012",
        "elastic_a34_s4_k0_Hemorrhagic_049_012",
        "barrel_r0.3_a0.3_c0.7-0.3_Hemorrhagic_049_012",
    ]
    assert "elastic_a34_s4_k1_Hemorrhagic_049_012" in names
    only_elastic = transform_grid(project_params({"augment": {"transforms": ["elastic"]}}).augment)
    assert [t.kind for t in only_elastic] == ["elastic", "elastic"]
    near_twins = project_params(
        {"augment": {"barrel": {"amounts": [0.3, 0.3000001, -0.3]}}}
    ).augment
    with pytest.raises(ParamsError, match="would give the same file names"):
        transform_grid(near_twins)


def test_elastic_fields_depend_on_seed_original_and_variant_only():
    def field(seed: int, source: str, variant: int) -> np.ndarray:
        return elastic_map(SIZE, SIZE, 34.0, 4.0, elastic_generator(seed, source, variant)).map_x

    np.testing.assert_array_equal(field(1, "a", 0), field(1, "a", 0))
    for other in (field(2, "a", 0), field(1, "b", 0), field(1, "a", 1)):
        assert not np.array_equal(field(1, "a", 0), other)


def train_table(hemorrhagic_lesions: list[int], ischemic: int) -> pd.DataFrame:
    ids = [f"Hemorrhagic_049_{i:03d}" for i in range(len(hemorrhagic_lesions))]
    ids += [f"Ischemic_0019983_{i:03d}" for i in range(ischemic)]
    return pd.DataFrame(
        {
            "id": ids,
            "class": ["Hemorrhagic"] * len(hemorrhagic_lesions) + ["Ischemic"] * ischemic,
            "lesion_pixels": [*hemorrhagic_lesions, *[5] * ischemic],
        }
    )


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 3), min_size=1, max_size=12),
    st.integers(0, 60),
    st.floats(0.2, 3.0),
    st.integers(0, 1000),
)
def test_plan_reaches_the_ratio_without_repeating_a_warp(lesions, ischemic, ratio, seed):
    params = project_params({"augment": {"target_ratio": ratio}}).augment
    train = train_table(lesions, ischemic)
    eligible = sum(1 for pixels in lesions if pixels > 0)
    wanted = max(0, int(np.ceil(ratio * ischemic - 1e-9)) - len(lesions))
    if wanted and not eligible:
        with pytest.raises(DataError, match="no Hemorrhagic training slice with a lesion"):
            plan_augmentation(train, params, seed)
        return
    plan = plan_augmentation(train, params, seed)
    assert plan.wanted == wanted
    assert len(plan.outputs) == min(wanted, eligible * len(transform_grid(params)))
    assert len(set(plan.outputs)) == len(plan.outputs)
    lesion_of = dict(zip(train["id"], train["lesion_pixels"], strict=True))
    assert all(lesion_of[source_id] > 0 for source_id, _ in plan.outputs)
    # Round-robin: no original gets two copies more than another.
    per_source = pd.Series([source_id for source_id, _ in plan.outputs]).value_counts()
    if wanted <= eligible * len(transform_grid(params)) and len(per_source):
        assert per_source.max() - per_source.min() <= 1
    if len(plan.outputs) >= 3:
        assert {transform.kind for _, transform in plan.outputs} == {
            "barrel",
            "pincushion",
            "elastic",
        }
    assert plan_augmentation(train, params, seed) == plan


def build_split(root: Path, hemorrhagic: int = 5, ischemic: int = 8) -> Path:
    """data/colorized + data/split/manifest.csv under `root`, as the upstream stages would."""
    colorized = read_manifest(
        write_colorized(root / "data/colorized", case_keys(hemorrhagic, ischemic))
    )
    split_path = root / "data/split/manifest.csv"
    # Most cases in train, whatever the default ratios: these tests need originals to warp.
    ratios = project_params(
        {"split": {"ratios": {"train": 0.7, "valid": 0.15, "test": 0.15}}}
    ).split
    write_manifest(split_path, split_manifest(colorized, ratios, 42, split_path.parent))
    return split_path


def run_augment(root: Path, workers: int = 1, **overrides) -> dict[str, object]:
    return augment_training_set(
        root / "data/split/manifest.csv",
        root / "data/augmented",
        project_params({"augment": overrides}).augment,
        seed=42,
        background=BACKGROUND,
        workers=workers,
    )


def folder_hashes(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def split_root(tmp_path: Path) -> Path:
    build_split(tmp_path)
    return tmp_path


def test_augments_train_only_and_lists_the_whole_training_set(split_root):
    metrics = run_augment(split_root)
    split = read_manifest(split_root / "data/split/manifest.csv", extra_columns=("split",))
    augmented = read_manifest(split_root / "data/augmented/manifest.csv")
    train = split[split["split"] == "train"]
    originals = augmented[augmented["source"] == "original"]
    copies = augmented[augmented["source"] != "original"]
    # Exactly the training originals, plus copies; nothing from valid or test.
    assert sorted(originals["id"]) == sorted(train["id"])
    assert not set(augmented["id"]) & set(split.loc[split["split"] != "train", "id"])
    train_by_id = train.set_index("id")
    assert copies["source_id"].isin(train_by_id.index).all()
    assert (train_by_id.loc[copies["source_id"], "class"] == "Hemorrhagic").all()
    assert (copies["case_id"].to_numpy() == train_by_id.loc[copies["source_id"], "case_id"]).all()
    assert set(copies["case_id"]) <= set(train["case_id"])
    assert set(copies["source"]) == {"barrel", "pincushion", "elastic"}
    for row in copies.itertuples():
        assert row.id.endswith(f"_{row.source_id}") and row.id.startswith(row.source)
        assert row.image_path == f"images/{row.id}.png"
    # Every path resolves; recomputed lesion counts match the written masks.
    for row in augmented.to_dict("records"):
        assert resolve_path(augmented, row["image_path"]).is_file()
        mask = read_image(resolve_path(augmented, row["mask_path"]), color=True)
        assert palette_set(mask) <= set(PALETTE)
        assert lesion_pixel_count(mask, BACKGROUND) == row["lesion_pixels"]
    # Each copy is one warp of its original, named after the transform that made it.
    grid = {transform.prefix: transform for transform in transform_grid(project_params().augment)}
    for row in copies.to_dict("records"):
        transform = grid[row["id"].removesuffix(f"_{row['source_id']}")]
        original = train_by_id.loc[row["source_id"]]
        expected = warp_pair(
            read_image(resolve_path(split, original["image_path"])),
            read_image(resolve_path(split, original["mask_path"]), color=True),
            transform_map(transform, SIZE, SIZE, 42, row["source_id"]),
            BACKGROUND,
        )
        written = (
            read_image(resolve_path(augmented, row["image_path"])),
            read_image(resolve_path(augmented, row["mask_path"]), color=True),
        )
        for expected_array, written_array in zip(expected, written, strict=True):
            np.testing.assert_array_equal(written_array, expected_array)
    # Balanced: as many hemorrhagic as ischemic training slices.
    counts = augmented["class"].value_counts()
    assert counts["Hemorrhagic"] == counts["Ischemic"] == metrics["train_slices_after_ischemic"]
    assert metrics["augmented_total"] == len(copies)
    assert metrics["ratio_after"] == 1.0 and metrics["ratio_already_met"] is False
    per_kind = copies["source"].value_counts()
    assert all(metrics[f"augmented_{kind}"] == count for kind, count in per_kind.items())


def test_outputs_are_byte_identical_across_runs_and_worker_counts(split_root, tmp_path):
    run_augment(split_root, workers=1)
    first = folder_hashes(split_root / "data/augmented")
    run_augment(split_root, workers=1)
    assert folder_hashes(split_root / "data/augmented") == first
    run_augment(split_root, workers=2)
    assert folder_hashes(split_root / "data/augmented") == first
    assert len(first) > 10


def test_ratio_already_met_adds_nothing(split_root):
    metrics = run_augment(split_root, target_ratio=0.2)
    augmented = read_manifest(split_root / "data/augmented/manifest.csv")
    assert set(augmented["source"]) == {"original"}
    assert metrics["ratio_already_met"] is True and metrics["augmented_total"] == 0
    assert not any((split_root / "data/augmented/images").iterdir())


def test_no_hemorrhagic_lesion_in_train_stops_with_a_clear_error(split_root):
    split_path = split_root / "data/split/manifest.csv"
    split = read_manifest(split_path, extra_columns=("split",))
    split.loc[split["class"] == "Hemorrhagic", "lesion_pixels"] = 0
    write_manifest(split_path, split)
    with pytest.raises(DataError, match="no Hemorrhagic training slice with a lesion to augment"):
        run_augment(split_root)
    assert not (split_root / "data/augmented").exists()


def test_missing_or_mismatched_originals_are_named(split_root):
    split_path = split_root / "data/split/manifest.csv"
    split = read_manifest(split_path, extra_columns=("split",))
    train_hemorrhagic = split[(split["split"] == "train") & (split["lesion_pixels"] > 0)]
    mask_path = resolve_path(split, train_hemorrhagic["mask_path"].iloc[0])
    mask_path.write_bytes(b"")  # not a readable image any more
    with pytest.raises(DataError, match=r"1 listed files differ from their manifest sha256"):
        run_augment(split_root)
    rehash_manifest(split_path)  # as if colorize had written the empty file
    with pytest.raises(DataError, match=f"{mask_path.name}: not a readable image"):
        run_augment(split_root, workers=2)
    image_path = resolve_path(split, train_hemorrhagic["image_path"].iloc[1])
    image_path.unlink()
    with pytest.raises(DataError, match=r"1 listed files are missing.*\.png"):
        run_augment(split_root)
    assert not (split_root / "data/augmented").exists()


def test_size_mismatch_with_the_manifest_is_named(split_root):
    split_path = split_root / "data/split/manifest.csv"
    split = read_manifest(split_path, extra_columns=("split",))
    split["width"] = SIZE + 1
    write_manifest(split_path, split)
    with pytest.raises(DataError, match=f"32x32 pixels, the manifest says {SIZE + 1}x32"):
        run_augment(split_root)


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ({"transforms": ["swirl"]}, r"augment\.transforms\[0\]: Input should be 'barrel'"),
        ({"transforms": []}, "augment: Value error, transforms must name at least one"),
        ({"transforms": ["barrel", "barrel"]}, "transforms must be distinct"),
        ({"barrel": {"amounts": [0.3, 0.0]}}, "augment.barrel: Value error, amounts must be non"),
        (
            {"barrel": {"amounts": [-1.0]}},
            r"augment\.barrel\.amounts\[0\]: Input should be greater",
        ),
        ({"barrel": {"amounts": [-0.3]}}, "transforms lists barrel but barrel.amounts has no pos"),
        ({"elastic": {"alpha": 0}}, "augment.elastic.alpha: Input should be greater than 0"),
        ({"twist": 1}, "augment.twist: unknown key"),
    ],
)
def test_bad_augment_params_name_the_key(augment, message):
    with pytest.raises(ParamsError, match=message):
        project_params({"augment": augment})


def test_stage_writes_metrics(split_root, monkeypatch):
    monkeypatch.chdir(split_root)
    augment_stage.main(project_params())
    metrics = json.loads((split_root / "metrics/augment.json").read_text())
    assert metrics["train_slices_after_hemorrhagic"] == metrics["train_slices_after_ischemic"]
    assert (split_root / "data/augmented/manifest.csv").is_file()
