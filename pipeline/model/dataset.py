"""tf.data input pipelines for training: manifests in, (image, one-hot mask) batches out.

Nothing is preloaded: file paths go into the pipeline and PNGs are decoded in parallel
(`map(num_parallel_calls=AUTOTUNE)`). Decoded slices are cached as uint8 (4 bytes a pixel) in
memory when they fit `cache_memory_mb`, otherwise in a file cache on disk, so memory stays
bounded as the data set grows; the float image and the one-hot mask are made after the cache.

Training batches come from one endless, seeded stream (shuffle -> repeat -> batch): an epoch is
`steps_per_epoch` batches of it, and a resumed run skips the batches already trained, so the
data order does not depend on where a run was interrupted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from pipeline.io import DataError, marked_mini_test, read_manifest, resolve_path, verify_content
from pipeline.params import RandomAffineParams, RandomIntensityParams, TrainParams

AUTOTUNE = tf.data.AUTOTUNE
BYTES_PER_CACHED_PIXEL = 4  # uint8 RGB image + uint8 class index
AUGMENT_SEED_OFFSET = 7919  # the online augmentation's seed stream: seed + this
LESION_STREAM_SEED_OFFSET = 104729  # foreground oversampling's streams and their mix: seed + this


@dataclass(frozen=True)
class TrainingTables:
    """The rows the train stage reads: the training set, validation and mini_test slices."""

    train: pd.DataFrame
    valid: pd.DataFrame
    mini_test: pd.DataFrame


def read_training_tables(augmented_manifest: Path | str, split_manifest: Path | str):
    """Training rows (the augmented manifest, originals and copies), valid and mini_test rows."""
    train = read_manifest(augmented_manifest)
    split = read_manifest(split_manifest, extra_columns=("split", "mini_test"))
    valid = split[split["split"] == "valid"].copy()
    valid.attrs["root"] = split.attrs["root"]
    mini_test = marked_mini_test(split)
    for name, frame, source in (
        ("training", train, augmented_manifest),
        ("validation", valid, split_manifest),
    ):
        if frame.empty:
            raise DataError(f"{source}: no {name} slices")
    return TrainingTables(train=train, valid=valid, mini_test=mini_test)


def slice_paths(frame: pd.DataFrame, image_size: int, source: str) -> tuple[list[str], list[str]]:
    """Resolved image and mask paths of `frame`, after checking sizes and file contents.

    Checks what the manifest states before any decoding, so a stale or foreign manifest fails
    at once with the file and the offending ids instead of deep inside a training epoch.
    """
    wrong_size = frame[(frame["width"] != image_size) | (frame["height"] != image_size)]
    if len(wrong_size):
        raise DataError(
            f"{source}: {len(wrong_size)} slices are not {image_size}x{image_size} (image_size), "
            f"e.g. {wrong_size['id'].head(3).tolist()}; rerun the colorize stage"
        )
    verify_content(frame)
    images = [str(resolve_path(frame, path)) for path in frame["image_path"]]
    masks = [str(resolve_path(frame, path)) for path in frame["mask_path"]]
    return images, masks


def colour_codes(rgb: tf.Tensor) -> tf.Tensor:
    """One int32 per colour (R * 65536 + G * 256 + B) of uint8 RGB values, last axis RGB."""
    channels = tf.cast(rgb, tf.int32)
    return (channels[..., 0] * 256 + channels[..., 1]) * 256 + channels[..., 2]


def decode_slice(image_path, mask_path, palette: tf.Tensor, image_size: int):
    """(uint8 RGB image, uint8 class-index mask) of one slice; errors name the file.

    A grey PNG decodes to three equal channels. Mask colours must be exactly the palette's
    (masks are resized with nearest neighbour only), so a foreign shade is a data error.
    Colours are matched as one int32 code per pixel, one palette entry at a time (the first
    entry wins, as rgb_map's order says): 2.6 ms of CPU at 512 px, where comparing
    H x W x classes x 3 channels and taking an argmax took 10.8 (benchmarks/input_speed.py).
    """
    image = tf.io.decode_png(tf.io.read_file(image_path), channels=3)
    mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=3)
    expected = tf.constant([image_size, image_size], tf.int32)
    codes = colour_codes(mask)
    palette_codes = tf.unstack(colour_codes(palette))
    labels = tf.zeros_like(codes)
    known = tf.zeros_like(codes, tf.bool)
    for index in reversed(range(len(palette_codes))):
        hit = tf.equal(codes, palette_codes[index])
        labels = tf.where(hit, index, labels)
        known = tf.logical_or(known, hit)
    checks = [
        tf.debugging.Assert(
            tf.reduce_all(tf.shape(image)[:2] == expected),
            [image_path, "image is not image_size x image_size", tf.shape(image)],
        ),
        tf.debugging.Assert(
            tf.reduce_all(tf.shape(mask)[:2] == tf.shape(image)[:2]),
            [mask_path, "mask size differs from its image", tf.shape(mask)],
        ),
        tf.debugging.Assert(
            tf.reduce_all(known), [mask_path, "mask holds colours outside rgb_map"]
        ),
    ]
    with tf.control_dependencies(checks):
        labels = tf.identity(labels)
        image = tf.ensure_shape(image, (image_size, image_size, 3))
    labels = tf.ensure_shape(tf.cast(labels, tf.uint8), (image_size, image_size))
    return image, labels


def to_model_inputs(image, labels, num_classes: int):
    """float32 0..255 image and float32 one-hot mask, the model's input and target."""
    return tf.cast(image, tf.float32), tf.one_hot(tf.cast(labels, tf.int32), num_classes)


def random_flip(image, labels, seed):
    """Left-right flip of image and mask together (brains are roughly mirror-symmetric)."""
    flip = tf.random.stateless_uniform((), seed=seed) < 0.5
    return (
        tf.where(flip, tf.reverse(image, axis=[1]), image),
        tf.where(flip, tf.reverse(labels, axis=[1]), labels),
    )


@dataclass(frozen=True)
class OnlineAugmentation:
    """Per-slice random rotation and scaling (`train.random_affine`) and re-windowing
    (`train.random_intensity`) of training slices, drawn anew every epoch.

    The phantom draws pose and window once per case; a few dozen training cases leave the
    model to learn them from few examples. Drawing them again per slice and epoch is the
    domain randomisation of nnU-Net's spatial and intensity transforms and of SynthSeg."""

    affine: RandomAffineParams
    intensity: RandomIntensityParams

    @classmethod
    def from_train(cls, train: TrainParams) -> OnlineAugmentation:
        return cls(train.random_affine, train.random_intensity)

    @property
    def active(self) -> bool:
        return self.affine.probability > 0.0 or self.intensity.probability > 0.0


def _log_uniform(unit, bounds: tuple[float, float]):
    """Map a uniform draw in [0, 1) to a log-uniform one within `bounds` (both positive), so
    that shrinking and enlarging by the same factor are equally likely."""
    low, high = math.log(bounds[0]), math.log(bounds[1])
    return tf.exp(low + (high - low) * unit)


def rotate_and_scale(image, labels, angle_rad, scale):
    """Rotate by `angle_rad` and scale by `scale` about the centre: the image bilinear, the
    class-index mask nearest; pixels brought in from outside the slice are 0 (black, background)."""
    size = tf.cast(tf.shape(image)[0], tf.float32)
    centre = (size - 1.0) / 2.0
    cos, sin = tf.cos(angle_rad) / scale, tf.sin(angle_rad) / scale
    # ImageProjectiveTransform maps each output pixel (x, y) to the input pixel it reads.
    transform = tf.stack(
        [
            cos,
            sin,
            centre - cos * centre - sin * centre,
            -sin,
            cos,
            centre + sin * centre - cos * centre,
            0.0,
            0.0,
        ]
    )[tf.newaxis]
    shape = tf.shape(image)[:2]

    def warp(values, interpolation: str):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=values[tf.newaxis],
            transforms=transform,
            output_shape=shape,
            fill_value=0.0,
            interpolation=interpolation,
            fill_mode="CONSTANT",
        )[0]

    warped_image = warp(tf.cast(image, tf.float32), "BILINEAR")
    warped_labels = warp(tf.cast(labels, tf.float32)[..., tf.newaxis], "NEAREST")[..., 0]
    return warped_image, tf.cast(warped_labels, labels.dtype)


def rewindow(image, contrast, brightness_grey, gamma):
    """Grey levels as if exported through another window: a gamma curve, then a linear
    stretch by `contrast` about mid-grey and a shift by `brightness_grey`, clipped to 0-255."""
    unit = tf.cast(image, tf.float32) / 255.0
    stretched = (tf.pow(unit, gamma) - 0.5) * contrast * 255.0 + 127.5 + brightness_grey
    return tf.clip_by_value(stretched, 0.0, 255.0)


def augment_online(image, labels, seed, augmentation: OnlineAugmentation):
    """One slice through `augmentation`, its draws from the stateless `seed`; the image comes
    back float32 (0-255), the mask unchanged in type."""
    draws = tf.random.stateless_uniform((7,), seed=seed)
    image = tf.cast(image, tf.float32)
    affine, intensity = augmentation.affine, augmentation.intensity
    if affine.probability > 0.0:
        angle_rad = (2.0 * draws[1] - 1.0) * math.radians(affine.rotation_max_deg)
        warped = rotate_and_scale(image, labels, angle_rad, _log_uniform(draws[2], affine.scale))
        apply = draws[0] < affine.probability
        image = tf.where(apply, warped[0], image)
        labels = tf.where(apply, warped[1], labels)
    if intensity.probability > 0.0:
        low, high = intensity.brightness_grey
        rewindowed = rewindow(
            image,
            _log_uniform(draws[4], intensity.contrast),
            low + (high - low) * draws[5],
            _log_uniform(draws[6], intensity.gamma),
        )
        image = tf.where(draws[3] < intensity.probability, rewindowed, image)
    return image, labels


def resolve_cache(mode: str, slices: int, image_size: int, memory_limit_mb: float) -> str:
    """`memory`, `disk` or `none`; `auto` picks memory when the decoded slices fit the limit."""
    if mode != "auto":
        return mode
    decoded_mb = slices * image_size * image_size * BYTES_PER_CACHED_PIXEL / 2**20
    return "memory" if decoded_mb <= memory_limit_mb else "disk"


@dataclass(frozen=True)
class PipelineOptions:
    """How slices are decoded and cached; shared by the training and evaluation pipelines."""

    palette: tuple[tuple[int, int, int], ...]
    image_size: int
    cache: str = "memory"  # memory | disk | none (see resolve_cache)
    cache_dir: Path | None = None  # required for the disk cache; caller owns and removes it

    @property
    def num_classes(self) -> int:
        """One-hot depth: one class per palette colour (pipeline/classes.py)."""
        return len(self.palette)


def _decoded(images: list[str], masks: list[str], options: PipelineOptions, name: str):
    palette = tf.constant(np.asarray(options.palette, np.uint8).reshape(-1, 3))
    dataset = tf.data.Dataset.from_tensor_slices((images, masks)).map(
        lambda image, mask: decode_slice(image, mask, palette, options.image_size),
        num_parallel_calls=AUTOTUNE,
    )
    if options.cache == "memory":
        return dataset.cache()
    if options.cache == "disk":
        if options.cache_dir is None:
            raise ValueError("the disk cache needs a cache_dir")
        return dataset.cache(str(options.cache_dir / name))
    return dataset


def make_train_dataset(
    frame: pd.DataFrame,
    options: PipelineOptions,
    *,
    batch_size: int,
    seed: int,
    shuffle_buffer: int,
    balanced: bool = False,
    foreground_share: float = 0.0,
    flip: bool = False,
    augmentation: OnlineAugmentation | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
) -> tf.data.Dataset:
    """Endless stream of training batches; an epoch is `steps_per_epoch` of them.

    `balanced` draws the slices of every class with equal probability (one cached,
    shuffled, repeated stream per class, mixed by `sample_from_datasets`).
    `foreground_share` of the draws come from the slices that hold a lesion, split evenly
    over the lesion classes (`lesion_streams`), the rest from the stream above. Sharding is by
    file, before decoding, so workers of a distributed run read different slices. A resumed
    run skips the batches already trained (`pipeline.model.distribute.worker_dataset_fn`).
    """
    source = str(Path(frame.attrs.get("root", ".")) / "manifest.csv")
    frame = frame.sort_values("id").iloc[shard_index::num_shards]
    images, masks = slice_paths(frame, options.image_size, source)

    def shuffled_stream(indices: list[int], stream_seed: int, name: str) -> tf.data.Dataset:
        if shuffle_buffer < len(indices):
            # A buffer smaller than the set only mixes neighbours of the id order, in which a
            # class's slices and a case's slices are adjacent: at Kaggle scale a buffer of 256
            # would give half an epoch of hemorrhagic batches, then the ischemic half. A seeded
            # permutation before the cache (so that it stays valid) mixes classes and cases;
            # the buffer still reorders every epoch.
            indices = np.random.default_rng(stream_seed).permutation(indices).tolist()
        stream = _decoded([images[i] for i in indices], [masks[i] for i in indices], options, name)
        buffer = max(1, min(shuffle_buffer, len(indices)))
        return stream.shuffle(buffer, seed=stream_seed, reshuffle_each_iteration=True).repeat()

    if balanced:
        classes = frame["class"].to_numpy()
        present = sorted(set(classes))  # a fixed order: stream seeds follow it
        streams = [
            shuffled_stream(
                [i for i in range(len(classes)) if classes[i] == name], seed + offset, name
            )
            for offset, name in enumerate(present)
        ]
        dataset = tf.data.Dataset.sample_from_datasets(
            streams, weights=[1.0 / len(streams)] * len(streams), seed=seed
        )
    else:
        dataset = shuffled_stream(list(range(len(images))), seed, "train")
    if foreground_share > 0.0:
        lesion_classes = lesion_streams(frame, foreground_share, source)
        streams = [
            shuffled_stream(indices, seed + LESION_STREAM_SEED_OFFSET + offset, f"lesion_{name}")
            for offset, (name, indices) in enumerate(lesion_classes.items())
        ]
        share = foreground_share / len(streams)
        dataset = tf.data.Dataset.sample_from_datasets(
            [dataset, *streams],
            weights=[1.0 - foreground_share] + [share] * len(streams),
            seed=seed + LESION_STREAM_SEED_OFFSET,
        )
    if flip:
        flip_seeds = tf.data.Dataset.random(seed=seed).batch(2)
        dataset = tf.data.Dataset.zip(dataset, flip_seeds).map(
            lambda pair, flip_seed: random_flip(*pair, flip_seed),
            num_parallel_calls=AUTOTUNE,
        )
    if augmentation is not None and augmentation.active:
        # Its own seed stream, so that turning it on leaves the order and the flips alone.
        augment_seeds = tf.data.Dataset.random(seed=seed + AUGMENT_SEED_OFFSET).batch(2)
        dataset = tf.data.Dataset.zip(dataset, augment_seeds).map(
            lambda pair, augment_seed: augment_online(*pair, augment_seed, augmentation),
            num_parallel_calls=AUTOTUNE,
        )
    dataset = dataset.map(
        lambda image, labels: to_model_inputs(image, labels, options.num_classes),
        num_parallel_calls=AUTOTUNE,
    )
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.prefetch(AUTOTUNE)


def holds_lesion(frame: pd.DataFrame) -> np.ndarray:
    """Per row of a manifest, whether its slice holds any lesion pixel."""
    return frame["lesion_pixels"].to_numpy() > 0


def lesion_streams(
    frame: pd.DataFrame, foreground_share: float, source: str
) -> dict[str, list[int]]:
    """Row positions in `frame` of the slices that hold a lesion, by lesion class (a slice's
    lesion has its case's class: colorize paints a case's lesions in its class's colour).

    Foreground oversampling, as nnU-Net's `oversample_foreground_percent` (a third of its
    patches are centred on a lesion): a faint class that few slices hold gets more of the
    loss's pull in every batch (docs/phantom.md, "Choosing the defaults"). DataError when no
    training slice holds a lesion to draw.
    """
    holding = holds_lesion(frame)
    classes = frame["class"].to_numpy()
    by_class: dict[str, list[int]] = {}
    for position in np.flatnonzero(holding):
        by_class.setdefault(str(classes[position]), []).append(int(position))
    if not by_class:
        raise DataError(
            f"{source}: train.foreground_oversampling is {foreground_share} but no training "
            "slice holds a lesion (lesion_pixels 0 everywhere); set it to 0"
        )
    return dict(sorted(by_class.items()))  # a fixed order: stream seeds follow it


def steps_per_epoch(frame: pd.DataFrame, batch_size: int, replicas: int = 1) -> int:
    """Global steps in one epoch: one pass over the training rows `frame` by all `replicas`
    together, `batch_size` slices each a step (every worker runs the same number of steps:
    each step is a collective operation). DataError when not even one step fits."""
    global_batch = batch_size * replicas
    steps = len(frame) // global_batch
    if steps == 0:
        raise DataError(
            f"{Path(frame.attrs.get('root', '.')) / 'manifest.csv'}: "
            f"{len(frame)} training slices, fewer than one batch of {global_batch} "
            f"(train.batch_size {batch_size} x {replicas} replicas); lower train.batch_size"
        )
    return steps


def make_eval_dataset(
    frame: pd.DataFrame, options: PipelineOptions, *, batch_size: int, name: str = "valid"
) -> tf.data.Dataset:
    """Finite, ordered batches of `frame` (sorted by id) for validation."""
    source = str(Path(frame.attrs.get("root", ".")) / "manifest.csv")
    images, masks = slice_paths(frame.sort_values("id"), options.image_size, source)
    dataset = _decoded(images, masks, options, name).map(
        lambda image, labels: to_model_inputs(image, labels, options.num_classes),
        num_parallel_calls=AUTOTUNE,
    )
    return dataset.batch(batch_size).prefetch(AUTOTUNE)


def load_slices(
    frame: pd.DataFrame, options: PipelineOptions
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A handful of slices (the mini_test) as uint8 images, index masks and ids, in id order."""
    frame = frame.sort_values("id")
    source = str(Path(frame.attrs.get("root", ".")) / "manifest.csv")
    images, masks = slice_paths(frame, options.image_size, source)
    palette = tf.constant(np.asarray(options.palette, np.uint8).reshape(-1, 3))
    decoded = [
        decode_slice(image, mask, palette, options.image_size)
        for image, mask in zip(images, masks, strict=True)
    ]
    if not decoded:
        size = options.image_size
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8), []
    return (
        np.stack([image.numpy() for image, _ in decoded]),
        np.stack([labels.numpy() for _, labels in decoded]),
        frame["id"].tolist(),
    )
