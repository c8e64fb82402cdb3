"""Which of the phantom's lesion kinds a trained model finds: its Dice per kind on fresh cases.

    .venv/bin/python benchmarks/lesion_kinds.py [--params params.yaml] \
        [--model models/model.keras] [--cases 10] [--seed 7] [--kinds KIND ...] [--json OUT.json]

The evaluate stage scores a model per patient and per class; a class's figure is then mostly
that of its commonest, largest kind (the middle cerebral territory holds about two thirds of the
phantom's infarct slices), and a kind the model never learned hides in it. This scores the
model per kind: for every hemorrhage subtype and ischemia territory (or those of --kinds),
--cases cases holding one lesion of that kind and nothing else, planned with plan seed --seed
(it must differ from params.yaml's `seed`, the plan of the cases the model was trained on, so
these cases are new ones), built and rendered by the synthesize stage's own code with the rest
of --params' `phantom.*` as it is (pose, window, noise, anatomy drawn per case as always).
The pins, as in benchmarks/lesion_sizes.py but without its reference head:
`extra_lesion_probability` 0, the kind's share 1 and every other kind's of its class 0.

Each slice of the lesion's run that holds lesion pixels is windowed to 8 bits as synthesize
writes it and segmented as the new-images command segments a loose slice
(`pipeline.infer.inference.Segmenter.segment_slices`: cropped round its head by `head_crop`,
shrunk to the model's size, its probabilities enlarged back, argmax). Per kind, over those slices,
for the kind's class (the case's class):
- pooled Dice (`pipeline.evaluate.measures.dice` of the pixel counts summed over the slices),
  and the same over the brain-window slices and over the wide-export ones
  (`phantom.wide_window_share`);
- mean slice Dice and slices hit (Dice above 0);
- called other class: the share of the lesion's pixels predicted as the other lesion class.
Printed as a markdown table; --json writes the figures. Phantom figures: they say what the model
learned of each kind the phantom draws, not how it does on real CT (benchmarks/real_transfer.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.lesion_sizes import (  # noqa: E402
    KIND_CLASSES,
    parse_kind_arguments,
    single_kind_phantom,
)
from pipeline.evaluate.measures import (  # noqa: E402
    NO_OVERLAP,
    OverlapCounts,
    dice,
    overlap_counts,
)
from pipeline.infer.inference import Segmenter  # noqa: E402
from pipeline.io import DataError, window_to_uint8, write_json  # noqa: E402
from pipeline.params import PhantomParams, load_params  # noqa: E402
from pipeline.synthesize.layout import plan_cases  # noqa: E402
from pipeline.synthesize.rendering import build_case, render_slice  # noqa: E402

DEFAULT_CASES = 10
DEFAULT_SEED = 7
WINDOW_GROUPS = ("brain_window", "wide_export")  # a slice's export (phantom.wide_window_share)
PINS = {"extra_lesion_probability": 0.0}  # and the kind's share 1 (module docstring)


@dataclass(frozen=True)
class RenderedSlice:
    grey: np.ndarray  # uint8, as synthesize writes it
    lesion: np.ndarray  # bool
    wide_export: bool


@dataclass
class KindScore:
    """A kind's sums over its slices, per window group; the totals are the groups' sums."""

    class_name: str
    cases: int = 0
    slices_by_window: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(WINDOW_GROUPS, 0)
    )
    counts_by_window: dict[str, OverlapCounts] = field(
        default_factory=lambda: dict.fromkeys(WINDOW_GROUPS, NO_OVERLAP)
    )
    slices_hit: int = 0
    slice_dice_sum: float = 0.0
    other_class_px: int = 0

    def add(self, counts: OverlapCounts, other_class_px: int, wide_export: bool) -> None:
        group = WINDOW_GROUPS[wide_export]
        self.slices_by_window[group] += 1
        self.counts_by_window[group] += counts
        slice_dice = dice(counts) or 0.0
        self.slice_dice_sum += slice_dice
        self.slices_hit += slice_dice > 0.0
        self.other_class_px += other_class_px

    @property
    def slices(self) -> int:
        return sum(self.slices_by_window.values())

    def row(self) -> dict:
        pooled = sum(self.counts_by_window.values(), NO_OVERLAP)
        return {
            "class": self.class_name,
            "cases": self.cases,
            "slices": self.slices,
            "pooled_dice": dice(pooled),
            **{
                f"pooled_dice_{group}": dice(counts)
                for group, counts in self.counts_by_window.items()
            },
            "slices_by_window": dict(self.slices_by_window),
            "mean_slice_dice": self.slice_dice_sum / self.slices if self.slices else None,
            "slices_hit": self.slices_hit,
            "called_other_class_share": (
                self.other_class_px / pooled.truth if pooled.truth else None
            ),
        }


def lesion_slices(
    phantom: PhantomParams, kind: str, cases: int, seed: int
) -> Iterator[tuple[int, RenderedSlice]]:
    """(case ordinal, slice) for every lesion-holding slice of the kind's cases."""
    params = single_kind_phantom(phantom, kind, cases, PINS)
    specs = [spec for spec in plan_cases(params, seed) if spec.class_name == KIND_CLASSES[kind]]
    for ordinal, spec in enumerate(specs):
        case = build_case(spec, params)
        (lesion,) = case.lesions
        for index in range(lesion.first, lesion.last + 1):
            rendered = render_slice(case, index)
            if not rendered.lesion.any():
                continue
            grey = window_to_uint8(rendered.hu, rendered.window_level_hu, rendered.window_width_hu)
            yield ordinal, RenderedSlice(grey, rendered.lesion > 0, case.acquisition.wide_export)


def score_kinds(
    segment: Callable[[list[np.ndarray]], list[np.ndarray]],
    phantom: PhantomParams,
    class_index: dict[str, int],
    kinds: Sequence[str],
    cases: int,
    seed: int,
) -> dict[str, dict]:
    """Each kind's row; `segment` maps a list of uint8 slices to class-index masks."""
    rows = {}
    for kind in kinds:
        class_name = KIND_CLASSES[kind]
        score = KindScore(class_name)
        seen_cases = set()
        for ordinal, item in lesion_slices(phantom, kind, cases, seed):
            seen_cases.add(ordinal)
            (labels,) = segment([item.grey])
            target = class_index[class_name]
            counts = overlap_counts(item.lesion, labels == target)
            other_px = int(np.count_nonzero(item.lesion & (labels != 0) & (labels != target)))
            score.add(counts, other_px, item.wide_export)
        score.cases = len(seen_cases)
        rows[kind] = score.row()
        print(f"{kind}: {score.slices} slices", file=sys.stderr)
    return rows


def format_number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(result: dict) -> str:
    lines = [
        "| kind | class | cases | slices | pooled Dice | brain window / wide export | "
        "mean slice Dice | slices hit | called other class |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, row in result["kinds"].items():
        other = row["called_other_class_share"]
        lines.append(
            f"| {kind} | {row['class']} | {row['cases']} | {row['slices']} | "
            f"{format_number(row['pooled_dice'])} | "
            f"{format_number(row['pooled_dice_brain_window'])} / "
            f"{format_number(row['pooled_dice_wide_export'])} | "
            f"{format_number(row['mean_slice_dice'])} | {row['slices_hit']} | "
            f"{'-' if other is None else f'{100 * other:.1f} %'} |"
        )
    lines += [
        "",
        f"phantom figures: model {result['model']} on {result['cases_per_kind']} new cases per "
        f"kind (plan seed {result['seed']}; one lesion a case) of {result['params']} `phantom.*`",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "model.keras")
    arguments = parse_kind_arguments(parser, argv, DEFAULT_CASES, DEFAULT_SEED, "score")
    try:
        params = load_params(arguments.params)
        if arguments.seed == params.seed:
            parser.error(
                f"--seed {arguments.seed} is {arguments.params}'s `seed`, the plan the model was "
                "trained on: pick another so that the cases are new"
            )
        segmenter = Segmenter.from_file(
            arguments.model, params.infer.batch_size, max_head_zoom=params.head_crop.max_zoom
        )
        class_index = {lesion.name: lesion.index for lesion in params.lesion_classes}
        kinds = list(dict.fromkeys(arguments.kinds))
        result = {
            "params": str(arguments.params),
            "model": str(arguments.model),
            "seed": arguments.seed,
            "cases_per_kind": arguments.cases,
            "kinds": score_kinds(
                segmenter.segment_slices,
                params.phantom,
                class_index,
                kinds,
                arguments.cases,
                arguments.seed,
            ),
        }
    except (ValueError, DataError) as error:  # ParamsError, a pin the phantom refuses, a model
        sys.exit(f"lesion_kinds: {error}")
    print(format_table(result))
    if arguments.json:
        write_json(arguments.json, result)
    return result


if __name__ == "__main__":
    main()
