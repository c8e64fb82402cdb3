"""Stage `train`: fit the FlexUNet on the augmented training set, select by validation Dice.

Reads data/augmented/manifest.csv (training slices) and data/split/manifest.csv (valid and
mini_test rows). Writes models/model.keras (the epoch with the best validation mean lesion
Dice), metrics/train.json, dvclive/ (per-epoch metrics and plots) and reports/train/ (metric
and loss CSVs and plots, epoch-change panels of the mini_test slices and their montage).
A killed run resumes from its last completed epoch when rerun (state in models/.backup_train/).
With train.strategy multi_worker every node runs this same command with its own TF_CONFIG
(pipeline/model/distribute.py); only the chief writes the outputs.
"""

from __future__ import annotations

import logging

from pipeline.model.distribute import start_distribution
from pipeline.model.training import TrainPaths, configure_runtime, train_model
from pipeline.params import Params
from stages.common import run_stage

LOG = logging.getLogger("stages.train")


def main(params: Params) -> None:
    configure_runtime(params)  # thread pools, then the strategy: both before any other TF op
    distribution = start_distribution(params.train.strategy)
    summary = train_model(params, TrainPaths(), distribution)
    LOG.info(
        f"train: best epoch {summary['best_epoch']} of {summary['epochs']}: validation Dice "
        f"hemorrhagic {summary['val_dice_hemorrhagic']:.3f}, ischemic "
        f"{summary['val_dice_ischemic']:.3f}, mean {summary['val_dice_mean']:.3f}; "
        f"{summary['training_s']:.0f} s, {summary['train_images_per_s']:.1f} images/s; "
        + (
            "models/model.keras, reports/train/, metrics/train.json"
            if distribution.is_chief
            else f"worker {distribution.worker_index}: the chief wrote the outputs"
        )
    )


if __name__ == "__main__":
    run_stage(main)
