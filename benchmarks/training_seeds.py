"""Spread of the model over training seeds: the train and evaluate stages' own code per seed.

    .venv/bin/python benchmarks/training_seeds.py [--seeds 1 2 3] [--params params.yaml] \
        [--real DIR] [--output DIR] [--json OUT.json]

Run it in a project workspace after `dvc repro`: it reads what the train and evaluate stages
read (data/augmented, data/split and the colorized slices they point to). params.yaml's `seed`
drives the phantom, the split and augmentation as well as training, so `dvc exp run -S seed=N`
changes the data too; here the data stay and only training's seed changes. Per seed, each in its
own process (a fresh TensorFlow state):
- the train stage's `pipeline.model.training.train_model` with the params of --params but
  `seed` (weight initialisation, and the order and flips of the training stream);
- the evaluate stage's `pipeline.evaluate.run.run_evaluation` of that model, with the params
  unchanged (so the bootstrap intervals draw the same resamples for every seed);
- with --real DIR, benchmarks/real_transfer.py on that model (the new-images command, scored).
A seed's files (model.keras, train.json, evaluate.json, cases.csv, confusion.csv, dvclive/,
reports/, real_transfer.json) go to OUTPUT/seed_<N>/, made under a temporary name and renamed
when complete; the workspace's models/, metrics/, dvclive/ and reports/ are never written.
OUTPUT is a temporary folder unless --output names one.

Printed per seed, then the mean, sample SD (n - 1) and min-max over the seeds: the best epoch,
the epochs run, training seconds and the validation Dice per class (train.json; per slice, on
the phantom's validation split); the per-patient test figures of evaluate.json (dice_<class>
with its 95% bootstrap interval, triage_auc_<class>, lesion_f1_<class>; phantom test cases);
with --real, the transfer check's pooled Dice and slices hit per class on the real slices.
A seed that fails is reported and left out; the exit status is then 1. Training is
reproducible on one machine only (docs/determinism.md): compare seeds run on one machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.realism import aligned_table  # noqa: E402
from pipeline.io import DataError, atomic_path, read_json_object, write_json  # noqa: E402
from pipeline.params import ParamsError, load_params  # noqa: E402

DEFAULT_SEEDS = (1, 2, 3)
TRAIN_METRICS = "train.json"
EVALUATE_METRICS = "evaluate.json"
TRANSFER_METRICS = "real_transfer.json"
# The test split the evaluate stage reads (stages/evaluate.py).
SPLIT_MANIFEST = Path("data/split/manifest.csv")


def seed_folder(output: Path, seed: int) -> Path:
    return output / f"seed_{seed}"


# ------------------------------------------------------------------ one seed (child process)
def train_and_evaluate(params_path: Path, seed: int, folder: Path, real: Path | None) -> None:
    """Train with `seed`, evaluate, and with `real` run the transfer check; all into `folder`.

    The runtime is configured once, first, as stages/train.py does: this is the whole process.
    """
    from benchmarks import real_transfer
    from pipeline.evaluate.run import run_evaluation
    from pipeline.model.distribute import start_distribution
    from pipeline.model.training import TrainPaths, configure_runtime, train_model
    from stages.common import configure_logging

    configure_logging()
    params = load_params(params_path)
    seeded = params.model_copy(update={"seed": seed})
    configure_runtime(seeded)
    distribution = start_distribution(seeded.train.strategy)
    with atomic_path(folder) as scratch:
        paths = TrainPaths(
            model=scratch / "model.keras",
            backup_dir=scratch / "backup_train",
            reports_dir=scratch / "reports" / "train",
            metrics=scratch / TRAIN_METRICS,
            dvclive_dir=scratch / "dvclive",
        )
        train_model(seeded, paths, distribution)
        run_evaluation(
            params,
            manifest_path=SPLIT_MANIFEST,
            model_path=paths.model,
            report_dir=scratch / "reports" / "evaluate",
            metrics_path=scratch / EVALUATE_METRICS,
            confusion_path=scratch / "confusion.csv",
            cases_path=scratch / "cases.csv",
        )
        if real is not None:
            real_transfer.main(
                [
                    *("--real", str(real), "--model", str(paths.model)),
                    *("--params", str(params_path), "--output", str(scratch / "real_predictions")),
                    *("--json", str(scratch / TRANSFER_METRICS)),
                ]
            )


def run_seed(arguments: argparse.Namespace, seed: int, folder: Path) -> int:
    """`train_and_evaluate` in a child process; its output goes to stderr. Its exit status."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one-seed", str(seed)]
    command += ["--seed-folder", str(folder), "--params", str(arguments.params.resolve())]
    if arguments.real:
        command += ["--real", str(arguments.real.resolve())]
    print(f"seed {seed}: training and evaluating into {folder}", file=sys.stderr, flush=True)
    return subprocess.run(command, stdout=sys.stderr, check=False).returncode


# -------------------------------------------------------------------------------- figures
def sections(labels: Sequence[str], real: Path | None) -> list[tuple[str, tuple[str, ...]]]:
    """(heading, figure keys) of the table, in order; the keys are those of the JSON files."""
    chosen = [
        (
            "training: the phantom's validation split, per slice (train.json)",
            (
                "best_epoch",
                "epochs",
                "training_s",
                *(f"val_dice_{label}" for label in labels),
                "val_dice_mean",
            ),
        ),
        (
            "phantom test cases, per patient (evaluate.json; ci: 95% bootstrap interval)",
            tuple(
                key
                for label in labels
                for key in (
                    f"dice_{label}",
                    f"dice_{label}_ci_low",
                    f"dice_{label}_ci_high",
                    f"triage_auc_{label}",
                    f"lesion_f1_{label}",
                )
            ),
        ),
    ]
    if real is not None:
        chosen.append(
            (
                f"real slices of {real}, all sources (benchmarks/real_transfer.py)",
                real_figure_keys(labels),
            )
        )
    return chosen


def real_figure_keys(labels: Sequence[str]) -> tuple[str, ...]:
    """The transfer check's figures of the table (a run with --real), per lesion label."""
    return tuple(
        key for label in labels for key in (f"real_pooled_dice_{label}", f"real_slices_hit_{label}")
    )


def seed_figures(folder: Path, labels: Sequence[str], real: Path | None) -> dict[str, object]:
    """One seed's figures, read from the files its process wrote."""
    figures = read_json_object(folder / TRAIN_METRICS) | read_json_object(folder / EVALUATE_METRICS)
    if real is not None:
        transfer = read_json_object(folder / TRANSFER_METRICS)["scores"]["all"]
        for label in labels:
            figures[f"real_pooled_dice_{label}"] = transfer[label]["pooled_dice"]
            figures[f"real_slices_hit_{label}"] = transfer[label]["slices_hit"]
            figures[f"real_slices_{label}"] = transfer[label]["slices"]
    return figures


def spread(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean, sample SD and range over the seeds with a value (a null is not a zero)."""
    present = [value for value in values if value is not None]
    return {
        "seeds": len(present),
        "mean": statistics.fmean(present) if present else None,
        "sd": statistics.stdev(present) if len(present) > 1 else None,
        "min": min(present, default=None),
        "max": max(present, default=None),
    }


def format_figure(key: str, value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.0f}" if key.endswith("_s") else f"{value:.3f}"


def format_report(result: dict) -> str:
    seeds = list(result["figures"])
    header = ("figure", *(f"seed {seed}" for seed in seeds), "mean", "SD", "min", "max")
    lines: list[str] = []
    for heading, keys in result["sections"]:
        rows = [header]
        for key in keys:
            values = [result["figures"][seed].get(key) for seed in seeds]
            values += [result["spread"][key][name] for name in ("mean", "sd", "min", "max")]
            rows.append((key, *(format_figure(key, value) for value in values)))
        lines += [heading, *aligned_table(rows), ""]
    first = result["figures"][seeds[0]]  # the test cases and real slices are those of every seed
    labels = result["labels"]
    lines.append(
        "phantom figures: the training and test rows come from the phantom's validation slices "
        "and test cases ("
        + ", ".join(f"{first.get(f'test_cases_{label}')} {label}" for label in labels)
        + " test cases), not from real CT"
    )
    if result["real"]:
        lines.append(
            "real rows: slices hit = slices with Dice > 0, of "
            + ", ".join(f"{first.get(f'real_slices_{label}')} {label}" for label in labels)
            + " slices holding the class"
        )
    lines.append(
        "SD: sample SD over the seeds (n - 1); mean, SD, min and max over the seeds with a "
        "value; -: null (its reason is in the seed's evaluate.json)"
    )
    if result["failed"]:
        lines.append(f"failed seeds (left out): {', '.join(map(str, result['failed']))}")
    return "\n".join(lines)


def measure(arguments: argparse.Namespace, labels: Sequence[str], output: Path) -> dict:
    chosen = sections(labels, arguments.real)
    figures: dict[str, dict[str, object]] = {}
    failed: dict[str, int] = {}
    started = time.perf_counter()
    for seed in arguments.seeds:
        folder = seed_folder(output, seed).resolve()
        status = run_seed(arguments, seed, folder)
        if status:
            print(f"seed {seed}: failed (exit status {status})", file=sys.stderr)
            failed[str(seed)] = status
            continue
        figures[str(seed)] = seed_figures(folder, labels, arguments.real)
    keys = [key for _, section_keys in chosen for key in section_keys]
    return {
        "params": str(arguments.params),
        "workspace": str(Path.cwd()),
        "output": str(arguments.output) if arguments.output else None,
        "real": str(arguments.real) if arguments.real else None,
        "labels": list(labels),
        "sections": chosen,
        "figures": figures,
        "spread": {key: spread([row.get(key) for row in figures.values()]) for key in keys},
        "failed": failed,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def seed_number(text: str) -> int:
    """A training seed: params.yaml's `seed` is a non-negative integer."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: a seed is a non-negative integer")
    return value


def main(argv: Sequence[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--seeds", type=seed_number, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--real", type=Path, help="also score each model on these real slices")
    parser.add_argument("--output", type=Path, help="keep each seed's files here")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--one-seed", type=seed_number, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--seed-folder", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if len(set(arguments.seeds)) != len(arguments.seeds):
        parser.error(f"--seeds {arguments.seeds}: each seed once (one folder per seed)")
    try:
        if arguments.one_seed is not None:
            train_and_evaluate(
                arguments.params, arguments.one_seed, arguments.seed_folder, arguments.real
            )
            return None
        # A params error stops here, not once per seed.
        labels = [lesion.label for lesion in load_params(arguments.params).lesion_classes]
        with tempfile.TemporaryDirectory(prefix="training-seeds-") as scratch:
            result = measure(arguments, labels, arguments.output or Path(scratch))
    except (DataError, ParamsError) as error:
        sys.exit(f"training_seeds: {error}")
    if not result["figures"]:
        sys.exit("training_seeds: every seed failed (their messages are above)")
    print(format_report(result))
    if arguments.json:
        write_json(arguments.json, result)
    if result["failed"]:
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
