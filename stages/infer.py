"""Stage `infer` (mini_test predictions and speed) and the command for new images.

python -m stages.infer
    the DVC stage: masks, overlays and panels of the mini_test slices under
    data/predictions/, their montage in reports/infer/mini_test_output.png, and
    latency/throughput in metrics/infer.json
python -m stages.infer --input DIR_OR_FILE... --output DIR [--model M] [--tta-flip]
    segment PNG/JPEG slices of any size, grey or colour, 8 or 16 bits (read by extract's
    rules: `extract.max_pixels`, `extract.window_16bit`); writes DIR/masks/<stem>.png and
    DIR/overlays/<stem>.png at each input's size. Unreadable or refused inputs are reported
    and skipped; the exit status is non-zero only if nothing could be segmented.
python -m stages.infer --input SERIES_DIR_OR_ZIP... --output DIR [--model M] [--tta-flip]
    DICOM CT series (chosen when an input is a zip or holds DICOM files): per series a DICOM
    SEG, overlays and summary.json under DIR/<SeriesInstanceUID>/, and DIR/summary.csv.
    Refused series are reported (and a zip or folder of more than `extract.max_entries`
    files), so are files set aside (copies, localizers) and ignored (DICOMDIR, OS metadata);
    exit status 0 when every series was segmented, 2 when some were refused, 1 when none
    was segmented.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.dicom import is_dicom_input
from pipeline.dicom_seg import model_version, segment_dicom, triage_threshold
from pipeline.inference import Segmenter, run_mini_test, segment_files
from pipeline.params import Params
from stages.common import run_stage

DEFAULT_MODEL = Path("models/model.keras")
DEFAULT_EVALUATE_METRICS = Path("metrics/evaluate.json")
# Exit status of the DICOM command when some series were segmented and others refused.
EXIT_SOME_REFUSED = 2


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
    if is_dicom_input(arguments.input):
        segment_dicom_series(params, arguments, segmenter)
        return
    summary = segment_files(
        segmenter,
        arguments.input,
        arguments.output,
        params.palette,
        params.infer.overlay_alpha,
        params.extract,
    )
    print(
        f"segmented {len(summary.segmented)} image(s) into {arguments.output}; "
        f"skipped {len(summary.skipped)}",
        file=sys.stderr,
    )
    if not summary.segmented:
        sys.exit(1)


def segment_dicom_series(
    params: Params, arguments: argparse.Namespace, segmenter: Segmenter
) -> None:
    settings = params.infer
    threshold = triage_threshold(
        arguments.evaluate_metrics, settings.triage_threshold_ml_hemorrhagic
    )
    run = segment_dicom(
        segmenter,
        arguments.input,
        arguments.output,
        params.palette,
        settings,
        threshold,
        model_version(arguments.model),
        params.extract,
    )
    print(
        f"segmented {len(run.segmented)} series into {arguments.output}; refused "
        f"{len(run.refused)}; ignored {len(run.ignored)} files; triage threshold "
        f"{threshold.ml:g} mL from {threshold.source}",
        file=sys.stderr,
    )
    if not run.segmented:
        sys.exit(1)
    if run.refused:
        sys.exit(EXIT_SOME_REFUSED)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stages.infer",
        description="Without --input: the DVC stage on the mini_test slices. With --input and "
        "--output: segment new PNG/JPEG slices of any size, or DICOM CT series.",
    )
    parser.add_argument(
        "--input", nargs="+", help="PNG/JPEG files or folders, or DICOM folders or zips"
    )
    parser.add_argument("--output", type=Path, help="folder for masks/ and overlays/")
    parser.add_argument("--model", type=Path, help=f"Keras model (default {DEFAULT_MODEL})")
    parser.add_argument("--tta-flip", action="store_true", help="average with a flipped pass")
    parser.add_argument("--params", default="params.yaml", help="palette, batch size, alpha")
    parser.add_argument(
        "--evaluate-metrics",
        type=Path,
        default=DEFAULT_EVALUATE_METRICS,
        help="DICOM: the evaluate stage's metrics, for its validated triage threshold",
    )
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
