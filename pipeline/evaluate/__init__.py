"""The evaluate stage, read top to bottom: `run` predicts the test cases and calls, in order,
the per-case scores (`scores`), their summary (`summary`, with the volume `agreement`), the
slice-pooled comparison figures (`pooled`) and the short list `dvc exp show` compares
(`headline`).
"""
