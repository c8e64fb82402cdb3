"""Training past one device with TensorFlow's own engine, `tf.distribute` (`train.strategy`).

- `auto`: the default device, or `MirroredStrategy` over all local GPUs when there are several.
- `mirrored`: `MirroredStrategy` (every local GPU, or the CPU when there is none).
- `multi_worker`: `MultiWorkerMirroredStrategy`, one process per node, the cluster read from the
  standard `TF_CONFIG` environment variable; must be created before any other TensorFlow op.

Data parallelism: every replica holds the whole model and trains on `train.batch_size` slices a
step (the per-replica batch), so the global batch is batch_size x replicas, and gradients are
all-reduced (summed over replicas of losses scaled by 1/replicas). Each worker reads its own
slice of the training files (sharded by file before decoding); validation batches are the same
on every worker (see `Distribution.per_worker`).

Only the chief writes the stage's outputs. The other workers run the very same code, so that
they take part in every collective operation (variable creation, steps, metric reads, saves),
but with their output paths moved into a private temporary folder removed at the end
(`Distribution.worker_paths`). Keras 3 needs two workarounds to `fit` under
MultiWorkerMirroredStrategy (`_patch_keras_for_multi_worker`) and a per-sample loss to scale it
by replicas (`ReplicaLoss`).

`start_distribution` builds the one `Distribution` a training run uses; pipeline/model/training.py
gets it handed in and asks it, and nothing else in this module, whatever depends on workers
and replicas: its paths, checks that all workers agree, datasets, the strategy scope and loss.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import keras
import tensorflow as tf
from keras import ops

from pipeline.io import DataError
from pipeline.model.losses import ClassWeightedLoss, Loss, make_loss
from pipeline.params import ParamsError

LOG = logging.getLogger(__name__)

TF_CONFIG = "TF_CONFIG"
CLUSTER_ROLES = ("chief", "worker")  # the task types MultiWorkerMirroredStrategy trains with
EXAMPLE_TF_CONFIG = (
    '{"cluster": {"worker": ["node1:12345", "node2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)
PathsT = TypeVar("PathsT")


class ClusterConfigError(ParamsError):
    """`train.strategy` is multi_worker but TF_CONFIG is missing or does not describe a cluster."""


# ------------------------------------------------------------------------------- TF_CONFIG
@dataclass(frozen=True)
class ClusterConfig:
    """What TF_CONFIG says about the cluster and this process's place in it."""

    tasks: tuple[str, ...]  # host:port of every training task, the chief's first
    task_type: str  # chief or worker
    task_index: int  # among the tasks of that type
    has_chief: bool  # a "chief" task; otherwise worker 0 is the chief

    @property
    def worker_index(self) -> int:
        """Position among all training tasks (TensorFlow's input pipeline id): chief 0."""
        return self.task_index + (1 if self.task_type == "worker" and self.has_chief else 0)


def parse_tf_config(text: str | None) -> ClusterConfig:
    """Validate TF_CONFIG (JSON) for MultiWorkerMirroredStrategy; ClusterConfigError says what
    is wrong and shows a valid example."""

    def fail(problem: str) -> ClusterConfigError:
        return ClusterConfigError(
            f"train.strategy is multi_worker but {problem}. Set {TF_CONFIG} on every node, "
            f"the same cluster everywhere and each node its own task, e.g. {EXAMPLE_TF_CONFIG}"
        )

    if not text or not text.strip():
        raise fail(f"the {TF_CONFIG} environment variable is not set")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise fail(f"{TF_CONFIG} is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise fail(f"{TF_CONFIG} must be a JSON object, got {type(config).__name__}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise fail(f'{TF_CONFIG} has no "cluster" object')
    unknown = sorted(set(cluster) - set(CLUSTER_ROLES))
    if unknown:
        raise fail(f"{TF_CONFIG} cluster has task types {unknown}; allowed: {list(CLUSTER_ROLES)}")
    addresses: dict[str, list[str]] = {}
    for role in CLUSTER_ROLES:
        listed = cluster.get(role, [])
        if not isinstance(listed, list) or not all(_is_address(item) for item in listed):
            raise fail(f'{TF_CONFIG} cluster "{role}" must be a list of "host:port" strings')
        addresses[role] = listed
    if len(addresses["chief"]) > 1:
        raise fail(f"{TF_CONFIG} lists {len(addresses['chief'])} chiefs; at most one is allowed")
    tasks = (*addresses["chief"], *addresses["worker"])
    if not addresses["worker"] and not addresses["chief"]:
        raise fail(f"{TF_CONFIG} cluster lists no task")
    if len(set(tasks)) != len(tasks):
        raise fail(f"{TF_CONFIG} cluster lists an address twice: {list(tasks)}")
    if not isinstance(task, dict):
        raise fail(f'{TF_CONFIG} has no "task" object naming this node')
    task_type, task_index = task.get("type"), task.get("index", 0)
    if task_type not in CLUSTER_ROLES or not addresses[task_type]:
        present = [role for role in CLUSTER_ROLES if addresses[role]]
        raise fail(f"{TF_CONFIG} task type {task_type!r} is not one of the cluster's {present}")
    if not isinstance(task_index, int) or not 0 <= task_index < len(addresses[task_type]):
        raise fail(
            f"{TF_CONFIG} task index {task_index!r} is outside the {len(addresses[task_type])} "
            f'"{task_type}" addresses'
        )
    return ClusterConfig(tasks, task_type, task_index, has_chief=bool(addresses["chief"]))


def _is_address(value: object) -> bool:
    if not isinstance(value, str) or ":" not in value:
        return False
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


# ---------------------------------------------------------------------------- the strategy
@dataclass(frozen=True)
class Distribution:
    """The strategy and this process's role: worker `worker_index` of `num_workers`."""

    strategy: tf.distribute.Strategy
    num_workers: int = 1
    worker_index: int = 0
    is_chief: bool = True

    @classmethod
    def one_device(cls) -> Distribution:
        """No distribution: TensorFlow's default strategy, this process the only worker."""
        return cls(tf.distribute.get_strategy())

    @property
    def replicas(self) -> int:
        """Model replicas training in lockstep, over all workers."""
        return int(self.strategy.num_replicas_in_sync)

    def global_batch(self, per_replica_batch: int) -> int:
        return per_replica_batch * self.replicas

    def describe(self) -> str:
        if not tf.distribute.has_strategy() and self.strategy is tf.distribute.get_strategy():
            return "one device (no distribution strategy)"
        multi_worker = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        kind = "MultiWorkerMirroredStrategy" if multi_worker else type(self.strategy).__name__
        text = f"{kind}, {self.replicas} replica(s) in sync"
        if self.num_workers > 1:
            role = "the chief" if self.is_chief else "not the chief"
            text += f"; worker {self.worker_index} of {self.num_workers} ({role})"
        return text

    def per_worker(
        self,
        make_dataset: Callable[[int, int], tf.data.Dataset],
        *,
        shard: bool,
        skip_steps: int = 0,
    ) -> tf.data.Dataset | tf.distribute.DistributedDataset:
        """The dataset `worker_dataset_fn` describes, for `fit` under this strategy."""
        return self.strategy.distribute_datasets_from_function(
            worker_dataset_fn(make_dataset, shard=shard, skip_steps=skip_steps)
        )

    def devices(self) -> list[str]:
        """This worker's devices that train, e.g. `GPU:0 (NVIDIA H200)` or `CPU:0 (2 cores)`.

        The default strategy places every op on the first GPU when there is one, else the CPU;
        a mirrored strategy lists its replicas' devices.
        """
        try:
            names = list(self.strategy.extended.worker_devices)
        except RuntimeError:  # the default strategy has no device list of its own
            names = [device.name for device in tf.config.list_logical_devices("GPU")[:1]]
            names = names or ["/device:CPU:0"]
        return [_describe_device(tf.DeviceSpec.from_string(name)) for name in names]

    def require_same_on_all_workers(self, value: object, what: str, hint: str) -> None:
        """DataError on every worker when they do not all hold the same `value`, an integer
        or anything JSON can write (compared by `fingerprint`). A collective: every worker
        must call it at the same point."""
        if self.num_workers == 1:
            return
        number = value if isinstance(value, int) else fingerprint(value)
        gathered = self.strategy.gather(tf.constant([number], tf.int64), axis=0).numpy()
        per_worker = gathered.reshape(self.num_workers, -1)[:, 0].tolist()
        if len(set(per_worker)) > 1:
            raise DataError(f"workers disagree on {what}: {per_worker} (by worker); {hint}")

    def loss(self, name: str, class_weights: Sequence[float] | None = None) -> Loss | ReplicaLoss:
        """The loss `name` (its cross-entropy weighted by `class_weights`, in class-index
        order) for `compile` in this strategy's scope: `make_loss`'s on one replica (unchanged
        single-device numbers), `ReplicaLoss` on several."""
        if self.replicas > 1:
            return ReplicaLoss(name, class_weights)
        return make_loss(name, class_weights)

    @contextmanager
    def worker_paths(
        self, paths: PathsT, outputs: Sequence[str], resume_state: str
    ) -> Iterator[PathsT]:
        """`paths` (a dataclass of Paths) for this worker: the chief's unchanged; on every
        other worker the fields named in `outputs` move into a private temporary folder,
        deleted when the block ends, whatever happens (an exception, or SIGTERM: see
        `start_distribution`). The folder of `resume_state` starts as a copy of the chief's,
        so that all workers resume from the same epoch with the same state (across machines:
        on storage they all share)."""
        if self.is_chief:
            yield paths
            return
        scratch = Path(tempfile.mkdtemp(prefix=f"train-worker{self.worker_index}-"))
        try:
            moved = {name: scratch / name / Path(getattr(paths, name)).name for name in outputs}
            source = Path(getattr(paths, resume_state))
            if source.is_dir():
                shutil.copytree(source, moved[resume_state], copy_function=_link_or_copy)
            LOG.info(
                f"train: worker {self.worker_index}: outputs go to {scratch} (removed at "
                "the end); the chief writes the stage's outputs"
            )
            yield replace(paths, **moved)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _describe_device(spec: tf.DeviceSpec) -> str:
    name = f"{spec.device_type}:{spec.device_index or 0}"
    if spec.device_type == "GPU":
        gpus = tf.config.list_physical_devices("GPU")
        index = spec.device_index or 0
        if index < len(gpus):
            details = tf.config.experimental.get_device_details(gpus[index])
            return f"{name} ({details.get('device_name', 'unknown GPU')})"
        return name
    return f"{name} ({len(os.sched_getaffinity(0))} cores)"


def fingerprint(*parts: object) -> int:
    """A number that differs when any part differs (CRC-32 of the parts as JSON), for
    `require_same_on_all_workers`."""
    return zlib.crc32(json.dumps(parts, sort_keys=True, default=str).encode())


def worker_dataset_fn(
    make_dataset: Callable[[int, int], tf.data.Dataset], *, shard: bool, skip_steps: int = 0
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """The per-worker dataset function for `distribute_datasets_from_function`: each worker
    builds `make_dataset(num_shards, shard_index)`, batched per replica, whose batches go to
    its local replicas in turn.

    With `shard`, worker i of n gets shard i of n (the callee shards its file list before
    decoding, so workers read different slices). Without it every worker reads the same
    batches: used for validation, so that all workers run the same number of steps (uneven
    shards desynchronise the collective steps at the end of a finite dataset) while the
    metrics, pooled sums over all replicas, come out exactly as on one device. `skip_steps`
    fast-forwards a resumed run past the global steps already trained.
    """

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        shards, index = (
            (context.num_input_pipelines, context.input_pipeline_id) if shard else (1, 0)
        )
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        dataset = make_dataset(shards, index).skip(skip_steps * local_replicas)
        options = tf.data.Options()
        # Sharding is explicit, by file, above; TensorFlow must not shard the batches again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return dataset.with_options(options)

    return dataset_fn


def start_distribution(name: str, environ: Mapping[str, str] = os.environ) -> Distribution:
    """The strategy that `train.strategy` names. Call it before any other TensorFlow op:
    MultiWorkerMirroredStrategy configures the runtime's collective ops, which TensorFlow
    allows only at program start."""
    if name == "multi_worker":
        cluster = parse_tf_config(environ.get(TF_CONFIG))
        _patch_keras_for_multi_worker()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        # TensorFlow's coordination service now catches SIGTERM to report a preemption and
        # keeps training (until a peer is lost). Nothing here uses preemption checkpoints, so
        # SIGTERM stops the process again, cleanly: the last committed epoch stays to resume.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        distribution = Distribution(
            strategy,
            num_workers=len(cluster.tasks),
            worker_index=cluster.worker_index,
            is_chief=bool(strategy.extended.should_checkpoint),
        )
    else:
        if environ.get(TF_CONFIG):
            LOG.warning(
                f"train: {TF_CONFIG} is set but train.strategy is {name}: training on this "
                "machine alone (set train.strategy=multi_worker to join the cluster)"
            )
        several_gpus = len(tf.config.list_physical_devices("GPU")) > 1
        if name == "mirrored" or several_gpus:
            distribution = Distribution(tf.distribute.MirroredStrategy())
        else:
            distribution = Distribution(tf.distribute.get_strategy())
    LOG.info(f"train: {distribution.describe()} on {', '.join(distribution.devices())}")
    return distribution


# ----------------------------------------------------------------------------- the loss
@keras.saving.register_keras_serializable(package="stroke")
class ReplicaLoss(ClassWeightedLoss):
    """A loss of `pipeline.model.losses` by name (and class weights), in the per-sample form
    tf.distribute needs.

    The project's losses return one number per batch (the region losses pool their sums over
    the batch). Keras divides a loss by the number of replicas only when it reduces a vector of
    per-sample values; a scalar passes through unscaled, so with R replicas the all-reduced
    gradients would be R times the mean gradient and the logged loss R times too high
    (measured: 3.57 instead of 1.78 with two replicas). Repeating the batch's value for each of
    its samples lets the default SUM_OVER_BATCH_SIZE reduction return the same value, scaled
    by 1/R; an empty per-replica batch (a finite dataset's last step) then adds no value at all
    (the batch loss alone would be NaN there).
    Each replica's region loss pools over that replica's batch (per-device "batch Dice").
    """

    def call(self, y_true, y_pred):
        return ops.broadcast_to(self.function(y_true, y_pred), ops.shape(y_pred)[:1])


# ------------------------------------------------------------------------- chief-only output
def _link_or_copy(source: str, target: str) -> None:
    """A hard link costs nothing; safe because checkpoint and staging files are only ever
    replaced (written under a temporary name and renamed), never modified in place."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signum)  # unwinds the stack: `finally` blocks remove temporary folders


# ------------------------------------------------------------------- Keras workarounds
@functools.cache  # patch once per process
def _patch_keras_for_multi_worker() -> None:
    """Work around two Keras 3 bugs that stop `fit` under MultiWorkerMirroredStrategy
    (keras-team/keras#20585, tensorflow/tensorflow#72388; present in Keras 3.15):

    1. Before fitting, the TF trainer averages one input batch over the replicas with
       `strategy.reduce`, which MultiWorkerMirroredStrategy rejects for an (x, y) pair. Only
       the batch's shapes and dtypes are needed: take the first local replica's batch.
    2. It averages each step's scalar logs with `strategy.reduce(MEAN, value, axis=0)`; axis 0
       does not exist on a scalar. Average over the replicas instead (axis=None).
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    trainer_class = getattr(tf_trainer, "TensorFlowTrainer", None)
    if not hasattr(tf_trainer, "reduce_per_replica") or not hasattr(
        trainer_class, "_maybe_symbolic_build"
    ):
        raise RuntimeError(
            f"Keras {keras.version()} changed the internals that pipeline/model/distribute.py "
            "patches for MultiWorkerMirroredStrategy; review _patch_keras_for_multi_worker"
        )
    reduce_per_replica = tf_trainer.reduce_per_replica
    symbolic_build = trainer_class._maybe_symbolic_build

    def reduce_over_workers(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            return tf.nest.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None), values
            )
        return reduce_per_replica(values, strategy, reduction)

    def build_from_local_batch(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return symbolic_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(
                lambda value: (
                    strategy.experimental_local_results(value)[0]
                    if isinstance(value, tf.distribute.DistributedValues)
                    else value
                ),
                next(batches),
            )
            break
        return symbolic_build(self, data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_over_workers
    trainer_class._maybe_symbolic_build = build_from_local_batch
