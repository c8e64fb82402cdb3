"""Stage `colorize`: validated slices to `image_size` grey images and `rgb_map` colour masks.

Reads data/validated/manifest.csv (only slices that passed the gate) and writes
data/colorized/{images,masks}/<id>.png and data/colorized/manifest.csv.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.data.colorize import colorize_dataset
from pipeline.io import read_manifest
from pipeline.params import Params
from stages.common import run_stage

LOG = logging.getLogger("stages.colorize")

VALIDATED_MANIFEST = Path("data/validated/manifest.csv")
OUTPUT_FOLDER = Path("data/colorized")


def main(params: Params) -> None:
    manifest = read_manifest(VALIDATED_MANIFEST)
    started = time.perf_counter()
    colorized = colorize_dataset(
        manifest,
        OUTPUT_FOLDER,
        size=params.image_size,
        rgb_map=params.rgb_map,
        interpolation=params.colorize.image_interpolation,
        max_head_zoom=params.head_crop.max_zoom,
        workers=params.colorize.workers,
    )
    seconds = time.perf_counter() - started
    LOG.info(
        f"colorize: {len(colorized)} slices to {params.image_size} px in {seconds:.1f} s "
        f"({len(colorized) / seconds:.0f} images/s) into {OUTPUT_FOLDER}"
    )


if __name__ == "__main__":
    run_stage(main)
