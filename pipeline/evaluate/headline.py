"""The few evaluation figures a reader compares first, taken from metrics/evaluate.json.

`metrics/headline.json` holds 12 keys, so that `dvc exp show` can list experiments side by
side in a terminal: per source class the per-patient Dice with its 95 % bootstrap interval,
the triage sensitivity and specificity (a case called positive from its predicted volume),
and the volume agreement as the median absolute error of the predicted lesion volume (mL).
Every other figure, the Bland-Altman limits included, stays in metrics/evaluate.json.

The exported model's metadata (pipeline/report/export.py) carries the same figures, each with its
interval where evaluate computed one.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.classes import SOURCE_CLASSES, metric_label

# Per class, in the order the headline lists them; the 95 % interval follows each that has one.
HEADLINE_FIGURES = (
    "dice",
    "triage_sensitivity",
    "triage_specificity",
    "volume_median_abs_error_ml",
)
INTERVAL_BOUNDS = ("ci_low", "ci_high")
# Figures with their interval in the headline; the others' intervals stay in evaluate.json.
HEADLINE_INTERVALS = ("dice",)
MAX_HEADLINE_KEYS = 12


def figure_key(figure: str, class_name: str) -> str:
    """The evaluate.json key of a per-class figure: `dice_hemorrhagic`, ..."""
    return f"{figure}_{metric_label(class_name)}"


def headline_metric_keys() -> tuple[str, ...]:
    """At most MAX_HEADLINE_KEYS (tests/test_headline.py), so `dvc exp show` fits."""
    return tuple(
        key
        for figure in HEADLINE_FIGURES
        for class_name in SOURCE_CLASSES
        for key in (
            figure_key(figure, class_name),
            *(
                f"{figure_key(figure, class_name)}_{bound}"
                for bound in INTERVAL_BOUNDS
                if figure in HEADLINE_INTERVALS
            ),
        )
    )


def headline_metrics(evaluate_metrics: Mapping[str, object]) -> dict[str, object]:
    """The headline keys of the evaluate stage's metrics (null where evaluate wrote null)."""
    return {key: evaluate_metrics.get(key) for key in headline_metric_keys()}


def figures_with_intervals(
    evaluate_metrics: Mapping[str, object], figures: tuple[str, ...]
) -> dict[str, dict[str, object]]:
    """Per class and figure, `{"value": ..., "ci_low": ..., "ci_high": ...}` (the bounds
    where evaluate computed them), keyed like evaluate.json."""
    result: dict[str, dict[str, object]] = {}
    for figure in figures:
        for class_name in SOURCE_CLASSES:
            key = figure_key(figure, class_name)
            entry = {"value": evaluate_metrics.get(key)}
            for bound in INTERVAL_BOUNDS:
                if f"{key}_{bound}" in evaluate_metrics:
                    entry[bound] = evaluate_metrics[f"{key}_{bound}"]
            result[key] = entry
    return result
