"""The data stages, in the order the DAG runs them: the Kaggle archive to slices (`extract`,
through `pipeline.zip_directory`), their checks (`validate`, with `expectations` and the
class-count figures of `stats`), colour masks (`colorize`), the case-level split (`split`)
and the training set's transforms (`augment`).

Layers import downward only: `pipeline/` (shared: params, classes, io, masks, ...) <- data
<- model <- infer <- evaluate <- report (tests/test_dvc_deps.py checks it).
"""
