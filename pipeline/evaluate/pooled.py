"""The slice-pooled comparison figures of `evaluate` (per-class keys prefixed `pooled_`), per
lesion class, background excluded.

The headline figures are per case (patient) in 3-D: `pipeline/evaluate/scores.py`. Here each
test slice is scored on its own with the metrics of `pipeline.evaluate.measures` (None where a
metric is undefined on that slice, for example Dice when neither mask holds the class;
callers skip None and say why in the report), and the slices are pooled by summing their
overlap and lesion counts or by averaging a per-slice figure over the slices where it is
defined. Lesions are the slices' 8-connected components, so a 3-D lesion counts once per slice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.evaluate.measures import (
    NO_LESIONS,
    NO_OVERLAP,
    LesionMatch,
    OverlapCounts,
    dice,
    hd95,
    iou,
    match_lesions,
    nsd,
    overlap_counts,
    surface_distances,
)
from pipeline.model.train_metrics import REFERENCE_SMOOTH

NO_LESION = "none"
# Keras' clipping of probabilities in categorical cross-entropy.
KERAS_EPSILON = 1e-7


def confusion_matrix(truth: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """(actual, predicted) pixel counts, int64 (num_classes, num_classes)."""
    pairs = truth.astype(np.int64).ravel() * num_classes + prediction.astype(np.int64).ravel()
    counts = np.bincount(pairs, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def dice_coef_multiclass(truth_index: np.ndarray, softmax: np.ndarray) -> float:
    """The reference's metric for one slice: soft overlap summed over all classes.

    With one-hot truth and a softmax this is soft pixel accuracy, background included; kept
    only for comparison with the reference's 0.9926.
    """
    one_hot = np.eye(softmax.shape[-1], dtype=np.float64)[truth_index]
    probabilities = softmax.astype(np.float64)
    overlap = float((one_hot * probabilities).sum())
    total = float(one_hot.sum() + probabilities.sum())
    return (2.0 * overlap + REFERENCE_SMOOTH) / (total + REFERENCE_SMOOTH)


def crossentropy_sum(truth_index: np.ndarray, softmax: np.ndarray) -> float:
    """Sum over pixels of Keras' categorical cross-entropy (probabilities clipped to 1e-7)."""
    probabilities = softmax.astype(np.float64)
    probabilities = probabilities / probabilities.sum(axis=-1, keepdims=True)
    picked = np.take_along_axis(probabilities, truth_index[..., None].astype(np.int64), axis=-1)
    return float(-np.log(np.clip(picked, KERAS_EPSILON, 1.0 - KERAS_EPSILON)).sum())


def dominant_label(index_mask: np.ndarray, labels: Sequence[str]) -> str:
    """The lesion class with the most pixels on a slice (lower index on a tie), else 'none'.

    `labels`: metric labels by class index, background first (`classes.class_labels`)."""
    counts = np.bincount(index_mask.ravel(), minlength=len(labels))[1:]
    if counts.max() == 0:
        return NO_LESION
    return labels[1 + int(counts.argmax())]


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


class FlatMetrics(dict[str, float | int | str | None]):
    """Flat metrics document where every null value carries a `<key>_null_reason`."""

    def put(self, key: str, value: float | None, reason: str) -> None:
        self[key] = value
        if value is None:
            self[f"{key}_null_reason"] = reason


@dataclass(frozen=True)
class SliceClassScores:
    """One class on one slice. Dice is None when neither mask holds the class; the surface
    metrics are None unless both do."""

    in_truth: bool
    in_prediction: bool
    dice: float | None
    hd95: float | None
    nsd: float | None


@dataclass(frozen=True)
class SliceScores:
    slice_id: str
    classes: dict[str, SliceClassScores]
    actual: str
    predicted: str

    @property
    def score(self) -> float | None:
        """Mean Dice over the classes counted on this slice (for best/worst ranking)."""
        return _mean([c.dice for c in self.classes.values() if c.dice is not None])


@dataclass
class _ClassTotals:
    overlap: OverlapCounts = NO_OVERLAP
    slice_dice: list[float] = field(default_factory=list)
    hd95: list[float] = field(default_factory=list)
    nsd: list[float] = field(default_factory=list)
    lesions: LesionMatch = NO_LESIONS
    true_positive_slices: int = 0
    false_negative_slices: int = 0
    true_negative_slices: int = 0
    false_positive_slices: int = 0


class SegmentationEvaluation:
    """Accumulates slice after slice (bounded memory) and reports the slice-pooled flat
    metrics at the end (per-class keys prefixed `pooled_`; surface distances in mm).

    `labels`: metric labels by class index, background first (`classes.class_labels`)."""

    def __init__(self, tolerance_mm: float, labels: Sequence[str]) -> None:
        self.tolerance_mm = tolerance_mm
        self.labels = tuple(labels)
        self.num_classes = len(self.labels)
        self.slices: list[SliceScores] = []
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self._totals = {name: _ClassTotals() for name in self.labels[1:]}
        self._reference_dice: list[float] = []
        self._crossentropy = 0.0
        self._pixels = 0

    def add(
        self,
        slice_id: str,
        truth_index: np.ndarray,
        softmax: np.ndarray,
        pixel_spacing_mm: float = 1.0,
    ) -> SliceScores:
        """Score one slice: class-index truth (H, W) and softmax (H, W, classes)."""
        if softmax.shape[:2] != truth_index.shape or softmax.shape[-1] != self.num_classes:
            raise ValueError(
                f"{slice_id}: softmax {softmax.shape} does not match truth {truth_index.shape}"
            )
        prediction = softmax.argmax(axis=-1).astype(np.uint8)
        self.confusion += confusion_matrix(truth_index, prediction, self.num_classes)
        self._reference_dice.append(dice_coef_multiclass(truth_index, softmax))
        self._crossentropy += crossentropy_sum(truth_index, softmax)
        self._pixels += truth_index.size
        classes = {
            name: self._add_class(
                self._totals[name], truth_index == index, prediction == index, pixel_spacing_mm
            )
            for index, name in enumerate(self.labels[1:], start=1)
        }
        scores = SliceScores(
            slice_id,
            classes,
            dominant_label(truth_index, self.labels),
            dominant_label(prediction, self.labels),
        )
        self.slices.append(scores)
        return scores

    def _add_class(
        self,
        totals: _ClassTotals,
        truth: np.ndarray,
        prediction: np.ndarray,
        pixel_spacing_mm: float,
    ) -> SliceClassScores:
        counts = overlap_counts(truth, prediction)
        totals.overlap += counts
        in_truth, in_prediction = bool(truth.any()), bool(prediction.any())
        distances = surface_distances(truth, prediction, (pixel_spacing_mm, pixel_spacing_mm))
        scores = SliceClassScores(
            in_truth,
            in_prediction,
            dice(counts),
            None if distances is None else hd95(distances),
            None if distances is None else nsd(distances, self.tolerance_mm),
        )
        if scores.dice is not None:
            totals.slice_dice.append(scores.dice)
        if scores.hd95 is not None and scores.nsd is not None:
            totals.hd95.append(scores.hd95)
            totals.nsd.append(scores.nsd)
        totals.lesions += match_lesions(truth, prediction)
        totals.true_positive_slices += in_truth and in_prediction
        totals.false_negative_slices += in_truth and not in_prediction
        totals.true_negative_slices += not in_truth and not in_prediction
        totals.false_positive_slices += in_prediction and not in_truth
        return scores

    def metrics(self) -> FlatMetrics:
        """Flat metrics; every None value comes with a `<key>_null_reason` string."""
        result = FlatMetrics(test_slices=len(self.slices))
        dice_values: list[float] = []
        for name, totals in self._totals.items():
            neither = f"no test pixel of {name} in the ground truth or the prediction"
            pooled = dice(totals.overlap)
            result.put(f"pooled_dice_{name}", pooled, neither)
            result.put(f"pooled_iou_{name}", iou(totals.overlap), neither)
            if pooled is not None:
                dice_values.append(pooled)
            result.put(
                f"pooled_slice_dice_{name}",
                _mean(totals.slice_dice),
                f"no test slice holds {name} in the ground truth or the prediction",
            )
            result[f"pooled_slice_dice_count_{name}"] = len(totals.slice_dice)
            both = f"no test slice where both truth and prediction hold {name}"
            result.put(f"pooled_slice_hd95_mm_{name}", _mean(totals.hd95), both)
            result.put(f"pooled_nsd_{name}", _mean(totals.nsd), both)
            result[f"pooled_surface_slice_count_{name}"] = len(totals.hd95)
            self._put_detection(result, name, totals)
        result.put("pooled_dice_mean", _mean(dice_values), "no lesion class has a defined Dice")
        result.put(
            "pixel_accuracy",
            _ratio(float(np.trace(self.confusion)), int(self.confusion.sum())),
            "no test pixels",
        )
        result.put("dice_coef_multiclass", _mean(self._reference_dice), "no test slices")
        result.put(
            "categorical_crossentropy", _ratio(self._crossentropy, self._pixels), "no test pixels"
        )
        for actual, predicted, count in self.confusion_cells():
            result[f"pixels_true_{actual}_pred_{predicted}"] = count
        return result

    @staticmethod
    def _put_detection(result: FlatMetrics, name: str, totals: _ClassTotals) -> None:
        """Lesions as 8-connected components of each slice (2-D fragments of 3-D lesions),
        matched on each slice and summed over the slices (`LesionMatch`)."""
        lesions = totals.lesions
        result.put(
            f"pooled_lesion_precision_{name}", lesions.precision, f"no predicted {name} lesion"
        )
        result.put(
            f"pooled_lesion_recall_{name}", lesions.recall, f"no {name} lesion in the ground truth"
        )
        result.put(
            f"pooled_slice_lesion_f1_{name}",
            lesions.f1,
            f"no {name} lesion in the ground truth or the prediction",
        )
        result[f"pooled_truth_lesions_{name}"] = lesions.truth_lesions
        result[f"pooled_predicted_lesions_{name}"] = lesions.predicted_lesions
        positives = totals.true_positive_slices + totals.false_negative_slices
        negatives = totals.true_negative_slices + totals.false_positive_slices
        result.put(
            f"pooled_slice_sensitivity_{name}",
            _ratio(totals.true_positive_slices, positives),
            f"no test slice holds {name} in the ground truth",
        )
        result.put(
            f"pooled_slice_specificity_{name}",
            _ratio(totals.true_negative_slices, negatives),
            f"every test slice holds {name} in the ground truth",
        )

    def confusion_cells(self) -> Iterator[tuple[str, str, int]]:
        for actual in range(self.num_classes):
            for predicted in range(self.num_classes):
                yield (
                    self.labels[actual],
                    self.labels[predicted],
                    int(self.confusion[actual, predicted]),
                )

    def slice_dice_rows(self) -> list[dict[str, str | float]]:
        """Every (slice, class) counted in the per-slice Dice mean; `slice_class` is unique
        (a slice can count for both classes), for plots keyed by row."""
        rows: list[dict[str, str | float]] = []
        for scores in sorted(self.slices, key=lambda s: s.slice_id):
            for name, class_scores in scores.classes.items():
                if class_scores.dice is not None:
                    rows.append(
                        {
                            "id": scores.slice_id,
                            "class": name,
                            "slice_class": f"{scores.slice_id} {name}",
                            "dice": class_scores.dice,
                        }
                    )
        return rows

    def ranked_slices(self) -> list[SliceScores]:
        """Slices with a score, best first (ties by id)."""
        scored = [s for s in self.slices if s.score is not None]
        return sorted(scored, key=lambda s: (-(s.score or 0.0), s.slice_id))
