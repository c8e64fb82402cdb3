"""Drawing, the third step of `evaluate`: the confusion matrix, the per-slice Dice histogram,
the volume Bland-Altman plot and the best and worst slices, from the scores (`cases`,
`pooled`) and the volume agreement the summary reports (`agreement`). PNGs carry no creation
metadata, so the same numbers give the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipeline.classes import LesionClass
from pipeline.evaluate.agreement import volume_agreement
from pipeline.evaluate.cases import EvaluationSlice
from pipeline.evaluate.pooled import SegmentationEvaluation, SliceScores
from pipeline.evaluate.scores import CaseResult
from pipeline.infer.inference import comparison_panel
from pipeline.masks import Palette

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def figure_png(figure: Figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    # No creation metadata: the same numbers give the same bytes.
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def confusion_png(evaluation: SegmentationEvaluation) -> bytes:
    """Heatmap of the pixel confusion matrix, coloured by row share, annotated with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = evaluation.confusion.astype(np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    figure, axis = plt.subplots(figsize=(5.6, 4.4), layout="constrained")
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    labels = evaluation.labels
    for actual in range(len(labels)):
        for predicted in range(len(labels)):
            share = shares[actual, predicted]
            axis.text(
                predicted,
                actual,
                f"{int(counts[actual, predicted])}\n{100 * share:.1f}%",
                ha="center",
                va="center",
                color="white" if share > 0.5 else "black",
                fontsize=9,
            )
    axis.set_xticks(range(len(labels)), labels)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    axis.set_title("test pixels (colour: share of the actual class)")
    figure.colorbar(image, ax=axis, fraction=0.046)
    return figure_png(figure)


def slice_dice_histogram_png(
    evaluation: SegmentationEvaluation, lesion_classes: Sequence[LesionClass]
) -> bytes:
    """Histogram of per-slice Dice, one colour per lesion class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = evaluation.slice_dice_rows()
    figure, axis = plt.subplots(figsize=(6.0, 3.6), layout="constrained")
    names = [lesion.label for lesion in lesion_classes]
    values = [[row["dice"] for row in rows if row["class"] == name] for name in names]
    axis.hist(
        values,
        bins=np.linspace(0.0, 1.0, 21),
        color=[lesion.display_colour for lesion in lesion_classes],
        label=[f"{name} ({len(v)} slices)" for name, v in zip(names, values, strict=True)],
    )
    axis.yaxis.get_major_locator().set_params(integer=True)
    axis.set_xlabel("Dice per slice (slices holding the class in truth or prediction)")
    axis.set_ylabel("slices")
    axis.legend()
    return figure_png(figure)


def slice_picture(
    item: EvaluationSlice, labels: np.ndarray, scores: SliceScores, palette: Palette
) -> np.ndarray:
    """image | ground truth | prediction overlays, labelled with the id and the slice Dice."""
    return comparison_panel(
        item.grey,
        item.truth,
        labels,
        palette,
        title=scores.slice_id,
        prediction_title=f"prediction  Dice {scores.score:.3f}",
    )


def extreme_slices(evaluation: SegmentationEvaluation, count: int) -> list[tuple[str, SliceScores]]:
    """(file stem prefix, scores) of the `count` best and `count` worst slices, disjoint."""
    ranked = evaluation.ranked_slices()
    best = ranked[:count]
    worst = ranked[max(count, len(ranked) - count) :][::-1]
    return [(f"best_{rank + 1}", s) for rank, s in enumerate(best)] + [
        (f"worst_{rank + 1}", s) for rank, s in enumerate(worst)
    ]


def bland_altman_png(cases: list[CaseResult], lesion_classes: Sequence[LesionClass]) -> bytes:
    """Bland-Altman per lesion class over the counted test cases: predicted minus true volume
    (mL) against their mean, with the bias (solid) and the 95% limits of agreement (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {lesion.name: lesion.display_colour for lesion in lesion_classes}
    figure, axes = plt.subplots(
        1,
        len(lesion_classes),
        figsize=(5.5 * len(lesion_classes), 4.2),
        layout="constrained",
        squeeze=False,
    )
    labels = [lesion.label for lesion in lesion_classes]
    for axis, lesion_class in zip(axes[0], labels, strict=True):
        counted = [case for case in cases if case.scores[lesion_class].counted]
        truth = np.array([case.scores[lesion_class].truth_volume_ml for case in counted])
        predicted = np.array([case.predicted_ml(lesion_class) for case in counted])
        for class_name, colour in colours.items():
            chosen = np.array([case.class_name == class_name for case in counted], dtype=bool)
            if chosen.any():
                axis.scatter(
                    ((predicted + truth) / 2.0)[chosen],
                    (predicted - truth)[chosen],
                    c=colour,
                    s=30,
                    label=f"{class_name} cases ({int(chosen.sum())})",
                )
        axis.axhline(0.0, color="lightgrey", lw=0.8, zorder=0)
        agreement = volume_agreement(predicted, truth)
        if agreement is not None:
            axis.axhline(agreement.bias_ml, color="black", lw=1.2)
            axis.plot([], [], color="black", lw=1.2, label=f"bias {agreement.bias_ml:+.2f} mL")
            if agreement.loa_low_ml is not None and agreement.loa_high_ml is not None:
                for bound in (agreement.loa_low_ml, agreement.loa_high_ml):
                    axis.axhline(bound, color="black", lw=1.0, ls="--")
                limits = f"{agreement.loa_low_ml:+.2f} to {agreement.loa_high_ml:+.2f} mL"
                axis.plot([], [], color="black", lw=1.0, ls="--", label=f"95% limits {limits}")
            axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)
        axis.set_xlabel(f"mean of predicted and true {lesion_class} volume (mL)")
        axis.set_ylabel("predicted - true (mL)")
        axis.set_title(
            f"{lesion_class} volume: {len(counted)} test cases with it in truth or prediction"
        )
    return figure_png(figure)
