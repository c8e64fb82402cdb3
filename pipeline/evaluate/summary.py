"""From per-case scores to the headline metrics, metrics/cases.csv and the volume plot.

Headlines are means over the cases that count for a class (the class in the truth or the
prediction; see `pipeline/evaluate/scores.py` for the empty rules), each with a seeded bootstrap
95% interval and the number of cases behind it. Case-level triage calls a case positive for a
class when its predicted volume exceeds a threshold chosen on the validation cases; volume
agreement compares predicted and true volumes over the counted cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.evaluate.agreement import (
    bootstrap_mean_ci,
    choose_threshold,
    metric_rng,
    roc_auc,
    triage,
    volume_agreement,
    wilson_interval,
)
from pipeline.evaluate.pooled import FlatMetrics
from pipeline.evaluate.scores import CaseClassScores, CaseResult

# Per-case metrics averaged into headlines: (metric key stem, CaseClassScores attribute).
CASE_METRICS: tuple[tuple[str, str], ...] = (
    ("dice", "dice"),
    ("iou", "iou"),
    ("hd95_mm", "hd95_mm"),
    ("nsd", "nsd"),
    ("lesion_f1", "lesion_f1"),
)
LESION_COUNTS = ("truth_lesions", "detected_lesions", "predicted_lesions", "false_positive_lesions")


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _put_interval(
    result: FlatMetrics, key: str, interval: tuple[float, float] | None, reason: str
) -> None:
    result.put(f"{key}_ci_low", None if interval is None else interval[0], reason)
    result.put(f"{key}_ci_high", None if interval is None else interval[1], reason)


def _put_proportion(
    result: FlatMetrics, key: str, successes: int, trials: int, reason: str
) -> None:
    result.put(key, successes / trials if trials else None, reason)
    _put_interval(result, key, wilson_interval(successes, trials), reason)


def summarize_cases(
    test: Sequence[CaseResult],
    valid: Sequence[CaseResult],
    seed: int,
    samples: int,
    labels: Sequence[str],
) -> FlatMetrics:
    """Flat headline metrics over the test cases (the validation cases only set thresholds).

    `labels`: the lesion classes' metric labels (`LesionClass.label`), in class-index order."""
    result = FlatMetrics(test_cases=len(test), valid_cases=len(valid))
    dice_means: list[float] = []
    for lesion_class in labels:
        counted = [case.scores[lesion_class] for case in test if case.scores[lesion_class].counted]
        result[f"test_cases_{lesion_class}"] = len(counted)
        absent = f"no test case holds {lesion_class} in the ground truth or the prediction"
        for stem, attribute in CASE_METRICS:
            key = f"{stem}_{lesion_class}"
            values = [float(getattr(scores, attribute)) for scores in counted]
            result.put(key, _mean(values), absent)
            interval = bootstrap_mean_ci(values, samples, metric_rng(seed, key))
            _put_interval(result, key, interval, absent)
        if counted:
            dice_means.append(float(result[f"dice_{lesion_class}"]))  # type: ignore[arg-type]
        for count in LESION_COUNTS:
            result[f"{count}_{lesion_class}"] = sum(
                getattr(scores.lesions, count) for scores in counted
            )
        _put_triage(result, lesion_class, test, valid)
        _put_volume(result, lesion_class, counted, absent)
    result.put("dice_mean", _mean(dice_means), "no lesion class has a defined Dice")
    return result


def _put_triage(
    result: FlatMetrics,
    lesion_class: str,
    test: Sequence[CaseResult],
    valid: Sequence[CaseResult],
) -> None:
    """Case-level triage: threshold on validation, sensitivity/specificity/AUC on test."""
    threshold = choose_threshold(
        [case.predicted_ml(lesion_class) for case in valid],
        [case.has_truth(lesion_class) for case in valid],
    )
    no_threshold = (
        f"the validation cases need cases with and without {lesion_class} to choose a threshold"
    )
    result.put(
        f"triage_threshold_ml_{lesion_class}",
        None if threshold is None else threshold.value,
        no_threshold,
    )
    scores = [case.predicted_ml(lesion_class) for case in test]
    positive = [case.has_truth(lesion_class) for case in test]
    result[f"triage_positive_cases_{lesion_class}"] = int(sum(positive))
    result[f"triage_negative_cases_{lesion_class}"] = len(positive) - int(sum(positive))
    counts = None if threshold is None else triage(scores, positive, threshold.value)
    for key, successes, trials, reason in (
        (
            f"triage_sensitivity_{lesion_class}",
            0 if counts is None else counts.true_positives,
            0 if counts is None else counts.positives,
            no_threshold if counts is None else f"no test case holds {lesion_class}",
        ),
        (
            f"triage_specificity_{lesion_class}",
            0 if counts is None else counts.true_negatives,
            0 if counts is None else counts.negatives,
            no_threshold if counts is None else f"every test case holds {lesion_class}",
        ),
    ):
        _put_proportion(result, key, successes, trials, reason)
    result.put(
        f"triage_auc_{lesion_class}",
        roc_auc(scores, positive),
        f"the test cases need cases with and without {lesion_class}",
    )


def _put_volume(
    result: FlatMetrics, lesion_class: str, counted: Sequence[CaseClassScores], absent: str
) -> None:
    agreement = volume_agreement(
        [scores.predicted_volume_ml for scores in counted],
        [scores.truth_volume_ml for scores in counted],
    )
    result.put(
        f"volume_bias_ml_{lesion_class}", None if agreement is None else agreement.bias_ml, absent
    )
    one_case = f"limits of agreement need two test cases with {lesion_class}"
    for bound in ("low", "high"):
        value = None if agreement is None else getattr(agreement, f"loa_{bound}_ml")
        result.put(f"volume_loa_{bound}_ml_{lesion_class}", value, one_case)
    result.put(
        f"volume_median_abs_error_ml_{lesion_class}",
        None if agreement is None else agreement.median_abs_error_ml,
        absent,
    )


def cases_table(cases: Sequence[CaseResult]) -> pd.DataFrame:
    """One row per case: id, class, slices, geometry, then every per-class metric and volume
    (empty where the class is in neither mask)."""
    rows = []
    for case in sorted(cases, key=lambda item: item.case_id):
        row: dict[str, object] = {
            "case_id": case.case_id,
            "class": case.class_name,
            "slices": case.slices,
            "pixel_spacing_mm": case.spacing.pixel_spacing_mm,
            "slice_thickness_mm": case.spacing.slice_thickness_mm,
        }
        for lesion_class, scores in case.scores.items():
            for stem, attribute in CASE_METRICS:
                row[f"{stem}_{lesion_class}"] = getattr(scores, attribute)
            for count in LESION_COUNTS:
                row[f"{count}_{lesion_class}"] = getattr(scores.lesions, count)
            row[f"truth_volume_ml_{lesion_class}"] = scores.truth_volume_ml
            row[f"predicted_volume_ml_{lesion_class}"] = scores.predicted_volume_ml
        rows.append(row)
    return pd.DataFrame(rows)


def cases_csv(cases: Sequence[CaseResult]) -> str:
    """cases.csv text: full precision (every headline can be recomputed), empty = undefined."""
    return cases_table(cases).to_csv(index=False, lineterminator="\n", float_format="%.10g")
