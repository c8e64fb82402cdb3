"""The benchmark scripts still speak the pipeline's contracts (they are run by hand, not here).

Timing is their job; these tests only check the data and params they build, so a change to the
manifest or params schema cannot leave a benchmark broken until someone next runs it.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from benchmarks import (
    augment_speed,
    dvc_speed,
    extract_speed,
    input_speed,
    kaggle_scale,
    lesion_kinds,
    lesion_sizes,
    real_transfer,
    realism,
    seed_compare,
)
from pipeline.classes import HEMORRHAGIC, ISCHEMIC, display_rgb
from pipeline.io import read_image, read_manifest, verify_content, write_png
from pipeline.masks import index_to_colour
from pipeline.params import HEMORRHAGE_SUBTYPES, ISCHEMIA_TERRITORIES, parse_params
from pipeline.synthesize.anatomy import REFERENCE_HEAD_WIDTH_SHARE
from pipeline.synthesize.archive import synthesize_archive
from tests.conftest import (
    PROJECT_ROOT,
    TINY_PARAMS,
    create_project,
    deep_merge,
    project_params,
    tool_env,
    write_project_params,
)
from tests.test_augment import folder_hashes

BENCHMARKS = sorted(path.name for path in (PROJECT_ROOT / "benchmarks").glob("*_*.py"))


@pytest.mark.parametrize("script", BENCHMARKS)
def test_every_benchmark_answers_help_without_running(script: str, tmp_path: Path) -> None:
    """`--help` prints the usage and exits at once: no build, no temporary folder."""
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--help"],
        cwd=PROJECT_ROOT,
        env={**tool_env(), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:"), result.stdout[:200]
    assert list(tmp_path.iterdir()) == [], "--help started the benchmark"


def test_augment_benchmark_builds_a_training_set_the_stage_accepts(tmp_path: Path) -> None:
    manifest = read_manifest(augment_speed.build_training_set(tmp_path), extra_columns=("split",))
    verify_content(manifest)
    hemorrhagic = manifest[manifest["class"] == "Hemorrhagic"]
    assert len(hemorrhagic) == augment_speed.ORIGINALS
    assert (hemorrhagic["lesion_pixels"] > 0).all()


@pytest.mark.parametrize(
    "scale",
    ["DEFAULT_SCALE", "KAGGLE_SCALE", "KAGGLE_FULL_RESOLUTION"],
)
def test_dvc_speed_scales_are_valid_params(scale: str) -> None:
    overrides = getattr(dvc_speed, scale)
    defaults = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params = parse_params(deep_merge(deep_merge(defaults, TINY_PARAMS), overrides))
    assert params.image_size == overrides["image_size"]
    assert params.phantom.image_size == overrides["phantom"]["image_size"]
    assert params.phantom.ischemic_cases == overrides["phantom"]["ischemic_cases"]


@pytest.mark.parametrize(
    "scale", [kaggle_scale.KAGGLE_512, kaggle_scale.SMALL_512, input_speed.INPUT_512]
)
def test_full_size_scales_run_the_default_model_at_512_px(scale: dict) -> None:
    defaults = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params = parse_params(deep_merge(deep_merge(defaults, TINY_PARAMS), scale))
    assert params.image_size == params.phantom.image_size == 512
    for section in ("augment", "model"):
        assert getattr(params, section) == getattr(parse_params(defaults), section)
    # Training as params.yaml has it but for one epoch and the memory settings of 512 px.
    trained_as = parse_params(defaults).train.model_dump()
    changed = {k for k, v in params.train.model_dump().items() if trained_as[k] != v}
    assert changed <= {"epochs", "epoch_change_infer", *kaggle_scale.CPU_512_TRAIN}


def test_precision_benchmark_measures_each_setting_in_its_own_process() -> None:
    command = [sys.executable, str(PROJECT_ROOT / "benchmarks/precision_speed.py")]
    command += ["--image-size", "32", "--batch-size", "2", "--steps", "1"]
    done = subprocess.run(
        [*command, "--settings", "float32", "mixed_xla"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    settings = json.loads(done.stdout.strip().splitlines()[-1])["settings"]
    assert list(settings) == ["float32", "mixed_xla"]
    for row in settings.values():
        assert row["train_images_per_s"] > 0 and row["infer_slices_per_s"] > 0
        assert row["output_dtype"] == "float32" and row["peak_rss_mb"] > 0
    assert settings["float32"]["train_images_per_s_vs_float32"] == 1.0


def test_kaggle_scale_is_the_archive_size_and_the_small_scale_an_eighth() -> None:
    kaggle, small = kaggle_scale.KAGGLE_512["phantom"], kaggle_scale.SMALL_512["phantom"]
    originals = (kaggle["hemorrhagic_cases"] + kaggle["ischemic_cases"]) * kaggle["slices_per_case"]
    assert 6_000 <= originals <= 7_000  # ~6,700 training slices once augment balances train
    assert kaggle["ischemic_cases"] == 3 * kaggle["hemorrhagic_cases"]
    # Same slices per case and class balance, an eighth of the cases (rounded down).
    assert small["slices_per_case"] == kaggle["slices_per_case"]
    assert small["ischemic_cases"] == 3 * small["hemorrhagic_cases"]
    assert (
        8 * small["hemorrhagic_cases"]
        <= kaggle["hemorrhagic_cases"]
        < 9 * small["hemorrhagic_cases"]
    )


def test_peak_memory_counts_the_whole_process_tree(tmp_path: Path) -> None:
    # A parent holding ~100 MB starts a child holding ~300 MB: the tree peaks near 400 MB.
    hold = "import numpy; a = numpy.ones({} * 2**20 // 8)"
    child = f"{hold.format(300)}; import time; time.sleep(1.0)"
    start_child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    parent = f"{hold.format(100)}; {start_child}"
    measured = kaggle_scale.run_measured([sys.executable, "-c", parent], tmp_path, 60)
    assert 300 <= measured["peak_process_rss_mb"] < 400 <= measured["peak_rss_mb"] < 600
    assert measured["cpu_s"] > 0


def test_benchmarks_measure_the_stages_training_and_input_of_a_tiny_project(
    tmp_path: Path,
) -> None:
    project = create_project(tmp_path / "project").path  # the tiny test params
    stages = kaggle_scale.measure_data_stages(project)
    assert list(stages) == list(kaggle_scale.DATA_STAGES)
    assert all(row["slices"] > 0 and row["peak_rss_mb"] > 0 for row in stages.values())
    assert stages["extract"]["slices"] == stages["validate"]["slices"] == stages["split"]["slices"]
    assert stages["extract"]["slices"] < stages["synthesize"]["slices"]  # a case has no masks
    augmented = read_manifest(project / "data/augmented/manifest.csv")
    assert stages["augment"]["slices"] == (augmented["source"] != "original").sum() > 0

    training = kaggle_scale.measure_training(project, steps=3)
    assert training["train_steps"] == 3 and training["train_images_per_s"] > 0
    assert training["train_slices"] == len(augmented)

    rates = input_speed.in_child(project, "--cores", "1", "--cache", "disk", "--epochs", "2")
    assert rates["first_epoch"] > 0 and rates["later_epochs"] > 0
    assert rates["images_per_epoch"] == len(augmented) // TINY_PARAMS["train"]["batch_size"] * 4
    steps = input_speed.in_child(project, "--breakdown")
    assert "mask_colours_to_indices" in steps and all(rate > 0 for rate in steps.values())


def test_extract_benchmark_compares_worker_counts_on_the_archive_and_its_scaled_copy(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "phantom.zip"
    synthesize_archive(archive, project_params(TINY_PARAMS).phantom, 0)
    results = extract_speed.compare(archive, 2, tmp_path)  # stops if the outputs differ
    small, scaled = results["1x"], results[f"{extract_speed.SCALE}x"]
    assert small["workers=1"]["pairs"] == small["workers=2"]["pairs"] > 0
    assert scaled["workers=2"]["pairs"] == extract_speed.SCALE * small["workers=2"]["pairs"]
    assert small["wall_ratio"] > 0 and scaled["workers=2"]["peak_rss_mb"] > 0


# ---- the realism score and the transfer check (benchmarks/realism.py, real_transfer.py) ------
# Real slices never come from a real-CT folder here: the "real" folders are drawn in the test or
# written from the tiny phantom.


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(PROJECT_ROOT / "benchmarks" / script), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT)


@pytest.mark.parametrize("script", ["realism.py", "real_transfer.py"])
def test_realism_and_transfer_help_runs_nothing(script: str, tmp_path: Path) -> None:
    done = run_benchmark(script, "--help")
    assert done.returncode == 0 and "--real" in done.stdout
    missing = run_benchmark(script, "--real", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "no images/ folder" in missing.stderr


@given(
    colours=st.lists(st.tuples(*[st.integers(0, 255)] * 3), min_size=1, max_size=40),
)
@settings(max_examples=50, deadline=None)
def test_each_mask_pixel_takes_its_nearest_palette_colour(colours: list) -> None:
    palette = project_params().palette
    pixels = np.array(colours + list(palette), dtype=np.uint8)[None]
    labels = realism.nearest_palette_labels(pixels, palette)[0]
    assert labels[len(colours) :].tolist() == list(range(len(palette)))  # exact colours
    distances = ((pixels[0, :, None].astype(int) - np.array(palette)) ** 2).sum(-1)
    assert (distances[np.arange(len(labels)), labels] == distances.min(axis=1)).all()


def drawn_head(lesion_grey: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 512-px head: scalp (grey 120) to radius 170, skull (255) 150-165, brain 100 with
    noise SD 3, and a lesion disc of radius 20, 60 px below the centre, at `lesion_grey`."""
    grey = np.zeros((512, 512), np.uint8)
    cv2.circle(grey, (256, 256), 170, 120, -1)
    cv2.circle(grey, (256, 256), 165, 255, -1)
    cv2.circle(grey, (256, 256), 150, 100, -1)
    lesion = np.zeros_like(grey)
    cv2.circle(lesion, (256, 316), 20, 1, -1)
    grey[lesion > 0] = lesion_grey
    brain = (grey == 100) | (lesion > 0)
    noise = np.random.default_rng(seed).normal(0.0, 3.0, grey.shape)
    grey = np.where(brain, np.clip(np.rint(grey + noise), 1, 254), grey).astype(np.uint8)
    return grey, lesion


def test_realism_features_of_a_drawn_head_are_what_was_drawn() -> None:
    window = realism.Window(40.0, 80.0)
    names = ["hemorrhagic", "ischemic"]
    grey, lesion = drawn_head(lesion_grey=200, seed=0)
    features = realism.slice_features(grey, lesion.astype(np.uint8), window, names)
    assert features["head_width_share"] == 341 / 512
    head_px = np.pi * 170.5**2
    assert features["bone_share_of_head"] == pytest.approx(
        np.pi * (165**2 - 150**2) / head_px, 0.03
    )
    assert features["air_share_of_head"] == 0.0
    # The brain is grey 100 (31.4 HU); the lesion 2% of it leaves every quantile there.
    assert features["intracranial_hu_p50"] == pytest.approx(100 / 255 * 80, abs=0.5)
    assert features["intracranial_hu_p95"] < features["hemorrhagic_lesion_hu"]
    assert features["hemorrhagic_lesion_hu"] == pytest.approx(200 / 255 * 80, abs=0.2)
    assert features["hemorrhagic_contrast_hu"] == pytest.approx(100 / 255 * 80, abs=0.3)
    assert features["hemorrhagic_area_px"] == lesion.sum()
    radius = np.sqrt(head_px / np.pi)
    assert features["hemorrhagic_position_y"] == pytest.approx(60 / radius, abs=0.01)
    assert features["hemorrhagic_position_r"] == pytest.approx(60 / radius, abs=0.01)
    assert np.isnan(features["ischemic_contrast_hu"])  # no ischemic lesion on this slice
    # A step: the bands inside the outline stand as far above the ring as the core does.
    assert features["hemorrhagic_edge_share_2px"] == pytest.approx(1.0, abs=0.02)
    assert features["hemorrhagic_edge_share_4px"] == pytest.approx(1.0, abs=0.02)
    assert np.isnan(features["ischemic_edge_share_2px"])
    assert 2.0 < features["noise_residual_sd_grey"] < 4.0  # white noise of SD 3
    assert abs(features["noise_lag1_correlation"]) < 0.3
    # White noise spreads its power evenly over frequency: the high band holds the most area.
    assert features["nps_high_share"] > features["nps_low_share"]

    assert abs(features["inner_table_excess_hu"]) < 0.5  # a flat brain

    # A brighter rim 7 px wide inside the skull (grey 120 over 100): the cavity reads denser
    # along the inner table by 20 grey levels.
    rimmed = grey.copy()
    rim = np.zeros_like(grey)
    cv2.circle(rim, (256, 256), 150, 1, -1)
    cv2.circle(rim, (256, 256), 143, 0, -1)
    rimmed[(rim > 0) & (grey < 255)] = 120
    rim_features = realism.slice_features(rimmed, lesion.astype(np.uint8), window, names)
    assert rim_features["inner_table_excess_hu"] == pytest.approx(20 / 255 * 80, abs=0.6)

    dark, _ = drawn_head(lesion_grey=80, seed=1)
    infarct = realism.slice_features(dark, 2 * lesion.astype(np.uint8), window, names)
    assert infarct["ischemic_contrast_hu"] == pytest.approx(-20 / 255 * 80, abs=0.3)
    assert np.isnan(infarct["hemorrhagic_lesion_hu"])


def test_realism_edge_shares_follow_a_lesion_that_fades_to_its_outline() -> None:
    """The drawn head's lesion (radius 20 px, 100 grey levels over the brain) fading as
    1 - 0.5 exp(-d / 3) with d its depth in px: the bands 1-3 and 3-5 px inside the mask read
    about what the formula gives there, over the core's contrast, and less than the step's 1."""
    grey, lesion = drawn_head(lesion_grey=100, seed=0)
    depth = cv2.distanceTransform(lesion, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    share = np.where(lesion > 0, 1 - 0.5 * np.exp(-(depth - 0.5) / 3.0), 0.0)
    faded = np.clip(grey + np.rint(100 * share), 0, 254).astype(np.uint8)
    features = realism.slice_features(
        faded, lesion, realism.Window(40.0, 80.0), ["hemorrhagic", "ischemic"]
    )
    core = share[depth > 6].mean()
    for band, (low, high) in realism.EDGE_BANDS_PX.items():
        expected = share[(depth > low) & (depth <= high)].mean() / core
        assert features[f"hemorrhagic_edge_share_{band}"] == pytest.approx(expected, abs=0.03)
    assert features["hemorrhagic_edge_share_2px"] < 0.85 < features["hemorrhagic_edge_share_4px"]


def long_head() -> np.ndarray:
    """A long head, semi-axes 220 x 140 px: scalp (grey 120) 5 px, skull (255) 15 px, brain 100."""
    grey = np.zeros((512, 512), np.uint8)
    centre = (256, 240)
    cv2.ellipse(grey, centre, (220, 140), 0, 0, 360, 120, -1)
    cv2.ellipse(grey, centre, (215, 135), 0, 0, 360, 255, -1)
    cv2.ellipse(grey, centre, (200, 120), 0, 0, 360, 100, -1)
    return grey


def test_realism_shells_follow_a_long_head() -> None:
    """The outer shell holds the scalp and skull on every side of a long head, at its ends as at
    its sides, while the shells inside it hold brain only."""
    features = realism.slice_features(
        long_head(), np.zeros((512, 512), np.uint8), realism.Window(40.0, 80.0), []
    )
    assert features["head_width_share"] == 441 / 512
    brain_hu = 100 / 255 * 80
    for shell in ("0.00_0.25", "0.25_0.50", "0.50_0.70", "0.70_0.85"):
        assert features[f"radial_hu_{shell}"] == pytest.approx(brain_hu, abs=0.01), shell
    assert features["radial_hu_0.85_1.00"] > brain_hu + 25


def test_realism_head_leaves_the_table_out() -> None:
    """The long head on a table, a 6-px arc of radius 700 px under its back: the head keeps no
    more of the arc than the stretch lying flush against the scalp (which no outline can tell
    from skin)."""
    grey = long_head()
    drawn = grey > 0
    cv2.circle(grey, (256, 380 - 700 + 3), 700, 255, 6)  # its inner edge meets the scalp
    head = realism.head_mask(grey, 1.0)
    assert head[drawn].all()
    beyond_scalp_px = ndimage.distance_transform_edt(~drawn)[head & ~drawn]
    assert beyond_scalp_px.max() <= 12, "the arc joined the head away from where it touches"


def write_real_folder(folder: Path, slices: list, palette) -> Path:
    """A real-CT folder as --real takes it: images/ grey, masks/ rgb_map colours."""
    for item in slices:
        name = f"{item.name}.png"
        write_png(folder / "images" / name, item.grey)
        write_png(folder / "masks" / name, index_to_colour(item.labels, palette))
    return folder


def test_realism_of_the_phantom_against_its_own_slices_and_a_noisier_copy(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "phantom.zip"
    synthesize_archive(archive, project_params(TINY_PARAMS).phantom, 0)
    params = project_params()
    drawn = realism.read_phantom(archive, params, 10, seed=3)
    assert len(drawn.slices) == 10 and all(item.labels.any() for item in drawn.slices)
    again = realism.read_phantom(archive, params, 10, seed=3)
    assert [item.name for item in again.slices] == [item.name for item in drawn.slices]
    same = write_real_folder(tmp_path / "same", drawn.slices, params.palette)
    common = ["--phantom", str(archive), "--phantom-slices", "10", "--seed", "3"]
    result = realism.main(["--real", str(same), *common, "--json", str(tmp_path / "same.json")])
    # The real reader and extract's reader see the same pixels and classes: no distance.
    distances = [row["wasserstein"] for row in result["features"].values()]
    assert all(distance == 0 or np.isnan(distance) for distance in distances)
    assert result["real"]["slices"] == result["phantom"]["slices"] == 10
    assert json.loads((tmp_path / "same.json").read_text())["classifier"]["folds"] == 5

    rng = np.random.default_rng(0)
    noisy = [
        realism.Slice(
            item.name,
            np.clip(item.grey + rng.normal(0, 25, item.grey.shape), 0, 255).astype(np.uint8),
            item.labels,
        )
        for item in drawn.slices
    ]
    other = write_real_folder(tmp_path / "noisy", noisy, params.palette)
    write_png(other / "images" / "no_mask.png", noisy[0].grey)  # reported, not scored
    montage = tmp_path / "montage.png"
    result = realism.main(["--real", str(other), *common, "--montage", str(montage)])
    assert result["real"]["slices"] == 10 and "no_mask.png" in result["real"]["skipped"][0]
    assert result["features"]["noise_residual_sd_grey"]["wasserstein"] > 5
    assert result["classifier"]["auc"] > 0.9
    picture = read_image(montage, color=True)
    assert picture.shape[1] > 5 * realism.MONTAGE_TILE_PX  # 8 tiles a row, phantom over real


def grey_band_model(path: Path) -> Path:
    """A real Keras model of known answers at 32 px (1x1 convolution and softmax on the grey):
    background below grey 60, ischemic from 60 to 180, hemorrhagic above 180."""
    import keras

    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Conv2D(3, 1, activation="softmax")(inputs)
    model = keras.Model(inputs, outputs)
    weights = np.zeros((1, 1, 3, 3), np.float32)
    weights[0, 0, :, 1] = 1.0 / 3.0  # hemorrhagic logit: grey - 150
    weights[0, 0, :, 2] = 0.25 / 3.0  # ischemic logit: (grey - 60) / 4
    model.layers[-1].set_weights([weights, np.array([0.0, -150.0, -15.0], np.float32)])
    model.save(path)
    return path


def test_transfer_check_runs_the_new_images_command_and_scores_its_masks(
    tmp_path: Path,
) -> None:
    """64-px slices, squares on even pixels (the 2x resizes are exact): hemorrhage found on
    one BHSD slice and called ischemic on the other; the infarct found, with a bright spot
    that the model calls hemorrhagic on the AISD-like slice."""
    model = grey_band_model(tmp_path / "model.keras")
    bright, mid = (slice(8, 24), slice(8, 24)), (slice(32, 48), slice(32, 48))
    slices = []
    for name, grey_squares, truth_squares in (
        ("BHSD_found", [(bright, 220)], [(bright, 1)]),
        ("BHSD_missed", [(mid, 100)], [(mid, 1)]),
        ("Ischemic_found", [(mid, 100), (bright, 220)], [(mid, 2)]),
    ):
        grey = np.full((64, 64), 20, np.uint8)
        labels = np.zeros((64, 64), np.uint8)
        for square, value in grey_squares:
            grey[square] = value
        for square, value in truth_squares:
            labels[square] = value
        slices.append(realism.Slice(name, grey, labels))
    palette = project_params().palette
    real = write_real_folder(tmp_path / "real", slices, palette)
    output = tmp_path / "predictions"

    done = run_benchmark(
        "real_transfer.py",
        "--real",
        str(real),
        "--model",
        str(model),
        "--output",
        str(output),
        "--json",
        str(tmp_path / "transfer.json"),
        "--per-slice",
        *("--montage", str(tmp_path / "montage.png"), "--montage-slices", "2"),
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert "stages.infer" in done.stderr  # the command itself ran
    assert sorted(p.name for p in (output / "masks").iterdir()) == sorted(
        f"{item.name}.png" for item in slices
    )
    result = json.loads((tmp_path / "transfer.json").read_text())
    scores, per_slice = result["scores"], result["per_slice"]
    hemorrhagic, ischemic = scores["all"]["hemorrhagic"], scores["all"]["ischemic"]
    assert hemorrhagic == {
        "slices": 2,
        "pooled_dice": 2 * 256 / (512 + 256),
        "mean_slice_dice": 0.5,
        "slices_hit": 1,
        "called_other_class_share": 0.5,
        "missed_share": 0.0,
        "slices_without_class": 1,
        "false_positive_slices": 1,
    }
    assert (ischemic["pooled_dice"], ischemic["slices_hit"], ischemic["slices"]) == (1.0, 1, 1)
    assert ischemic["false_positive_slices"] == 1  # BHSD_missed
    assert list(scores) == ["all", "BHSD", "Ischemic"]
    assert (
        scores["BHSD"]["hemorrhagic"]["slices"] == 2
        and scores["Ischemic"]["ischemic"]["slices"] == 1
    )
    assert "pooled Dice" in done.stdout

    # Per slice: every slice, in name order, with the counts the pooled figures are made of.
    assert [(row["name"], row["source"]) for row in per_slice] == [
        ("BHSD_found.png", "BHSD"),
        ("BHSD_missed.png", "BHSD"),
        ("Ischemic_found.png", "Ischemic"),
    ]
    found, missed, infarct = (row["classes"] for row in per_slice)
    square = {"true_px": 256, "predicted_px": 256, "overlap_px": 256, "dice": 1.0, "hit": True}
    assert found == {
        "hemorrhagic": square,
        "ischemic": {"true_px": 0, "predicted_px": 0, "overlap_px": 0, "dice": None, "hit": False},
    }
    assert missed == {
        "hemorrhagic": {**square, "predicted_px": 0, "overlap_px": 0, "dice": 0.0, "hit": False},
        "ischemic": {**square, "true_px": 0, "overlap_px": 0, "dice": 0.0, "hit": False},
    }
    assert infarct["ischemic"] == square and infarct["hemorrhagic"]["predicted_px"] == 256
    for label, pooled in scores["all"].items():
        holding = [row["classes"][label] for row in per_slice if row["classes"][label]["true_px"]]
        overlap_px = sum(figures["overlap_px"] for figures in holding)
        total_px = sum(figures["true_px"] + figures["predicted_px"] for figures in holding)
        assert pooled["pooled_dice"] == 2 * overlap_px / total_px
        assert pooled["slices_hit"] == sum(figures["hit"] for figures in holding)
        lacking = [
            row["classes"][label] for row in per_slice if not row["classes"][label]["true_px"]
        ]
        assert pooled["false_positive_slices"] == sum(f["predicted_px"] > 0 for f in lacking)
    table = done.stdout.splitlines()
    assert table[0].split()[:4] == ["slice", "source", "hemorrhagic", "Dice"]
    assert table[2].split()[:4] == ["BHSD_found.png", "BHSD", "1.00", "hit"]
    assert table[3].split()[:4] == ["BHSD_missed.png", "BHSD", "0.00", "256/0/0"]

    # The montage: the first 2 slices by name, a pair a row (ceil(sqrt(2 / 2)) pairs a row).
    tile_px = real_transfer.MONTAGE_TILE_PX
    picture = read_image(tmp_path / "montage.png", color=True)
    assert picture.shape == (
        2 * tile_px + real_transfer.MONTAGE_GAP_PX,
        2 * tile_px + real_transfer.PAIR_GAP_PX,
        3,
    )
    assert result["montage"]["slices_drawn"] == 2 and "the first 2 of 3 slices" in done.stdout
    prediction_left = tile_px + real_transfer.PAIR_GAP_PX
    second_top = tile_px + real_transfer.MONTAGE_GAP_PX

    def blended(grey: int, index: int) -> list[int]:
        alpha = project_params().infer.overlay_alpha
        return np.rint((1 - alpha) * grey + alpha * np.array(display_rgb(index))).tolist()

    # 64 px slices shown at 3x: the squares' centres at 48 (bright) and 120 (mid) px.
    assert picture[48, 48].tolist() == blended(220, 1)  # BHSD_found: truth
    assert picture[48, prediction_left + 48].tolist() == blended(220, 1)  # and prediction
    assert picture[second_top + 120, 120].tolist() == blended(100, 1)  # BHSD_missed: truth,
    assert picture[second_top + 120, prediction_left + 120].tolist() == blended(100, 2)  # called
    assert picture[second_top + 48, 48].tolist() == [20, 20, 20]  # no lesion: the slice's grey


def test_transfer_montage_draws_the_first_slices_by_name_in_a_near_square_grid(
    tmp_path: Path,
) -> None:
    """Pairs of 2 x 192 px in rows of ceil(sqrt(n / 2)) pairs: 5 slices in 3 rows of 2 pairs,
    18 in 6 rows of 3; a cap above the slice count draws them all. Given in reverse, the slices
    are drawn by name: BHSD_00, the one with a lesion, first."""
    params = project_params()
    grey = np.full((40, 40), 90, np.uint8)
    scored = []
    for number in reversed(range(18)):
        labels = np.zeros((40, 40), np.uint8)
        labels[10:20, 10:20] = 1 if number == 0 else 0
        scored.append(real_transfer.Scored(f"BHSD_{number:02d}.png", grey, labels, labels))
    per_slice = [real_transfer.slice_figures(item, params.lesion_classes) for item in scored]
    pair_px = 2 * real_transfer.MONTAGE_TILE_PX + real_transfer.PAIR_GAP_PX
    gap_px = real_transfer.MONTAGE_GAP_PX
    for count, columns, rows in ((5, 2, 3), (18, 3, 6), (100, 3, 6)):
        path = tmp_path / f"montage_{count}.png"
        drawn = real_transfer.write_montage(path, scored, per_slice, params, count)
        picture = read_image(path, color=True)
        assert drawn == min(count, len(scored))
        assert picture.shape == (
            rows * real_transfer.MONTAGE_TILE_PX + (rows - 1) * gap_px,
            columns * pair_px + (columns - 1) * gap_px,
            3,
        )
        # The lesion at 10-20 of 40 px: 48-96 px of the 192-px tile; red over grey 90.
        red, green, _ = picture[72, 72].tolist()
        assert red > green + 50


def test_the_classifier_auc_is_near_half_for_one_distribution_and_near_one_for_two() -> None:
    rng = np.random.default_rng(0)
    features = 25  # about as many as realism.py's slice-level features
    same = [
        realism.classifier_auc(rng.normal(size=(22, features)), rng.normal(size=(64, features)), s)
        for s in range(5)
    ]
    assert 0.35 < np.mean([run["auc"] for run in same]) < 0.65
    shifted = rng.normal(size=(64, features))
    shifted[:, 3] += 4.0  # one feature 4 SD off
    apart = realism.classifier_auc(rng.normal(size=(22, features)), shifted, 0)
    assert apart["auc"] > 0.9 and apart["auc_min"] <= apart["auc"] <= apart["auc_max"]
    weights = np.abs(apart["weights"])
    assert weights.argmax() == 3  # the feature that differs carries the classifier


# ---- the spread over training seeds (benchmarks/training_seeds.py) ---------------------------


def test_training_seeds_train_and_evaluate_each_seed_beside_the_workspace(tmp_path: Path) -> None:
    """Two seeds on a tiny project after `dvc repro` of its data stages, then one of them again
    with the transfer check on phantom slices: each seed's own figures, the same figures for
    the same seed, and the workspace's outputs untouched."""
    project = create_project(tmp_path / "project")  # the tiny test params: 1 epoch
    project.dvc("repro", "augment")  # what train and evaluate read
    outputs = ("models", "metrics", "dvclive", "reports")
    before = {name: folder_hashes(project.path / name) for name in outputs}
    lesions = project_params().lesion_classes
    labels = [lesion.label for lesion in lesions]

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(PROJECT_ROOT / "benchmarks/training_seeds.py"), *args]
        return subprocess.run(
            command, cwd=project.path, env=tool_env(), capture_output=True, text=True
        )

    done = run("--seeds", "1", "2", "--output", "seeds", "--json", str(tmp_path / "two.json"))

    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert list(two["figures"]) == ["1", "2"] and two["failed"] == {}
    for seed in ("1", "2"):
        figures = two["figures"][seed]
        for label in labels:
            assert 0 <= figures[f"dice_{label}_ci_low"] <= figures[f"dice_{label}"] <= 1
            assert figures[f"dice_{label}"] <= figures[f"dice_{label}_ci_high"] <= 1
            assert f"lesion_f1_{label}" in figures and f"triage_auc_{label}" in figures
        assert figures["epochs"] == 1 and figures["best_epoch"] == 1
        assert (project.path / "seeds" / f"seed_{seed}" / "model.keras").is_file()
    # The seed reaches training: another initialisation, another validation loss.
    assert two["figures"]["1"]["val_loss"] != two["figures"]["2"]["val_loss"]
    assert two["spread"]["val_dice_mean"]["seeds"] == 2
    assert "seed 1" in done.stdout and "seed 2" in done.stdout and "SD" in done.stdout
    assert "phantom test cases" in done.stdout and "not from real CT" in done.stdout

    drawn = realism.read_phantom(project.path / "data/raw/phantom.zip", project_params(), 4, 0)
    real = write_real_folder(tmp_path / "real", drawn.slices, project_params().palette)
    again = run(
        *("--seeds", "2", "--output", str(tmp_path / "again"), "--real", str(real)),
        *("--json", str(tmp_path / "again.json")),
    )

    assert again.returncode == 0, again.stderr[-3000:]
    repeated = json.loads((tmp_path / "again.json").read_text())["figures"]["2"]
    timing = {"training_s", "train_images_per_s"}
    first = two["figures"]["2"]
    assert {k: v for k, v in first.items() if k not in timing} == {
        k: v for k, v in repeated.items() if k not in timing and not k.startswith("real_")
    }
    for lesion in lesions:
        held = sum((item.labels == lesion.index).any() for item in drawn.slices)
        assert repeated[f"real_slices_{lesion.label}"] == held
        assert 0 <= repeated[f"real_slices_hit_{lesion.label}"] <= held
    assert "real slices of" in again.stdout
    assert {name: folder_hashes(project.path / name) for name in outputs} == before

    # benchmarks/seed_compare.py reads both kinds of run it leaves: the --json and a seed folder.
    compared = seed_compare.main(
        ["--baseline", str(tmp_path / "two.json"), "--candidate", str(tmp_path / "again/seed_2")]
    )
    assert compared["baseline_seeds"] == ["1", "2"] and compared["candidate_seeds"] == ["2"]
    mean_dice = compared["figures"]["val_dice_mean"]
    assert mean_dice["baseline"]["seeds"] == 2 and mean_dice["candidate"]["seeds"] == 1
    assert mean_dice["difference"] == pytest.approx(
        first["val_dice_mean"] - two["spread"]["val_dice_mean"]["mean"]
    )
    for lesion in lesions:  # the baseline ran without --real: only what both sides hold
        assert f"real_pooled_dice_{lesion.label}" not in compared["figures"]
        assert f"dice_{lesion.label}" in compared["figures"]


# ---- two sets of seeds compared (benchmarks/seed_compare.py) ---------------------------------


def exact_permutation_p_value(baseline: list[float], candidate: list[float]) -> Fraction:
    """The oracle: every split counted in exact rational arithmetic on the figures' decimal
    values (millionths: SEED_FIGURE), so that ties are ties."""
    values = [Fraction(value).limit_denominator(10**6) for value in (*baseline, *candidate)]
    total, chosen = sum(values), len(candidate)

    def distance(indices: tuple[int, ...]) -> Fraction:
        picked = sum(values[index] for index in indices)
        return abs(picked / chosen - (total - picked) / (len(values) - chosen))

    observed = distance(tuple(range(len(baseline), len(values))))
    splits = list(itertools.combinations(range(len(values)), chosen))
    return Fraction(sum(distance(split) >= observed for split in splits), len(splits))


# A seed's figures: Dice and shares to a millionth, with repeats (slices hit, rounded Dice).
SEED_FIGURE = st.sampled_from([0.0, 0.25, 0.375, 0.5]) | st.integers(0, 10**6).map(
    lambda millionths: millionths / 10**6
)


@settings(max_examples=40, deadline=None)
@given(
    baseline=st.lists(SEED_FIGURE, min_size=1, max_size=6),
    candidate=st.lists(SEED_FIGURE, min_size=1, max_size=6),
)
def test_seed_comparison_p_value_counts_every_split_exactly(
    baseline: list[float], candidate: list[float]
) -> None:
    """Repeated values (slices hit, Dice read to a few digits) make ties: they count."""
    assert seed_compare.permutation_p_value(baseline, candidate) == pytest.approx(
        float(exact_permutation_p_value(baseline, candidate)), abs=1e-12
    )


def test_seed_comparison_p_value_is_scipys_permutation_test_without_ties() -> None:
    """The reference implementation agrees where no two splits tie (scipy's tolerance for
    ties is tighter than the rounding of a mean, so it can miss a tie)."""
    from scipy import stats

    baseline, candidate = [0.20, 0.17, 0.14, 0.29, 0.03, 0.04, 0.42], [0.03, 0.09, 0.11]

    def statistic(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        return np.abs(np.mean(y, axis=axis) - np.mean(x, axis=axis))

    oracle = stats.permutation_test(
        (baseline, candidate),
        statistic,
        permutation_type="independent",
        alternative="greater",
        n_resamples=np.inf,
        vectorized=True,
    )
    assert seed_compare.permutation_p_value(baseline, candidate) == pytest.approx(oracle.pvalue)


def test_seed_comparison_draws_random_splits_when_there_are_too_many(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above EXACT_SPLITS_MAX the p-value is a Monte Carlo estimate of the exact one."""
    baseline, candidate = [0.20, 0.17, 0.14, 0.29, 0.03, 0.04, 0.42], [0.03, 0.09, 0.10]
    exact = seed_compare.permutation_p_value(baseline, candidate)
    monkeypatch.setattr(seed_compare, "EXACT_SPLITS_MAX", 10)
    estimate = seed_compare.permutation_p_value(baseline, candidate)
    assert estimate != exact and estimate == pytest.approx(exact, abs=0.01)
    assert seed_compare.permutation_p_value(baseline, candidate) == estimate  # seeded


@pytest.mark.parametrize(("sizes", "smallest"), [((3, 3), 0.1), ((7, 3), 1 / 120), ((1, 1), 1.0)])
def test_seed_comparison_smallest_p_is_the_most_extreme_split(
    sizes: tuple[int, int], smallest: float
) -> None:
    baseline = [float(value) for value in range(sizes[0])]
    candidate = [100.0 + value for value in range(sizes[1])]
    assert seed_compare.smallest_p_value(*sizes) == pytest.approx(smallest)
    assert seed_compare.permutation_p_value(baseline, candidate) == pytest.approx(smallest)


def test_seed_comparison_pools_runs_leaves_nulls_out_and_refuses_a_seed_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_file(name: str, figures: dict[str, dict]) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"figures": figures}))
        return path

    first = run_file("a.json", {"42": {"test_cases_ischemic": 7, "dice_ischemic": 0.3}})
    second = run_file(
        "b.json",
        {"1": {"dice_ischemic": 0.2}, "2": {"dice_ischemic": None}, "3": {"dice_ischemic": 0.4}},
    )
    candidate = run_file("c.json", {"1": {"dice_ischemic": 0.1}, "2": {"dice_ischemic": 0.05}})

    result = seed_compare.main(
        [
            "--baseline",
            str(first),
            str(second),
            "--candidate",
            str(candidate),
            "--json",
            str(tmp_path / "out.json"),
        ]
    )

    row = result["figures"]["dice_ischemic"]
    assert result["baseline_seeds"] == ["42", "1", "2", "3"]
    assert row["baseline"]["seeds"] == 3 and row["baseline"]["mean"] == pytest.approx(0.3)
    assert row["difference"] == pytest.approx(0.075 - 0.3)
    # Of the 10 ways to deal 0.2, 0.3, 0.4, 0.1, 0.05 into 3 and 2, the observed one and
    # {0.3, 0.4} against the rest (0.233) lie at least 0.225 from 0.
    assert row["p_value"] == pytest.approx(0.2) and row["smallest_p_value"] == pytest.approx(0.1)
    assert "dice_ischemic" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["figures"]["dice_ischemic"] == row
    with pytest.raises(SystemExit, match="seed 42 is given twice"):
        seed_compare.main(["--baseline", str(first), str(first), "--candidate", str(candidate)])
    no_number = run_file("d.json", {"5": {"devices": "CPU:0 (2 cores)"}})
    with pytest.raises(SystemExit, match="figure devices: not a number"):
        seed_compare.main(
            ["--baseline", str(no_number), "--candidate", str(no_number), "--figures", "devices"]
        )
    with pytest.raises(SystemExit, match="figure dice_ischaemic: on no seed of either side"):
        seed_compare.main(
            [
                "--baseline",
                str(second),
                "--candidate",
                str(candidate),
                "--figures",
                "dice_ischaemic",
            ]
        )
    with pytest.raises(SystemExit, match="not a seed folder"):
        seed_compare.main(["--baseline", str(tmp_path), "--candidate", str(candidate)])


# ---- the phantom's drawn lesion sizes (benchmarks/lesion_sizes.py) ---------------------------


def test_lesion_sizes_measure_every_kind_of_the_params_phantom_at_the_reference_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every kind of both classes in the JSON and the printed table; a kind whose size range the
    params file doubles measures about twice as wide, and the file's head width does not reach
    the measurement (pinned to the reference head): another kind measures the same."""
    small = {"phantom": {"image_size": 128, "workers": 1}}  # a sixteenth of 512 px's pixels
    base = write_project_params(tmp_path / "params.yaml", small)
    deep = project_params().phantom.lesion_size.intraparenchymal_deep.radius_head_units
    larger = {
        "head_width_share": [0.9, 0.95],
        "lesion_size": {"intraparenchymal_deep": {"radius_head_units": [2 * r for r in deep]}},
    }
    changed = write_project_params(tmp_path / "larger.yaml", deep_merge(small, {"phantom": larger}))
    kinds = [*HEMORRHAGE_SUBTYPES, *ISCHEMIA_TERRITORIES]

    lesion_sizes.main(["--params", str(base), "--cases", "3", "--json", str(tmp_path / "o.json")])
    printed = capsys.readouterr().out
    measured = json.loads((tmp_path / "o.json").read_text())
    again = lesion_sizes.main(
        ["--params", str(changed), "--cases", "3", "--kinds", "intraparenchymal_deep", "lacunar"]
    )

    assert list(measured["kinds"]) == kinds
    for kind in kinds:
        row = measured["kinds"][kind]
        assert row["cases"] == 3
        assert row["class"] == (HEMORRHAGIC if kind in HEMORRHAGE_SUBTYPES else ISCHEMIC)
        for figure in ("diameter_mm", "volume_ml", "slices"):
            assert 0 < row[figure]["p10"] <= row[figure]["median"] <= row[figure]["p90"], kind
        assert row["slices"]["p90"] <= 16
        assert f"| {kind} | {row['class']} | 3 | " in printed
    reference = [REFERENCE_HEAD_WIDTH_SHARE] * 2
    assert measured["pins"]["head_width_share"] == reference and str(reference) in printed
    assert list(again["kinds"]) == ["intraparenchymal_deep", "lacunar"]
    assert again["kinds"]["lacunar"] == measured["kinds"]["lacunar"]
    ratio = (
        again["kinds"]["intraparenchymal_deep"]["diameter_mm"]["median"]
        / measured["kinds"]["intraparenchymal_deep"]["diameter_mm"]["median"]
    )
    assert 1.6 < ratio < 2.4


# ---- what a model finds of each lesion kind (benchmarks/lesion_kinds.py) ----------------------


def kind_truths(phantom, kinds: list[str], cases: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """(lesion mask, kind) of each slice lesion_kinds renders, in the order it segments them."""
    return [
        (item.lesion, kind)
        for kind in kinds
        for _, item in lesion_kinds.lesion_slices(phantom, kind, cases, seed)
    ]


def test_lesion_kinds_score_each_kind_against_its_own_cases() -> None:
    """A segmenter answering each slice's true mask (in the class of the kind) scores 1 on every
    kind; one calling every pixel hemorrhagic scores each bleed at 2|T| / (|T| + all pixels)
    with every slice hit, and each infarct at 0 with all of it called the other class."""
    phantom = project_params().phantom.model_copy(update={"image_size": 128, "workers": 1})
    kinds = ["subdural", "lacunar", "posterior_fossa"]
    class_index = {HEMORRHAGIC: 1, ISCHEMIC: 2}
    truths = kind_truths(phantom, kinds, 2, seed=5)
    kind_of = [kind for _, kind in truths]
    answers = iter(truths)

    def oracle(greys: list[np.ndarray]) -> list[np.ndarray]:
        truth, kind = next(answers)
        assert greys[0].shape == truth.shape and greys[0].dtype == np.uint8
        return [truth.astype(np.uint8) * class_index[lesion_sizes.KIND_CLASSES[kind]]]

    def all_hemorrhagic(greys: list[np.ndarray]) -> list[np.ndarray]:
        return [np.ones_like(greys[0])]

    perfect = lesion_kinds.score_kinds(oracle, phantom, class_index, kinds, 2, 5)
    flooded = lesion_kinds.score_kinds(all_hemorrhagic, phantom, class_index, kinds, 2, 5)

    for kind in kinds:
        row = perfect[kind]
        slices = kind_of.count(kind)
        assert row["cases"] == 2 and row["slices"] == slices > 0, kind
        assert row["pooled_dice"] == row["mean_slice_dice"] == 1.0 and row["slices_hit"] == slices
        assert row["called_other_class_share"] == 0.0
        for group, group_slices in row["slices_by_window"].items():
            assert row[f"pooled_dice_{group}"] == (1.0 if group_slices else None), (kind, group)
    subdural = [truth for truth, kind in truths if kind == "subdural"]
    lesion_px = sum(int(truth.sum()) for truth in subdural)
    expected = 2 * lesion_px / (lesion_px + len(subdural) * 128 * 128)
    assert flooded["subdural"]["pooled_dice"] == pytest.approx(expected)
    assert flooded["subdural"]["slices_hit"] == len(subdural)
    for kind in ("lacunar", "posterior_fossa"):
        assert flooded[kind]["pooled_dice"] == 0.0 and flooded[kind]["slices_hit"] == 0
        assert flooded[kind]["called_other_class_share"] == 1.0


def test_lesion_kinds_split_the_windows_and_refuse_the_training_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Brain windows only: every slice in the brain-window column and none in the wide one;
    the training plan's seed is refused by name; the table and the JSON say the same."""
    model = grey_band_model(tmp_path / "model.keras")
    narrow = {"phantom": {"image_size": 128, "workers": 1, "wide_window_share": 0.0}}
    params = write_project_params(tmp_path / "params.yaml", narrow)
    arguments = ["--params", str(params), "--model", str(model), "--cases", "1"]

    result = lesion_kinds.main(
        [*arguments, "--kinds", "epidural", "middle_cerebral", "--json", str(tmp_path / "k.json")]
    )
    printed = capsys.readouterr().out
    training_seed = project_params().seed
    refused = run_benchmark("lesion_kinds.py", *arguments, "--seed", str(training_seed))

    assert json.loads((tmp_path / "k.json").read_text()) == result
    assert list(result["kinds"]) == ["epidural", "middle_cerebral"]
    for kind, row in result["kinds"].items():
        assert row["slices_by_window"]["wide_export"] == 0 and row["slices"] > 0
        assert row["pooled_dice_wide_export"] is None
        assert row["pooled_dice_brain_window"] == row["pooled_dice"]
        assert f"| {kind} | {row['class']} | 1 | {row['slices']} | " in printed
    assert "phantom figures" in printed
    assert refused.returncode != 0 and f"--seed {training_seed}" in refused.stderr
