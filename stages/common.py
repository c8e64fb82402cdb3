"""What every stage entry point shares: load params once, run, turn known errors into exit 1.

A stage script is `run_stage(main)` where `main(params)` does the work through `pipeline/`.
Bad params or bad data end the stage with a one-paragraph message on stderr naming the key or
the file, and a non-zero exit status that stops `dvc repro`; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from pipeline.io import DataError
from pipeline.params import Params, ParamsError, load_params

# Before TensorFlow is imported anywhere: keep its C++ logging to errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run_stage(main: Callable[[Params], None], params_path: str = "params.yaml") -> None:
    """Validate params.yaml, call `main(params)`, exit 1 with a clear message on bad input."""
    name = os.path.basename(sys.argv[0]).removesuffix(".py")
    try:
        main(load_params(params_path))
    except (ParamsError, DataError) as error:
        print(f"stage {name} failed: {error}", file=sys.stderr)
        sys.exit(1)
