"""The stage entry points, one module per dvc.yaml stage (`python -m stages.<name>`).

This package runs before any stage module's imports, so its settings hold before TensorFlow
is imported anywhere: a stage's `pipeline` imports come first in import order (stages/train.py
imports TensorFlow through pipeline/model/training.py before it reaches stages/common.py).
"""

import os

# TensorFlow reads this once, when it is first imported: keep its C++ logging to errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
