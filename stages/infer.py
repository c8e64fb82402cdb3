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
stroke-seg --input ... --output DIR [--model M] [--metadata J] [--tta-flip]
    the same new-images command, installed by `pip install .` and run from any folder: its
    settings come from the model's metadata.json (stage `export`), not from params.yaml.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.dicom import is_dicom_input
from pipeline.infer.command import (
    DEFAULT_EVALUATE_METRICS,
    DEFAULT_MODEL,
    METADATA_NAME,
    CommandSettings,
    command_threshold,
    load_command_settings,
    new_images_parser,
)
from pipeline.infer.dicom_seg import model_version, segment_dicom
from pipeline.infer.inference import Segmenter, run_mini_test, segment_files
from pipeline.io import DataError
from pipeline.params import Params
from stages.common import configure_logging, fail, run_stage

LOG = logging.getLogger("stages.infer")
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
    LOG.info(", ".join(f"{key} {value:.4g}" for key, value in metrics.items()))


def segment_new_images(params: Params | CommandSettings, arguments: argparse.Namespace) -> None:
    segmenter = Segmenter.from_file(
        arguments.model, params.infer.batch_size, arguments.tta_flip, params.head_crop.max_zoom
    )
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
    LOG.info(
        f"segmented {len(summary.segmented)} image(s) into {arguments.output}; "
        f"skipped {len(summary.skipped)}"
    )
    if not summary.segmented:
        sys.exit(1)


def segment_dicom_series(
    params: Params | CommandSettings, arguments: argparse.Namespace, segmenter: Segmenter
) -> None:
    settings = params.infer
    threshold = command_threshold(
        arguments.evaluate_metrics,
        arguments.evaluate_metrics_default,
        settings.triage_threshold_ml_hemorrhagic,
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
    LOG.info(
        f"segmented {len(run.segmented)} series into {arguments.output}; refused "
        f"{len(run.refused)}; ignored {len(run.ignored)} files; triage threshold "
        f"{threshold.ml:g} mL from {threshold.source}"
    )
    if not run.segmented:
        sys.exit(1)
    if run.refused:
        sys.exit(EXIT_SOME_REFUSED)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = new_images_parser(
        "python -m stages.infer",
        "Without --input: the DVC stage on the mini_test slices. With --input and --output: "
        "segment new PNG/JPEG slices of any size, or DICOM CT series.",
        installed=False,
    )
    arguments = parser.parse_args(argv)
    if (arguments.input is None) != (arguments.output is None):
        parser.error("--input and --output go together")
    if arguments.input is None and (arguments.model or arguments.tta_flip):
        parser.error("--model and --tta-flip apply to new images: give --input and --output")
    arguments.model = arguments.model or DEFAULT_MODEL
    arguments.evaluate_metrics_default = DEFAULT_EVALUATE_METRICS
    return arguments


def command(argv: list[str] | None = None) -> None:
    """`stroke-seg` (pyproject.toml's [project.scripts]): the new-images command with the
    settings of the model's metadata.json, from any folder."""
    configure_logging()
    arguments = new_images_parser(
        "stroke-seg",
        "Segment hemorrhagic and ischemic stroke lesions in new CT: PNG/JPEG slices of any "
        "size, or DICOM CT series. Research use only, not a medical device.",
        installed=True,
    ).parse_args(argv)
    arguments.model = arguments.model or DEFAULT_MODEL
    arguments.metadata = arguments.metadata or arguments.model.parent / METADATA_NAME
    arguments.evaluate_metrics_default = arguments.metadata
    try:
        segment_new_images(load_command_settings(arguments.metadata, arguments.model), arguments)
    except DataError as error:
        fail("stroke-seg", error)


if __name__ == "__main__":
    parsed = parse_arguments()
    if parsed.input is None:
        run_stage(main, parsed.params)
    else:
        run_stage(lambda params: segment_new_images(params, parsed), parsed.params)
