"""The `extract` stage at 512 px: one process against `extract.workers` processes, side by side.

Synthesizes a 512-px phantom archive (PHANTOM_512: 8 cases of 16 slices in Training) into a
temporary folder, or takes `--archive`, and builds a copy SCALE times larger (its Training
cases repeated under new case names) to show whether peak memory grows with the number of
pairs. On each archive it runs extract with `workers: 1` (in-process, the code path of the
single-process stage) and `--workers` (0: one per core), each in its own process, and reports
wall and CPU seconds (the whole process tree), pairs/s, pairs per CPU-second and peak RSS
(`kaggle_scale.run_measured`: the tree's sum and its largest process, sampled every 50 ms).
It stops if the two runs' outputs (every image and mask, manifest, report, metrics) differ
by a byte.

    nice -n 10 .venv/bin/python benchmarks/extract_speed.py [--archive ZIP] [--workers N]

About a minute on 2 cores. The last line is JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.kaggle_scale import run_measured  # noqa: E402
from pipeline.synthesize.archive import synthesize_archive  # noqa: E402
from tests.conftest import project_params  # noqa: E402

PHANTOM_512 = {
    "image_size": 512,
    "hemorrhagic_cases": 4,
    "ischemic_cases": 4,
    "slices_per_case": 16,
    "hemorrhagic_cases_without_mask": 0,
    "testing_cases_per_class": 0,
}
SCALE = 4
TIMEOUT_S = 1800

RUNNER = """
import json, sys
from pathlib import Path
from pipeline.data.extract import extract_archive
from pipeline.params import ExtractParams

out = Path(sys.argv[1])
extract_archive(ExtractParams(**json.loads(sys.argv[2])), out / "extracted",
                out / "extract_report.txt", out / "extract.json")
"""


def scaled_copy(archive: Path, path: Path, copies: int) -> Path:
    """`archive` with each CT Training case folder repeated `copies` times (`<case>-c<n>`):
    copies x the pairs, the same member bytes otherwise."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            parts = info.filename.split("/")
            training = "CT Images" in parts and "Training" in parts  # .../<case>/<slice>.png
            data = source.read(info)
            for copy in range(copies if training else 1):
                case = f"{parts[-2]}-c{copy}"
                name = "/".join([*parts[:-2], case, parts[-1]]) if copy else info.filename
                renamed = zipfile.ZipInfo(name, info.date_time)
                renamed.compress_type = info.compress_type
                renamed.external_attr = info.external_attr
                target.writestr(renamed, data)
    return path


def output_hashes(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def measure(archive: Path, workers: int, out: Path) -> dict:
    extract = project_params({"extract": {"archive": str(archive), "workers": workers}}).extract
    command = [sys.executable, "-c", RUNNER, str(out), json.dumps(extract.model_dump())]
    measured = run_measured(command, ROOT, TIMEOUT_S)
    measured.pop("output")
    pairs = json.loads((out / "extract.json").read_text())["pairs"]
    measured.update(
        pairs=pairs,
        pairs_per_s=round(pairs / measured["seconds"], 1),
        pairs_per_cpu_s=round(pairs / measured["cpu_s"], 1),
    )
    return measured


def compare(archive: Path, workers: int, folder: Path) -> dict[str, dict]:
    """Extract `archive` and its SCALE-times copy with 1 and `workers` workers, in `folder`:
    the measurements per scale, and the wall-clock ratio. Stops if outputs differ."""
    archives = {"1x": archive, f"{SCALE}x": scaled_copy(archive, folder / "scaled.zip", SCALE)}
    results: dict[str, dict] = {}
    for scale, path in archives.items():
        runs: dict = {}
        outputs = []
        for count in (1, workers):
            out = folder / f"{scale}-workers-{count}"
            runs[f"workers={count}"] = measure(path, count, out)
            outputs.append(output_hashes(out))
            print(f"{scale} workers={count}: {json.dumps(runs[f'workers={count}'])}", flush=True)
        if outputs[0] != outputs[1]:
            raise SystemExit(f"{scale}: outputs differ between 1 and {workers} workers")
        one, many = runs[f"workers={1}"], runs[f"workers={workers}"]
        runs["wall_ratio"] = round(one["seconds"] / many["seconds"], 2)
        results[scale] = runs
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, help="a Kaggle-layout zip (default: a phantom)")
    parser.add_argument("--workers", type=int, default=0, help="extract.workers against 1")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="extract-speed-") as scratch:
        folder = Path(scratch)
        archive = arguments.archive
        if archive is None:
            archive = folder / "phantom.zip"
            synthesize_archive(archive, project_params({"phantom": PHANTOM_512}).phantom, 0)
        results = compare(archive, arguments.workers, folder)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
