"""Messages go through `logging`: time-stamped, at the level STROKE_LOG_LEVEL names, never
inside a live progress bar; training progress speaks per step with and without a terminal."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from pipeline.model.training import StepProgress

ROOT = Path(__file__).resolve().parents[1]
STAMPED = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR) pipeline\.demo: ")

# A message logged while a bar is live, as the stages do (a skipped file inside `segment`).
BAR_SCRIPT = """
import logging, sys
from tqdm import tqdm
from stages.common import configure_logging
configure_logging()
log = logging.getLogger("pipeline.demo")
with tqdm(total=3, desc="segment", unit="img", mininterval=0, file=sys.stderr) as bar:
    bar.update()
    log.info("quiet detail")
    log.warning("skipped a.png: not an image")
    bar.update(2)
"""


def run_script(script: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **environment}
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_a_message_during_a_live_bar_gets_its_own_stamped_line() -> None:
    result = run_script(BAR_SCRIPT, STROKE_LOG_LEVEL="INFO")
    assert result.returncode == 0, result.stderr
    # What a terminal shows on each line: the text after its last carriage return.
    shown = [line.rsplit("\r", 1)[-1] for line in result.stderr.split("\n")]
    for message in ("INFO pipeline.demo: quiet detail", "skipped a.png: not an image"):
        line = next(line for line in shown if message in line)
        assert STAMPED.match(line), line
    assert "3/3" in result.stderr  # the bar went on after the messages


def test_the_level_comes_from_one_environment_variable() -> None:
    quiet = run_script(BAR_SCRIPT, STROKE_LOG_LEVEL="warning")
    assert quiet.returncode == 0, quiet.stderr
    assert "quiet detail" not in quiet.stderr and "skipped a.png" in quiet.stderr
    wrong = run_script(BAR_SCRIPT, STROKE_LOG_LEVEL="LOUD")
    assert wrong.returncode != 0
    assert "STROKE_LOG_LEVEL='LOUD' is not a log level; use one of DEBUG, INFO" in wrong.stderr


class Clock:
    """Seconds that advance by `step_s` at each reading: a training run of known speed."""

    def __init__(self, step_s: float) -> None:
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def test_without_a_terminal_a_line_every_interval_with_rate_and_time_left(caplog) -> None:
    caplog.set_level(logging.INFO, logger="pipeline")
    # 10 steps of 8 images per epoch, one reading per step 2 s apart: 4 images/s.
    progress = StepProgress(
        10, 8, epochs=3, interactive=False, line_interval_s=5.0, clock=Clock(2)
    )
    progress.on_epoch_begin(1)
    for step in range(10):
        progress.on_train_batch_end(step)
    progress.on_epoch_end(1)
    lines = [record.getMessage() for record in caplog.records]
    # Readings at 2, 4, ... s after the start (0 s): lines when 5 s have passed, and the last.
    assert [line.split(":")[0] for line in lines] == [
        "epoch 2/3 step 3/10",
        "epoch 2/3 step 6/10",
        "epoch 2/3 step 9/10",
        "epoch 2/3 step 10/10",
    ]
    # Step 3 at 6 s: 24 images in 6 s; 7 steps (56 images) left, 17 in all (136 images).
    assert lines[0] == (
        "epoch 2/3 step 3/10: 4.0 images/s, 00:14 left in this epoch, 00:34 in all epochs"
    )


def test_on_a_terminal_a_bar_per_epoch_and_no_log_lines(caplog, capsys) -> None:
    caplog.set_level(logging.INFO, logger="pipeline")
    progress = StepProgress(4, 2, epochs=1, interactive=True)
    progress.on_epoch_begin(0)
    for step in range(4):
        progress.on_train_batch_end(step)
    assert progress.bar is not None and progress.bar.n == 8
    progress.on_epoch_end(0)
    assert progress.bar is None and not caplog.records
    assert "epoch 1/1" in capsys.readouterr().err


def test_a_stage_failure_is_a_stamped_error(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "stages.extract"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert re.search(r"\d\d:\d\d:\d\d ERROR stages: stage extract failed: ", result.stderr)
