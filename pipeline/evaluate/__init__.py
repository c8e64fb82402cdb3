"""The evaluate stage, read top to bottom (each module imports only the ones above it):
`measures` (the one definition of each metric), `scores` (one case in 3-D) and `pooled` (the
slice-pooled comparison figures); scoring (`cases`); summarising (`agreement`, `summary`, and
`headline`, the short list `dvc exp show` compares); drawing (`figures`); and `run`, which
calls them in that order.
"""
