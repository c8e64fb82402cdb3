"""DVC stage `extract`: CT image/mask pairs out of `extract.archive` into data/extracted/."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.data.extract import extract_archive
from pipeline.params import Params
from stages.common import run_stage

LOG = logging.getLogger("stages.extract")

OUTPUT = Path("data/extracted")
REPORT = Path("reports/extract_report.txt")
METRICS = Path("metrics/extract.json")


def main(params: Params) -> None:
    started = time.perf_counter()
    result = extract_archive(params.extract, OUTPUT, REPORT, METRICS)
    seconds = time.perf_counter() - started
    pairs = len(result.rows)
    LOG.info(
        f"extract: {pairs} image/mask pairs from {result.archive} in {seconds:.1f} s "
        f"({pairs / seconds:.0f} pairs/s); {len(result.problems)} files not used, see {REPORT}"
    )


if __name__ == "__main__":
    run_stage(main)
