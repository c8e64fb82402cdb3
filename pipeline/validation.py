"""Great Expectations machinery shared by every data-quality gate (`validate`, `split`).

A gate builds a pandas table (one row per slice, case or split), lists the expectations it
must meet as `Check`s built from `gxe` (Great Expectations' expectation classes), and calls
`run_suite`. The outcome is a plain `ValidationReport`: which checks failed, on how many rows,
with example ids. `enforce` prints warnings and stops the stage on critical failures.
Great Expectations is imported here only, so stages that do not validate start fast.
"""

from __future__ import annotations

import copy
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import great_expectations as gx
import pandas as pd
from great_expectations import expectations as gxe
from great_expectations.data_context.types.base import ProgressBarsConfig

from pipeline.io import DataError, atomic_path

__all__ = [
    "Check",
    "CheckOutcome",
    "ValidationFailed",
    "ValidationReport",
    "enforce",
    "gxe",
    "run_suite",
]

EXAMPLES_SHOWN = 5


@dataclass(frozen=True)
class Check:
    """One expectation with a human name; a failed critical check stops the pipeline."""

    name: str
    expectation: gxe.Expectation
    critical: bool = True


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    expectation_type: str
    critical: bool
    success: bool
    unexpected_count: int
    examples: tuple[str, ...]
    observed: str


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
            examples = f", e.g. {', '.join(outcome.examples)}" if outcome.examples else ""
            observed = f" (observed {outcome.observed})" if outcome.observed else ""
            lines.append(
                f"  - {outcome.name} [{outcome.expectation_type}]: {where}{examples}{observed}"
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


def _outcome(check: Check, result: object, ids: pd.Series) -> CheckOutcome:
    details = result.result or {}
    indices = details.get("unexpected_index_list") or []
    examples = tuple(str(ids.iloc[i]) for i in indices[:EXAMPLES_SHOWN] if isinstance(i, int))
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


def enforce(report: ValidationReport) -> None:
    """Print non-critical failures as warnings; raise `ValidationFailed` on critical ones."""
    if report.warnings:
        print(
            f"WARNING {report.suite}: {len(report.warnings)} non-critical checks failed:\n"
            f"{report.describe(report.warnings)}",
            file=sys.stderr,
        )
    if report.critical_failures:
        raise ValidationFailed(report)
