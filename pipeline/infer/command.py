"""The new-images command's options and settings, shared by `python -m stages.infer --input`
(in the project: settings from params.yaml) and the installed `stroke-seg` (anywhere:
settings from the exported model's metadata.json, written by stage `export`).

Both take the same inputs and write the same outputs: PNG/JPEG slices or folders of them
(each folder's top level), or DICOM series (folders or zips).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pydantic import ValidationError

from pipeline import classes
from pipeline.infer.dicom_seg import TRIAGE_METRIC, TriageThreshold, triage_threshold
from pipeline.io import DataError, read_json_object, sha256_hex
from pipeline.params import ExtractParams, HeadCropParams, InferParams, Rgb, StrictModel

LOG = logging.getLogger(__name__)

DEFAULT_MODEL = Path("models/model.keras")
DEFAULT_EVALUATE_METRICS = Path("metrics/evaluate.json")
METADATA_NAME = "metadata.json"
# --evaluate-metrics none: the params' triage threshold, which no evaluation validated.
NO_METRICS = "none"
INPUT_HELP = (
    "PNG/JPEG files, folders of them (the folder's top level only), or DICOM series "
    "(folders or zips)"
)
OUTPUT_HELP = "folder for masks/ and overlays/ (PNG input) or one folder per DICOM series"
TTA_HELP = "average each prediction with that of the mirrored slice (default: off)"


class CommandSettings(StrictModel):
    """What the new-images command reads from params.yaml, as the exported model's
    metadata.json records it (`settings`): mask colours, input rules, inference settings."""

    rgb_map: dict[str, Rgb]
    extract: ExtractParams
    head_crop: HeadCropParams
    infer: InferParams

    @property
    def palette(self) -> tuple[Rgb, ...]:
        return classes.palette(self.rgb_map)


def load_command_settings(metadata_path: Path, model_path: Path) -> CommandSettings:
    """The settings in `metadata_path`, after checking that it describes `model_path` (the
    model file's sha256 is among those it lists)."""
    metadata = read_json_object(
        metadata_path, "the model's metadata, written by the export stage; give it with --metadata"
    )
    digest = sha256_hex(model_path.read_bytes()) if model_path.is_file() else None
    if digest is not None and digest not in metadata.get("files_sha256", {}).values():
        raise DataError(
            f"{metadata_path}: describes another model than {model_path} (its sha256 is not "
            "among the files listed); give the metadata.json exported with this model"
        )
    try:
        return CommandSettings.model_validate(metadata.get("settings"))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc'])) or 'settings'}: {item['msg']}"
            for item in error.errors()
        )
        raise DataError(f"{metadata_path}: invalid settings ({problems})") from None


def command_threshold(
    chosen: str | None, default_source: Path, default_ml: float
) -> TriageThreshold:
    """The triage threshold of the DICOM summary.

    `chosen` is --evaluate-metrics: a file (it must exist), `none` (the params default, not
    validated), or None for `default_source` (the evaluate metrics, or the metadata), which
    falls back to the params default with a warning when it is missing.
    """
    unvalidated = f"params infer.{TRIAGE_METRIC} (default, not validated)"
    if chosen == NO_METRICS:
        return TriageThreshold(default_ml, f"{unvalidated}: --evaluate-metrics {NO_METRICS}")
    if chosen is not None:
        path = Path(chosen)
        if not path.is_file():
            raise DataError(f"{path}: --evaluate-metrics file not found")
        return triage_threshold(path, default_ml)
    if not default_source.is_file():
        LOG.warning(
            f"{default_source} not found: the triage threshold is {default_ml:g} mL, "
            f"{unvalidated}; run the evaluate stage, or pass --evaluate-metrics"
        )
        return TriageThreshold(default_ml, f"{unvalidated}: {default_source} not found")
    return triage_threshold(default_source, default_ml)


def new_images_parser(prog: str, description: str, *, installed: bool) -> argparse.ArgumentParser:
    """The options of the new-images command; `installed` (stroke-seg) takes its settings from
    the model's metadata and needs --input and --output, the stage reads params.yaml."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    # The stage without --input and --output runs on the mini_test slices.
    stage_default = "" if installed else " (default: none, the DVC stage)"
    parser.add_argument("--input", nargs="+", required=installed, help=INPUT_HELP + stage_default)
    parser.add_argument(
        "--output", type=Path, required=installed, help=OUTPUT_HELP + stage_default
    )
    parser.add_argument(
        "--model", type=Path, help=f"the trained Keras model (default: {DEFAULT_MODEL})"
    )
    parser.add_argument("--tta-flip", action="store_true", help=TTA_HELP)
    if installed:
        parser.add_argument(
            "--metadata",
            type=Path,
            help=f"the model's {METADATA_NAME}, written by the export stage: colours, input "
            f"rules, batch size, triage threshold (default: {METADATA_NAME} beside --model)",
        )
        evaluate_default = "the evaluation figures in --metadata"
    else:
        parser.add_argument(
            "--params",
            default="params.yaml",
            help="colours, input rules, batch size, overlay alpha (default: params.yaml)",
        )
        evaluate_default = (
            f"{DEFAULT_EVALUATE_METRICS}; when it is missing, infer.{TRIAGE_METRIC} (not "
            "validated) with a warning"
        )
    parser.add_argument(
        "--evaluate-metrics",
        metavar="FILE|none",
        help="DICOM: the evaluate stage's metrics, whose validated triage threshold calls "
        f"'hemorrhage present'; '{NO_METRICS}' for infer.{TRIAGE_METRIC} (not validated); a "
        f"file named must exist (default: {evaluate_default})",
    )
    return parser
