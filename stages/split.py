"""Stage `split`: case-level train/valid/test split of the colorized slices, plus mini_test.

Reads data/colorized/manifest.csv; writes data/split/manifest.csv (paths into ../colorized),
metrics/split.json and reports/split_statistics.png. Integrity is checked before writing.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.split import SPLITS, split_manifest, split_metrics, validate_split
from pipeline.data.stats import plot_class_counts
from pipeline.io import read_manifest, write_json, write_manifest
from pipeline.params import Params
from stages.common import run_stage

COLORIZED_MANIFEST = Path("data/colorized/manifest.csv")
SPLIT_MANIFEST = Path("data/split/manifest.csv")
METRICS = Path("metrics/split.json")
STATISTICS = Path("reports/split_statistics.png")


def main(params: Params) -> None:
    colorized = read_manifest(COLORIZED_MANIFEST)
    table = split_manifest(colorized, params.split, params.seed, SPLIT_MANIFEST.parent)
    validate_split(table, expected_rows=len(colorized))
    write_manifest(SPLIT_MANIFEST, table)
    plot_class_counts(
        table,
        STATISTICS,
        group_column="split",
        group_order=SPLITS,
        title="Slices and cases per split (case-level split)",
    )
    write_json(METRICS, split_metrics(table))


if __name__ == "__main__":
    run_stage(main)
