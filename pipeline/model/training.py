"""Stage `train`: fit the FlexUNet, keep the best epoch, resume after a crash, report.

The stage calls, in this order, `configure_runtime` (seeds, threads, dtype policy), then
`pipeline.model.distribute.start_distribution` (the strategy: both before any other TensorFlow op),
then `train_model` with that `Distribution`. Everything that depends on workers and replicas
goes through that one object: each worker's output paths, the checks that all workers agree,
the per-worker datasets (`make_datasets`), and the strategy's scope and loss, under which
`build_compiled_model` creates model, optimizer and metrics.

Crash safety: after every epoch the complete training state -- weights with optimizer state,
the history, the ReduceLROnPlateau/EarlyStopping counters and the best model so far -- is
committed as one folder `models/.backup_train/checkpoints/epoch_NNNN/`, made under a temporary
name and renamed into place, so an interrupted run finds either the whole epoch or none of it.
Keras's BackupAndRestore keeps weights and the epoch number only; resuming with it would reset
the callbacks' patience counters and lose the history and the best checkpoint. The backup
folder is outside every DVC output (DVC deletes outputs before it reruns a stage) and is
removed after a successful run. Outputs (model, reports, metrics, dvclive) are written only
when training has finished, each atomically.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm import tqdm

from pipeline import visualize
from pipeline.io import DataError, atomic_path, write_json, write_png
from pipeline.masks import index_to_colour
from pipeline.model.dataset import (
    OnlineAugmentation,
    PipelineOptions,
    TrainingTables,
    holds_lesion,
    load_slices,
    make_eval_dataset,
    make_train_dataset,
    read_training_tables,
    resolve_cache,
    steps_per_epoch,
)
from pipeline.model.distribute import Distribution
from pipeline.model.network import build_model
from pipeline.model.train_metrics import make_metrics
from pipeline.params import Params, TrainParams

LOG = logging.getLogger(__name__)

MONITOR = "val_dice_mean"  # every "best" below means the highest validation mean lesion Dice
CHECKPOINT_PREFIX = "epoch_"
WEIGHTS_FILE = "weights.weights.h5"
BEST_MODEL_FILE = "best.keras"
STATE_FILE = "state.json"
MONTAGE_EPOCHS = 6  # columns of the epoch-change montage (first, last and evenly between)


@dataclass(frozen=True)
class TrainPaths:
    augmented_manifest: Path = Path("data/augmented/manifest.csv")
    split_manifest: Path = Path("data/split/manifest.csv")
    model: Path = Path("models/model.keras")
    backup_dir: Path = Path("models/.backup_train")
    reports_dir: Path = Path("reports/train")
    metrics: Path = Path("metrics/train.json")
    dvclive_dir: Path = Path("dvclive")


# What each worker writes: the real paths on the chief, a temporary copy on the other workers.
WORKER_OUTPUTS = ("model", "backup_dir", "reports_dir", "metrics", "dvclive_dir")


# ---------------------------------------------------------------------------------- runtime
# glibc's mallopt option for the number of malloc arenas (malloc.h: M_ARENA_MAX).
_M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas for the threads this process starts from now on; False where
    the C library is not glibc.

    glibc gives each thread that allocates its own arena, up to 8 per core, and TensorFlow's
    and tf.data's thread pools then keep freed tensor memory in a dozen of them: 12 training
    steps at 512 px and batch 4 peaked at 1,975 MB, and at 1,832 MB with this cap of 2, at the
    same speed (benchmarks/kaggle_scale.py --train-in on a 1/8-scale project, 2026-11-30). It
    must run before TensorFlow starts its threads."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # not Linux with glibc
        return False


def configure_runtime(params: Params) -> None:
    """Malloc arenas, seeds, threads and the dtype policy: the stage's first call, before the
    strategy."""
    limit_malloc_arenas(MALLOC_ARENAS)
    train = params.train
    for value, getter, setter in (
        (
            train.intra_op_threads,
            tf.config.threading.get_intra_op_parallelism_threads,
            tf.config.threading.set_intra_op_parallelism_threads,
        ),
        (
            train.inter_op_threads,
            tf.config.threading.get_inter_op_parallelism_threads,
            tf.config.threading.set_inter_op_parallelism_threads,
        ),
    ):
        if value and getter() != value:
            try:
                setter(value)
            except RuntimeError:  # TensorFlow already ran ops in this process (tests)
                LOG.warning("train: thread settings not applied (%s)", setter.__name__)
    keras.config.set_dtype_policy("mixed_float16" if train.mixed_precision else "float32")
    keras.utils.set_random_seed(params.seed)


def learning_rate_schedule(
    train: TrainParams, lr: float, total_steps: int, steps_per_epoch: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The rate by optimizer step: rising linearly from 0 to `lr` over the first
    `warmup_epochs`, then staying (`lr_schedule` constant) or decaying along a cosine to
    `min_lr` at the last step (cosine); a plain `lr` when constant without warm-up."""
    warmup_steps = round(train.warmup_epochs * steps_per_epoch)
    if warmup_steps > total_steps > 0:
        LOG.warning(
            "train: the warm-up (warmup_epochs %s) outlasts the run (epochs %d): the learning "
            "rate ends at %.3g of lr",
            train.warmup_epochs,
            train.epochs,
            total_steps / warmup_steps,
        )
    if train.lr_schedule == "constant" and warmup_steps == 0:
        return lr
    # alpha 1 keeps the rate at `lr` after the warm-up: the constant schedule.
    floor = min(1.0, train.min_lr / lr) if train.lr_schedule == "cosine" else 1.0
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_steps > 0 else lr,
        decay_steps=max(1, total_steps - warmup_steps),
        alpha=floor,
        warmup_target=lr if warmup_steps > 0 else None,
        warmup_steps=warmup_steps,
    )


def make_optimizer(
    train: TrainParams, lr: float, total_steps: int, steps_per_epoch: int
) -> keras.optimizers.Optimizer:
    """Adam or AdamW with `clipvalue`, at `learning_rate_schedule`'s rate."""
    rate = learning_rate_schedule(train, lr, total_steps, steps_per_epoch)
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(
            rate, weight_decay=train.weight_decay, clipvalue=train.clipvalue
        )
    return keras.optimizers.Adam(rate, clipvalue=train.clipvalue)


def cross_entropy_class_weights(params: Params) -> tuple[float, ...]:
    """`train.cross_entropy_class_weights` in class-index order (rgb_map's), as the loss
    takes them."""
    return tuple(params.train.cross_entropy_class_weights[name] for name in params.rgb_map)


def build_compiled_model(
    params: Params, steps_per_epoch: int, distribution: Distribution, checkpoint: Path | None = None
) -> keras.Model:
    """Model, optimizer, loss and metrics, their variables created in the strategy's scope;
    with `checkpoint`, its weights and optimizer state restored."""
    with distribution.strategy.scope():
        model = build_model(params)
        model.compile(
            optimizer=make_optimizer(
                params.train, params.lr, steps_per_epoch * params.train.epochs, steps_per_epoch
            ),
            loss=distribution.loss(params.train.loss, cross_entropy_class_weights(params)),
            metrics=make_metrics(params.lesion_classes),
            jit_compile=params.train.jit_compile,
        )
        if checkpoint is not None:
            restore(model, checkpoint)
    return model


@dataclass
class Datasets:
    train: tf.data.Dataset | tf.distribute.DistributedDataset
    valid: tf.data.Dataset | tf.distribute.DistributedDataset
    steps_per_epoch: int
    train_slices: int


def make_datasets(
    params: Params,
    tables: TrainingTables,
    cache_dir: Path,
    distribution: Distribution,
    skip_epochs: int = 0,
) -> Datasets:
    """The training stream (sharded by file across workers) and the validation batches, in
    per-replica batches of `train.batch_size`; the stream skips the `skip_epochs` already
    trained by a resumed run."""
    train = params.train
    # Foreground oversampling caches the lesion slices a second time, in their own streams.
    lesion_copies = (
        int(holds_lesion(tables.train).sum()) if train.foreground_oversampling > 0 else 0
    )
    cache = resolve_cache(
        train.cache,
        len(tables.train) + len(tables.valid) + lesion_copies,
        params.image_size,
        train.cache_memory_mb,
    )
    options = PipelineOptions(
        palette=tuple(params.palette),
        image_size=params.image_size,
        cache=cache,
        cache_dir=cache_dir,
    )
    steps = steps_per_epoch(tables.train, train.batch_size, distribution.replicas)

    def train_shard(num_shards: int, shard_index: int) -> tf.data.Dataset:
        return make_train_dataset(
            tables.train,
            options,
            batch_size=train.batch_size,
            seed=params.seed,
            shuffle_buffer=train.shuffle_buffer,
            balanced=train.balanced_sampling,
            foreground_share=train.foreground_oversampling,
            flip=train.random_flip,
            augmentation=OnlineAugmentation.from_train(train),
            num_shards=num_shards,
            shard_index=shard_index,
        )

    def valid_set(num_shards: int, shard_index: int) -> tf.data.Dataset:
        return make_eval_dataset(tables.valid, options, batch_size=train.batch_size)

    train_dataset = distribution.per_worker(train_shard, shard=True, skip_steps=skip_epochs * steps)
    valid_dataset = distribution.per_worker(valid_set, shard=False)
    return Datasets(train_dataset, valid_dataset, steps, len(tables.train))


# ------------------------------------------------------------------------- resumable state
@dataclass
class TrainingState:
    """Everything besides the weights that a resumed run needs to continue unchanged."""

    epochs_done: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    callbacks: dict[str, dict] = field(default_factory=dict)
    best_epoch: int = 0  # 1-based; 0 = none yet
    best_value: float | None = None
    stopped_early: bool = False
    # sha256 of the params and slices the epochs were trained with (`run_fingerprint`): a
    # checkpoint of another run is never resumed.
    fingerprint: str = ""


class CheckpointStore:
    """Per-epoch training checkpoints, each committed by one atomic folder rename."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(
            path
            for path in self.root.iterdir()
            if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX)
        )

    def latest(self) -> tuple[Path, TrainingState] | None:
        folders = self.folders()
        if not folders:
            return None
        folder = folders[-1]
        try:
            state = TrainingState(**json.loads((folder / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise DataError(
                f"{folder}: unreadable training checkpoint ({error}); delete {self.root} "
                "to train from scratch"
            ) from None
        return folder, state

    def commit(self, model: keras.Model, state: TrainingState, improved: bool) -> Path:
        """Write weights, state and the best model of epoch `state.epochs_done` atomically."""
        previous = self.latest()
        target = self.root / f"{CHECKPOINT_PREFIX}{state.epochs_done:04d}"
        with atomic_path(target) as folder:
            folder.mkdir()
            model.save_weights(folder / WEIGHTS_FILE)
            if improved or previous is None:
                model.save(folder / BEST_MODEL_FILE)
            else:
                try:  # unchanged best model: a hard link costs nothing
                    os.link(previous[0] / BEST_MODEL_FILE, folder / BEST_MODEL_FILE)
                except OSError:
                    shutil.copyfile(previous[0] / BEST_MODEL_FILE, folder / BEST_MODEL_FILE)
            (folder / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
        for old in self.folders():
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        return target


def restore(model: keras.Model, folder: Path) -> None:
    """Load weights and optimizer state (learning rate included) of a checkpoint."""
    model.optimizer.build(model.trainable_variables)
    model.load_weights(folder / WEIGHTS_FILE)


# ---------------------------------------------------------------------------- callbacks
class ResumableCounters:
    """Mixin for a Keras callback whose counters (`STATE_KEYS`) survive an interrupted run."""

    STATE_KEYS: tuple[str, ...] = ()

    def __init__(self, *args, resume_state: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resume_state = resume_state or {}

    def on_train_begin(self, logs=None) -> None:
        super().on_train_begin(logs)
        for key, value in self.resume_state.items():
            setattr(self, key, value)

    def state(self) -> dict:
        return {key: getattr(self, key) for key in self.STATE_KEYS}


class ResumableReduceLROnPlateau(ResumableCounters, keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose patience counters survive an interrupted run."""

    STATE_KEYS = ("best", "wait", "cooldown_counter")


class ResumableEarlyStopping(ResumableCounters, keras.callbacks.EarlyStopping):
    """EarlyStopping whose patience counters survive an interrupted run."""

    STATE_KEYS = ("best", "wait", "best_epoch")


def _as_float(value: object) -> float | None:
    return None if value is None else float(value)


class EpochChangeInference(keras.callbacks.Callback):
    """After every epoch, predict the mini_test slices and save image | truth | prediction."""

    def __init__(
        self,
        images: np.ndarray,
        truths: np.ndarray,
        ids: Sequence[str],
        palette: Sequence[tuple[int, int, int]],
        folder: Path,
    ) -> None:
        super().__init__()
        self.images, self.truths, self.ids = images, truths, list(ids)
        self.palette, self.folder = palette, folder

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if not self.ids:
            return
        # A direct call, not predict_on_batch: under a strategy every replica would predict
        # the whole batch and Keras would return the copies concatenated.
        probabilities = self.model(self.images.astype(np.float32), training=False)
        predictions = np.argmax(keras.ops.convert_to_numpy(probabilities), axis=-1)
        predictions = predictions.astype(np.uint8)
        for image, truth, prediction, slice_id in zip(
            self.images, self.truths, predictions, self.ids, strict=True
        ):
            write_png(self.folder / "masks" / f"epoch_{epoch + 1:03d}_{slice_id}.png", prediction)
            tile = visualize.panel(
                visualize.enlarged(image),
                visualize.enlarged(index_to_colour(truth, self.palette)),
                visualize.enlarged(index_to_colour(prediction, self.palette)),
                title=f"epoch {epoch + 1}",  # the slice id is in the file name
            )
            write_png(self.folder / f"epoch_{epoch + 1:03d}_{slice_id}.png", tile)


# Without a terminal, a progress line at most this often: a Kaggle-size CPU epoch lasts over
# half an hour, and a line every half minute tells a log reader it is alive without flooding it.
PROGRESS_LINE_INTERVAL_S = 30.0


class StepProgress(keras.callbacks.Callback):
    """Progress within each epoch's training steps: a tqdm bar (images) on a terminal, else a
    log line at most every `line_interval_s` and at the epoch's last step, with images/s and
    the time left (this epoch's steps, and all remaining epochs' steps at this rate; the
    validation passes come on top).

    Comes first in the callback list, so its bar is closed before the epoch's summary line.
    """

    def __init__(
        self,
        steps_per_epoch: int,
        images_per_step: int,
        epochs: int,
        interactive: bool,
        line_interval_s: float = PROGRESS_LINE_INTERVAL_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.images_per_step = images_per_step
        self.epochs = epochs
        self.interactive, self.line_interval_s, self.clock = interactive, line_interval_s, clock
        self.bar: tqdm | None = None
        self.epoch = 0
        self.started = self.last_line = 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch = epoch
        self.started = self.last_line = self.clock()
        if self.interactive:
            self.bar = tqdm(
                total=self.steps_per_epoch * self.images_per_step,
                desc=f"epoch {epoch + 1}/{self.epochs}",
                unit="img",
                mininterval=1.0,
                leave=False,
            )

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if self.bar is not None:
            self.bar.update(self.images_per_step)
            return
        step, now = batch + 1, self.clock()
        if now - self.last_line < self.line_interval_s and step < self.steps_per_epoch:
            return
        self.last_line = now
        images_per_s = step * self.images_per_step / max(now - self.started, 1e-9)
        steps_left = self.steps_per_epoch - step
        all_steps_left = steps_left + self.steps_per_epoch * (self.epochs - self.epoch - 1)
        LOG.info(
            "epoch %d/%d step %d/%d: %.1f images/s, %s left in this epoch, %s in all epochs",
            self.epoch + 1,
            self.epochs,
            step,
            self.steps_per_epoch,
            images_per_s,
            tqdm.format_interval(steps_left * self.images_per_step / images_per_s),
            tqdm.format_interval(all_steps_left * self.images_per_step / images_per_s),
        )

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TrainingRecorder(keras.callbacks.Callback):
    """Times each epoch, records its row, commits the checkpoint, logs to dvclive, prints.

    Must come after the LR/early-stopping callbacks in the list: it stores their updated
    counters in the same commit as the weights.
    """

    def __init__(
        self,
        store: CheckpointStore,
        state: TrainingState,
        monitors: Sequence[ResumableReduceLROnPlateau | ResumableEarlyStopping],
        live,
        images_per_epoch: int,
        epochs: int,
    ) -> None:
        super().__init__()
        self.store, self.state, self.monitors, self.live = store, state, monitors, live
        self.images_per_epoch, self.epochs = images_per_epoch, epochs
        self.epoch_start = self.train_end = 0.0
        self.learning_rate = 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.epoch_start = self.train_end = time.perf_counter()

    def on_test_begin(self, logs=None) -> None:
        self.train_end = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        now = time.perf_counter()
        row: dict[str, float] = {"epoch": epoch + 1, "lr": self.learning_rate}
        row.update({key: float(value) for key, value in (logs or {}).items()})
        row.pop("learning_rate", None)
        row["epoch_s"] = now - self.epoch_start  # the whole epoch, validation included
        row["fit_s"] = self.train_end - self.epoch_start  # its training steps alone
        row["train_images"] = self.images_per_epoch
        value = row.get(MONITOR)
        if value is None:
            raise DataError(f"training logs lack {MONITOR}; got {sorted(row)}")
        improved = self.state.best_value is None or value > self.state.best_value
        state = self.state
        state.history.append(row)
        state.epochs_done = epoch + 1
        state.stopped_early = bool(self.model.stop_training) and epoch + 1 < self.epochs
        state.callbacks = {type(m).__name__: _json_safe(m.state()) for m in self.monitors}
        if improved:
            state.best_epoch, state.best_value = epoch + 1, value
        self.store.commit(self.model, state, improved)
        log_epoch(self.live, row)
        LOG.info(format_epoch(row, self.epochs, improved))


def _json_safe(values: dict) -> dict:
    return {key: _as_float(value) if key == "best" else int(value) for key, value in values.items()}


def format_epoch(row: dict[str, float], epochs: int, improved: bool) -> str:
    """One progress line per epoch: time, rate, train and validation metrics."""

    def metrics(prefix: str) -> str:
        return (
            f"loss {row.get(prefix + 'loss', float('nan')):.4f} "
            f"dice H {row.get(prefix + 'dice_hemorrhagic', float('nan')):.3f} "
            f"I {row.get(prefix + 'dice_ischemic', float('nan')):.3f} "
            f"mean {row.get(prefix + 'dice_mean', float('nan')):.3f}"
        )

    rate = row["train_images"] / max(row["fit_s"], 1e-9)
    return (
        f"epoch {int(row['epoch'])}/{epochs} {row['epoch_s']:.0f}s ({rate:.1f} img/s) "
        f"lr {row['lr']:.2g} | train {metrics('')} | valid {metrics('val_')}"
        + (" *best" if improved else "")
    )


# ---------------------------------------------------------------------------- logging out
LOGGED_METRICS = ("loss", "dice_hemorrhagic", "dice_ischemic", "dice_mean", "dice_coef_multiclass")


def open_live(folder: Path):
    """A dvclive logger that writes no dvc.yaml and saves no experiment (dvc.yaml declares
    its metrics and plots; `dvc exp run` saves experiments)."""
    from dvclive import Live

    return Live(dir=str(folder), dvcyaml=False, save_dvc_exp=False)


def log_epoch(live, row: dict[str, float]) -> None:
    live.step = int(row["epoch"])
    for name in LOGGED_METRICS:
        for prefix, split in (("", "train"), ("val_", "val")):
            if prefix + name in row:
                live.log_metric(f"{split}/{name}", row[prefix + name])
    live.log_metric("lr", row["lr"])
    live.make_summary()


# -------------------------------------------------------------------------------- reports
def history_frame(history: list[dict[str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(history)
    frame["epoch"] = frame["epoch"].astype(int)
    return frame


def plot_curves(frame: pd.DataFrame, columns: Sequence[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(7, 4), dpi=100)
    for column in columns:
        if column in frame:
            style = "--" if column.startswith("val_") else "-"
            axis.plot(frame["epoch"], frame[column], style, marker=".", label=column)
    axis.set_xlabel("epoch")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def montage_tiles(
    staging: Path,
    mini_test: tuple[np.ndarray, np.ndarray, list[str]],
    palette: Sequence[tuple[int, int, int]],
    epochs_done: int,
) -> tuple[list[np.ndarray], int]:
    """Rows = mini_test slices, columns = ground truth then up to MONTAGE_EPOCHS epochs."""
    images, truths, ids = mini_test
    chosen = sorted(set(np.linspace(1, epochs_done, MONTAGE_EPOCHS).round().astype(int)))
    tiles: list[np.ndarray] = []
    for image, truth, slice_id in zip(images, truths, ids, strict=True):
        tiles.append(
            visualize.label(
                visualize.overlay(
                    visualize.enlarged(image),
                    visualize.enlarged(index_to_colour(truth, palette)),
                    background=palette[0],
                ),
                f"{slice_id} truth",
            )
        )
        for epoch in chosen:
            mask = cv2.imread(str(staging / "masks" / f"epoch_{epoch:03d}_{slice_id}.png"), 0)
            colour = index_to_colour(mask, palette)
            overlaid = visualize.overlay(
                visualize.enlarged(image), visualize.enlarged(colour), background=palette[0]
            )
            tiles.append(visualize.label(overlaid, f"epoch {epoch}"))
    return tiles, len(chosen) + 1


def write_reports(
    folder: Path,
    frame: pd.DataFrame,
    staging: Path,
    mini_test: tuple[np.ndarray, np.ndarray, list[str]],
    palette: Sequence[tuple[int, int, int]],
) -> None:
    """Reference-style CSVs and plots, epoch-change panels and their montage, into `folder`."""
    folder.mkdir(parents=True)
    metric_columns = [
        "epoch",
        *[p + m for m in LOGGED_METRICS[1:] for p in ("", "val_") if p + m in frame],
        "lr",
    ]
    frame[metric_columns].to_csv(folder / "train_metrics.csv", index=False, lineterminator="\n")
    frame[["epoch", "loss", "val_loss"]].to_csv(
        folder / "train_losses.csv", index=False, lineterminator="\n"
    )
    plot_curves(
        frame,
        [c for c in metric_columns if c.startswith(("dice", "val_dice"))],
        "Dice per epoch (foreground classes; dice_coef_multiclass = reference metric)",
        folder / "train_metrics.png",
    )
    plot_curves(frame, ["loss", "val_loss"], "Loss per epoch", folder / "train_losses.png")
    if mini_test[2] and (staging / "masks").is_dir():
        panels = folder / "epoch_change_infer"
        panels.mkdir()
        for path in sorted(staging.glob("epoch_*.png")):
            epoch = int(path.name.split("_")[1])
            if epoch <= len(frame):
                shutil.copyfile(path, panels / path.name)
        tiles, columns = montage_tiles(staging, mini_test, palette, len(frame))
        write_png(folder / "epoch_change_montage.png", visualize.montage(tiles, columns))


def summary_metrics(
    state: TrainingState, params_count: int, distribution: Distribution
) -> dict[str, object]:
    frame = history_frame(state.history)
    best = frame[frame["epoch"] == state.best_epoch].iloc[0]
    training_s = float(frame["epoch_s"].sum())
    fit_s = float(frame["fit_s"].sum())
    return {
        "best_epoch": state.best_epoch,
        "epochs": state.epochs_done,
        "stopped_early": state.stopped_early,
        "val_dice_hemorrhagic": float(best["val_dice_hemorrhagic"]),
        "val_dice_ischemic": float(best["val_dice_ischemic"]),
        "val_dice_mean": float(best["val_dice_mean"]),
        "val_dice_coef_multiclass": float(best["val_dice_coef_multiclass"]),
        "val_loss": float(best["val_loss"]),
        "train_dice_mean": float(best["dice_mean"]),
        "final_lr": float(frame["lr"].iloc[-1]),
        "params_count": params_count,
        # Wall time of all epochs, validation included; the rate counts the fit time alone.
        "training_s": round(training_s, 1),
        "train_images_per_s": round(float(frame["train_images"].sum()) / fit_s, 2),
        # Where that rate was measured: this worker's devices and the replicas in sync.
        "devices": ", ".join(distribution.devices()),
        "replicas": distribution.replicas,
    }


# ------------------------------------------------------------------------------ the stage
def make_callbacks(
    params: Params, state: TrainingState
) -> list[ResumableReduceLROnPlateau | ResumableEarlyStopping]:
    """The configured monitors of val_dice_mean (mode max), with their resumed counters."""
    train = params.train
    monitors: list[ResumableReduceLROnPlateau | ResumableEarlyStopping] = []
    if train.reduce_lr.enabled:
        monitors.append(
            ResumableReduceLROnPlateau(
                monitor=MONITOR,
                mode="max",
                factor=train.reduce_lr.factor,
                patience=train.reduce_lr.patience,
                min_lr=train.min_lr,
                resume_state=state.callbacks.get("ResumableReduceLROnPlateau"),
            )
        )
    if train.early_stopping.enabled:
        monitors.append(
            ResumableEarlyStopping(
                monitor=MONITOR,
                mode="max",
                patience=train.early_stopping.patience,
                resume_state=state.callbacks.get("ResumableEarlyStopping"),
            )
        )
    return monitors


def train_model(
    params: Params,
    paths: TrainPaths,
    distribution: Distribution,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, object]:
    """Train (or resume) and publish model, reports, metrics and dvclive; returns the metrics.

    Call after `configure_runtime`, with the `Distribution` that `start_distribution` built.
    Every worker of a distributed run calls this; only the chief writes `paths`, the others
    write a temporary copy that is removed at the end. `extra_callbacks` run after the
    recorder (tests use one to interrupt a run).
    """
    with distribution.worker_paths(paths, WORKER_OUTPUTS, resume_state="backup_dir") as paths:
        return train_on_worker(params, paths, distribution, extra_callbacks)


def run_fingerprint(params: Params, tables) -> str:
    """sha256 of everything that decides the trained weights besides the code: the params
    training reads and the ids of its training and validation slices."""
    identity = (
        [params.seed, params.lr, params.image_size, params.palette],
        [params.model.model_dump(), params.train.model_dump()],
        [sorted(tables.train["id"]), sorted(tables.valid["id"])],
    )
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def train_on_worker(
    params: Params,
    paths: TrainPaths,
    distribution: Distribution,
    extra_callbacks: Sequence[keras.callbacks.Callback],
) -> dict[str, object]:
    """`train_model` on one worker, writing `paths`."""
    tables = read_training_tables(paths.augmented_manifest, paths.split_manifest)
    fingerprint = run_fingerprint(params, tables)
    store = CheckpointStore(paths.backup_dir / "checkpoints")
    latest = store.latest()
    if latest and latest[1].fingerprint != fingerprint:
        # A run killed under other params or data (an experiment abandoned half-way): its
        # weights may not even fit this model, and resuming would mix two runs.
        LOG.warning(
            f"train: {store.root} holds {latest[1].epochs_done} epoch(s) of a run with other "
            "params or slices; starting over"
        )
        shutil.rmtree(store.root)
        latest = None
    state = latest[1] if latest else TrainingState(fingerprint=fingerprint)
    distribution.require_same_on_all_workers(
        state.epochs_done,
        f"the epochs completed in {store.root}",
        "all workers resume from the chief's checkpoint: keep it on storage that every node "
        "shares, or delete it on every node to start over",
    )
    distribution.require_same_on_all_workers(
        fingerprint,
        "the params and slices they train on (fingerprints)",
        "run every worker with the same code, params.yaml and data",
    )
    staging = paths.backup_dir / "epoch_change_infer"
    palette = tuple(params.palette)
    mini_test = load_slices(
        tables.mini_test if params.train.epoch_change_infer else tables.mini_test.iloc[:0],
        PipelineOptions(palette=palette, image_size=params.image_size),
    )
    with tempfile.TemporaryDirectory(prefix="train-cache-") as cache_dir:
        datasets = make_datasets(params, tables, Path(cache_dir), distribution, state.epochs_done)
        global_batch = distribution.global_batch(params.train.batch_size)
        model = build_compiled_model(
            params, datasets.steps_per_epoch, distribution, latest[0] if latest else None
        )
        if latest:
            LOG.info(f"train: resuming after epoch {state.epochs_done} from {latest[0]}")
        LOG.info(
            f"train: {datasets.train_slices} training slices ({datasets.steps_per_epoch} steps of "
            f"{global_batch} = {params.train.batch_size} x {distribution.replicas} replicas), "
            f"{len(tables.valid)} validation, "
            f"{model.count_params():,} parameters"
        )
        live = open_live(paths.dvclive_dir)
        for row in state.history:
            log_epoch(live, row)
        monitors = make_callbacks(params, state)
        callbacks: list[keras.callbacks.Callback] = [
            StepProgress(
                datasets.steps_per_epoch,
                global_batch,
                params.train.epochs,
                interactive=sys.stderr.isatty(),
            ),
            *monitors,
        ]
        if params.train.epoch_change_infer:
            callbacks.append(EpochChangeInference(*mini_test, palette, staging))
        callbacks.append(
            TrainingRecorder(
                store,
                state,
                monitors,
                live,
                datasets.steps_per_epoch * global_batch,
                params.train.epochs,
            )
        )
        callbacks.extend(extra_callbacks)
        if not state.stopped_early and state.epochs_done < params.train.epochs:
            try:
                model.fit(
                    datasets.train,
                    validation_data=datasets.valid,
                    epochs=params.train.epochs,
                    initial_epoch=state.epochs_done,
                    steps_per_epoch=datasets.steps_per_epoch,
                    callbacks=callbacks,
                    shuffle=False,  # the dataset is shuffled (seeded) itself
                    verbose=0,
                )
            except tf.errors.InvalidArgumentError as error:
                raise DataError(f"training input pipeline: {error.message}") from None
    if not state.history:
        raise DataError("training ran no epoch")
    summary = summary_metrics(state, model.count_params(), distribution)
    publish(paths, state, store, mini_test, palette, summary, staging)
    live.end()
    shutil.rmtree(paths.backup_dir, ignore_errors=True)
    return summary


def publish(
    paths: TrainPaths,
    state: TrainingState,
    store: CheckpointStore,
    mini_test: tuple[np.ndarray, np.ndarray, list[str]],
    palette: Sequence[tuple[int, int, int]],
    summary: dict[str, object],
    staging: Path,
) -> None:
    """Best model, reports and metrics, each written atomically."""
    latest = store.latest()
    if latest is None:
        raise DataError(f"{paths.backup_dir}: no checkpoint to publish")
    with atomic_path(paths.model) as model_path:
        shutil.copyfile(latest[0] / BEST_MODEL_FILE, model_path)
    frame = history_frame(state.history)
    with atomic_path(paths.reports_dir) as folder:
        write_reports(folder, frame, staging, mini_test, palette)
    write_json(paths.metrics, summary)
