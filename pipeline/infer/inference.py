"""Run the trained model: load it, predict in batches (optional flip TTA), time it, and
segment slices of any size and colour (stage `infer` and the new-images command).

TensorFlow is imported only inside the functions that need it, so importing this module (and
the metrics around it) stays cheap.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import visualize
from pipeline.headcrop import SquareBox, crop, paste_probabilities, volume_box
from pipeline.io import (
    IMAGE_SUFFIXES,
    DataError,
    atomic_path,
    marked_mini_test,
    read_image,
    read_manifest,
    read_untrusted,
    resolve_path,
    untrusted_to_grey,
    verify_content,
    write_json,
    write_png,
)
from pipeline.masks import Palette, colour_to_index, index_to_colour
from pipeline.params import ExtractParams, Params

LOG = logging.getLogger(__name__)

if TYPE_CHECKING:
    import keras

MONTAGE_COLUMNS = 2
MAX_SUBFOLDERS_NAMED = 5  # in the message about a folder without images at its top level
WARM_UP_CALLS = 3

Forward = Callable[[np.ndarray], np.ndarray]


def load_model(path: Path | str) -> keras.Model:
    """The trained model, checked to map (N, S, S, 3) images to (N, S, S, classes) softmax."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found (did the train stage run?)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a foreign or damaged archive
        raise DataError(f"{path}: not a loadable Keras model ({error})") from None
    inputs, outputs = model.input_shape, model.output_shape
    if (
        len(inputs) != 4
        or inputs[1] != inputs[2]
        or inputs[1] is None
        or inputs[3] != 3
        or tuple(outputs[1:3]) != tuple(inputs[1:3])
    ):
        raise DataError(
            f"{path}: model maps {inputs} to {outputs}; expected (None, S, S, 3) to "
            "(None, S, S, classes)"
        )
    return model


def compile_forward(model: keras.Model) -> Forward:
    """A traced inference function (no per-call Keras `predict` overhead), any batch size."""
    import tensorflow as tf

    size = model.input_shape[1]

    @tf.function(
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
        autograph=False,
    )
    def forward(batch: tf.Tensor) -> tf.Tensor:
        return model(batch, training=False)

    return lambda batch: forward(batch).numpy()


def to_model_input(grey: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) float32 0..255 from a grey uint8 slice of any shape.

    Area interpolation when shrinking (no aliasing), linear when enlarging.
    """
    height, width = grey.shape
    if (height, width) != (size, size):
        shrinking = height >= size and width >= size
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        grey = cv2.resize(grey, (size, size), interpolation=interpolation)
    return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)


def labels_at_size(
    softmax: np.ndarray, shape: tuple[int, int], box: SquareBox | None = None
) -> np.ndarray:
    """Class-index mask (uint8) of a softmax at `shape` (H, W): the probabilities are resized
    (linear when enlarging, area when shrinking) and the mask is their argmax there, so that
    outlines follow the probabilities between the model's pixels instead of its pixel grid.
    With a `box` the softmax is the box's: resized to its side, then pasted into the slice,
    background outside it."""
    if box is not None:
        square = resized_probabilities(softmax, (box.side, box.side))
        return paste_probabilities(square, box, shape).argmax(axis=-1).astype(np.uint8)
    return resized_probabilities(softmax, shape).argmax(axis=-1).astype(np.uint8)


def resized_probabilities(softmax: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`softmax` (H', W', classes) resized to `shape` (H, W): area when shrinking, else linear."""
    if softmax.shape[:2] != shape:
        shrinking = shape[0] <= softmax.shape[0] and shape[1] <= softmax.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        softmax = cv2.resize(
            np.ascontiguousarray(softmax, dtype=np.float32),
            (shape[1], shape[0]),
            interpolation=interpolation,
        ).reshape(*shape, softmax.shape[-1])  # cv2 drops the axis of a single channel
    return softmax


@dataclass
class Segmenter:
    """The model's forward pass with batching and optional horizontal-flip TTA.

    `max_head_zoom` (`head_crop.max_zoom`) is how new slices are cropped round their heads
    by the callers that read raw slices (pipeline/headcrop.py); 1.0: whole slices.
    """

    forward: Forward
    size: int
    batch_size: int
    tta_flip: bool = False
    max_head_zoom: float = 1.0

    @classmethod
    def from_file(
        cls, path: Path | str, batch_size: int, tta_flip: bool = False, max_head_zoom: float = 1.0
    ) -> Segmenter:
        model = load_model(path)
        return cls(
            compile_forward(model), int(model.input_shape[1]), batch_size, tta_flip, max_head_zoom
        )

    def softmax(self, images: np.ndarray) -> np.ndarray:
        """Softmax (N, S, S, classes) of model inputs (N, S, S, 3), `batch_size` at a time.

        With TTA, the mean of the prediction for x and the flipped-back prediction for
        flip(x).
        """
        parts = []
        for start in range(0, len(images), self.batch_size):
            batch = np.ascontiguousarray(images[start : start + self.batch_size])
            probabilities = self.forward(batch)
            if self.tta_flip:
                flipped = self.forward(np.ascontiguousarray(batch[:, :, ::-1]))
                probabilities = 0.5 * (probabilities + flipped[:, :, ::-1])
            parts.append(probabilities)
        return np.concatenate(parts)

    def segment(
        self, greys: Sequence[np.ndarray], boxes: Sequence[SquareBox | None] | None = None
    ) -> list[np.ndarray]:
        """Class-index masks, each at its own slice's size. `boxes[i]` is the square of slice
        i that the model sees (pipeline/headcrop.py); None, or no boxes: the whole slice (as
        for slices that colorize has already cropped)."""
        boxes = [None] * len(greys) if boxes is None else boxes
        inputs = np.stack(
            [
                to_model_input(crop(grey, box), self.size)
                for grey, box in zip(greys, boxes, strict=True)
            ]
        )
        return [
            labels_at_size(probabilities, grey.shape, box)
            for probabilities, grey, box in zip(self.softmax(inputs), greys, boxes, strict=True)
        ]

    def segment_slices(self, greys: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Class-index masks of new slices that are not one volume (loose PNG/JPEG files):
        each cropped to its own square round its head with `max_head_zoom`."""
        return self.segment(greys, [volume_box([grey], self.max_head_zoom) for grey in greys])


def measure_speed(segmenter: Segmenter, sample: np.ndarray, repeats: int) -> dict[str, float]:
    """Model-call latency at batch 1 (p50, p95 over `repeats` timed calls after warm-up) and
    throughput at `batch_size` (slices per second, median batch time), preprocessing excluded.
    """
    single = np.ascontiguousarray(sample[None])
    batch = np.ascontiguousarray(np.repeat(single, segmenter.batch_size, axis=0))

    def timings(inputs: np.ndarray) -> np.ndarray:
        for _ in range(WARM_UP_CALLS):
            segmenter.softmax(inputs)
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            segmenter.softmax(inputs)
            seconds.append(time.perf_counter() - started)
        return np.asarray(seconds)

    latency_ms = 1000.0 * timings(single)
    batch_seconds = float(np.median(timings(batch)))
    return {
        "latency_ms_p50": float(np.percentile(latency_ms, 50)),
        "latency_ms_p95": float(np.percentile(latency_ms, 95)),
        "slices_per_s": segmenter.batch_size / batch_seconds,
    }


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def mini_test_rows(manifest_path: Path | str) -> pd.DataFrame:
    """The split manifest's mini_test slices, sorted by id."""
    frame = read_manifest(manifest_path, extra_columns=("split", "mini_test"))
    chosen = marked_mini_test(frame)
    if chosen.empty:
        raise DataError(f"{manifest_path}: no slice is marked mini_test")
    verify_content(chosen)
    return chosen.sort_values("id", kind="stable")


def run_mini_test(
    params: Params,
    manifest_path: Path | str,
    model_path: Path | str,
    output_dir: Path | str,
    metrics_path: Path | str,
    montage_path: Path | str,
) -> dict[str, float]:
    """Stage `infer`: masks, overlays and panels of the mini_test slices, their montage, and speed.

    `output_dir` is built in a temporary folder and renamed into place when complete. The
    montage, a picture for people, goes to `montage_path` (under reports/, where the `report`
    stage reads it without depending on a data folder).
    """
    settings = params.infer
    rows = mini_test_rows(manifest_path)
    segmenter = Segmenter.from_file(model_path, settings.batch_size, settings.tta_flip)
    panels: list[np.ndarray] = []
    with atomic_path(output_dir) as folder:
        for chunk in batches(list(rows.itertuples(index=False)), settings.batch_size):
            greys = [read_image(resolve_path(rows, row.image_path)) for row in chunk]
            for row, grey, labels in zip(chunk, greys, segmenter.segment(greys), strict=True):
                mask_path = resolve_path(rows, row.mask_path)
                truth = colour_to_index(
                    read_image(mask_path, color=True), params.palette, str(mask_path)
                )
                name = Path(row.image_path).name
                write_slice_outputs(
                    folder, name, grey, labels, params.palette, settings.overlay_alpha
                )
                panel = comparison_panel(
                    grey, truth, labels, params.palette, settings.overlay_alpha, title=row.id
                )
                write_png(folder / "panels" / name, panel)
                panels.append(panel)
    write_png(montage_path, visualize.montage(panels, MONTAGE_COLUMNS))
    first_image = read_image(resolve_path(rows, rows["image_path"].iloc[0]))
    speed = measure_speed(
        segmenter, to_model_input(first_image, segmenter.size), settings.latency_repeats
    )
    metrics = {
        **speed,
        "mini_test_slices": len(rows),
        "batch_size": settings.batch_size,
        "model_input_size": segmenter.size,
    }
    write_json(metrics_path, metrics)
    return metrics


def write_slice_outputs(
    folder: Path,
    name: str,
    grey: np.ndarray,
    labels: np.ndarray,
    palette: Palette,
    alpha: float,
) -> None:
    """Write the colour mask masks/<name> and its overlay on the CT overlays/<name>."""
    colour = index_to_colour(labels, palette)
    write_png(folder / "masks" / name, colour)
    write_png(
        folder / "overlays" / name,
        visualize.overlay(grey, colour, alpha, background=palette[0]),
    )


def comparison_panel(
    grey: np.ndarray,
    truth: np.ndarray,
    labels: np.ndarray,
    palette: Palette,
    alpha: float = 0.45,
    *,
    title: str,
    prediction_title: str = "prediction",
) -> np.ndarray:
    """image | ground truth | prediction, lesions overlaid on the CT; slices smaller than
    visualize.MIN_PANEL_SIDE_PX are enlarged by a whole factor (`visualize.enlarged`)."""
    grey = visualize.enlarged(grey, nearest=False)
    truth_colour = visualize.enlarged(index_to_colour(truth, palette))
    prediction_colour = visualize.enlarged(index_to_colour(labels, palette))
    return visualize.hstack(
        [
            visualize.label(grey, title),
            visualize.label(
                visualize.overlay(grey, truth_colour, alpha, background=palette[0]), "ground truth"
            ),
            visualize.label(
                visualize.overlay(grey, prediction_colour, alpha, background=palette[0]),
                prediction_title,
            ),
        ]
    )


@dataclass
class InputProblem:
    source: str
    reason: str


@dataclass
class SegmentationSummary:
    """What the new-images command did: outputs written, inputs skipped and why."""

    segmented: list[str] = field(default_factory=list)
    skipped: list[InputProblem] = field(default_factory=list)

    def skip(self, source: str, reason: str) -> None:
        self.skipped.append(InputProblem(source, reason))
        LOG.warning(f"skipped {source}: {reason}")


def collect_inputs(items: Sequence[str | Path], summary: SegmentationSummary) -> list[Path]:
    """Files named, plus the PNG/JPEG files of folders named (sorted, not recursive: a
    folder's subfolders often hold masks or other series, which must not be segmented as CT).

    Missing paths, a folder with no image at its top level (its subfolders named, to pick
    from) and a second input whose output name (stem + .png) is taken are skipped.
    """
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            images = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not images:
                summary.skip(str(path), empty_folder_reason(path))
            found.extend(images)
        elif path.is_file():
            found.append(path)
        else:
            summary.skip(str(path), "no such file or folder")
    unique: list[Path] = []
    owners: dict[str, Path] = {}
    for path in found:
        name = output_name(path)
        if name in owners:
            summary.skip(str(path), f"output name {name} already taken by {owners[name]}")
            continue
        owners[name] = path
        unique.append(path)
    return unique


def empty_folder_reason(folder: Path) -> str:
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir())
    reason = f"no PNG/JPEG file at its top level ({', '.join(sorted(IMAGE_SUFFIXES))})"
    if subfolders:
        shown = ", ".join(subfolders[:MAX_SUBFOLDERS_NAMED])
        more = len(subfolders) - MAX_SUBFOLDERS_NAMED
        reason += (
            f"; subfolders are not searched, name the one to segment: {shown}"
            + (f" and {more} more" if more > 0 else "")
        )
    return reason


def output_name(path: Path) -> str:
    """Masks are always PNG (a JPEG would blur the palette colours)."""
    return f"{path.stem}.png"


def read_new_image(path: Path, rules: ExtractParams) -> np.ndarray:
    """A new slice as 8-bit grey, by extract's rules (`extract.max_pixels`, refused before
    decoding; `extract.window_16bit`), so it is read as the training slices were; each
    conversion is said on stderr."""
    pixels = read_untrusted(path, rules.max_pixels, "extract.max_pixels")
    window = rules.window_16bit
    grey, conversions = untrusted_to_grey(pixels, window.level, window.width)
    if conversions:
        LOG.info(f"converted {path}: {', '.join(conversions)}")
    return grey


def segment_files(
    segmenter: Segmenter,
    items: Sequence[str | Path],
    output_dir: Path | str,
    palette: Palette,
    alpha: float,
    rules: ExtractParams,
) -> SegmentationSummary:
    """New images of any size and colour: colour masks and overlays at each input's size.

    Each slice is cropped to its own square round its head (the segmenter's `max_head_zoom`,
    as `colorize` crops the training cases) before the model sees it. Each file is read,
    segmented and written on its own terms: one that cannot be (refused, unreadable, a decoder
    or writer error) is skipped with its reason, the others go on.
    """
    output_dir = Path(output_dir)
    summary = SegmentationSummary()
    files = collect_inputs(items, summary)
    with tqdm(total=len(files), desc="segment", unit="img", mininterval=1.0) as progress:
        for chunk in batches(files, segmenter.batch_size):
            readable: list[tuple[Path, np.ndarray]] = []
            for path in chunk:
                try:
                    readable.append((path, read_new_image(path, rules)))
                except DataError as error:
                    summary.skip(str(path), str(error).removeprefix(f"{path}: "))
            if readable:
                greys = [grey for _, grey in readable]
                labels_of = segmenter.segment_slices(greys)
                for (path, grey), labels in zip(readable, labels_of, strict=True):
                    try:
                        write_slice_outputs(
                            output_dir, output_name(path), grey, labels, palette, alpha
                        )
                    except (cv2.error, OSError) as error:
                        summary.skip(str(path), f"cannot write its outputs ({error})")
                        continue
                    summary.segmented.append(str(path))
            progress.update(len(chunk))
    return summary
