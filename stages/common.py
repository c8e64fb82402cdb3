"""What every stage entry point shares: load params once, run, turn known errors into exit 1.

A stage script is `run_stage(main)` where `main(params)` does the work through `pipeline/`.
Bad params or bad data end the stage with a one-paragraph message on stderr naming the key or
the file, and a non-zero exit status that stops `dvc repro`; anything else is a bug and
keeps its traceback.

With `PIPELINE_PARAMS_TRACE=<file>` set, the stage records every params key it reads (as
dotted paths, one JSON line per stage run). The DVC contract test compares that record with
the params each stage declares in dvc.yaml, so a stage can neither read an undeclared key
(stale cache) nor declare one it never reads (needless reruns).

Messages go through `logging`, time-stamped, to stderr, at the level that
`STROKE_LOG_LEVEL=DEBUG|INFO|WARNING|ERROR` names (default INFO), written so that they never
break a live tqdm progress bar. A command's real output (a path it was asked for, a JSON line)
stays on stdout.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from pydantic import BaseModel
from tqdm import tqdm

from pipeline.io import DataError
from pipeline.params import Params, ParamsError, load_params

LEVEL_VARIABLE = "STROKE_LOG_LEVEL"
DEFAULT_LEVEL = "INFO"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# The project's loggers follow STROKE_LOG_LEVEL; other libraries' say WARNING and above only.
PROJECT_LOGGERS = ("pipeline", "stages")


class TqdmHandler(logging.Handler):
    """Writes each record through `tqdm.write`, which clears the live bars, prints the line
    above them and redraws them (a plain print would land inside a bar)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's own convention: report, never raise from a handler
            self.handleError(record)


def log_level(environ: Mapping[str, str] = os.environ) -> int:
    """The level that STROKE_LOG_LEVEL names; a wrong name stops with the allowed ones."""
    name = environ.get(LEVEL_VARIABLE, DEFAULT_LEVEL).strip().upper() or DEFAULT_LEVEL
    if name not in LEVELS:
        raise SystemExit(
            f"{LEVEL_VARIABLE}={environ[LEVEL_VARIABLE]!r} is not a log level; use one of "
            f"{', '.join(LEVELS)}"
        )
    return logging.getLevelNamesMapping()[name]


def configure_logging(environ: Mapping[str, str] = os.environ) -> None:
    """Route every logger to stderr through tqdm, time-stamped; the project's at
    STROKE_LOG_LEVEL, other libraries' at WARNING or above."""
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, TIME_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    level = log_level(environ)
    root.setLevel(max(level, logging.WARNING))
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)


TRACE_VARIABLE = "PIPELINE_PARAMS_TRACE"
# Python names that differ from the YAML key they expose.
_YAML_NAMES = {"palette": "rgb_map", "lesion_classes": "rgb_map"}


class TracedParams:
    """Read-only stand-in for a params model that records the dotted keys read through it."""

    def __init__(self, model: BaseModel, path: str, reads: set[str]) -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_reads", reads)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._model, name)
        key = _YAML_NAMES.get(name, name)
        dotted = f"{self._path}.{key}" if self._path else key
        if name.startswith("model_"):  # pydantic API (model_dump, ...) reads the whole section
            self._reads.add(self._path or "<all>")
            return value
        if isinstance(value, BaseModel):
            return TracedParams(value, dotted, self._reads)
        self._reads.add(dotted)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("params are read-only")

    def __reduce__(self) -> tuple[Any, ...]:
        # Worker processes get the plain model: the parent has recorded the section it passed.
        self._reads.add(self._path or "<all>")
        return (_identity, (self._model,))

    def __eq__(self, other: object) -> bool:
        other_model = other._model if isinstance(other, TracedParams) else other
        return self._model == other_model

    __hash__ = None


def _identity(value: Any) -> Any:
    return value


def stage_name() -> str:
    return os.path.basename(sys.argv[0]).removesuffix(".py")


def _exit_on_termination(signal_number: int, _frame: object) -> None:
    # SIGTERM (kill, timeout, a container stopping) ends Python without unwinding; as an exit
    # it runs every `finally`, so `atomic_path` removes its scratch folder and the output
    # stays as it was. SIGKILL (and an out-of-memory kill) cannot be caught.
    raise SystemExit(128 + signal_number)


def fail(what: str, error: Exception) -> NoReturn:
    """End a stage or command on bad params or data: one logged message, exit status 1."""
    logging.getLogger("stages").error("%s failed: %s", what, error)
    sys.exit(1)


def run_stage(main: Callable[[Params], None], params_path: str = "params.yaml") -> None:
    """Validate params.yaml, call `main(params)`, exit 1 with a clear message on bad input."""
    signal.signal(signal.SIGTERM, _exit_on_termination)
    configure_logging()
    trace_file = os.environ.get(TRACE_VARIABLE)
    reads: set[str] = set()
    try:
        params = load_params(params_path)
        main(TracedParams(params, "", reads) if trace_file else params)  # type: ignore[arg-type]
    except (ParamsError, DataError) as error:
        fail(f"stage {stage_name()}", error)
    finally:
        if trace_file:
            with open(trace_file, "a", encoding="utf-8") as trace:
                trace.write(json.dumps({"stage": stage_name(), "reads": sorted(reads)}) + "\n")
