"""Drawn lesion sizes of the phantom: per lesion kind, the in-plane size and volume its masks hold.

    .venv/bin/python benchmarks/lesion_sizes.py [--params params.yaml] [--cases 30] [--seed 4] \
        [--kinds KIND ...] [--json OUT.json]

`phantom.lesion_size` sets each kind's size in head units, mm or radians (docs/phantom.md,
"Lesion sizes"); this measures what the phantom then draws, in mm and mL, so that a size
change can be checked against the published figures the docs cite. Per kind (every hemorrhage
subtype of `hemorrhage_subtype_share` and every ischemia territory of
`ischemia_territory_share`, or those of --kinds), --cases single-lesion cases of the kind's class,
planned by the synthesize stage's own code (`plan_cases` with --seed; a case's draws depend on
the seed, its class and its ordinal, not on how many cases there are), built and rendered by
it. The phantom is --params' `phantom.*` but for these pins, printed with the table:
- `head_width_share` [R, R] with R = REFERENCE_HEAD_WIDTH_SHARE (0.66): every head at the
  reference size, so that head units are the same millimetres in every case;
- `slices_per_case` 16, `extra_lesion_probability` 0 (one lesion per case);
- the measured kind's share 1 and every other kind's of its class 0.

Per case, only the lesion's own run of slices is rendered. The middle slice of the run (the
lower one of an even run) gives the equivalent diameter of its lesion area, the diameter of a
disc of that area (mm = px x `pixel_spacing_mm`); the volume is the lesion's pixels on all its
slices x `pixel_spacing_mm`^2 x `slice_thickness_mm` / 1000 (mL); slices are those of the run
holding at least one lesion pixel. Printed per kind, as a markdown table: median [10th-90th
percentile] (numpy's linear interpolation) of each over the cases. A case whose lesion drew no
pixel counts with 0 and is reported ("empty"). Rows are keyed by the `kind` the lesions carry:
a posterior-fossa infarct is one kind whether it lies in a cerebellar hemisphere (a territory,
`Lesion.wedge`) or the brainstem (blobs). Intraventricular blood has no `lesion_size` of
its own (it fills the ventricles' dependent atria below a blood level), so its row measures
how much of them the case's anatomy and level fill. The plan's case counts and ids follow
--cases (ids do not change what a case draws). Cases are spread over `phantom.workers`
processes (0: one per core), with a progress bar on stderr; results do not depend on the
number of workers.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.classes import HEMORRHAGIC, ISCHEMIC  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.parallel import bounded_ordered_map, worker_count  # noqa: E402
from pipeline.params import (  # noqa: E402
    HEMORRHAGE_SUBTYPES,
    ISCHEMIA_TERRITORIES,
    ISCHEMIC_ID_MAX_STEP,
    PhantomParams,
    load_params,
)
from pipeline.synthesize.anatomy import REFERENCE_HEAD_WIDTH_SHARE  # noqa: E402
from pipeline.synthesize.layout import CaseSpec, plan_cases  # noqa: E402
from pipeline.synthesize.rendering import build_case, render_slice  # noqa: E402

DEFAULT_CASES = 30
DEFAULT_SEED = 4
# The most cases of a class whose ids fit the archive's 7 digits from id 0 (PhantomParams).
MAX_CASES = 9_999_999 // ISCHEMIC_ID_MAX_STEP
# Whatever --params says (module docstring); the measured kind's share is 1 besides.
PINS = {
    "head_width_share": (REFERENCE_HEAD_WIDTH_SHARE, REFERENCE_HEAD_WIDTH_SHARE),
    "slices_per_case": 16,
    "extra_lesion_probability": 0.0,
}
KIND_CLASSES = {
    **{kind: HEMORRHAGIC for kind in HEMORRHAGE_SUBTYPES},
    **{kind: ISCHEMIC for kind in ISCHEMIA_TERRITORIES},
}
SHARE_FIELDS = {HEMORRHAGIC: "hemorrhage_subtype_share", ISCHEMIC: "ischemia_territory_share"}
PERCENTILES = (10.0, 90.0)


def single_kind_phantom(
    phantom: PhantomParams, kind: str, cases: int, pins: dict[str, object]
) -> PhantomParams:
    """`phantom` with `pins` and `cases` cases of `kind`'s class, all of `kind` (its share 1,
    the class's other kinds' 0), numbered from 0; validated as params.yaml's phantom is."""
    share_field = SHARE_FIELDS[KIND_CLASSES[kind]]
    update = {
        **pins,
        share_field: {name: float(name == kind) for name in getattr(phantom, share_field)},
        # How many cases the plan holds and their ids, not what they draw.
        "hemorrhagic_cases": cases,
        "ischemic_cases": cases,
        "hemorrhagic_cases_without_mask": 0,
        "testing_cases_per_class": 0,
        "first_hemorrhagic_case": 0,
        "first_ischemic_case": 0,
    }
    return PhantomParams.model_validate({**phantom.model_dump(), **update})


@dataclass(frozen=True)
class CaseSize:
    kind: str  # the kind the case's lesion carries
    middle_area_px: int
    total_area_px: int
    slices: int  # slices of the lesion's run holding at least one lesion pixel


def measure_case(task: tuple[CaseSpec, PhantomParams]) -> CaseSize:
    """Build the case and render its lesion's run of slices (the pins leave one lesion)."""
    spec, params = task
    case = build_case(spec, params)
    (lesion,) = case.lesions
    areas_px = [
        int(np.count_nonzero(render_slice(case, index).lesion))
        for index in range(lesion.first, lesion.last + 1)
    ]
    return CaseSize(
        kind=lesion.kind,
        middle_area_px=areas_px[(lesion.last - lesion.first) // 2],
        total_area_px=sum(areas_px),
        slices=sum(area > 0 for area in areas_px),
    )


def spread(values: Sequence[float]) -> dict[str, float]:
    low, high = np.percentile(np.asarray(values, dtype=np.float64), PERCENTILES)
    return {"median": float(np.median(values)), "p10": float(low), "p90": float(high)}


def kind_row(sizes: Sequence[CaseSize], params: PhantomParams) -> dict:
    spacing_mm = params.pixel_spacing_mm
    diameters_mm = [2.0 * math.sqrt(size.middle_area_px / math.pi) * spacing_mm for size in sizes]
    volumes_ml = [
        size.total_area_px * spacing_mm**2 * params.slice_thickness_mm / 1000.0 for size in sizes
    ]
    return {
        "class": KIND_CLASSES[sizes[0].kind],
        "cases": len(sizes),
        "empty_cases": sum(size.total_area_px == 0 for size in sizes),
        "diameter_mm": spread(diameters_mm),
        "volume_ml": spread(volumes_ml),
        "slices": spread([size.slices for size in sizes]),
    }


def measure(phantom: PhantomParams, kinds: Sequence[str], cases: int, seed: int) -> dict:
    """Every kind's row, keyed by the kind its lesions carry, with the pins."""
    tasks = []
    for kind in kinds:
        params = single_kind_phantom(phantom, kind, cases, PINS)  # the module docstring's pins
        tasks += [
            (spec, params)
            for spec in plan_cases(params, seed)
            if spec.class_name == KIND_CLASSES[kind]
        ]
    measured = bounded_ordered_map(
        measure_case,
        tasks,
        workers=phantom.workers,
        window=2 * worker_count(phantom.workers),
        description="lesion sizes",
        total=len(tasks),
        unit="case",
    )
    by_kind: dict[str, list[CaseSize]] = {}
    for size in measured:
        by_kind.setdefault(size.kind, []).append(size)
    return {
        "seed": seed,
        "pins": {**PINS, "measured_kind_share": 1.0},
        "pixel_spacing_mm": phantom.pixel_spacing_mm,
        "slice_thickness_mm": phantom.slice_thickness_mm,
        "kinds": {kind: kind_row(sizes, phantom) for kind, sizes in by_kind.items()},
    }


def format_spread(values: dict[str, float], decimals: int) -> str:
    median, low, high = (f"{values[name]:.{decimals}f}" for name in ("median", "p10", "p90"))
    return f"{median} [{low}-{high}]"


def volume_decimals(volume_ml: dict[str, float]) -> int:
    """Two significant figures or so: whole mL from 10 mL up, tenths below."""
    return 0 if volume_ml["median"] >= 10.0 else 1


def format_table(result: dict) -> str:
    lines = [
        "| kind | class | cases | diameter mm | volume mL | slices |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind, row in result["kinds"].items():
        cases = f"{row['cases']}" + (f" ({row['empty_cases']} empty)" if row["empty_cases"] else "")
        lines.append(
            f"| {kind} | {row['class']} | {cases} | {format_spread(row['diameter_mm'], 0)} | "
            f"{format_spread(row['volume_ml'], volume_decimals(row['volume_ml']))} | "
            f"{format_spread(row['slices'], 0)} |"
        )
    pins = ", ".join(
        f"{name} {list(value) if isinstance(value, tuple | list) else value}"
        for name, value in result["pins"].items()
    )
    lines += [
        "",
        "median [10th-90th percentile] per kind: diameter of a disc of the middle slice's lesion "
        "area; volume of the lesion's pixels on all its slices; slices holding it",
        f"phantom: {result['params']} `phantom.*` (pixel_spacing_mm "
        f"{result['pixel_spacing_mm']:g}, "
        f"slice_thickness_mm {result['slice_thickness_mm']:g}); pinned (head_width_share: the "
        f"reference head): {pins}; plan seed {result['seed']}",
    ]
    return "\n".join(lines)


def parse_kind_arguments(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    default_cases: int,
    default_seed: int,
    verb: str,
) -> argparse.Namespace:
    """`parser`'s arguments with --cases, --seed, --kinds and --json added (the options of the
    benchmarks that plan single-kind cases); --cases must let the case ids fit."""
    parser.add_argument(
        "--cases", type=int, default=default_cases, help=f"per kind (default {default_cases})"
    )
    parser.add_argument(
        "--seed", type=int, default=default_seed, help=f"plan seed (default {default_seed})"
    )
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=list(KIND_CLASSES),
        default=list(KIND_CLASSES),
        metavar="KIND",
        help=f"lesion kinds to {verb} (default: all)",
    )
    parser.add_argument("--json", type=Path, help="write the table's figures here")
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.cases <= MAX_CASES:
        parser.error(f"--cases must be 1-{MAX_CASES} (the phantom's case ids must fit)")
    return arguments


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument(
        "--params", type=Path, default=ROOT / "params.yaml", help="its phantom.* is measured"
    )
    arguments = parse_kind_arguments(parser, argv, DEFAULT_CASES, DEFAULT_SEED, "measure")
    try:
        phantom = load_params(arguments.params).phantom
        kinds = list(dict.fromkeys(arguments.kinds))  # each once, in the order given
        result = {
            "params": str(arguments.params),
            **measure(phantom, kinds, arguments.cases, arguments.seed),
        }
    except ValueError as error:  # ParamsError, or pins the file's phantom cannot take
        sys.exit(f"lesion_sizes: {error}")
    print(format_table(result))
    if arguments.json:
        write_json(arguments.json, result)
    return result


if __name__ == "__main__":
    main()
