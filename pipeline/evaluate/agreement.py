"""Uncertainty and clinical summaries over cases: bootstrap and Wilson intervals, case-level
triage (threshold, sensitivity, specificity, ROC AUC) and volume agreement (Bland-Altman).

Every function takes plain per-case numbers, so each figure can be recomputed from
metrics/cases.csv alone.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
# Two-sided standard normal quantile for 95%: the Wilson interval's z and the 1.96 of the
# Bland-Altman limits.
Z_95 = 1.959963984540054


def metric_rng(seed: int, name: str) -> np.random.Generator:
    """A generator per (seed, metric name): adding a metric never moves another's interval."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def bootstrap_mean_ci(
    values: Sequence[float], samples: int, rng: np.random.Generator
) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of the mean, resampling cases with replacement.

    None without values. One value gives a zero-width interval: the bootstrap cannot see
    a spread that one case does not show (test_cases_<class> says how many cases there are).
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return None
    picks = rng.integers(0, data.size, size=(samples, data.size))
    means = data[picks].mean(axis=1)
    tail = 100.0 * (1.0 - CONFIDENCE) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def wilson_interval(successes: int, trials: int) -> tuple[float, float] | None:
    """Wilson score 95% interval of a proportion; None without trials."""
    if trials == 0:
        return None
    share = successes / trials
    z2 = Z_95 * Z_95
    centre = (share + z2 / (2 * trials)) / (1 + z2 / trials)
    half = Z_95 * math.sqrt(share * (1 - share) / trials + z2 / (4 * trials * trials))
    half /= 1 + z2 / trials
    # The bounds are exactly 0 and 1 at 0 and all successes; rounding would move them.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties 1/2
    (Mann-Whitney). None unless both groups have cases."""
    values = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(positive, dtype=bool)
    positives, negatives = values[labels], values[~labels]
    if positives.size == 0 or negatives.size == 0:
        return None
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (positives.size * negatives.size))


@dataclass(frozen=True)
class Threshold:
    """A case is called positive when its score is above `value`."""

    value: float
    youden_j: float


def choose_threshold(scores: Sequence[float], positive: Sequence[bool]) -> Threshold | None:
    """The cut with the best Youden J (sensitivity + specificity - 1) on these cases.

    Candidates are 0 (any predicted voxel calls the case), the highest score (no case is
    called) and the midpoints between consecutive distinct scores. Among equally good cuts
    the one in the widest gap between neighbouring scores wins (the largest margin on both
    sides), then the lowest. None unless both groups have cases.
    """
    values = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(positive, dtype=bool)
    if labels.all() or not labels.any():
        return None
    distinct = np.unique(values)
    candidates = [(0.0, float(distinct[0])), (float(distinct[-1]), 0.0)]
    candidates += [
        (float(low + high) / 2.0, float(high - low)) for low, high in itertools.pairwise(distinct)
    ]

    def youden(cut: float) -> float:
        called = values > cut
        return float(called[labels].mean() + (~called[~labels]).mean() - 1.0)

    j, _, cut = max((youden(cut), gap, -cut) for cut, gap in candidates)
    return Threshold(value=-cut, youden_j=j)


@dataclass(frozen=True)
class TriageResult:
    true_positives: int
    false_negatives: int
    true_negatives: int
    false_positives: int

    @property
    def positives(self) -> int:
        return self.true_positives + self.false_negatives

    @property
    def negatives(self) -> int:
        return self.true_negatives + self.false_positives


def triage(scores: Sequence[float], positive: Sequence[bool], threshold: float) -> TriageResult:
    """Confusion counts of calling `score > threshold` positive."""
    called = np.asarray(scores, dtype=np.float64) > threshold
    labels = np.asarray(positive, dtype=bool)
    return TriageResult(
        true_positives=int((called & labels).sum()),
        false_negatives=int((~called & labels).sum()),
        true_negatives=int((~called & ~labels).sum()),
        false_positives=int((called & ~labels).sum()),
    )


@dataclass(frozen=True)
class VolumeAgreement:
    """Bland-Altman of predicted minus true volume; limits need two cases."""

    cases: int
    bias_ml: float
    loa_low_ml: float | None
    loa_high_ml: float | None
    median_abs_error_ml: float


def volume_agreement(
    predicted_ml: Sequence[float], truth_ml: Sequence[float]
) -> VolumeAgreement | None:
    """Bias (mean difference), 95% limits of agreement (bias -/+ 1.96 SD, sample SD) and
    median absolute error of predicted vs true volumes; None without cases."""
    difference = np.asarray(predicted_ml, dtype=np.float64) - np.asarray(truth_ml, np.float64)
    if difference.size == 0:
        return None
    bias = float(difference.mean())
    low = high = None
    if difference.size >= 2:
        spread = Z_95 * float(difference.std(ddof=1))
        low, high = bias - spread, bias + spread
    return VolumeAgreement(
        cases=int(difference.size),
        bias_ml=bias,
        loa_low_ml=low,
        loa_high_ml=high,
        median_abs_error_ml=float(np.median(np.abs(difference))),
    )
