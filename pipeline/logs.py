"""Messages of the stages and commands: `logging` with time stamps, a level from one
environment variable, written so that they never break a live tqdm progress bar.

    STROKE_LOG_LEVEL=DEBUG|INFO|WARNING|ERROR   (default INFO)

A command's real output (a path it was asked for, a JSON line) stays on stdout; everything
said about the work goes through `logging` to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from tqdm import tqdm

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
