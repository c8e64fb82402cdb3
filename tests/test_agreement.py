"""Intervals, triage and volume agreement against published values and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.evaluate.agreement import (
    bootstrap_mean_ci,
    choose_threshold,
    metric_rng,
    roc_auc,
    triage,
    volume_agreement,
    wilson_interval,
)


def test_wilson_matches_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, table I, method 3.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)
    assert wilson_interval(0, 0) is None


@settings(max_examples=50, deadline=None)
@given(trials=st.integers(1, 500), share=st.floats(0.0, 1.0))
def test_wilson_contains_the_proportion(trials, share):
    successes = round(share * trials)
    low, high = wilson_interval(successes, trials)
    assert 0.0 <= low <= successes / trials <= high <= 1.0


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [0.2, 0.9, 0.95, 0.7, 0.85, 0.6]
    first = bootstrap_mean_ci(values, 2000, metric_rng(42, "dice_ischemic"))
    assert first == bootstrap_mean_ci(values, 2000, metric_rng(42, "dice_ischemic"))
    assert first != bootstrap_mean_ci(values, 2000, metric_rng(43, "dice_ischemic"))
    assert first[0] < np.mean(values) < first[1]
    assert min(values) <= first[0] and first[1] <= max(values)
    assert bootstrap_mean_ci([0.7, 0.7, 0.7], 500, metric_rng(0, "x")) == pytest.approx((0.7, 0.7))
    assert bootstrap_mean_ci([], 500, metric_rng(0, "x")) is None


def test_bootstrap_matches_a_resampling_loop():
    values = np.array([1.0, 4.0, 2.5, 8.0])
    rng_a, rng_b = metric_rng(7, "hd95_mm_hemorrhagic"), metric_rng(7, "hd95_mm_hemorrhagic")
    draws = rng_b.integers(0, 4, size=(300, 4))
    means = [sum(values[i] for i in row) / 4 for row in draws]
    assert bootstrap_mean_ci(values, 300, rng_a) == pytest.approx(
        tuple(np.percentile(means, [2.5, 97.5]))
    )


def brute_auc(scores, positive) -> float:
    labelled = list(zip(scores, positive, strict=True))
    pairs = [
        (s_pos, s_neg)
        for (s_pos, p), (s_neg, q) in itertools.product(labelled, repeat=2)
        if p and not q
    ]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


@settings(max_examples=50, deadline=None)
@given(
    data=st.lists(st.tuples(st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.5]), st.booleans()), min_size=2)
)
def test_auc_matches_pair_counting(data):
    scores, positive = zip(*data, strict=True)
    if all(positive) or not any(positive):
        assert roc_auc(scores, positive) is None
    else:
        assert roc_auc(scores, positive) == pytest.approx(brute_auc(scores, positive))


def test_threshold_sits_in_the_widest_gap_among_the_best_cuts():
    # Negatives 0, 0, 0.3; positives 4, 9: every cut in (0.3, 4) separates them perfectly.
    threshold = choose_threshold([0.0, 0.3, 0.0, 4.0, 9.0], [False, False, False, True, True])
    assert threshold.value == pytest.approx(2.15) and threshold.youden_j == 1.0
    # All-zero negatives and one positive above: 0 is a perfect cut, but the midpoint wins.
    assert choose_threshold([0.0, 0.0, 5.0], [False, False, True]).value == 2.5
    assert choose_threshold([1.0, 2.0], [True, True]) is None


def brute_best_j(scores, positive, cut) -> float:
    called = [s > cut for s in scores]
    sensitivity = np.mean([c for c, p in zip(called, positive, strict=True) if p])
    specificity = np.mean([not c for c, p in zip(called, positive, strict=True) if not p])
    return sensitivity + specificity - 1.0


@settings(max_examples=50, deadline=None)
@given(data=st.lists(st.tuples(st.floats(0.0, 20.0), st.booleans()), min_size=2, max_size=12))
def test_threshold_maximises_youden_j(data):
    scores, positive = zip(*data, strict=True)
    threshold = choose_threshold(scores, positive)
    if all(positive) or not any(positive):
        assert threshold is None
        return
    every_cut = [0.0, *scores]  # cutting at a score equals cutting just above it
    best = max(brute_best_j(scores, positive, cut) for cut in every_cut)
    assert threshold.youden_j == pytest.approx(best)
    assert brute_best_j(scores, positive, threshold.value) == pytest.approx(best)


def test_triage_counts():
    counts = triage([0.0, 3.0, 1.0, 6.0], [False, True, True, False], threshold=2.0)
    assert (counts.true_positives, counts.false_negatives) == (1, 1)
    assert (counts.true_negatives, counts.false_positives) == (1, 1)
    assert (counts.positives, counts.negatives) == (2, 2)


def test_volume_agreement_from_the_formulas():
    predicted, truth = [10.0, 22.0, 5.0, 0.5], [12.0, 20.0, 5.5, 0.0]
    differences = np.array(predicted) - np.array(truth)
    agreement = volume_agreement(predicted, truth)
    assert agreement.bias_ml == pytest.approx(differences.mean())
    spread = 1.959963984540054 * np.std(differences, ddof=1)
    assert agreement.loa_low_ml == pytest.approx(differences.mean() - spread)
    assert agreement.loa_high_ml == pytest.approx(differences.mean() + spread)
    assert agreement.median_abs_error_ml == pytest.approx(np.median(np.abs(differences)))
    one = volume_agreement([3.0], [1.0])
    assert (one.bias_ml, one.loa_low_ml, one.loa_high_ml) == (2.0, None, None)
    assert volume_agreement([], []) is None
