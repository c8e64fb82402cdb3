"""Stage `report`: reports/index.html, one offline page of the run with its model card.

python -m stages.report
    the DVC stage: reads metrics/*.json and the tables and pictures under reports/ that the
    earlier stages wrote, and writes reports/index.html (every link relative, inside reports/)
python -m stages.report --compare REV_A REV_B [--output PATH]
    one page of two git revisions side by side: what `dvc metrics diff` and `dvc params diff`
    read, with the differences (default output reports/compare.html, not a DVC output)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.params import Params
from pipeline.report.page import write_comparison, write_report
from stages.common import run_stage

LOG = logging.getLogger("stages.report")


def params_document(params: Params) -> dict[str, object]:
    """Every param as YAML spells it; read section by section, so that the params trace
    records the sections the page shows (it shows them all)."""
    document: dict[str, object] = {}
    for name in Params.model_fields:
        value = getattr(params, name)
        dump = getattr(value, "model_dump", None)
        document[name] = dump(mode="json") if dump else value
    return document


def main(params: Params) -> None:
    page = write_report(Path("."), params_document(params))
    LOG.info(f"report: {page} (open it in a browser; the reports/ folder travels as a whole)")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stages.report",
        description="Without options: the DVC stage, reports/index.html. With --compare: "
        "one page of two revisions' metrics and params side by side.",
    )
    parser.add_argument("--compare", nargs=2, metavar=("REV_A", "REV_B"))
    parser.add_argument("--output", type=Path, default=Path("reports/compare.html"))
    parser.add_argument("--params", default="params.yaml")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parsed = parse_arguments()
    if parsed.compare:
        rev_a, rev_b = parsed.compare
        run_stage(
            lambda _: print(f"compare: {write_comparison(Path('.'), rev_a, rev_b, parsed.output)}"),
            parsed.params,
        )
    else:
        run_stage(main, parsed.params)
