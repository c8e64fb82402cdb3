"""Stage `infer` (mini_test predictions and speed) and the command for new images.

python -m stages.infer
    the DVC stage: masks, overlays and panels of the mini_test slices under
    data/predictions/, their montage in reports/infer/mini_test_output.png, and
    latency/throughput in metrics/infer.json
python -m stages.infer --input DIR_OR_FILE... --output DIR [--model M] [--tta-flip]
    segment PNG/JPEG slices of any size, grey or colour; writes DIR/masks/<stem>.png and
    DIR/overlays/<stem>.png at each input's size. Unreadable inputs are reported and
    skipped; the exit status is non-zero only if nothing could be segmented.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.inference import Segmenter, run_mini_test, segment_files
from pipeline.params import Params
from stages.common import run_stage

DEFAULT_MODEL = Path("models/model.keras")


def main(params: Params) -> None:
    metrics = run_mini_test(
        params,
        manifest_path="data/split/manifest.csv",
        model_path=DEFAULT_MODEL,
        output_dir="data/predictions",
        metrics_path="metrics/infer.json",
        montage_path="reports/infer/mini_test_output.png",
    )
    print(", ".join(f"{key} {value:.4g}" for key, value in metrics.items()))


def segment_new_images(params: Params, arguments: argparse.Namespace) -> None:
    segmenter = Segmenter.from_file(arguments.model, params.infer.batch_size, arguments.tta_flip)
    summary = segment_files(
        segmenter, arguments.input, arguments.output, params.palette, params.infer.overlay_alpha
    )
    print(
        f"segmented {len(summary.segmented)} image(s) into {arguments.output}; "
        f"skipped {len(summary.skipped)}",
        file=sys.stderr,
    )
    if not summary.segmented:
        sys.exit(1)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stages.infer",
        description="Without --input: the DVC stage on the mini_test slices. With --input and "
        "--output: segment new PNG/JPEG slices of any size.",
    )
    parser.add_argument("--input", nargs="+", help="image files and/or folders of PNG/JPEG")
    parser.add_argument("--output", type=Path, help="folder for masks/ and overlays/")
    parser.add_argument("--model", type=Path, help=f"Keras model (default {DEFAULT_MODEL})")
    parser.add_argument("--tta-flip", action="store_true", help="average with a flipped pass")
    parser.add_argument("--params", default="params.yaml", help="palette, batch size, alpha")
    arguments = parser.parse_args(argv)
    if (arguments.input is None) != (arguments.output is None):
        parser.error("--input and --output go together")
    if arguments.input is None and (arguments.model or arguments.tta_flip):
        parser.error("--model and --tta-flip apply to new images: give --input and --output")
    arguments.model = arguments.model or DEFAULT_MODEL
    return arguments


if __name__ == "__main__":
    parsed = parse_arguments()
    if parsed.input is None:
        run_stage(main, parsed.params)
    else:
        run_stage(lambda params: segment_new_images(params, parsed), parsed.params)
