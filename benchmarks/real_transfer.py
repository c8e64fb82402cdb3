"""Transfer check: the project's new-images command over real slices, scored against their masks.

    .venv/bin/python benchmarks/real_transfer.py --real DIR \
        [--model models/model.keras] [--tta-flip] [--output DIR] [--json OUT.json] [--per-slice]
        [--montage OUT.png] [--montage-slices 100]

Runs `python -m stages.infer --model M --input DIR/images --output OUT` in a subprocess (the
command a user runs, with this project's params.yaml), reads OUT/masks/<name>.png, and scores
them against DIR/masks/<name> (rgb_map colours; each pixel takes its nearest rgb_map colour, as
in benchmarks/realism.py). Per lesion class, over the slices whose truth holds it:
- pooled Dice: `pipeline.evaluate.measures.dice` of the pixel counts summed over those slices,
  2 sum|T & P| / (sum|T| + sum|P|);
- mean slice Dice, and slices hit: slices where the Dice is above 0 (the prediction of the
  class touches the true lesion);
- called other class: the share of the true lesion's pixels predicted as another lesion class
  (and missed: predicted as background);
- false-positive slices: slices whose truth lacks the class but whose prediction holds it.
The same table follows per source, a source being the file name up to its first underscore
(in the development set: BHSD, barrdistorted (CT-ICH), Ischemic (AISD)). The predictions go
to a temporary folder unless `--output` names one.

Per slice (the JSON's `per_slice`, and a table with `--per-slice`): its name, its source and
per lesion class its true, predicted and overlapping pixels, its Dice (None where truth and
prediction both lack the class) and whether it is hit (Dice above 0). Summed over the slices
holding a class, these pixel counts are the ones the pooled Dice is taken of.

`--montage OUT.png` draws the first `--montage-slices` slices by name (default 100) as pairs,
truth | prediction, each blended over the slice (params.yaml's infer.overlay_alpha) in the
lesion classes' display colours (pipeline/classes.py), each picture shrunk to 192 x 192 px.
The truth's label is the slice's name (a long one with class names cut to their initial, then
cut in the middle), the prediction's its Dice per class by initial ("pred H 0.41, I 0.00";
"-" where neither truth nor prediction holds the class). Pairs run in rows of about the
square root of half their count: a near-square picture.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.realism import Slice, aligned_table, initialled, read_real_folder  # noqa: E402
from pipeline import visualize  # noqa: E402
from pipeline.classes import LesionClass, Rgb, display_rgb  # noqa: E402
from pipeline.evaluate.measures import NO_OVERLAP, dice, overlap_counts  # noqa: E402
from pipeline.io import DataError, read_image, write_json, write_png  # noqa: E402
from pipeline.masks import colour_to_index, index_to_colour  # noqa: E402
from pipeline.params import Params, load_params  # noqa: E402

DEFAULT_MODEL = ROOT / "models/model.keras"
ALL_SOURCES = "all"
MONTAGE_TILE_PX = 192  # each picture of a pair: 100 pairs make a picture of 3172 x 2640 px
DEFAULT_MONTAGE_SLICES = 100
PAIR_GAP_PX = 2  # between a slice's truth and its prediction
MONTAGE_GAP_PX = 12  # between slices: wider, so that the pairs stand apart
LABEL_CHARS = 24  # letters a tile's label holds (visualize.label scales text with the tile)
NO_LESION_RGB: Rgb = (0, 0, 0)  # the display palette's background: left unblended


@dataclass(frozen=True)
class Scored:
    """One real slice: its 8-bit grey, truth and predicted class indices at the slice's size."""

    name: str
    grey: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray

    @property
    def source(self) -> str:
        return self.name.split("_", 1)[0]


def run_new_images_command(
    model: Path, images: Path, output: Path, params_path: Path, tta_flip: bool
) -> None:
    command = [sys.executable, "-m", "stages.infer", "--model", str(model)]
    command += ["--input", str(images), "--output", str(output), "--params", str(params_path)]
    if tta_flip:
        command.append("--tta-flip")
    print("running:", " ".join(command), file=sys.stderr)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode != 0:
        raise DataError(f"the new-images command failed (exit status {done.returncode})")


def read_predictions(real: Sequence[Slice], output: Path, params: Params) -> list[Scored]:
    """Each real slice with its predicted mask; a slice without one is reported and left out."""
    scored = []
    for item in real:
        path = output / "masks" / f"{Path(item.name).stem}.png"
        try:
            prediction = colour_to_index(read_image(path, color=True), params.palette, str(path))
        except DataError as error:
            print(f"skipped {item.name}: no prediction ({error})", file=sys.stderr)
            continue
        scored.append(Scored(item.name, item.grey, item.labels, prediction))
    return scored


def class_scores(slices: Sequence[Scored], index: int) -> dict[str, float | int | None]:
    """The figures of one lesion class (class index `index`); see the module docstring."""
    holding = [item for item in slices if (item.truth == index).any()]
    pooled = NO_OVERLAP
    other_px = missed_px = 0
    slice_dice = []
    for item in holding:
        truth = item.truth == index
        counts = overlap_counts(truth, item.prediction == index)
        slice_dice.append(dice(counts))  # not None: the truth holds the class
        pooled += counts
        other_px += int((truth & (item.prediction != index) & (item.prediction != 0)).sum())
        missed_px += int((truth & (item.prediction == 0)).sum())
    lacking = [item for item in slices if not (item.truth == index).any()]
    return {
        "slices": len(holding),
        "pooled_dice": dice(pooled),  # None without a slice holding the class
        "mean_slice_dice": float(np.mean(slice_dice)) if holding else None,
        "slices_hit": sum(value > 0 for value in slice_dice),
        "called_other_class_share": other_px / pooled.truth if holding else None,
        "missed_share": missed_px / pooled.truth if holding else None,
        "slices_without_class": len(lacking),
        "false_positive_slices": sum((item.prediction == index).any() for item in lacking),
    }


def slice_figures(item: Scored, lesion_classes: Sequence[LesionClass]) -> dict:
    """One slice's figures: {"name", "source", "classes": {class label: counts, Dice, hit}}."""
    figures = {}
    for lesion in lesion_classes:
        counts = overlap_counts(item.truth == lesion.index, item.prediction == lesion.index)
        value = dice(counts)
        figures[lesion.label] = {
            "true_px": counts.truth,
            "predicted_px": counts.predicted,
            "overlap_px": counts.intersection,
            "dice": value,
            "hit": value is not None and value > 0,
        }
    return {"name": item.name, "source": item.source, "classes": figures}


def format_dice(figures: dict) -> str:
    """A slice's Dice of one class: "-" where neither truth nor prediction holds it."""
    return "-" if figures["dice"] is None else f"{figures['dice']:.2f}"


def format_per_slice(per_slice: Sequence[dict]) -> str:
    """One line a slice: per lesion class its Dice (marked where hit) and its pixel counts."""
    labels = list(per_slice[0]["classes"])
    header = ["slice", "source"]
    for label in labels:
        header += [f"{label} Dice", f"{label} px true/predicted/overlap"]
    rows = [header]
    for row in per_slice:
        cells = [row["name"], row["source"]]
        for label in labels:
            figures = row["classes"][label]
            cells.append(format_dice(figures) + (" hit" if figures["hit"] else ""))
            cells.append(f"{figures['true_px']}/{figures['predicted_px']}/{figures['overlap_px']}")
        rows.append(cells)
    return "\n".join(aligned_table(rows))


def tile_title(name: str, lesion_names: Sequence[str], chars: int = LABEL_CHARS) -> str:
    """A slice's name without its suffix; one longer than `chars` letters with its class names
    cut to their initial (`realism.initialled`) and then cut in the middle, so that its source
    and slice number stay."""
    title = Path(name).stem
    if len(title) <= chars:
        return title
    title = initialled(name, lesion_names)
    head = (chars - 2) // 2
    return title if len(title) <= chars else f"{title[:head]}..{title[-(chars - 2 - head) :]}"


def overlaid_tile(
    grey: np.ndarray, labels: np.ndarray, palette: Sequence[Rgb], alpha: float, text: str
) -> np.ndarray:
    """The slice with the lesions of `labels` blended in `palette`'s colours, shrunk to
    MONTAGE_TILE_PX square (after blending: a small lesion stays as a tint) and labelled."""
    blended = visualize.overlay(
        grey, index_to_colour(labels, palette), alpha, background=palette[0]
    )
    small = cv2.resize(blended, (MONTAGE_TILE_PX,) * 2, interpolation=cv2.INTER_AREA)
    return visualize.label(small, text)


def write_montage(
    path: Path, scored: Sequence[Scored], per_slice: Sequence[dict], params: Params, count: int
) -> int:
    """Truth | prediction of the first `count` slices by name (module docstring); the number
    drawn."""
    lesions = params.lesion_classes
    palette = (NO_LESION_RGB, *(display_rgb(lesion.index) for lesion in lesions))
    names = [lesion.name for lesion in lesions]
    alpha = params.infer.overlay_alpha
    drawn = sorted(zip(scored, per_slice, strict=True), key=lambda pair: pair[0].name)[:count]
    pairs = []
    for item, figures in drawn:
        scores = ", ".join(
            f"{lesion.name[0]} {format_dice(figures['classes'][lesion.label])}"
            for lesion in lesions
        )
        truth = overlaid_tile(item.grey, item.truth, palette, alpha, tile_title(item.name, names))
        prediction = overlaid_tile(item.grey, item.prediction, palette, alpha, f"pred {scores}")
        pairs.append(visualize.hstack([truth, prediction], gap=PAIR_GAP_PX))
    # A pair is twice as wide as it is high: sqrt(n / 2) pairs a row make a near-square picture.
    write_png(
        path, visualize.montage(pairs, math.ceil(math.sqrt(len(pairs) / 2)), gap=MONTAGE_GAP_PX)
    )
    return len(pairs)


def transfer_scores(slices: Sequence[Scored], params: Params) -> dict[str, dict]:
    """{source: {class label: figures}}, "all" first, then each source by name."""
    sources = [ALL_SOURCES, *sorted({item.source for item in slices})]
    table: dict[str, dict] = {}
    for source in sources:
        chosen = [item for item in slices if source in (ALL_SOURCES, item.source)]
        table[source] = {
            lesion.label: class_scores(chosen, lesion.index) for lesion in params.lesion_classes
        }
    return table


def format_table(table: dict[str, dict]) -> str:
    header = (
        "slices",
        "class",
        "pooled Dice",
        "mean slice Dice",
        "hit",
        "other class",
        "missed",
        "FP slices",
    )
    rows = [header]
    for source, classes in table.items():
        for label, row in classes.items():
            if not row["slices"] and not row["false_positive_slices"]:
                continue
            held = row["slices"]
            rows.append(
                (
                    source,
                    label,
                    "-" if not held else f"{row['pooled_dice']:.2f}",
                    "-" if not held else f"{row['mean_slice_dice']:.2f}",
                    f"{row['slices_hit']}/{held}",
                    "-" if not held else f"{row['called_other_class_share']:.0%}",
                    "-" if not held else f"{row['missed_share']:.0%}",
                    f"{row['false_positive_slices']}/{row['slices_without_class']}",
                )
            )
    return "\n".join(aligned_table(rows))


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--real", type=Path, required=True, help="folder with images/ and masks/")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="Keras model file")
    parser.add_argument("--tta-flip", action="store_true", help="passed to the command")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--output", type=Path, help="keep the predictions here")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--per-slice", action="store_true", help="print each slice's figures too")
    parser.add_argument("--montage", type=Path, help="PNG: truth | prediction, a pair a slice")
    parser.add_argument(
        "--montage-slices",
        type=int,
        default=DEFAULT_MONTAGE_SLICES,
        help=f"draw the first N slices by name (default {DEFAULT_MONTAGE_SLICES})",
    )
    arguments = parser.parse_args(argv)
    if arguments.montage_slices < 1:
        parser.error("--montage-slices must be at least 1")
    try:
        params = load_params(arguments.params)
        real = read_real_folder(arguments.real, params)
        if not real.slices:
            raise DataError(f"{arguments.real}: no usable slice (see the lines above)")
        with tempfile.TemporaryDirectory(prefix="real-transfer-") as scratch:
            output = arguments.output or Path(scratch) / "predictions"
            run_new_images_command(
                arguments.model.resolve(),
                (arguments.real / "images").resolve(),
                output.resolve(),
                arguments.params.resolve(),
                arguments.tta_flip,
            )
            scored = read_predictions(real.slices, output, params)
    except DataError as error:
        sys.exit(f"real_transfer: {error}")
    table = transfer_scores(scored, params)
    per_slice = [slice_figures(item, params.lesion_classes) for item in scored]
    result = {
        "real": str(arguments.real),
        "model": str(arguments.model),
        "tta_flip": arguments.tta_flip,
        "slices": len(scored),
        "skipped": [
            *real.skipped,
            *sorted({s.name for s in real.slices} - {s.name for s in scored}),
        ],
        "scores": table,
        "per_slice": per_slice,
    }
    if arguments.per_slice and per_slice:
        print(format_per_slice(per_slice), end="\n\n")
    print(format_table(table))
    print(
        f"\n{len(scored)} real slices from {arguments.real}; model {arguments.model}\n"
        "hit: slice Dice > 0; other class: share of the true lesion's pixels called another "
        "lesion class; missed: called background;\nFP slices: slices without the class in "
        "truth where it is predicted, of those slices"
    )
    if arguments.montage and not scored:
        print(f"montage {arguments.montage} not written: no slice was scored", file=sys.stderr)
    elif arguments.montage:
        drawn = write_montage(
            arguments.montage, scored, per_slice, params, arguments.montage_slices
        )
        result["montage"] = {"path": str(arguments.montage), "slices_drawn": drawn}
        print(
            f"montage {arguments.montage}: the first {drawn} of {len(scored)} slices by name "
            f"(--montage-slices {arguments.montage_slices}), truth | prediction; the "
            "prediction's label: slice Dice per class by initial"
        )
    if arguments.json:
        write_json(arguments.json, result)
    return result


if __name__ == "__main__":
    main()
