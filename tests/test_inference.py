"""Inference, the `evaluate` and `infer` stage functions, and the new-images command, with a
tiny fixed-weight Keras model: bright pixels (grey > 128) are hemorrhagic, the rest background,
ischemic never, so every prediction is known in advance.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.evaluate.cases import case_groups
from pipeline.evaluate.run import run_evaluation
from pipeline.evaluate.scores import CaseResult, Spacing, score_case_class
from pipeline.evaluate.summary import summarize_cases
from pipeline.headcrop import volume_box
from pipeline.infer.inference import (
    Segmenter,
    labels_at_size,
    load_model,
    run_mini_test,
    segment_files,
    to_model_input,
)
from pipeline.io import DataError, read_image, write_manifest, write_png
from pipeline.masks import index_to_colour, palette_array
from tests.conftest import (
    original_row,
    project_params,
    run_stage_command,
    with_sha256,
    write_project_params,
)
from tests.test_headcrop import head_slice

ROOT = Path(__file__).resolve().parents[1]
REAL_SAMPLES = ROOT / "tests" / "data" / "real-ct" / "images"
MODEL_SIZE = 32
PARAMS = project_params(
    {
        "image_size": MODEL_SIZE,
        "evaluate": {"overlay_slices": 1, "batch_size": 2},
        "infer": {"latency_repeats": 2, "batch_size": 2},
    }
)
PALETTE = palette_array(PARAMS.palette)
LESION_LABELS = [lesion.label for lesion in PARAMS.lesion_classes]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """1x1 convolution: logits (0, (mean grey - 128) / 2, -1000) -> softmax."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    inputs = keras.Input((MODEL_SIZE, MODEL_SIZE, 3))
    outputs = keras.layers.Conv2D(3, 1, activation="softmax")(inputs)
    model = keras.Model(inputs, outputs)
    weights = np.zeros((1, 1, 3, 3), dtype=np.float32)
    weights[0, 0, :, 1] = 0.5 / 3.0
    model.layers[-1].set_weights([weights, np.array([0.0, -64.0, -1000.0], dtype=np.float32)])
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


def numpy_forward(batch: np.ndarray) -> np.ndarray:
    """A forward pass that is not mirror-symmetric: the left half always leans hemorrhagic."""
    logits = np.zeros((*batch.shape[:3], 3), dtype=np.float32)
    logits[..., 1] = (batch.mean(axis=-1) - 128.0) / 32.0
    logits[:, :, : batch.shape[2] // 2, 1] += 1.0
    exponentials = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


# ---- pieces ---------------------------------------------------------------------------------


def test_to_model_input_resizes_and_replicates_grey():
    grey = np.arange(64 * 48, dtype=np.uint32).reshape(64, 48).astype(np.uint8)
    model_input = to_model_input(grey, 32)
    assert model_input.shape == (32, 32, 3) and model_input.dtype == np.float32
    assert np.array_equal(model_input[..., 0], model_input[..., 2])
    same = to_model_input(grey[:32, :32], 32)
    np.testing.assert_array_equal(same[..., 1], grey[:32, :32])


def test_labels_back_at_input_size_keep_only_classes():
    softmax = numpy_forward(np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)))[0]
    labels = labels_at_size(softmax, (300, 212))
    assert labels.shape == (300, 212)
    assert set(np.unique(labels)) <= set(np.unique(softmax.argmax(-1)))


def test_labels_back_at_input_size_follow_probabilities_between_model_pixels():
    # A disc seen by a model at a quarter of the size: its softmax is the disc's share of each
    # model pixel. Taken back to full size, the outline should follow those shares, not the
    # model's 4 x 4 pixel blocks.
    rows, columns = np.mgrid[:128, :128]
    disc = (rows - 61.3) ** 2 + (columns - 66.8) ** 2 < 21.5**2
    share = cv2.resize(disc.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    softmax = np.stack([1.0 - share, share, np.zeros_like(share)], axis=-1)
    labels = labels_at_size(softmax, (128, 128))
    blocks = cv2.resize(
        softmax.argmax(-1).astype(np.uint8), (128, 128), interpolation=cv2.INTER_NEAREST
    )

    def dice(mask: np.ndarray) -> float:
        return 2.0 * (mask & disc).sum() / (mask.sum() + disc.sum())

    assert set(np.unique(labels)) == {0, 1}
    assert dice(labels == 1) > 0.99 > dice(blocks == 1)


def test_flip_tta_averages_prediction_with_flipped_back_prediction():
    images = np.random.default_rng(1).uniform(0, 255, (3, 8, 8, 3)).astype(np.float32)
    plain = Segmenter(numpy_forward, 8, batch_size=2).softmax(images)
    tta = Segmenter(numpy_forward, 8, batch_size=2, tta_flip=True).softmax(images)
    expected = 0.5 * (numpy_forward(images) + numpy_forward(images[:, :, ::-1])[:, :, ::-1])
    np.testing.assert_allclose(tta, expected, rtol=1e-6)
    assert not np.allclose(plain, tta)


def test_model_contract_is_checked(tmp_path, tiny_model):
    with pytest.raises(DataError, match="model file not found"):
        load_model(tmp_path / "missing.keras")
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a loadable Keras model"):
        load_model(broken)
    segmenter = Segmenter.from_file(tiny_model, batch_size=2)
    bright = np.full((3, MODEL_SIZE, MODEL_SIZE, 3), 20.0, dtype=np.float32)
    bright[:, :10, :10] = 220.0
    labels = segmenter.softmax(bright).argmax(-1)
    assert (labels[:, :10, :10] == 1).all() and (labels[:, 10:, 10:] == 0).all()


# ---- the new-images command -----------------------------------------------------------------


def run_command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The command as a user runs it, from another folder, with its own copy of params.yaml."""
    params = write_project_params(tmp_path / "params.yaml", {"infer": {"batch_size": 4}})
    return run_stage_command("infer", tmp_path, "--params", str(params), *args)


def test_new_images_command_on_real_ct(tmp_path, tiny_model):
    inputs = tmp_path / "in"
    shutil.copytree(REAL_SAMPLES, inputs)
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    colour = cv2.cvtColor(
        read_image(next(REAL_SAMPLES.glob("*.png")), color=True), cv2.COLOR_RGB2BGR
    )
    cv2.imwrite(str(inputs / "colour_small.jpg"), cv2.resize(colour, (300, 200)))
    output = tmp_path / "out"

    result = run_command(
        tmp_path, "--model", str(tiny_model), "--input", str(inputs), "--output", str(output)
    )

    assert result.returncode == 0, result.stderr
    assert "corrupt.png" in result.stderr and "skipped 1" in result.stderr
    names = sorted(p.name for p in REAL_SAMPLES.glob("*.png"))
    assert sorted(p.name for p in (output / "masks").iterdir()) == sorted(
        [*names, "colour_small.png"]
    )
    for name in names:
        mask = read_image(output / "masks" / name, color=True)
        assert mask.shape == (512, 512, 3)
        colours = np.unique(mask.reshape(-1, 3), axis=0)
        assert all((colour == PALETTE).all(axis=1).any() for colour in colours)
        assert (mask == PALETTE[1]).all(axis=-1).any()  # the bright skull is "hemorrhagic"
        assert read_image(output / "overlays" / name, color=True).shape == (512, 512, 3)
    assert read_image(output / "masks" / "colour_small.png").shape == (200, 300)


def test_new_images_command_fails_only_when_nothing_is_segmented(tmp_path, tiny_model):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    result = run_command(
        tmp_path,
        "--model",
        str(tiny_model),
        "--input",
        str(bad),
        str(tmp_path / "nope.png"),
        "--output",
        str(tmp_path / "out"),
    )
    assert result.returncode == 1
    assert "bad.jpg" in result.stderr and "nope.png" in result.stderr
    assert "segmented 0" in result.stderr


def test_segment_files_with_flip_tta_and_duplicate_names(tmp_path, tiny_model):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    grey = np.full((40, 50), 30, dtype=np.uint8)
    grey[5:20, 5:25] = 230
    write_png(first / "slice.png", grey)
    cv2.imwrite(str(second / "slice.jpg"), grey)
    segmenter = Segmenter.from_file(tiny_model, batch_size=2, tta_flip=True)
    summary = segment_files(
        segmenter, [first, second], tmp_path / "out", PARAMS.palette, 0.5, PARAMS.extract
    )
    assert summary.segmented == [str(first / "slice.png")]
    assert [problem.source for problem in summary.skipped] == [str(second / "slice.jpg")]
    mask = read_image(tmp_path / "out" / "masks" / "slice.png", color=True)
    np.testing.assert_array_equal(mask[10, 10], PALETTE[1])
    np.testing.assert_array_equal(mask[30, 40], PALETTE[0])


def bright_forward(batch: np.ndarray) -> np.ndarray:
    """A model that calls every pixel above grey 128 hemorrhagic: its labels show where each
    model pixel came from."""
    hemorrhagic = (batch[..., 0] > 128).astype(np.float32)
    return np.stack([1.0 - hemorrhagic, hemorrhagic, np.zeros_like(hemorrhagic)], axis=-1)


def test_a_head_box_is_what_the_model_sees_and_its_labels_land_back_in_place():
    grey = head_slice((256, 256), (110, 120), (60, 70), table=False)  # skull 255, brain 120
    grey[240:250, 10:60] = 200  # bright, but outside the square round the head
    seen: list[np.ndarray] = []

    def recording_forward(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.copy())
        return bright_forward(batch)

    segmenter = Segmenter(recording_forward, 128, batch_size=2, max_head_zoom=2.0)
    box = volume_box([grey], segmenter.max_head_zoom)
    assert box is not None and box.side < 256
    (labels,) = segmenter.segment([grey], [box])
    assert labels.shape == grey.shape
    inside = np.zeros(grey.shape, bool)
    inside[max(box.top, 0) : box.top + box.side, max(box.left, 0) : box.left + box.side] = True
    bright = grey > 128
    # The skull is found where it is (its outline blurs by a model pixel at most) ...
    agreement = (labels[inside] == 1) == bright[inside]
    assert agreement.mean() > 0.98
    # ... and nothing outside the square is called a lesion, though it is bright.
    assert not labels[~inside].any() and bright[~inside].any()
    # The model saw the head enlarged: it spans more of its input than of the slice.
    head_share_seen = (seen[0][0, :, :, 0] > 0).any(axis=0).mean()
    head_share_in_slice = ((grey > 0) & (grey != 200)).any(axis=0).mean()
    assert head_share_seen > 1.5 * head_share_in_slice
    # Without boxes the whole slice is seen, as for slices colorize has already cropped.
    (whole,) = segmenter.segment([grey])
    assert whole[245, 30] == 1


def test_new_slices_are_cropped_each_round_its_own_head(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    small = head_slice((256, 256), (128, 128), (50, 60), table=False)
    large = head_slice((256, 256), (128, 128), (110, 120), table=False)
    write_png(folder / "small.png", small)
    write_png(folder / "large.png", large)
    seen: list[np.ndarray] = []

    def recording_forward(batch: np.ndarray) -> np.ndarray:
        seen.extend(batch.copy())
        return bright_forward(batch)

    segmenter = Segmenter(recording_forward, 64, batch_size=2, max_head_zoom=4.0)
    summary = segment_files(
        segmenter, [folder], tmp_path / "out", PARAMS.palette, 0.5, PARAMS.extract
    )
    assert len(summary.segmented) == 2
    # Each head (5:6 wide to tall) fills its own model input from top to bottom, though the
    # small one spans 0.39 of its slice's width.
    for model_input in seen:
        assert (model_input[..., 0] > 0).any(axis=0).mean() > 0.8
    for name, grey in (("small", small), ("large", large)):
        mask = read_image(tmp_path / "out" / "masks" / f"{name}.png", color=True)
        called = np.all(mask == PALETTE[1], axis=-1)
        bright = grey > 128
        # The skull ring lands where it is: same centre, and it overlaps itself but for the
        # blur of a 64-px model input.
        dice = 2 * (called & bright).sum() / (called.sum() + bright.sum())
        assert dice > 0.8, name
        np.testing.assert_allclose(
            np.argwhere(called).mean(axis=0), np.argwhere(bright).mean(axis=0), atol=1.5
        )


# Per-class metrics of evaluate.json (each with `_<class>` appended), then the others.
CLASS_METRICS = (
    "dice", "iou", "hd95_mm", "nsd", "lesion_f1", "test_cases", "triage_threshold_ml",
    "triage_sensitivity", "triage_specificity", "triage_auc", "volume_bias_ml",
    "volume_loa_low_ml", "volume_loa_high_ml", "volume_median_abs_error_ml", "pooled_dice",
    "pooled_iou", "pooled_slice_hd95_mm", "pooled_nsd", "pooled_slice_lesion_f1",
)  # fmt: skip
WITH_INTERVALS = ("dice", "iou", "hd95_mm", "nsd", "lesion_f1", "triage_sensitivity",
                  "triage_specificity")  # fmt: skip
REQUIRED_EVALUATE_KEYS = (
    *(f"{stem}_{name}" for name in ("hemorrhagic", "ischemic") for stem in CLASS_METRICS),
    *(
        f"{stem}_{name}_ci_{bound}"
        for name in ("hemorrhagic", "ischemic")
        for stem in WITH_INTERVALS
        for bound in ("low", "high")
    ),
    "dice_mean", "pooled_dice_mean", "dice_coef_multiclass", "categorical_crossentropy",
)  # fmt: skip
TEST_SLICE_IDS = (
    "Hemorrhagic_001_000", "Hemorrhagic_001_001", "Ischemic_002_000", "Ischemic_002_001",
    "Ischemic_002_002",
)  # fmt: skip


# ---- stages on a tiny hand-made split -------------------------------------------------------


def make_split(root: Path) -> Path:
    """32 px slices. Test: hemorrhagic case 001 (two slices of bright squares, found exactly),
    ischemic case 002 (a dim ischemic patch never predicted, a lesion-free slice, a bright
    16 px false positive). Valid: a bright hemorrhagic case 004, a dim ischemic case 005."""
    rows = []
    cases = [
        ("Hemorrhagic_001_000", "Hemorrhagic", "test", True, [(4, 14, 4, 14, 1, 230)]),
        ("Hemorrhagic_001_001", "Hemorrhagic", "test", False, [(10, 20, 12, 26, 1, 230)]),
        ("Ischemic_002_000", "Ischemic", "test", True, [(8, 18, 8, 18, 2, 70)]),
        ("Ischemic_002_001", "Ischemic", "test", False, []),
        ("Ischemic_002_002", "Ischemic", "test", False, [(20, 24, 20, 24, 0, 240)]),
        ("Hemorrhagic_003_000", "Hemorrhagic", "train", False, [(4, 8, 4, 8, 1, 230)]),
        ("Hemorrhagic_004_000", "Hemorrhagic", "valid", False, [(4, 10, 4, 10, 1, 230)]),
        ("Ischemic_005_000", "Ischemic", "valid", False, [(8, 18, 8, 18, 2, 70)]),
    ]
    for slice_id, label, split, mini_test, regions in cases:
        grey = np.full((MODEL_SIZE, MODEL_SIZE), 40, dtype=np.uint8)
        truth = np.zeros((MODEL_SIZE, MODEL_SIZE), dtype=np.uint8)
        for top, bottom, left, right, index, value in regions:
            grey[top:bottom, left:right] = value
            truth[top:bottom, left:right] = index
        write_png(root / "colorized" / "images" / f"{slice_id}.png", grey)
        write_png(root / "colorized" / "masks" / f"{slice_id}.png", index_to_colour(truth, PALETTE))
        case_id = slice_id.split("_")[1]
        lesion_pixels = int((truth > 0).sum())
        row = original_row(slice_id, case_id, label, MODEL_SIZE, lesion_pixels, "../colorized/")
        rows.append({**row, "split": split, "mini_test": mini_test})
    manifest = root / "split" / "manifest.csv"
    write_manifest(manifest, with_sha256(rows, manifest.parent))
    return manifest


def test_evaluate_writes_every_key_or_a_reason_and_is_deterministic(tmp_path, tiny_model):
    manifest = make_split(tmp_path / "data")
    outputs = []
    for run in ("first", "second"):
        folder = tmp_path / run
        metrics = run_evaluation(
            PARAMS,
            manifest,
            tiny_model,
            folder / "reports" / "evaluate",
            folder / "metrics" / "evaluate.json",
            folder / "metrics" / "confusion.csv",
            folder / "metrics" / "cases.csv",
        )
        outputs.append(folder)
    saved = json.loads((outputs[0] / "metrics" / "evaluate.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in REQUIRED_EVALUATE_KEYS:
        if saved[key] is None:
            assert saved[f"{key}_null_reason"], key
        else:
            assert math.isfinite(saved[key]), key
    assert saved["test_slices"] == 5 and saved["test_cases"] == 2 and saved["valid_cases"] == 2
    # Case 001 found exactly; case 002 holds only a predicted hemorrhage: Dice 0, NSD 0, HD95
    # the volume diagonal (3 slices of 5 mm, 32 px of 7.2 mm), F1 0 (one false positive).
    diagonal_mm = math.sqrt((3 * 5.0) ** 2 + 2 * (32 * 7.2) ** 2)
    assert saved["test_cases_hemorrhagic"] == 2
    assert saved["dice_hemorrhagic"] == pytest.approx(0.5)
    assert saved["nsd_hemorrhagic"] == pytest.approx(0.5)
    assert saved["hd95_mm_hemorrhagic"] == pytest.approx(diagonal_mm / 2)
    assert saved["lesion_f1_hemorrhagic"] == pytest.approx(0.5)
    assert (saved["dice_hemorrhagic_ci_low"], saved["dice_hemorrhagic_ci_high"]) == (0.0, 1.0)
    # Ischemic: only case 002 holds it (missed); case 001 has it nowhere and is excluded.
    assert saved["test_cases_ischemic"] == 1 and saved["dice_ischemic"] == 0.0
    assert saved["hd95_mm_ischemic"] == pytest.approx(diagonal_mm)
    # Triage: validation volumes 36 px and 0 px put the threshold at 18 px; the test false
    # positive (16 px) stays below it, the true hemorrhage (240 px) above.
    voxel_ml = 7.2 * 7.2 * 5.0 / 1000.0
    assert saved["triage_threshold_ml_hemorrhagic"] == pytest.approx(18 * voxel_ml)
    assert saved["triage_sensitivity_hemorrhagic"] == 1.0
    assert saved["triage_specificity_hemorrhagic"] == 1.0
    assert saved["triage_sensitivity_hemorrhagic_ci_low"] == pytest.approx(0.2065, abs=1e-4)
    assert saved["triage_auc_hemorrhagic"] == 1.0
    assert saved["triage_sensitivity_ischemic"] == 0.0 and saved["triage_auc_ischemic"] == 0.5
    assert saved["volume_bias_ml_hemorrhagic"] == pytest.approx(16 * voxel_ml / 2)
    assert saved["volume_median_abs_error_ml_hemorrhagic"] == pytest.approx(16 * voxel_ml / 2)
    assert saved["volume_loa_low_ml_ischemic"] is None
    # The slice-pooled figures of before, kept under `pooled_`.
    assert saved["pooled_dice_hemorrhagic"] == pytest.approx(2 * 240 / (240 + 256))
    assert saved["pooled_lesion_precision_hemorrhagic"] == pytest.approx(2 / 3)
    assert saved["pooled_lesion_recall_hemorrhagic"] == 1.0
    assert saved["pooled_dice_ischemic"] == 0.0
    assert saved["pooled_slice_hd95_mm_ischemic"] is None
    assert saved["pooled_slice_hd95_mm_ischemic_null_reason"] == (
        "no test slice where both truth and prediction hold ischemic"
    )
    assert saved["pooled_slice_sensitivity_ischemic"] == 0.0

    report = outputs[0] / "reports" / "evaluate"
    lines = (report / "evaluation.csv").read_text().splitlines()
    assert lines[0].startswith("categorical_crossentropy,") and lines[1].startswith(
        "dice_coef_multiclass,"
    )
    assert "pooled_slice_hd95_mm_ischemic," in lines  # null: written empty
    cases = pd.read_csv(outputs[0] / "metrics" / "cases.csv")
    assert list(cases["case_id"]) == [1, 2] and list(cases["slices"]) == [2, 3]
    assert cases.loc[0, "dice_hemorrhagic"] == 1.0 and pd.isna(cases.loc[0, "dice_ischemic"])
    assert cases.loc[1, "predicted_volume_ml_hemorrhagic"] == pytest.approx(16 * voxel_ml)
    predicted = sorted(p.name for p in (report / "predictions").iterdir())
    assert predicted == [f"{slice_id}.png" for slice_id in TEST_SLICE_IDS]
    false_positive = read_image(report / "predictions" / "Ischemic_002_002.png", color=True)
    assert (false_positive[20:24, 20:24] == PALETTE[1]).all()
    assert (false_positive[:20] == PALETTE[0]).all()
    slice_dice = pd.read_csv(report / "slice_dice.csv")
    assert list(slice_dice.columns) == ["id", "class", "slice_class", "dice"]
    assert len(slice_dice) == 4 and slice_dice["slice_class"].is_unique
    confusion = pd.read_csv(outputs[0] / "metrics" / "confusion.csv")
    assert list(confusion.columns) == ["id", "actual", "predicted"] and len(confusion) == 5
    assert sorted(p.name.split("_")[0] for p in (report / "overlays").iterdir()) == [
        "best",
        "worst",
    ]
    for path in sorted(p for p in outputs[0].rglob("*") if p.is_file()):
        twin = outputs[1] / path.relative_to(outputs[0])
        assert path.read_bytes() == twin.read_bytes(), path


def test_infer_stage_writes_predictions_montage_and_speed(tmp_path, tiny_model):
    manifest = make_split(tmp_path / "data")
    output = tmp_path / "data" / "predictions"
    montage = tmp_path / "reports" / "infer" / "mini_test_output.png"
    metrics = run_mini_test(
        PARAMS, manifest, tiny_model, output, tmp_path / "infer.json", montage_path=montage
    )
    names = ["Hemorrhagic_001_000.png", "Ischemic_002_000.png"]
    for folder in ("masks", "overlays", "panels"):
        assert sorted(p.name for p in (output / folder).iterdir()) == names
    mask = read_image(output / "masks" / names[0], color=True)
    np.testing.assert_array_equal(mask[5, 5], PALETTE[1])
    assert read_image(montage).shape[0] == 256  # enlarged panels
    assert not (output / "mini_test_output.png").exists()
    saved = json.loads((tmp_path / "infer.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["latency_ms_p95"] >= saved["latency_ms_p50"] > 0
    assert saved["slices_per_s"] > 0 and saved["mini_test_slices"] == 2


def test_cases_stack_in_natural_slice_order_with_one_geometry(tmp_path):
    rows = pd.DataFrame(
        {
            "id": ["Ischemic_7_10", "Ischemic_7_9", "Ischemic_7_100", "Hemorrhagic_3_002"],
            "case_id": ["7", "7", "7", "3"],
            "class": ["Ischemic", "Ischemic", "Ischemic", "Hemorrhagic"],
            "pixel_spacing_mm": [1.8, 1.8, 1.8, 0.9],
            "slice_thickness_mm": [5.0, 5.0, 5.0, 2.5],
        }
    )
    groups = case_groups(rows)
    assert [case_id for case_id, _, _ in groups] == ["3", "7"]
    assert list(groups[1][1]["id"]) == ["Ischemic_7_9", "Ischemic_7_10", "Ischemic_7_100"]
    assert groups[0][2] == Spacing(slice_thickness_mm=2.5, pixel_spacing_mm=0.9)
    mixed = rows.assign(slice_thickness_mm=[5.0, 3.0, 5.0, 2.5])
    mixed.attrs["path"] = "split/manifest.csv"
    with pytest.raises(DataError, match=r"split/manifest\.csv: case 7 mixes slice geometries"):
        case_groups(mixed)
    with pytest.raises(DataError, match="case 3: pixel_spacing_mm must be a positive"):
        case_groups(rows.assign(pixel_spacing_mm=[1.8, 1.8, 1.8, float("nan")]))


def test_triage_without_validation_negatives_is_null_with_a_reason():
    def case(case_id: str, hemorrhage_ml: float) -> CaseResult:
        spacing = Spacing(slice_thickness_mm=5.0, pixel_spacing_mm=1.0)
        empty = score_case_class(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4), bool), spacing, 1)
        lesion = np.zeros((2, 4, 4), bool)
        lesion[0, :2, :2] = hemorrhage_ml > 0
        found = score_case_class(lesion, lesion, spacing, 1.0)
        return CaseResult(
            case_id, "Hemorrhagic", 2, spacing, {"hemorrhagic": found, "ischemic": empty}
        )

    metrics = summarize_cases(
        [case("1", 1.0)], [case("2", 1.0)], seed=0, samples=100, labels=LESION_LABELS
    )
    assert metrics["triage_threshold_ml_hemorrhagic"] is None
    assert (
        "validation cases need cases with and without hemorrhagic"
        in (metrics["triage_threshold_ml_hemorrhagic_null_reason"])
    )
    assert metrics["triage_sensitivity_hemorrhagic"] is None
    assert metrics["test_cases_ischemic"] == 0 and metrics["dice_ischemic"] is None
    assert metrics["dice_ischemic_ci_low_null_reason"].startswith("no test case holds ischemic")
    assert metrics["dice_hemorrhagic"] == 1.0 and metrics["dice_mean"] == 1.0
