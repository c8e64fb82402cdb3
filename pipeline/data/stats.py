"""Dataset statistics: slices and cases per class, optionally per group (e.g. per split).

Used by `validate` (whole extracted set) and `split` (one group of bars per split), like the
reference's statistics bar chart, but counting cases (patients) next to slices, since a
split that is balanced in slices can still be lopsided in patients.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display; must precede pyplot
import matplotlib.pyplot as plt
import pandas as pd

from pipeline.classes import SOURCE_CLASSES, display_colour_of
from pipeline.io import write_bytes_atomic

ALL_GROUP = "all"


def class_counts(
    manifest: pd.DataFrame,
    group_column: str | None = None,
    group_order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Slices and cases per (group, class), every combination listed (zeros included).

    Columns `group, class, slices, cases`. Without `group_column` there is one group, "all".
    Groups come in `group_order` when given (others after it, sorted), classes in the
    project's order with any unknown class names after them, sorted.
    """
    if group_column is not None and group_column not in manifest.columns:
        raise ValueError(f"manifest has no column {group_column!r} to group by")
    groups = (
        manifest[group_column].astype(str)
        if group_column is not None
        else pd.Series(ALL_GROUP, index=manifest.index)
    )
    frame = pd.DataFrame(
        {
            "group": groups,
            "class": manifest["class"].astype(str),
            "case": manifest["class"].astype(str) + "/" + manifest["case_id"].astype(str),
        }
    )
    named = list(group_order or [])
    ordered_groups = named + sorted(set(frame["group"]) - set(named)) or [ALL_GROUP]
    classes = [*SOURCE_CLASSES, *sorted(set(frame["class"]) - set(SOURCE_CLASSES))]
    grouped = frame.groupby(["group", "class"])
    counts = pd.DataFrame({"slices": grouped.size(), "cases": grouped["case"].nunique()})
    full_index = pd.MultiIndex.from_product([ordered_groups, classes], names=["group", "class"])
    return counts.reindex(full_index, fill_value=0).astype("int64").reset_index()


def _draw_bars(axis: plt.Axes, counts: pd.DataFrame, quantity: str, grouped: bool) -> None:
    """Bars of `quantity`: one cluster per group with a bar per class, or one bar per class."""
    groups = list(dict.fromkeys(counts["group"]))
    classes = list(dict.fromkeys(counts["class"]))
    width = 0.8 / len(classes) if grouped else 0.6
    for position, class_name in enumerate(classes):
        values = counts[counts["class"] == class_name].set_index("group")[quantity]
        if grouped:
            centre = (position - (len(classes) - 1) / 2) * width
            offsets = [index + centre for index in range(len(groups))]
        else:
            offsets = [position]
        bars = axis.bar(
            offsets,
            [int(values[group]) for group in groups],
            width,
            label=class_name,
            color=display_colour_of(class_name),
        )
        axis.bar_label(bars, fontsize=8, padding=1)
    if grouped:
        axis.set_xticks(range(len(groups)), groups)
    else:
        axis.set_xticks(range(len(classes)), classes)
    axis.set_title(f"{quantity.capitalize()} per class")
    axis.set_ylabel(quantity)
    axis.margins(y=0.12)
    axis.spines[["top", "right"]].set_visible(False)


def plot_class_counts(
    manifest: pd.DataFrame,
    path: Path | str,
    *,
    group_column: str | None = None,
    group_order: Sequence[str] | None = None,
    title: str = "Dataset statistics",
) -> pd.DataFrame:
    """Draw slices and cases per class (per group) as bar charts into a PNG; return the counts.

    The title gets the totals appended. The PNG carries no software or date metadata, so the
    same counts give a byte-identical file.
    """
    counts = class_counts(manifest, group_column, group_order)
    grouped = group_column is not None
    groups = counts["group"].nunique()
    cases = (manifest["class"].astype(str) + "/" + manifest["case_id"].astype(str)).nunique()
    figure, axes = plt.subplots(1, 2, figsize=(3.0 + 2.0 * groups, 4.0) if grouped else (7, 4))
    try:
        for axis, quantity in zip(axes, ("slices", "cases"), strict=True):
            _draw_bars(axis, counts, quantity, grouped)
        if grouped:
            axes[0].legend(frameon=False)
        figure.suptitle(f"{title}: {len(manifest)} slices, {cases} cases")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    finally:
        plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
    return counts
