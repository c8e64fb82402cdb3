"""Stage `export`: models/model.keras as a TensorFlow SavedModel (models/saved_model/) and its
contract, models/metadata.json (pipeline/report/export.py), after evaluate, whose test figures it
records. `stroke-seg` (the installed new-images command) reads its settings from there."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.params import Params
from pipeline.report.export import export_model
from stages.common import run_stage

LOG = logging.getLogger("stages.export")

MODEL = Path("models/model.keras")
EVALUATE_METRICS = Path("metrics/evaluate.json")
SAVED_MODEL = Path("models/saved_model")
METADATA = Path("models/metadata.json")


def main(params: Params) -> None:
    metadata = export_model(params, MODEL, EVALUATE_METRICS, SAVED_MODEL, METADATA)
    LOG.info(
        f"export: {SAVED_MODEL} (input {metadata['input']['tensor']['shape']}) and {METADATA}, "
        f"model version {metadata['model_version']}"
    )


if __name__ == "__main__":
    run_stage(main)
