"""Stage `synthesize`: the CT phantom archive laid out like the Kaggle download.

Writes data/raw/phantom.zip (deterministic bytes for a given `seed` and `phantom` params),
data/raw/phantom_dicom/ (the cases of `phantom.dicom_subsets` as DICOM CT series in HU, with
their truth masks), reports/phantom_montage.png (phantom slices with their masks, to
compare by eye with real CT such as tests/data/real-ct) and metrics/synthesize.json (the
phantom's own statistics: lesion kinds, contrast and area, pose and acquisition ranges).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.io import write_json, write_png
from pipeline.params import Params
from pipeline.synthesize.archive import synthesize_archive
from pipeline.synthesize.dicom_series import synthesize_dicom
from pipeline.synthesize.montage import phantom_montage
from pipeline.synthesize.statistics import summarise
from stages.common import run_stage

LOG = logging.getLogger("stages.synthesize")

ARCHIVE_PATH = Path("data/raw/phantom.zip")
DICOM_PATH = Path("data/raw/phantom_dicom")
MONTAGE_PATH = Path("reports/phantom_montage.png")
METRICS_PATH = Path("metrics/synthesize.json")


def main(params: Params) -> None:
    started = time.perf_counter()
    summary, cases = synthesize_archive(ARCHIVE_PATH, params.phantom, params.seed)
    seconds = time.perf_counter() - started
    started_dicom = time.perf_counter()
    dicom_cases = synthesize_dicom(DICOM_PATH, params.phantom, params.seed)
    dicom_seconds = time.perf_counter() - started_dicom
    write_png(MONTAGE_PATH, phantom_montage(ARCHIVE_PATH, cases))
    write_json(METRICS_PATH, summarise([case.statistics for case in cases]))
    LOG.info(
        f"synthesize: {summary.cases} cases, {summary.slices} slices "
        f"({summary.lesion_slices} with a lesion, {summary.masks} with a mask file) in "
        f"{seconds:.1f} s = {summary.slices / seconds:.1f} slices/s; "
        f"{ARCHIVE_PATH} {summary.archive_bytes / 1e6:.1f} MB; {len(dicom_cases)} DICOM "
        f"series in {dicom_seconds:.1f} s under {DICOM_PATH}; montage {MONTAGE_PATH}"
    )


if __name__ == "__main__":
    run_stage(main)
