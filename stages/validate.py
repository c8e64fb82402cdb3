"""Stage `validate`: the data-quality gate between `extract` and everything that trains.

Reads data/extracted/manifest.csv and the files it lists, checks them with Great Expectations
and writes data/validated/manifest.csv only when no critical check fails (see
pipeline/data/validate.py for the checks and their severities).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.data.validate import ValidateOutputs, validate_extracted
from pipeline.params import Params
from stages.common import run_stage

LOG = logging.getLogger("stages.validate")

EXTRACTED_MANIFEST = Path("data/extracted/manifest.csv")
OUTPUTS = ValidateOutputs(
    manifest=Path("data/validated/manifest.csv"),
    metrics=Path("metrics/data.json"),
    data_docs=Path("reports/data_docs"),
    statistics=Path("reports/dataset_statistics.png"),
)


def main(params: Params) -> None:
    started = time.perf_counter()
    report = validate_extracted(EXTRACTED_MANIFEST, OUTPUTS, params.validate)
    seconds = time.perf_counter() - started
    LOG.info(
        f"validate: no critical failure among {len(report.outcomes)} expectations on "
        f"{report.rows} slices ({len(report.warnings)} warnings); {seconds:.1f} s, "
        f"{report.rows / seconds:.0f} rows/s"
    )


if __name__ == "__main__":
    run_stage(main)
