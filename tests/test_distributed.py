"""Training past one device (pipeline/model/distribute.py): TF_CONFIG checks, per-worker datasets,
chief-only outputs, the loss reduced over replicas, and two real worker processes on this
machine that train the tiny phantom together, survive an interruption and learn like one.

TensorFlow fixes its devices and collective ops when its runtime starts, so every check that
needs two replicas runs in a fresh Python process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import PROJECT_ROOT, DvcProject, tool_env
from hypothesis import given, settings
from hypothesis import strategies as st
from test_training import paths_under

from pipeline.model.distribute import (
    ClusterConfigError,
    Distribution,
    ReplicaLoss,
    parse_tf_config,
    start_distribution,
    worker_dataset_fn,
)
from pipeline.model.losses import make_loss
from pipeline.model.training import WORKER_OUTPUTS

STAGE = (sys.executable, "-m", "stages.train")
PROCESS_TIMEOUT = 150  # seconds for one run of the stage (TensorFlow start included)


# ------------------------------------------------------------------------------ TF_CONFIG
def tf_config(workers: Sequence[str], task: int) -> str:
    return json.dumps(
        {"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": task}}
    )


@settings(max_examples=40, deadline=None)
@given(workers=st.integers(1, 6), has_chief=st.booleans())
def test_every_task_gets_a_distinct_worker_index_and_the_chief_is_zero(
    workers: int, has_chief: bool
) -> None:
    worker_addresses = [f"10.0.0.{n}:2222" for n in range(workers)]
    chief = ["10.0.1.1:2222"] if has_chief else []
    cluster = {"worker": worker_addresses, **({"chief": chief} if has_chief else {})}
    tasks = [("worker", n) for n in range(workers)] + ([("chief", 0)] if has_chief else [])
    configs = [
        parse_tf_config(json.dumps({"cluster": cluster, "task": {"type": kind, "index": n}}))
        for kind, n in tasks
    ]
    assert sorted(config.worker_index for config in configs) == list(range(len(tasks)))
    first = configs[-1] if has_chief else configs[0]  # the chief, or worker 0 without one
    assert first.worker_index == 0
    assert all(config.tasks == (*chief, *worker_addresses) for config in configs)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "TF_CONFIG environment variable is not set"),
        ("  ", "TF_CONFIG environment variable is not set"),
        ("{cluster: 1", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"task": {"type": "worker", "index": 0}}', 'no "cluster"'),
        ('{"cluster": {"ps": ["a:1"]}, "task": {}}', "task types ['ps']"),
        ('{"cluster": {"worker": ["localhost"]}, "task": {}}', '"host:port" strings'),
        ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {}}', "an address twice"),
        ('{"cluster": {"chief": ["a:1", "b:1"]}, "task": {}}', "2 chiefs"),
        ('{"cluster": {"worker": ["a:1"]}}', 'no "task"'),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief"}}', "task type 'chief'"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "index 1"),
    ],
)
def test_a_missing_or_malformed_tf_config_is_a_clear_params_error(
    text: str | None, problem: str
) -> None:
    with pytest.raises(ClusterConfigError, match=r"train\.strategy is multi_worker") as error:
        parse_tf_config(text)
    assert problem in str(error.value) and '"cluster": {"worker"' in str(error.value)


def test_multi_worker_fails_before_touching_tensorflow_without_tf_config() -> None:
    with pytest.raises(ClusterConfigError, match="not set"):
        start_distribution("multi_worker", environ={})


def test_the_stage_stops_with_exit_1_and_the_message(make_project) -> None:
    project = make_project({"train": {"strategy": "multi_worker"}})
    result = project.run(*STAGE, check=False, env={"TF_CONFIG": ""})
    assert result.returncode == 1
    assert "stage train failed: train.strategy is multi_worker but the TF_CONFIG" in result.stderr


# ------------------------------------------------------------------------ per-worker data
@settings(max_examples=30, deadline=None)
@given(
    pipelines=st.integers(1, 4),
    local_replicas=st.integers(1, 3),
    skip_steps=st.integers(0, 3),
    shard=st.booleans(),
    data=st.data(),
)
def test_each_worker_reads_its_own_shard_and_skips_its_replicas_batches(
    pipelines: int, local_replicas: int, skip_steps: int, shard: bool, data: st.DataObject
) -> None:
    pipeline_id = data.draw(st.integers(0, pipelines - 1))
    requested: list[tuple[int, int]] = []

    def make_dataset(num_shards: int, shard_index: int) -> tf.data.Dataset:
        requested.append((num_shards, shard_index))
        return tf.data.Dataset.range(1000)

    context = tf.distribute.InputContext(pipelines, pipeline_id, pipelines * local_replicas)
    dataset = worker_dataset_fn(make_dataset, shard=shard, skip_steps=skip_steps)(context)
    assert requested == [(pipelines, pipeline_id) if shard else (1, 0)]
    # Every global step takes one batch per local replica from this worker's stream.
    assert int(next(iter(dataset))) == skip_steps * local_replicas
    policy = dataset.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.OFF


# ------------------------------------------------------------------------ chief-only output


def test_other_workers_write_a_temporary_copy_removed_whatever_happens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    paths = paths_under(tmp_path / "project")
    checkpoint = paths.backup_dir / "checkpoints/epoch_0001"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.json").write_text('{"epochs_done": 1}')
    chief = Distribution(tf.distribute.get_strategy())
    other = Distribution(
        tf.distribute.get_strategy(), num_workers=2, worker_index=1, is_chief=False
    )

    with chief.worker_paths(paths, WORKER_OUTPUTS, resume_state="backup_dir") as own:
        assert own is paths
    with other.worker_paths(paths, WORKER_OUTPUTS, resume_state="backup_dir") as own:
        scratch = Path(tempfile.gettempdir())
        for name in WORKER_OUTPUTS:
            moved = Path(getattr(own, name))
            assert scratch in moved.parents and moved.name == Path(getattr(paths, name)).name
        assert own.augmented_manifest == paths.augmented_manifest  # inputs stay shared
        copied = own.backup_dir / "checkpoints/epoch_0001/state.json"
        assert copied.read_text() == '{"epochs_done": 1}'  # resumes where the chief does
        copied.with_name("replaced.json").write_text("{}")
        os.replace(copied.with_name("replaced.json"), copied)  # how checkpoints are written
        own.metrics.parent.mkdir(parents=True)
        own.metrics.write_text("{}")
    assert list((tmp_path / "tmp").iterdir()) == []
    assert (checkpoint / "state.json").read_text() == '{"epochs_done": 1}'  # chief's untouched
    assert not paths.metrics.exists()

    with (
        pytest.raises(RuntimeError, match="crash"),
        other.worker_paths(paths, WORKER_OUTPUTS, resume_state="backup_dir"),
    ):
        raise RuntimeError("crash")
    assert list((tmp_path / "tmp").iterdir()) == []


# ------------------------------------------------------------------ the loss over replicas
def test_replica_loss_repeats_the_batch_loss_per_sample_and_serializes() -> None:
    rng = np.random.default_rng(0)
    truth = keras.ops.one_hot(rng.integers(0, 3, (3, 8, 8)), 3)
    prediction = keras.ops.softmax(rng.normal(size=(3, 8, 8, 3)).astype("float32"))
    loss = ReplicaLoss("dice_ce")
    expected = float(make_loss("dice_ce")(truth, prediction))
    assert float(loss(truth, prediction)) == pytest.approx(expected, rel=1e-6)
    # An empty replica batch (a finite dataset's last step) adds nothing: no values, no NaN.
    assert keras.ops.convert_to_numpy(loss(truth[:0], prediction[:0])).shape == (0,)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, ReplicaLoss) and again.loss == "dice_ce"


TWO_REPLICAS = """
import json
import sys
from pathlib import Path
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from pipeline.model.distribute import Distribution
from tests.conftest import project_params
from pipeline.model.training import build_compiled_model, configure_runtime, train_model
sys.path.insert(0, "tests")
from test_training import write_tiny_project

params = project_params(
    {"image_size": 32, "model": {"base_filters": 4, "num_layers": 3}, "train": {"batch_size": 4}}
)
rng = np.random.default_rng(0)
images = rng.uniform(0, 255, (12, 32, 32, 3)).astype("float32")
targets = np.eye(3, dtype="float32")[rng.integers(0, 3, (12, 32, 32))]

def batches(num_shards, shard_index):
    return tf.data.Dataset.from_tensor_slices((images, targets)).batch(4)

def stream(num_shards, shard_index):
    return batches(num_shards, shard_index).repeat()

def evaluate(distribution):
    keras.utils.set_random_seed(0)
    model = build_compiled_model(params, steps_per_epoch=1, distribution=distribution)
    # 3 batches on 2 replicas: the second step has an empty batch on one replica.
    return model.evaluate(distribution.per_worker(batches, shard=False), verbose=0,
                          return_dict=True)

def first_images(distribution, skip_steps):
    step = next(iter(distribution.per_worker(stream, shard=True, skip_steps=skip_steps)))[0]
    parts = distribution.strategy.experimental_local_results(step)
    return [float(part[0, 0, 0, 0]) for part in parts]

one = Distribution(tf.distribute.get_strategy())
two = Distribution(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
print(json.dumps({
    "replicas": two.replicas,
    "one": evaluate(one),
    "two": evaluate(two),
    "step0": first_images(two, 0),
    "step1": first_images(two, 1),
    "batch_starts": [float(images[i, 0, 0, 0]) for i in (0, 4, 8)],
}))
# The whole training function, mini_test panels and checkpoints included, on two replicas.
tiny = project_params({"image_size": 32, "model": {"base_filters": 4, "num_layers": 3},
                     "train": {"epochs": 2, "batch_size": 2}})
configure_runtime(tiny)
print(json.dumps(train_model(tiny, write_tiny_project(Path(sys.argv[1])), two)))
"""


def test_two_replicas_reduce_loss_and_metrics_like_one_device_and_train(tmp_path: Path) -> None:
    # Two replicas on one machine means two GPUs in practice; here two logical CPU devices.
    # oneDNN's CPU convolution mishandles an empty batch (the last validation step gives one
    # replica none), so this check runs with TensorFlow's plain CPU kernels.
    result = subprocess.run(
        [sys.executable, "-c", TWO_REPLICAS, str(tmp_path)],
        cwd=PROJECT_ROOT,
        env={**tool_env(), "TF_ENABLE_ONEDNN_OPTS": "0"},
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome, summary = (json.loads(line) for line in result.stdout.splitlines() if line[:1] == "{")
    assert outcome["replicas"] == 2
    one, two = outcome["one"], outcome["two"]
    assert set(one) == set(two) and "dice_mean" in one
    for name, value in one.items():  # a plain scalar loss would log twice the loss here
        assert two[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    # A step feeds one batch to each local replica, so skipping a step skips two batches.
    starts = outcome["batch_starts"]
    assert outcome["step0"] == pytest.approx(starts[:2])
    assert outcome["step1"] == pytest.approx(starts[2:] + starts[:1])

    assert summary["epochs"] == 2 and summary["train_images_per_s"] > 0
    model = keras.saving.load_model(tmp_path / "models/model.keras", compile=False)
    assert model.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0).shape == (1, 32, 32, 3)
    panels = sorted(path.name for path in (tmp_path / "reports/train/epoch_change_infer").iterdir())
    assert len(panels) == 4  # 2 epochs x 2 mini_test slices, each predicted once


# ----------------------------------------------------------- two real worker processes
@dataclass
class Process:
    popen: subprocess.Popen
    log: Path
    scratch: Path  # the TMPDIR of the process

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (held together while chosen, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def signal_group(process: Process, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.popen.pid, sig)


def freeze(processes: Sequence[Process]) -> None:
    """SIGSTOP every process group at once: not one more training step until `stop`."""
    for process in processes:
        signal_group(process, signal.SIGSTOP)


def stop(processes: Sequence[Process], grace: float = 15.0) -> None:
    """SIGTERM every process group together (a worker cleans up; SIGCONT wakes a frozen one),
    then SIGKILL whatever lingers past `grace`. Together, because a worker that waits on a
    peer's collective op only reaches its SIGTERM handler once the peer moves too."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        running = [process for process in processes if process.popen.poll() is None]
        for process in running:
            signal_group(process, sig)
            signal_group(process, signal.SIGCONT)
        deadline = time.monotonic() + grace
        for process in running:
            try:
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                continue


@contextmanager
def cluster(tasks: Sequence[tuple[Path, Sequence[str]]], tmp_path: Path, name: str):
    """One process per (folder, command), task i of the same localhost cluster; every process
    still running at exit (test failure included) is stopped."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(len(tasks))]
    processes: list[Process] = []
    try:
        for index, (folder, command) in enumerate(tasks):
            scratch = tmp_path / f"{name}-tmp{index}"
            scratch.mkdir()
            log = tmp_path / f"{name}-task{index}.log"
            env = {**tool_env(), "TF_CONFIG": tf_config(addresses, index), "TMPDIR": str(scratch)}
            with log.open("w") as handle:
                popen = subprocess.Popen(
                    list(command),
                    cwd=folder,
                    env=env,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() reaches children
                )
            processes.append(Process(popen, log, scratch))
        yield processes
    finally:
        stop(processes)


def wait_for(condition: Callable[[], bool], processes: Sequence[Process], what: str) -> None:
    """Poll `condition` while every process runs; fail with their logs if one ends first or
    time runs out."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while not condition():
        ended = any(process.popen.poll() is not None for process in processes)
        if ended or time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached\n{logs(processes)}")
        time.sleep(0.02)


def finish(processes: Sequence[Process]) -> None:
    """Wait for every process to exit; fail with their logs if one runs past the time limit."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    for process in processes:
        try:
            process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running\n{logs(processes)}") from None


def logs(processes: Sequence[Process]) -> str:
    return "\n".join(f"--- task {i}\n{p.output()[-3000:]}" for i, p in enumerate(processes))


def checkpoints(project) -> list[str]:
    folder = project.path / "models/.backup_train/checkpoints"
    return sorted(p.name for p in folder.glob("epoch_*")) if folder.is_dir() else []


def worker_leftovers(process: Process) -> list[str]:
    return sorted(path.name for path in process.scratch.glob("train-worker*"))


def test_two_workers_train_resume_and_learn_like_one(make_project, tmp_path: Path) -> None:
    epochs = 3
    project = make_project(
        {"lr": 0.01, "train": {"epochs": epochs, "intra_op_threads": 1, "inter_op_threads": 1}}
    )
    project.dvc("repro", "augment")
    project.run(*STAGE)  # one worker (strategy auto): the reference learning curve
    one_worker = pd.read_csv(project.path / "reports/train/train_losses.csv")["loss"].to_numpy()
    project.update_params({"train": {"strategy": "multi_worker"}})

    # A worker with other params (a different lr) is refused by both, before any training.
    other = tmp_path / "other-params"
    shutil.copytree(project.path, other, ignore=shutil.ignore_patterns(".dvc", ".git"))
    DvcProject(other).update_params({"lr": 0.02})
    with cluster([(project.path, STAGE), (other, STAGE)], tmp_path, "mismatch") as tasks:
        finish(tasks)
    for process in tasks:
        assert process.popen.returncode == 1, logs(tasks)
        assert "workers disagree on the params and slices they train on" in process.output()
    assert not checkpoints(project)

    # Two workers, stopped (SIGTERM, as a scheduler would) once the chief committed an epoch:
    # frozen first, so that the later epochs cannot finish while the signals are on their way.
    here = [(project.path, STAGE), (project.path, STAGE)]
    with cluster(here, tmp_path, "interrupted") as (chief, worker):
        wait_for(lambda: bool(checkpoints(project)), [chief, worker], "a committed epoch")
        freeze([chief, worker])
        stop([chief, worker])
    assert worker_leftovers(worker) == []
    done = int(checkpoints(project)[-1].removeprefix("epoch_"))
    assert done < epochs

    # Rerun: the chief as `dvc repro train` (as docs/full-size.md says), the worker the bare stage.
    here = [(project.path, ("dvc", "repro", "train")), (project.path, STAGE)]
    with cluster(here, tmp_path, "resumed") as tasks:
        finish(tasks)
    chief, worker = tasks
    for process in tasks:
        assert process.popen.returncode == 0, logs(tasks)
        assert f"resuming after epoch {done} " in process.output()
    assert "(the chief)" in chief.output() and "(not the chief)" in worker.output()
    assert worker_leftovers(worker) == []
    assert not (project.path / "models/.backup_train").exists()

    history = pd.read_csv(project.path / "reports/train/train_losses.csv")
    assert history["epoch"].tolist() == list(range(1, epochs + 1))
    two_workers = history["loss"].to_numpy()
    assert two_workers[-1] < two_workers[0] and one_worker[-1] < one_worker[0]
    # Same data, same model: the same loss scale (a loss summed over replicas would double).
    assert two_workers[0] == pytest.approx(one_worker[0], rel=0.25)
    assert json.loads((project.path / "metrics/train.json").read_text())["epochs"] == epochs

    model = keras.saving.load_model(project.path / "models/model.keras", compile=False)
    probabilities = model.predict(np.full((2, 32, 32, 3), 90, np.float32), verbose=0)
    assert probabilities.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-4)
    assert project.dvc("status", "train").stdout.strip().endswith("up to date.")
