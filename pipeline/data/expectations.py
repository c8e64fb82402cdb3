"""Great Expectations machinery shared by every data-quality gate (`validate`, `split`).

A gate builds a pandas table (one row per slice, case or split), lists the expectations it
must meet as `Check`s built from `gxe` (Great Expectations' expectation classes), and calls
`run_suite`. The outcome is a plain `ValidationReport`: which checks failed, on how many rows,
with example ids. `enforce` prints warnings and stops the stage on critical failures.
Great Expectations is imported here only, so stages that do not validate start fast.

Great Expectations' Data Docs load bootstrap, jquery, bootstrap-table, font-awesome and more
from CDNs; `make_data_docs_offline` points them at copies vendored in vendor/data_docs/, so
the report travels to machines with no network.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import great_expectations as gx
import pandas as pd
from great_expectations import expectations as gxe
from great_expectations.data_context.types.base import ProgressBarsConfig

import pipeline
from pipeline.io import DataError, atomic_path

LOG = logging.getLogger(__name__)

__all__ = [
    "Check",
    "CheckOutcome",
    "ValidationFailed",
    "ValidationReport",
    "enforce",
    "gxe",
    "make_data_docs_offline",
    "run_suite",
]

EXAMPLES_SHOWN = 5

# vendor/ lies beside the pipeline package, at the repository root.
VENDOR_DIR = Path(pipeline.__file__).resolve().parents[1] / "vendor" / "data_docs"
# Every network address Great Expectations 1.24's Data Docs load (scripts, stylesheets,
# images; query strings ignored) -> the copy under vendor/data_docs/ (its README says which
# npm package each comes from). The two logos come from Great Expectations' own static/.
_CDNJS = "https://cdnjs.cloudflare.com/ajax/libs"
_TABLE = "https://unpkg.com/bootstrap-table@"
_FILTER = "dist/extensions/filter-control/bootstrap-table-filter-control"
_GX_ASSETS = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com"
CDN_ASSETS: dict[str, str] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": (
        "bootstrap-4.3.1/bootstrap.min.css"
    ),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": (
        "bootstrap-4.3.1/bootstrap.min.js"
    ),
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery-3.7.1/jquery.min.js",
    f"{_CDNJS}/popper.js/1.12.9/umd/popper.min.js": "popper.js-1.12.9/popper.min.js",
    f"{_CDNJS}/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": (
        "bootstrap-datepicker-1.9.0/bootstrap-datepicker.min.js"
    ),
    f"{_CDNJS}/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": (
        "bootstrap-datepicker-1.9.0/bootstrap-datepicker.min.css"
    ),
    f"{_CDNJS}/font-awesome/6.6.0/css/all.min.css": "fontawesome-free-6.6.0/css/all.min.css",
    f"{_TABLE}1.19.1/dist/bootstrap-table.min.js": "bootstrap-table-1.19.1/bootstrap-table.min.js",
    f"{_TABLE}1.19.1/dist/bootstrap-table.min.css": (
        "bootstrap-table-1.19.1/bootstrap-table.min.css"
    ),
    f"{_TABLE}1.19.1/{_FILTER}.min.js": (
        "bootstrap-table-1.19.1/bootstrap-table-filter-control.min.js"
    ),
    f"{_TABLE}1.19.0/{_FILTER}.css": "bootstrap-table-1.19.0/bootstrap-table-filter-control.css",
    f"{_TABLE}1.19.0/{_FILTER}.min.css": (
        "bootstrap-table-1.19.0/bootstrap-table-filter-control.min.css"
    ),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/"
    "bootstrap-prefers-dark.css": "bootstrap-dark-1.1.0/bootstrap-prefers-dark.min.css",
    "https://cdn.jsdelivr.net/npm/vega@5": "vega-5.33.1/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite-5.23.0/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed-6.29.0/vega-embed.min.js",
    f"{_GX_ASSETS}/logo-long.png": "static/images/logo-long.png",
    f"{_GX_ASSETS}/full_logo_dark.png": "static/images/logo-long.png",
}
# What a page loads by itself: <script src>, <img src>, <link href> (stylesheets, icons) and
# CSS url(...). Plain <a href> links are navigation, loaded only when a reader clicks.
_LOADING_TAG = re.compile(r"<(?:script|img|link)\b[^>]*>", re.IGNORECASE)
_ADDRESS = re.compile(r"""\b(?:src|href)=(["'])(.*?)\1""")
# CDN tags carry Subresource Integrity with crossorigin="anonymous": a CORS fetch, which
# Chromium refuses for file:// pages, so a local copy loads only without them.
_CORS_ATTRIBUTES = re.compile(r"""\s(?:integrity|crossorigin)=(["']).*?\1""")
_CSS_URL = re.compile(r"""url\((['"]?)(https?://[^'")\s]+)\1\)""")


@dataclass(frozen=True)
class Check:
    """One expectation with a human name; a failed critical check stops the pipeline."""

    name: str
    expectation: gxe.Expectation
    critical: bool = True
    # The params.yaml key(s) that set the check's bound, named in its failure so that a reader
    # knows what to change (empty where no param does).
    param: str = ""


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    expectation_type: str
    critical: bool
    success: bool
    unexpected_count: int
    examples: tuple[str, ...]
    observed: str
    # The failing values of the checked column, one per example, when the examples are ids
    # of another column (a class row's slice count), and the bound they broke.
    values: tuple[str, ...] = ()
    bound: str = ""
    param: str = ""


@dataclass(frozen=True)
class ValidationReport:
    suite: str
    rows: int
    outcomes: tuple[CheckOutcome, ...]

    @property
    def failed(self) -> tuple[CheckOutcome, ...]:
        return tuple(outcome for outcome in self.outcomes if not outcome.success)

    @property
    def critical_failures(self) -> tuple[CheckOutcome, ...]:
        return tuple(outcome for outcome in self.failed if outcome.critical)

    @property
    def warnings(self) -> tuple[CheckOutcome, ...]:
        return tuple(outcome for outcome in self.failed if not outcome.critical)

    def describe(self, outcomes: Sequence[CheckOutcome]) -> str:
        lines = []
        for outcome in outcomes:
            where = f"{outcome.unexpected_count} rows" if outcome.unexpected_count else "table"
            shown = list(outcome.examples)
            if len(outcome.values) == len(shown):
                shown = [f"{e} ({v})" for e, v in zip(shown, outcome.values, strict=True)]
            examples = f", e.g. {', '.join(shown)}" if shown else ""
            observed = f" (observed {outcome.observed})" if outcome.observed else ""
            bound = f"; expected {outcome.bound}" if outcome.bound else ""
            param = f", set by {outcome.param} in params.yaml" if outcome.param else ""
            lines.append(
                f"  - {outcome.name} [{outcome.expectation_type}]: {where}{examples}{observed}"
                f"{bound}{param}"
            )
        return "\n".join(lines)


class ValidationFailed(DataError):
    """Raised by `enforce` when a critical check failed; the message is the human summary."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        failures = report.critical_failures
        super().__init__(
            f"{report.suite}: {len(failures)} critical checks (of {len(report.outcomes)}) failed "
            f"on {report.rows} rows:\n{report.describe(failures)}"
        )


def _quiet_context() -> gx.data_context.AbstractDataContext:
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bound(kwargs: dict) -> str:
    """The range an expectation allows its column, in words ("" if it sets none)."""
    column, low, high = (
        kwargs.get("column", "value"),
        kwargs.get("min_value"),
        kwargs.get("max_value"),
    )
    if low is not None and high is not None:
        return f"{column} between {_number(low)} and {_number(high)}"
    if low is not None:
        return f"{column} >= {_number(low)}"
    if high is not None:
        return f"{column} <= {_number(high)}"
    return ""


def _outcome(check: Check, result: object, ids: pd.Series) -> CheckOutcome:
    details = result.result or {}
    kwargs = result.expectation_config.kwargs
    indices = details.get("unexpected_index_list") or []
    examples = tuple(str(ids.iloc[i]) for i in indices[:EXAMPLES_SHOWN] if isinstance(i, int))
    values: tuple[str, ...] = ()
    if examples and kwargs.get("column") != ids.name:
        values = tuple(
            f"{kwargs.get('column')} {_number(value)}"
            for value in (details.get("unexpected_list") or [])[: len(examples)]
        )
    if not examples:
        examples = tuple(
            str(v) for v in (details.get("partial_unexpected_list") or [])[:EXAMPLES_SHOWN]
        )
    observed = details.get("observed_value")
    count = details.get("unexpected_count") or 0
    if result.exception_info and result.exception_info.get("raised_exception"):
        observed = f"error: {result.exception_info.get('exception_message')}"
    return CheckOutcome(
        name=check.name,
        expectation_type=result.expectation_config.type,
        critical=check.critical,
        success=bool(result.success),
        unexpected_count=int(count),
        examples=examples,
        observed="" if observed is None else str(observed)[:200],
        values=values,
        bound=_bound(kwargs) if not result.success else "",
        param=check.param if not result.success else "",
    )


def run_suite(
    table: pd.DataFrame,
    checks: Sequence[Check],
    suite_name: str,
    *,
    id_column: str = "id",
    data_docs_dir: Path | None = None,
) -> ValidationReport:
    """Validate `table` against `checks` with Great Expectations; optionally write Data Docs.

    Examples of failing rows are given by `id_column`. Data Docs (static HTML) replace
    `data_docs_dir` atomically when it is given.
    """
    context = _quiet_context()
    asset = context.data_sources.add_pandas(f"{suite_name}_source").add_dataframe_asset(suite_name)
    batch = asset.add_batch_definition_whole_dataframe("whole_table")
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    names = [check.name for check in checks]
    if len(set(names)) != len(names):
        raise ValueError(f"{suite_name}: check names must be unique, got {names}")
    for check in checks:
        # A copy, so that the caller's Check can be run again (GX binds an expectation to the
        # first suite it joins); the check's name travels in `meta` to match results back.
        expectation = copy.deepcopy(check.expectation)
        expectation.id = None
        expectation.meta = {**(check.expectation.meta or {}), "check": check.name}
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch, suite=suite, name=f"{suite_name}_validation")
    )
    docs_scratch = Path(tempfile.mkdtemp(prefix="data_docs.")) if data_docs_dir else None
    actions = []
    if docs_scratch is not None:
        context.add_data_docs_site(
            site_name="reports",
            site_config={
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_scratch),
                },
            },
        )
        # Only this site: building the ephemeral context's default site too would leave a
        # full copy of the docs in a temporary folder that nothing removes.
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["reports"]))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{suite_name}_checkpoint",
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "COMPLETE"},
        )
    )
    try:
        result = checkpoint.run(batch_parameters={"dataframe": table.reset_index(drop=True)})
        if docs_scratch is not None and data_docs_dir is not None:
            with atomic_path(data_docs_dir) as temporary:
                shutil.copytree(docs_scratch, temporary)
    finally:
        if docs_scratch is not None:
            shutil.rmtree(docs_scratch, ignore_errors=True)
    by_name = {check.name: check for check in checks}
    ids = (
        table.reset_index(drop=True)[id_column]
        if id_column in table.columns
        else pd.Series([], dtype=str)
    )
    outcomes = []
    for validation in result.run_results.values():
        for item in validation.results:
            check = by_name[item.expectation_config.meta["check"]]
            outcomes.append(_outcome(check, item, ids))
    order = {check.name: position for position, check in enumerate(checks)}
    outcomes.sort(key=lambda outcome: order[outcome.name])
    return ValidationReport(suite=suite_name, rows=len(table), outcomes=tuple(outcomes))


def make_data_docs_offline(docs_root: Path) -> int:
    """Make the Data Docs under `docs_root` load nothing from the network.

    Copies vendor/data_docs/ to `docs_root/vendor/`, points every CDN address of the HTML and
    CSS files at its copy (relative to each file), and mends Great Expectations' relative
    links to its own static/ folder that miss by a level (the validation pages' favicon).
    Returns the number of addresses rewritten. An address not in `CDN_ASSETS` raises
    `DataError` naming the file and the address.
    """
    vendor = docs_root / "vendor"
    shutil.copytree(VENDOR_DIR, vendor)
    pages = [*docs_root.rglob("*.html"), *docs_root.rglob("*.css")]
    rewritten = 0
    for page in sorted(p for p in pages if vendor not in p.parents):
        site = next(p for p in page.parents if (p / "static").is_dir() or p == docs_root)

        def local(address: str, page: Path = page, site: Path = site) -> str | None:
            """The relative address to use instead of `address`, or None to keep it."""
            nonlocal rewritten
            if re.match(r"https?://", address):
                target = CDN_ASSETS.get(address.split("?", 1)[0])
                if target is None:
                    raise DataError(
                        f"{page}: Data Docs load {address} from the network; add a vendored "
                        "copy to vendor/data_docs/ and to CDN_ASSETS in "
                        "pipeline/data/expectations.py"
                    )
                file = site / target if target.startswith("static/") else vendor / target
            elif "static/" in address and not (page.parent / address).exists():
                file = site / ("static/" + address.split("static/", 1)[1])
            else:
                return None
            rewritten += 1
            return Path(os.path.relpath(file, page.parent)).as_posix()

        def tag(match: re.Match[str]) -> str:
            found = _ADDRESS.search(match.group(0))
            replacement = local(found.group(2)) if found else None
            if found is None or replacement is None:
                return match.group(0)
            text = match.group(0)
            text = text[: found.start(2)] + replacement + text[found.end(2) :]
            return _CORS_ATTRIBUTES.sub("", text)

        def css_url(match: re.Match[str]) -> str:
            return f"url({match.group(1)}{local(match.group(2))}{match.group(1)})"

        text = page.read_text(encoding="utf-8")
        page.write_text(_CSS_URL.sub(css_url, _LOADING_TAG.sub(tag, text)), encoding="utf-8")
    return rewritten


def enforce(report: ValidationReport) -> None:
    """Print non-critical failures as warnings; raise `ValidationFailed` on critical ones."""
    if report.warnings:
        LOG.warning(
            f"{report.suite}: {len(report.warnings)} non-critical checks failed:\n"
            f"{report.describe(report.warnings)}"
        )
    if report.critical_failures:
        raise ValidationFailed(report)
