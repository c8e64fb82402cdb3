"""metrics/headline.json: the short list `dvc exp show` compares (pipeline/evaluate/headline.py)."""

from __future__ import annotations

import json

from pipeline.evaluate.headline import (
    MAX_HEADLINE_KEYS,
    figures_with_intervals,
    headline_metric_keys,
    headline_metrics,
)
from tests.conftest import PROJECT_ROOT
from tests.report_fixtures import evaluate_metrics


def test_headline_has_dice_with_intervals_triage_and_volume_in_at_most_12_keys() -> None:
    keys = headline_metric_keys()
    assert len(keys) <= MAX_HEADLINE_KEYS
    for label in ("hemorrhagic", "ischemic"):
        for key in (
            f"dice_{label}",
            f"dice_{label}_ci_low",
            f"dice_{label}_ci_high",
            f"triage_sensitivity_{label}",
            f"triage_specificity_{label}",
            f"volume_median_abs_error_ml_{label}",
        ):
            assert key in keys


def test_headline_copies_evaluate_and_keeps_its_nulls() -> None:
    metrics = evaluate_metrics(PROJECT_ROOT)
    metrics["dice_ischemic"] = None
    headline = headline_metrics(metrics)
    assert list(headline) == list(headline_metric_keys())
    assert headline["dice_ischemic"] is None
    assert all(headline[key] == metrics[key] for key in headline if key != "dice_ischemic")
    json.dumps(headline, allow_nan=False)


def test_figures_carry_the_intervals_evaluate_computed() -> None:
    metrics = evaluate_metrics(PROJECT_ROOT)
    figures = figures_with_intervals(metrics, ("dice", "volume_median_abs_error_ml"))
    assert figures["dice_hemorrhagic"] == {
        "value": metrics["dice_hemorrhagic"],
        "ci_low": metrics["dice_hemorrhagic_ci_low"],
        "ci_high": metrics["dice_hemorrhagic_ci_high"],
    }
    assert figures["volume_median_abs_error_ml_ischemic"] == {
        "value": metrics["volume_median_abs_error_ml_ischemic"]
    }
