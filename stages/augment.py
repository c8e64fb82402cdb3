"""Stage `augment`: barrel, pincushion and elastic copies of hemorrhagic training slices.

Reads data/split/manifest.csv (and the colorized slices it points to); writes
data/augmented/ (images/, masks/, manifest.csv listing the whole training set: originals and
copies) and metrics/augment.json. Valid and test slices are never augmented.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.augment import augment_training_set
from pipeline.io import write_json
from pipeline.params import Params
from stages.common import run_stage

SPLIT_MANIFEST = Path("data/split/manifest.csv")
AUGMENTED = Path("data/augmented")
METRICS = Path("metrics/augment.json")


def main(params: Params) -> None:
    metrics = augment_training_set(
        SPLIT_MANIFEST,
        AUGMENTED,
        params.augment,
        seed=params.seed,
        background=params.rgb_map["background"],
        workers=params.augment.workers,
    )
    write_json(METRICS, metrics)


if __name__ == "__main__":
    run_stage(main)
