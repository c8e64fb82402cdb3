"""Two sets of training seeds side by side: is a change larger than the spread over seeds?

    .venv/bin/python benchmarks/seed_compare.py --baseline RUN [RUN ...] --candidate RUN [RUN ...] \
        [--figures KEY ...] [--json OUT.json]

A RUN is what benchmarks/training_seeds.py leaves: its --json file (every seed's figures), or
one seed's folder from its --output (OUTPUT/seed_N/, holding train.json, evaluate.json and, when
it was run with --real, real_transfer.json). Each side pools the seeds of its runs; a seed
given twice on one side is an error (the same training counted twice).

One training of the default model moves the figures of the development set as much as most
changes do (docs/phantom.md, "Over training seeds": the real infarct's Dice spreads 0.00-0.42
over nine seeds of one model), so a change is judged on several seeds a side, and this says
whether the difference is more than the seeds' own spread. Per figure (by default every figure
of training_seeds' tables that both sides hold), over the seeds with a value (a null is left
out, not taken as 0): each side's mean, SD (n - 1) and count, the difference of the means
(candidate - baseline), and a two-sided permutation p-value: the share of the ways of dealing
the pooled values into groups of the two sides' sizes whose difference of means lies at least
as far from 0 as the observed one (the observed split among them). Every split is counted when
there are at most EXACT_SPLITS_MAX of them, else RANDOM_SPLITS random ones (numpy's generator,
seed 0) and the observed one. The seeds are taken as independent draws, not paired by number
(the same seed on two phantoms is not the same draw). Beside each p, the smallest p its
numbers of seeds can give: 0.1 for three seeds against three, so a change is never shown by
three seeds a side; 0.008 for seven against three.

Printed as an aligned table; --json writes the same figures.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.realism import aligned_table  # noqa: E402
from benchmarks.training_seeds import (  # noqa: E402
    EVALUATE_METRICS,
    TRAIN_METRICS,
    TRANSFER_METRICS,
    format_figure,
    real_figure_keys,
    sections,
    seed_figures,
    spread,
)
from pipeline.io import DataError, read_json_object, write_json  # noqa: E402

EXACT_SPLITS_MAX = 200_000
RANDOM_SPLITS = 100_000
# Differences of means within this share of the observed one count as equal to it, so that a
# split whose difference equals the observed one up to float rounding is counted (as scipy's
# permutation_test does, with its own tolerance).
TIE_TOLERANCE = 1e-9
SEED_FOLDER_PREFIX = "seed_"


def read_run(path: Path) -> dict[str, dict[str, object]]:
    """{seed: figures} of one run: a training_seeds --json file or one seed's folder."""
    if path.is_dir():
        if not path.name.startswith(SEED_FOLDER_PREFIX) or not (path / TRAIN_METRICS).is_file():
            raise DataError(
                f"{path}: not a seed folder of training_seeds.py --output (seed_N/ with "
                f"{TRAIN_METRICS})"
            )
        seed = path.name.removeprefix(SEED_FOLDER_PREFIX)
        labels = lesion_labels([read_json_object(path / EVALUATE_METRICS)])
        real = path if (path / TRANSFER_METRICS).is_file() else None
        return {seed: seed_figures(path, labels, real)}
    result = read_json_object(path)
    figures = result.get("figures")
    if not isinstance(figures, dict) or not all(isinstance(row, dict) for row in figures.values()):
        raise DataError(f"{path}: no 'figures' of seeds (is it a training_seeds.py --json file?)")
    return figures


def lesion_labels(seeds_figures: Sequence[dict[str, object]]) -> list[str]:
    """The lesion labels the evaluate figures name (test_cases_<label>), in their order."""
    prefix = "test_cases_"
    labels = (
        key.removeprefix(prefix) for row in seeds_figures for key in row if key.startswith(prefix)
    )
    return list(dict.fromkeys(labels))


def pooled_seeds(paths: Sequence[Path], side: str) -> dict[str, dict[str, object]]:
    """The seeds of one side's runs; a seed in two runs of a side is refused."""
    seeds: dict[str, dict[str, object]] = {}
    for path in paths:
        for seed, figures in read_run(path).items():
            if seed in seeds:
                raise DataError(f"--{side}: seed {seed} is given twice ({path} holds it again)")
            seeds[seed] = figures
    return seeds


def permutation_p_value(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """Two-sided permutation p-value of the difference of means (module docstring)."""
    values = np.asarray([*baseline, *candidate], dtype=np.float64)
    size, chosen = len(values), len(candidate)
    total = values.sum()

    def mean_differences(candidate_sums: np.ndarray) -> np.ndarray:
        return candidate_sums / chosen - (total - candidate_sums) / (size - chosen)

    observed = abs(float(mean_differences(np.asarray(values[len(baseline) :].sum()))))
    threshold = observed * (1.0 - TIE_TOLERANCE)
    if math.comb(size, chosen) <= EXACT_SPLITS_MAX:
        splits = np.fromiter(
            itertools.chain.from_iterable(itertools.combinations(range(size), chosen)),
            dtype=np.int64,
        ).reshape(-1, chosen)
        differences = np.abs(mean_differences(values[splits].sum(axis=1)))
        return float(np.count_nonzero(differences >= threshold) / len(splits))
    generator = np.random.default_rng(0)
    order = generator.permuted(np.tile(np.arange(size), (RANDOM_SPLITS, 1)), axis=1)
    differences = np.abs(mean_differences(values[order[:, :chosen]].sum(axis=1)))
    return float((np.count_nonzero(differences >= threshold) + 1) / (RANDOM_SPLITS + 1))


def smallest_p_value(baseline_size: int, candidate_size: int) -> float:
    """The p-value of the most extreme split the sizes allow, every split counted: the
    highest values all on one side is 1 split of them all; 2 when the sides are the same size,
    where that split and its mirror image lie equally far from 0."""
    splits = math.comb(baseline_size + candidate_size, candidate_size)
    return min(1.0, (2 if baseline_size == candidate_size else 1) / splits)


def compare_figure(baseline: Sequence[float], candidate: Sequence[float]) -> dict[str, object]:
    row: dict[str, object] = {"baseline": spread(baseline), "candidate": spread(candidate)}
    if baseline and candidate:
        row["difference"] = row["candidate"]["mean"] - row["baseline"]["mean"]
        row["p_value"] = permutation_p_value(baseline, candidate)
        row["smallest_p_value"] = smallest_p_value(len(baseline), len(candidate))
    else:
        row["difference"] = row["p_value"] = row["smallest_p_value"] = None
    return row


def default_figures(baseline: dict, candidate: dict) -> list[str]:
    """training_seeds' table figures (with the real rows), in its order, that both sides hold."""
    labels = lesion_labels([*baseline.values(), *candidate.values()])
    keys = [key for _, section in sections(labels, None) for key in section]
    keys += real_figure_keys(labels)
    return [
        key
        for key in keys
        if any(key in figures for figures in baseline.values())
        and any(key in figures for figures in candidate.values())
    ]


def compare(baseline: dict, candidate: dict, figures: Sequence[str]) -> dict[str, dict]:
    for key in figures:
        if not any(key in row for row in (*baseline.values(), *candidate.values())):
            raise DataError(f"figure {key}: on no seed of either side")

    def values(side: dict, key: str) -> list[float]:
        present = [row[key] for row in side.values() if row.get(key) is not None]
        if not all(
            isinstance(value, int | float) and not isinstance(value, bool) for value in present
        ):
            raise DataError(f"figure {key}: not a number on every seed ({present})")
        return [float(value) for value in present]

    return {key: compare_figure(values(baseline, key), values(candidate, key)) for key in figures}


def format_report(result: dict) -> str:
    header = (
        "figure",
        "baseline mean (SD, n)",
        "candidate mean (SD, n)",
        "difference",
        "p (least)",
    )

    def side(key: str, row: dict) -> str:
        return (
            f"{format_figure(key, row['mean'])} ({format_figure(key, row['sd'])}, {row['seeds']})"
        )

    rows = [header]
    for key, row in result["figures"].items():
        difference = "-" if row["difference"] is None else f"{row['difference']:+.3f}"
        p_value = (
            "-"
            if row["p_value"] is None
            else f"{row['p_value']:.3f} ({row['smallest_p_value']:.3f})"
        )
        rows.append(
            (key, side(key, row["baseline"]), side(key, row["candidate"]), difference, p_value)
        )
    return "\n".join(
        [
            *aligned_table(rows),
            "",
            f"baseline seeds {', '.join(result['baseline_seeds'])}; candidate seeds "
            f"{', '.join(result['candidate_seeds'])}",
            "difference: candidate mean - baseline mean; p: two-sided permutation p-value of "
            "the difference of means over the seeds with a value (seeds unpaired); least: the "
            "smallest p those numbers of seeds can give (0.100 for 3 against 3)",
        ]
    )


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--baseline", type=Path, nargs="+", required=True)
    parser.add_argument("--candidate", type=Path, nargs="+", required=True)
    parser.add_argument("--figures", nargs="+", help="figure keys (default: every shared one)")
    parser.add_argument("--json", type=Path, help="write the comparison here")
    arguments = parser.parse_args(argv)
    try:
        baseline = pooled_seeds(arguments.baseline, "baseline")
        candidate = pooled_seeds(arguments.candidate, "candidate")
        figures = arguments.figures or default_figures(baseline, candidate)
        result = {
            "baseline_runs": [str(path) for path in arguments.baseline],
            "candidate_runs": [str(path) for path in arguments.candidate],
            "baseline_seeds": list(baseline),
            "candidate_seeds": list(candidate),
            "figures": compare(baseline, candidate, figures),
        }
    except DataError as error:
        sys.exit(f"seed_compare: {error}")
    print(format_report(result))
    if arguments.json:
        write_json(arguments.json, result)
    return result


if __name__ == "__main__":
    main()
