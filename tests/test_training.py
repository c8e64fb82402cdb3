"""Input pipeline and training loop on a tiny data set built here (32x32 slices).

The training runs go through `pipeline.model.training.train_model`, the function the stage calls,
with real files: manifests written by `write_manifest`, PNGs, checkpoints, reports.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.io import DataError, write_manifest, write_png
from pipeline.masks import colour_to_index, index_to_colour
from pipeline.model.dataset import (
    OnlineAugmentation,
    PipelineOptions,
    decode_slice,
    make_eval_dataset,
    make_train_dataset,
    read_training_tables,
    resolve_cache,
    rewindow,
    rotate_and_scale,
    steps_per_epoch,
)
from pipeline.model.distribute import Distribution, start_distribution
from pipeline.model.training import (
    TrainPaths,
    configure_runtime,
    learning_rate_schedule,
    train_model,
)
from pipeline.params import Params, RandomAffineParams, RandomIntensityParams
from tests.conftest import original_row, project_params, rehash_manifest, with_sha256

SIZE = 32
PALETTE = project_params().palette
CLASS_INDEX = {lesion.name: lesion.index for lesion in project_params().lesion_classes}


def tiny_slice(class_name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey 'head' with a bright (hemorrhagic) or dark (ischemic) square lesion."""
    rng = np.random.default_rng(seed)
    image = np.full((SIZE, SIZE), 20, np.uint8)
    image[4:28, 4:28] = 110
    labels = np.zeros((SIZE, SIZE), np.uint8)
    top, left = rng.integers(6, 20, size=2)
    labels[top : top + 6, left : left + 6] = CLASS_INDEX[class_name]
    image[labels > 0] = 220 if class_name == "Hemorrhagic" else 60
    return image, labels


def write_tiny_project(root: Path, train_per_class: int = 4) -> TrainPaths:
    """Colorized slices plus the split and augmented manifests the train stage reads."""
    rows = []
    plan = [("train", n) for n in range(train_per_class)] + [("valid", 0), ("valid", 1)]
    plan += [("test", 0)]
    for class_name in CLASS_INDEX:
        for index, (split, number) in enumerate(plan):
            slice_id = f"{class_name}_{split}{number}_{index:03d}"
            image, labels = tiny_slice(class_name, seed=len(rows))
            write_png(root / "data/colorized/images" / f"{slice_id}.png", image)
            write_png(
                root / "data/colorized/masks" / f"{slice_id}.png", index_to_colour(labels, PALETTE)
            )
            lesion_pixels = int((labels > 0).sum())
            row = original_row(
                slice_id, f"{split}{number}", class_name, SIZE, lesion_pixels, "../colorized/"
            )
            rows.append({**row, "split": split, "mini_test": split == "test"})
    split_manifest = with_sha256(rows, root / "data/split")
    write_manifest(root / "data/split/manifest.csv", split_manifest)
    train_rows = split_manifest[split_manifest["split"] == "train"].drop(
        columns=["split", "mini_test"]
    )
    write_manifest(root / "data/augmented/manifest.csv", train_rows)
    return paths_under(root)


def paths_under(root: Path) -> TrainPaths:
    """The stage's default TrainPaths, relative to a project folder `root`."""
    defaults = TrainPaths()
    return TrainPaths(**{field: root / getattr(defaults, field) for field in vars(defaults)})


def run_train(params: Params, paths: TrainPaths, **keywords: object) -> dict[str, object]:
    """The train stage's calls (stages/train.py), on `paths`."""
    configure_runtime(params)
    return train_model(params, paths, start_distribution(params.train.strategy), **keywords)


def tiny_params(**train: object) -> Params:
    return project_params(
        {
            "image_size": SIZE,
            "lr": 0.01,
            "model": {"base_filters": 4, "num_layers": 3},
            "train": {"epochs": 1, "batch_size": 4, **train},
        }
    )


def frozen_params(**train: object) -> Params:
    """A model that cannot learn: a vanishing rate and no normalisation or dropout keep
    val_dice_mean flat, so plateau callbacks must act on schedule."""
    return project_params(
        {
            "image_size": SIZE,
            "lr": 1e-9,
            "model": {
                "base_filters": 4,
                "num_layers": 2,
                "normalization": "none",
                "dropout_rate": 0,
            },
            "train": {"batch_size": 4, "epoch_change_infer": False, **train},
        }
    )


def options(**overrides: object) -> PipelineOptions:
    return PipelineOptions(palette=PALETTE, image_size=SIZE, **overrides)


class EpochsSeen(keras.callbacks.Callback):
    """Records the epochs a run trains and the optimizer's step count at its start."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []
        self.start_steps: int | None = None

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        if self.start_steps is None:
            self.start_steps = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.epochs.append(epoch)


class Interrupted(Exception):
    """Stands in for a killed process: nothing after the raise runs."""


class InterruptAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if epoch + 1 == self.epoch:
            raise Interrupted


# ------------------------------------------------------------------------------ tf.data
ARENA_PROBE = """
import ctypes, sys, threading
from pipeline.model.training import limit_malloc_arenas
if sys.argv[1] == "limit":
    assert limit_malloc_arenas(2)
held, all_allocated = [], threading.Barrier(8)
def allocate():
    held.append(bytearray(100_000))  # from malloc's arenas (under the 128 kB mmap threshold)
    all_allocated.wait()  # all 8 threads alive at once, so none reuses another's arena
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def test_training_caps_the_malloc_arenas_of_its_threads() -> None:
    """configure_runtime caps glibc's arenas, which TensorFlow's threads otherwise multiply
    (each thread that allocates gets its own; the freed tensor memory they keep raised the
    peak RSS of training at 512 px by 0.13 GB)."""
    arenas = {}
    for mode in ("default", "limit"):
        done = subprocess.run(
            [sys.executable, "-c", ARENA_PROBE, mode],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert done.returncode == 0, done.stderr[-2000:]
        arenas[mode] = done.stderr.count("Arena ")
    assert arenas["default"] > 2 and arenas["limit"] == 2


def test_decoded_batches_hold_images_and_one_hot_masks(tmp_path: Path) -> None:
    paths = write_tiny_project(tmp_path)
    tables = read_training_tables(paths.augmented_manifest, paths.split_manifest)
    assert len(tables.train) == 8 and len(tables.valid) == 4 and len(tables.mini_test) == 2
    images, targets = next(iter(make_eval_dataset(tables.valid, options(), batch_size=4)))
    assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == tf.float32
    assert targets.shape == (4, SIZE, SIZE, 3)
    expected = [CLASS_INDEX[name] for name in tables.valid.sort_values("id")["class"]]
    np.testing.assert_array_equal(targets.numpy().sum(axis=-1), 1.0)
    np.testing.assert_array_equal(targets.numpy().argmax(-1).max(axis=(1, 2)), expected)
    # Grey PNGs arrive as three equal channels, values 0..255.
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    assert float(tf.reduce_max(images)) == 220.0


@settings(max_examples=25, deadline=None)
@given(
    palette=st.lists(st.tuples(*[st.integers(0, 255)] * 3), min_size=2, max_size=5, unique=True),
    data=st.data(),
)
def test_mask_colours_map_to_the_indices_of_the_numpy_oracle(
    tmp_path_factory, palette: list[tuple[int, int, int]], data
) -> None:
    """decode_slice's one-code-per-pixel matching equals masks.colour_to_index, any palette."""
    labels = data.draw(arrays(np.uint8, (6, 6), elements=st.integers(0, len(palette) - 1)))
    folder = tmp_path_factory.mktemp("slice")
    write_png(folder / "image.png", np.zeros((6, 6), np.uint8))
    colour = index_to_colour(labels, palette)
    write_png(folder / "mask.png", colour)
    palette_tensor = tf.constant(np.asarray(palette, np.uint8))
    _, decoded = decode_slice(
        str(folder / "image.png"), str(folder / "mask.png"), palette_tensor, image_size=6
    )
    np.testing.assert_array_equal(decoded.numpy(), colour_to_index(colour, palette))
    np.testing.assert_array_equal(decoded.numpy(), labels)


def test_training_stream_is_seeded_endless_and_fast_forwards(tmp_path: Path) -> None:
    paths = write_tiny_project(tmp_path)
    train = read_training_tables(paths.augmented_manifest, paths.split_manifest).train

    steps = steps_per_epoch(train, batch_size=4)
    assert steps == 2

    def batches(seed: int, skip_epochs: int = 0, count: int = 4) -> list[np.ndarray]:
        def stream(num_shards: int, shard_index: int) -> tf.data.Dataset:
            return make_train_dataset(
                train,
                options(),
                batch_size=4,
                seed=seed,
                shuffle_buffer=64,
                num_shards=num_shards,
                shard_index=shard_index,
            )

        # How train_model resumes: the stream skips the steps of the epochs already trained.
        dataset = Distribution.one_device().per_worker(
            stream, shard=True, skip_steps=skip_epochs * steps
        )
        return [images.numpy() for images, _ in dataset.take(count)]

    first, again, other = batches(1), batches(1), batches(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    resumed = batches(1, skip_epochs=1, count=2)
    assert all(np.array_equal(a, b) for a, b in zip(first[2:], resumed, strict=True))


def test_flips_move_image_and_mask_together(tmp_path: Path) -> None:
    paths = write_tiny_project(tmp_path)
    train = read_training_tables(paths.augmented_manifest, paths.split_manifest).train
    dataset = make_train_dataset(
        train, options(), batch_size=4, seed=3, shuffle_buffer=8, flip=True
    )
    flipped = 0
    originals = {tiny_slice(c, s)[0].tobytes() for c in CLASS_INDEX for s in range(20)}
    for images, targets in dataset.take(6):
        for image, target in zip(images.numpy(), targets.numpy(), strict=True):
            lesion = target.argmax(-1) > 0
            assert np.isin(image[..., 0][lesion], [220, 60]).all()
            assert not np.isin(image[..., 0][~lesion], [220, 60]).any()
            flipped += image[..., 0].astype(np.uint8).tobytes() not in originals
    assert flipped > 0


def test_rotation_and_scaling_match_their_exact_cases() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(SIZE, SIZE, 3)).astype(np.uint8)
    labels = rng.integers(0, 3, size=(SIZE, SIZE)).astype(np.uint8)
    same_image, same_labels = rotate_and_scale(image, labels, 0.0, 1.0)
    np.testing.assert_array_equal(same_image.numpy(), image)
    np.testing.assert_array_equal(same_labels.numpy(), labels)
    # A quarter turn about the centre of an even-sided slice moves every pixel onto a pixel.
    turned_image, turned_labels = rotate_and_scale(image, labels, np.pi / 2, 1.0)
    np.testing.assert_allclose(turned_image.numpy(), np.rot90(image, k=-1), atol=1e-3)
    np.testing.assert_array_equal(turned_labels.numpy(), np.rot90(labels, k=-1))
    assert turned_labels.dtype == tf.uint8
    # Doubling the size about the centre: the middle half fills the slice, nothing comes in.
    square = np.zeros((SIZE, SIZE), np.uint8)
    square[12:20, 12:20] = 1
    _, enlarged = rotate_and_scale(np.zeros((SIZE, SIZE, 3), np.uint8), square, 0.0, 2.0)
    assert enlarged.numpy().sum() == 16 * 16
    _, shrunk = rotate_and_scale(np.zeros((SIZE, SIZE, 3), np.uint8), square, 0.0, 0.5)
    assert shrunk.numpy().sum() == 4 * 4


@settings(max_examples=40, deadline=None)
@given(
    contrast=st.floats(0.3, 3.0),
    brightness=st.floats(-60.0, 60.0),
    gamma=st.floats(0.4, 2.5),
)
def test_rewindowing_keeps_the_order_of_grey_levels_within_0_255(
    contrast: float, brightness: float, gamma: float
) -> None:
    grey = np.arange(256, dtype=np.uint8)
    rewindowed = rewindow(grey, contrast, brightness, gamma).numpy()
    assert rewindowed.min() >= 0.0 and rewindowed.max() <= 255.0
    assert (np.diff(rewindowed) >= -1e-4).all()  # a window never swaps two densities
    np.testing.assert_allclose(rewindow(grey, 1.0, 0.0, 1.0).numpy(), grey, atol=1e-3)


def test_online_augmentation_moves_image_and_mask_together_and_is_seeded(tmp_path: Path) -> None:
    paths = write_tiny_project(tmp_path)
    train = read_training_tables(paths.augmented_manifest, paths.split_manifest).train
    augmentation = OnlineAugmentation(
        RandomAffineParams(probability=1.0, rotation_max_deg=30.0, scale=(0.8, 1.25)),
        RandomIntensityParams(
            probability=1.0, contrast=(0.6, 1.5), brightness_grey=(-20.0, 20.0), gamma=(0.7, 1.4)
        ),
    )

    def batches(seed: int, augment: OnlineAugmentation | None) -> list[tuple]:
        dataset = make_train_dataset(
            train, options(), batch_size=4, seed=seed, shuffle_buffer=8, augmentation=augment
        )
        return [(x.numpy(), y.numpy()) for x, y in dataset.take(4)]

    plain, augmented = batches(5, None), batches(5, augmentation)
    for (images, targets), (plain_images, plain_targets) in zip(augmented, plain, strict=True):
        for image, target, plain_image, plain_target in zip(
            images, targets, plain_images, plain_targets, strict=True
        ):
            lesion = target.argmax(-1) > 0
            assert lesion.sum() > 0.5 * (plain_target.argmax(-1) > 0).sum()
            # The lesion (220 or 60 in a 110 head) stays the odd one out where the mask says.
            head = image[..., 0][~lesion & (plain_image[..., 0] > 0)]
            contrast = np.abs(image[..., 0][lesion].mean() - np.median(head))
            assert contrast > 10.0
        assert not np.array_equal(images, plain_images)
    again = batches(5, augmentation)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(augmented, again, strict=True))
    assert not all(
        np.array_equal(a[0], b[0]) for a, b in zip(augmented, batches(6, augmentation), strict=True)
    )


def test_a_small_shuffle_buffer_still_mixes_the_classes(tmp_path: Path) -> None:
    """Slices are sorted by id, so by class: a buffer of 2 over that order would give about
    half an epoch of hemorrhagic slices first. The stream permutes the slices first."""
    paths = write_tiny_project(tmp_path, train_per_class=12)
    train = read_training_tables(paths.augmented_manifest, paths.split_manifest).train
    assert train.sort_values("id")["class"].iloc[:12].eq("Hemorrhagic").all()
    dataset = make_train_dataset(train, options(), batch_size=4, seed=0, shuffle_buffer=2)
    first_third = [target.numpy().argmax(-1).max(axis=(1, 2)) for _, target in dataset.take(2)]
    assert set(np.concatenate(first_third).tolist()) == {1, 2}


def test_balanced_sampling_draws_both_classes_equally(tmp_path: Path) -> None:
    paths = write_tiny_project(tmp_path, train_per_class=6)
    train = read_training_tables(paths.augmented_manifest, paths.split_manifest).train
    lopsided = train[(train["class"] == "Ischemic") | train["id"].str.endswith("000")]
    lopsided.attrs.update(train.attrs)
    dataset = make_train_dataset(
        lopsided, options(), batch_size=4, seed=0, shuffle_buffer=16, balanced=True
    )
    classes = [target.numpy().argmax(-1).max(axis=(1, 2)) for _, target in dataset.take(50)]
    share = float(np.mean(np.concatenate(classes) == 1))
    assert 0.35 < share < 0.65  # 1 hemorrhagic slice of 7, drawn about half of the time


def with_empty_slices(root: Path, frame: pd.DataFrame, count: int) -> pd.DataFrame:
    """`frame` plus `count` lesion-free Hemorrhagic slices (a head, no lesion) written under
    `root`/data/colorized, as a training table whose paths resolve like `frame`'s."""
    rows = []
    for number in range(count):
        slice_id = f"Hemorrhagic_empty{number}_{number:03d}"
        image, labels = tiny_slice("Hemorrhagic", seed=number)
        image[labels > 0] = 110
        write_png(root / "data/colorized/images" / f"{slice_id}.png", image)
        write_png(
            root / "data/colorized/masks" / f"{slice_id}.png",
            index_to_colour(np.zeros_like(labels), PALETTE),
        )
        rows.append(
            original_row(slice_id, f"empty{number}", "Hemorrhagic", SIZE, 0, "../colorized/")
        )
    empty = with_sha256(rows, root / "data/augmented")
    combined = pd.concat([frame, empty], ignore_index=True)
    combined.attrs.update(frame.attrs)
    return combined


def drawn_classes(dataset: tf.data.Dataset, batches: int) -> np.ndarray:
    """The lesion class index each drawn slice holds (0: none), over `batches` batches."""
    return np.concatenate(
        [target.numpy().argmax(-1).max(axis=(1, 2)) for _, target in dataset.take(batches)]
    )


def test_foreground_oversampling_draws_lesion_slices_at_its_share(tmp_path: Path) -> None:
    """1 Hemorrhagic and 1 Ischemic lesion slice among 14 empty ones: drawn 1 in 8 times
    without oversampling, and a half of the draws plus that share of the rest with a share of
    a half, split evenly over the two classes."""
    paths = write_tiny_project(tmp_path, train_per_class=1)
    train = read_training_tables(paths.augmented_manifest, paths.split_manifest).train
    train = with_empty_slices(tmp_path, train, 14)

    def lesion_draws(share: float) -> np.ndarray:
        dataset = make_train_dataset(
            train, options(), batch_size=8, seed=0, shuffle_buffer=16, foreground_share=share
        )
        return drawn_classes(dataset, 60)

    plain = lesion_draws(0.0)
    assert 0.07 < np.mean(plain > 0) < 0.19  # 2 of 16
    oversampled = lesion_draws(0.5)
    assert 0.48 < np.mean(oversampled > 0) < 0.65  # 0.5 + 0.5 x 2/16 = 0.56
    for lesion_class in CLASS_INDEX.values():
        assert 0.22 < np.mean(oversampled == lesion_class) < 0.34  # 0.28 each
    np.testing.assert_array_equal(oversampled, lesion_draws(0.5))  # seeded


def test_foreground_oversampling_without_lesion_slices_names_the_param(tmp_path: Path) -> None:
    paths = write_tiny_project(tmp_path, train_per_class=1)
    train = read_training_tables(paths.augmented_manifest, paths.split_manifest).train
    empty_only = with_empty_slices(tmp_path, train.iloc[:0], 4)
    with pytest.raises(DataError, match=r"train\.foreground_oversampling is 0\.3 but no training"):
        make_train_dataset(
            empty_only, options(), batch_size=2, seed=0, shuffle_buffer=4, foreground_share=0.3
        )


def test_disk_cache_gives_the_same_batches(tmp_path: Path) -> None:
    paths = write_tiny_project(tmp_path)
    valid = read_training_tables(paths.augmented_manifest, paths.split_manifest).valid
    (tmp_path / "cache").mkdir()
    on_disk = make_eval_dataset(
        valid, options(cache="disk", cache_dir=tmp_path / "cache"), batch_size=4
    )
    in_memory = make_eval_dataset(valid, options(), batch_size=4)
    for _ in range(2):  # the second pass reads the cache files
        for (a, _), (b, _) in zip(on_disk, in_memory, strict=True):
            np.testing.assert_array_equal(a, b)
    assert any((tmp_path / "cache").iterdir())


def test_cache_mode_auto_keeps_memory_bounded() -> None:
    assert resolve_cache("auto", 1000, 128, memory_limit_mb=1024) == "memory"
    assert resolve_cache("auto", 8000, 512, memory_limit_mb=1024) == "disk"
    assert resolve_cache("none", 10, 32, memory_limit_mb=1024) == "none"


def test_a_foreign_mask_colour_is_reported_with_the_file(tmp_path: Path) -> None:
    paths = write_tiny_project(tmp_path)
    valid = read_training_tables(paths.augmented_manifest, paths.split_manifest).valid
    bad = valid.sort_values("id").iloc[0]
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[3, 3] = (128, 0, 0)  # a blended edge shade: not a palette colour
    write_png(tmp_path / "data/split" / bad["mask_path"], mask)
    rehash_manifest(paths.split_manifest)  # as if colorize had written the shade
    valid = read_training_tables(paths.augmented_manifest, paths.split_manifest).valid
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{bad['id']}.png"):
        list(make_eval_dataset(valid, options(), batch_size=4))


def test_missing_files_and_wrong_sizes_fail_before_training(tmp_path: Path) -> None:
    paths = write_tiny_project(tmp_path)
    valid = read_training_tables(paths.augmented_manifest, paths.split_manifest).valid
    with pytest.raises(DataError, match="not 64x64"):
        make_eval_dataset(valid, PipelineOptions(palette=PALETTE, image_size=64), batch_size=4)
    (tmp_path / "data/split" / valid["image_path"].iloc[0]).unlink()
    with pytest.raises(DataError, match="1 listed files are missing"):
        make_eval_dataset(valid, options(), batch_size=4)


# ------------------------------------------------------------------------------ training
def test_one_epoch_writes_model_metrics_reports_and_dvclive(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pipeline")
    paths = write_tiny_project(tmp_path)
    summary = run_train(tiny_params(), paths)

    model = keras.saving.load_model(paths.model, compile=False)
    prediction = model.predict(np.zeros((1, SIZE, SIZE, 3), np.float32), verbose=0)
    assert prediction.shape == (1, SIZE, SIZE, 3)
    metrics = json.loads(paths.metrics.read_text())
    assert metrics == summary
    assert metrics["epochs"] == 1 and metrics["best_epoch"] == 1
    for key in ("val_dice_hemorrhagic", "val_dice_ischemic", "val_dice_mean"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["params_count"] == model.count_params()
    assert metrics["training_s"] > 0 and metrics["train_images_per_s"] > 0
    # The devices it trained on, logged at the start and recorded with the rate.
    device = "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"
    assert metrics["devices"].startswith(device) and metrics["replicas"] == 1
    assert f"on {metrics['devices']}" in caplog.text
    # No terminal under pytest: the epoch's last step gets a progress line, then its summary.
    messages = [record.getMessage() for record in caplog.records]
    progress = [m for m in messages if re.fullmatch(r"epoch 1/1 step (\d+)/\1: .*", m)]
    assert progress and re.search(r": [\d.]+ images/s, 00:00 left in this epoch", progress[0])
    assert messages.index(progress[0]) < next(
        index for index, m in enumerate(messages) if re.match(r"epoch 1/1 \d+s ", m)
    )
    reports = paths.reports_dir
    for name in ("train_metrics.csv", "train_losses.csv", "train_metrics.png", "train_losses.png"):
        assert (reports / name).is_file(), name
    assert list(pd.read_csv(reports / "train_losses.csv").columns) == ["epoch", "loss", "val_loss"]
    panels = sorted(path.name for path in (reports / "epoch_change_infer").iterdir())
    assert panels == ["epoch_001_Hemorrhagic_test0_006.png", "epoch_001_Ischemic_test0_006.png"]
    assert (reports / "epoch_change_montage.png").is_file()
    live_metrics = json.loads((paths.dvclive_dir / "metrics.json").read_text())
    assert {"train", "val", "lr", "step"} <= set(live_metrics)
    assert (paths.dvclive_dir / "plots/metrics/val/dice_mean.tsv").is_file()
    assert not (paths.dvclive_dir / "dvc.yaml").exists()
    assert not paths.backup_dir.exists()


def test_learning_rate_really_drops_on_a_plateau(tmp_path: Path) -> None:
    paths = write_tiny_project(tmp_path)
    # val_dice_mean cannot improve, so after `patience` flat epochs the rate must halve.
    params = frozen_params(
        epochs=4,
        lr_schedule="constant",
        warmup_epochs=0,
        min_lr=0,
        reduce_lr={"enabled": True, "factor": 0.5, "patience": 1},
        early_stopping={"enabled": False},
    )
    run_train(params, paths)
    rates = pd.read_csv(paths.reports_dir / "train_metrics.csv")["lr"].to_numpy()
    np.testing.assert_allclose(rates, [1e-9, 1e-9, 5e-10, 2.5e-10], rtol=1e-5)


@pytest.mark.parametrize(
    ("schedule", "after_warmup"),
    [("cosine", [0.01, 0.0055, 0.001]), ("constant", [0.01, 0.01, 0.01])],
)
def test_the_learning_rate_warms_up_linearly_then_follows_its_schedule(
    schedule: str, after_warmup: list[float]
) -> None:
    """1.5 warm-up epochs of 10 steps: 0 to the rate over 15 steps, then the cosine from it
    to `min_lr` at step 100 (half-way at step 57.5), or the rate to the end."""
    train = tiny_params(epochs=10, lr_schedule=schedule, min_lr=0.001, warmup_epochs=1.5).train
    rate = learning_rate_schedule(train, 0.01, total_steps=100, steps_per_epoch=10)
    rates = [float(rate(step)) for step in (0, 5, 15, 57.5, 100)]
    np.testing.assert_allclose(rates, [0.0, 0.01 / 3, *after_warmup], rtol=1e-5, atol=1e-9)


def test_a_warm_up_longer_than_the_run_is_said(caplog: pytest.LogCaptureFixture) -> None:
    train = tiny_params(epochs=1, lr_schedule="cosine", warmup_epochs=2).train
    with caplog.at_level(logging.WARNING):
        rate = learning_rate_schedule(train, 0.01, total_steps=10, steps_per_epoch=10)
    assert "outlasts the run (epochs 1): the learning rate ends at 0.5 of lr" in caplog.text
    np.testing.assert_allclose(float(rate(10)), 0.005, rtol=1e-5)


def test_without_warm_up_the_rate_starts_at_lr() -> None:
    cosine = tiny_params(epochs=10, lr_schedule="cosine", min_lr=0.001, warmup_epochs=0).train
    rate = learning_rate_schedule(cosine, 0.01, total_steps=100, steps_per_epoch=10)
    rates = [float(rate(step)) for step in (0, 50, 100)]
    np.testing.assert_allclose(rates, [0.01, 0.0055, 0.001], rtol=1e-5)
    constant = tiny_params(lr_schedule="constant", warmup_epochs=0).train
    assert learning_rate_schedule(constant, 0.01, total_steps=100, steps_per_epoch=10) == 0.01


def test_early_stopping_ends_a_flat_run(tmp_path: Path) -> None:
    paths = write_tiny_project(tmp_path)
    params = frozen_params(
        epochs=6, reduce_lr={"enabled": False}, early_stopping={"enabled": True, "patience": 2}
    )
    summary = run_train(params, paths)
    assert summary["stopped_early"] is True
    assert summary["epochs"] == 3 and summary["best_epoch"] == 1


def test_an_interrupted_run_resumes_after_its_last_completed_epoch(tmp_path: Path) -> None:
    paths = write_tiny_project(tmp_path)
    params = tiny_params(epochs=3)
    with pytest.raises(Interrupted):
        run_train(params, paths, extra_callbacks=[InterruptAfterEpoch(1)])
    assert not paths.model.exists() and not paths.metrics.exists()
    checkpoints = sorted(path.name for path in (paths.backup_dir / "checkpoints").iterdir())
    assert checkpoints == ["epoch_0001"]
    first_state = json.loads((paths.backup_dir / "checkpoints/epoch_0001/state.json").read_text())

    seen = EpochsSeen()
    summary = run_train(params, paths, extra_callbacks=[seen])
    assert seen.epochs == [1, 2]  # epoch 0 (the first) was not trained again
    assert seen.start_steps == 2  # optimizer state restored: 8 slices / batch 4 = 2 steps
    assert summary["epochs"] == 3
    history = pd.read_csv(paths.reports_dir / "train_metrics.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["dice_mean"].iloc[0] == pytest.approx(first_state["history"][0]["dice_mean"])
    assert paths.model.is_file() and not paths.backup_dir.exists()


def test_a_checkpoint_of_other_params_is_not_resumed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run killed under other params (here a wider model, whose weights cannot even load
    into this one) leaves its checkpoint behind; the next run starts over instead of failing
    or mixing the two runs."""
    paths = write_tiny_project(tmp_path)
    wider = project_params(
        {
            "image_size": SIZE,
            "lr": 0.01,
            "model": {"base_filters": 8, "num_layers": 3},
            "train": {"epochs": 3, "batch_size": 4},
        }
    )
    with pytest.raises(Interrupted):
        run_train(wider, paths, extra_callbacks=[InterruptAfterEpoch(1)])
    assert (paths.backup_dir / "checkpoints/epoch_0001").is_dir()

    seen = EpochsSeen()
    with caplog.at_level(logging.WARNING, logger="pipeline.model.training"):
        summary = run_train(tiny_params(epochs=3), paths, extra_callbacks=[seen])
    assert seen.epochs == [0, 1, 2] and summary["epochs"] == 3
    assert "of a run with other params or slices; starting over" in caplog.text
    assert paths.model.is_file() and not paths.backup_dir.exists()


def test_a_finished_checkpoint_is_published_without_training_again(tmp_path: Path) -> None:
    paths = write_tiny_project(tmp_path)
    params = tiny_params(epochs=1)
    with pytest.raises(Interrupted):
        run_train(params, paths, extra_callbacks=[InterruptAfterEpoch(1)])
    seen = EpochsSeen()
    summary = run_train(params, paths, extra_callbacks=[seen])
    assert seen.epochs == [] and summary["epochs"] == 1
    assert paths.model.is_file()


def test_bad_training_data_stops_with_a_data_error(tmp_path: Path) -> None:
    paths = write_tiny_project(tmp_path)
    augmented = pd.read_csv(paths.augmented_manifest, dtype=str)
    augmented.loc[0, "mask_path"] = "../colorized/masks/nowhere.png"
    augmented.to_csv(paths.augmented_manifest, index=False)
    with pytest.raises(DataError, match="missing"):
        run_train(tiny_params(), paths)
    assert not paths.model.exists()


# ---------------------------------------------------------------- mixed precision and XLA
# A variant trains from the same initial weights on the same batches as the float32 run, so
# only rounding separates them: per-epoch training loss within LOSS_RTOL (relative) and
# validation Dice within DICE_ATOL of float32. Measured gaps over 3 epochs of this set (CPU,
# 2026-11-30): loss 0.4% (mixed_float16), 0.2% (XLA), 0.5% (both); Dice 0.003 at most.
LOSS_RTOL = 0.02
DICE_ATOL = 0.02
VARIANT_EPOCHS = 3


@pytest.fixture(scope="module")
def float32_run(tmp_path_factory) -> tuple[dict, pd.DataFrame]:
    paths = write_tiny_project(tmp_path_factory.mktemp("float32"))
    summary = run_train(tiny_params(epochs=VARIANT_EPOCHS), paths)
    return summary, pd.read_csv(paths.reports_dir / "train_losses.csv")


@pytest.mark.parametrize(
    "variant",
    [
        {"mixed_precision": True},
        {"jit_compile": True},
        {"mixed_precision": True, "jit_compile": True},
    ],
    ids=["mixed_float16", "xla", "mixed_float16+xla"],
)
def test_mixed_precision_and_xla_train_like_float32(
    tmp_path: Path, variant: dict, float32_run: tuple[dict, pd.DataFrame]
) -> None:
    paths = write_tiny_project(tmp_path)
    try:
        summary = run_train(tiny_params(epochs=VARIANT_EPOCHS, **variant), paths)
    finally:
        keras.config.set_dtype_policy("float32")  # as in a user's fresh process; later tests
    losses = pd.read_csv(paths.reports_dir / "train_losses.csv")
    reference_summary, reference_losses = float32_run
    assert losses["loss"].iloc[-1] < losses["loss"].iloc[0]  # it learns
    np.testing.assert_allclose(losses["loss"], reference_losses["loss"], rtol=LOSS_RTOL)
    for key in ("val_dice_hemorrhagic", "val_dice_ischemic", "val_dice_mean"):
        assert summary[key] == pytest.approx(reference_summary[key], abs=DICE_ATOL)

    model = keras.saving.load_model(paths.model, compile=False)
    prediction = model.predict(np.full((1, SIZE, SIZE, 3), 110, np.float32), verbose=0)
    assert prediction.dtype == np.float32
    np.testing.assert_allclose(prediction.sum(axis=-1), 1.0, atol=1e-5)  # float32 softmax


# Run in a fresh interpreter: records TF_CPP_MIN_LOG_LEVEL at the moment `tensorflow` is first
# imported, as `python -m stages.train` imports it (the package, then the module).
_IMPORT_PROBE = """
import importlib, json, os, sys
seen = {}
class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" and "level" not in seen:
            seen["level"] = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
        return None
sys.meta_path.insert(0, Probe())
importlib.import_module("stages.train")
print(json.dumps(seen))
"""


def test_train_stage_quiets_tensorflow_before_importing_it() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(root)
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    # Present and "3": TensorFlow was imported, and the setting was there before it.
    assert json.loads(result.stdout.splitlines()[-1]) == {"level": "3"}
