"""The `validate` gate: facts read from every extracted slice, and the suite they must pass.

`build_slice_table` joins the extracted manifest with what the files actually hold (size,
channels, dtype, mask values, lesion fraction, a hash of the pixels, the sha256 of the bytes to
compare with the manifest's), `class_table` sums it per class, and `validate_extracted` runs
both through Great Expectations (`pipeline.data.expectations`).

Severity: every check is critical (the stage fails, nothing is written) except the case-id
formats per class (Hemorrhagic `^\\d{3}$`, Ischemic `^\\d{7}$`). Those describe how the Kaggle
archive happens to name its folders; another export of the same data may pad differently, and
nothing downstream depends on the format (the split groups slices by class and case id,
whatever they look like), so a deviation is a warning. A case id must still be present.

Row rule: warnings never drop rows, so when no critical check fails the validated manifest
lists every extracted slice, with its paths rewritten to point from `data/validated/` into
`../extracted/`. Metrics, Data Docs and the statistics figure are written in both outcomes:
on failure they are the detailed account of what was wrong; the manifest, which every later
stage reads, is only written when the gate passes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.classes import HEMORRHAGIC, ISCHEMIC, SOURCE_CLASSES
from pipeline.data.expectations import (
    Check,
    ValidationReport,
    enforce,
    gxe,
    make_data_docs_offline,
    run_suite,
)
from pipeline.io import (
    MANIFEST_COLUMNS,
    atomic_path,
    read_manifest,
    relative_to,
    resolve_path,
    sha256_hex,
    write_json,
    write_manifest,
    write_text_atomic,
)
from pipeline.parallel import ordered_map
from pipeline.params import ValidateParams
from pipeline.data.split import MIN_CASES_PER_CLASS, SPLITS
from pipeline.data.stats import plot_class_counts

CASE_ID_FORMATS: dict[str, str] = {HEMORRHAGIC: r"^\d{3}$", ISCHEMIC: r"^\d{7}$"}
MASK_VALUES = (0, 255)
# Distinct mask values written into the table (enough to see what went wrong).
MASK_VALUES_SHOWN = 6

# What `inspect_slice` measures, with pandas dtypes; nullable, because a fact that cannot be
# measured (no mask file, unreadable image) is missing rather than a made-up number, and
# Great Expectations skips missing values: each defect fails exactly the check that names it.
FACT_DTYPES: dict[str, str] = {
    "image_readable": "boolean",
    "image_width": "Int64",
    "image_height": "Int64",
    "image_channels": "Int64",
    "image_dtype": "string",
    "content_hash": "string",
    "image_sha256_measured": "string",
    "mask_exists": "boolean",
    "mask_readable": "boolean",
    "mask_width": "Int64",
    "mask_height": "Int64",
    "mask_channels": "Int64",
    "mask_sha256_measured": "string",
    "mask_values": "string",
    "mask_binary": "boolean",
    "sizes_equal": "boolean",
    "lesion_pixels_measured": "Int64",
    "lesion_fraction": "Float64",
}
# Derived from the facts and the manifest together, by `build_slice_table`.
DERIVED_DTYPES: dict[str, str] = {
    "id_names_class_and_case": "boolean",
    "manifest_size_matches_image": "boolean",
    "manifest_lesion_pixels_match_mask": "boolean",
    "manifest_sha256_matches_files": "boolean",
    "cases_sharing_content": "Int64",
}
SLICE_TABLE_COLUMNS: tuple[str, ...] = (*MANIFEST_COLUMNS, *FACT_DTYPES, *DERIVED_DTYPES)


@dataclass(frozen=True)
class ValidateOutputs:
    """Where the gate writes: the validated manifest and the human/metric reports."""

    manifest: Path
    metrics: Path
    data_docs: Path
    statistics: Path


def _read_unchanged(path: Path) -> tuple[bytes | None, np.ndarray | None]:
    """(the file's bytes, its pixels exactly as stored: no conversion to grey or 8 bits).

    Either is None when the file cannot be read or decoded.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return None, None
    if not data:
        return data, None
    return data, cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)


def _distinct_values(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:  # bincount is ~10x faster than unique on 8-bit data
        return np.flatnonzero(np.bincount(pixels.ravel(), minlength=256))
    return np.unique(pixels)


def _content_hash(pixels: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{pixels.dtype.str}{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def inspect_slice(paths: tuple[str, str]) -> dict[str, object]:
    """Facts about one image file and its mask file (`FACT_DTYPES`); never raises on bad files.

    The mask path may be empty (no mask listed). Unreadable files become `image_readable` /
    `mask_readable` False and leave the facts that depend on them missing.
    """
    image_path, mask_path = Path(paths[0]), Path(paths[1]) if paths[1] else None
    facts: dict[str, object] = dict.fromkeys(FACT_DTYPES)
    data, image = _read_unchanged(image_path) if image_path.is_file() else (None, None)
    facts["image_readable"] = image is not None
    if data is not None:
        facts["image_sha256_measured"] = sha256_hex(data)
    if image is not None:
        facts.update(
            image_width=image.shape[1],
            image_height=image.shape[0],
            image_channels=1 if image.ndim == 2 else image.shape[2],
            image_dtype=str(image.dtype),
            content_hash=_content_hash(image),
        )
    facts["mask_exists"] = mask_path is not None and mask_path.is_file()
    if not facts["mask_exists"]:
        return facts
    data, mask = _read_unchanged(mask_path)
    facts["mask_sha256_measured"] = None if data is None else sha256_hex(data)
    facts["mask_readable"] = mask is not None
    if mask is None:
        return facts
    values = _distinct_values(mask)
    shown = " ".join(str(v) for v in values[:MASK_VALUES_SHOWN])
    lesion = mask > 0 if mask.ndim == 2 else (mask > 0).any(axis=-1)
    lesion_pixels = int(np.count_nonzero(lesion))
    facts.update(
        mask_width=mask.shape[1],
        mask_height=mask.shape[0],
        mask_channels=1 if mask.ndim == 2 else mask.shape[2],
        mask_values=shown + (" ..." if len(values) > MASK_VALUES_SHOWN else ""),
        mask_binary=bool(np.isin(values, MASK_VALUES).all()),
        lesion_pixels_measured=lesion_pixels,
        lesion_fraction=lesion_pixels / lesion.size if lesion.size else None,
    )
    if image is not None:
        facts["sizes_equal"] = image.shape[:2] == mask.shape[:2]
    return facts


def build_slice_table(manifest: pd.DataFrame, workers: int = 0) -> pd.DataFrame:
    """One row per manifest row: its columns, the facts read from its files, derived checks."""
    tasks = [
        (
            str(resolve_path(manifest, image)),
            str(resolve_path(manifest, mask)) if mask.strip() else "",
        )
        for image, mask in zip(manifest["image_path"], manifest["mask_path"], strict=True)
    ]
    facts = ordered_map(inspect_slice, tasks, workers=workers, description="validate: reading")
    measured = pd.DataFrame(facts, columns=list(FACT_DTYPES)).astype(FACT_DTYPES)
    table = pd.concat([manifest.reset_index(drop=True), measured], axis=1)
    prefix = table["class"] + "_" + table["case_id"] + "_"
    table["id_names_class_and_case"] = [
        slice_id.startswith(start) for slice_id, start in zip(table["id"], prefix, strict=True)
    ]
    table["manifest_size_matches_image"] = (table["width"] == table["image_width"]) & (
        table["height"] == table["image_height"]
    )
    table["manifest_lesion_pixels_match_mask"] = (
        table["lesion_pixels"] == table["lesion_pixels_measured"]
    )
    # Missing (so skipped by the check) where a file could not be read: that defect has its own.
    table["manifest_sha256_matches_files"] = (
        table["image_sha256"].astype("string") == table["image_sha256_measured"]
    ) & (table["mask_sha256"].astype("string") == table["mask_sha256_measured"])
    case_key = table["class"] + "/" + table["case_id"]
    sharing = case_key.groupby(table["content_hash"], dropna=True).transform("nunique")
    table["cases_sharing_content"] = sharing.reindex(table.index)
    table = table.astype(DERIVED_DTYPES)
    table.attrs = dict(manifest.attrs)
    return table


def class_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per known class (present or not): slices, cases, lesion slices and their share."""
    known = table[table["class"].isin(SOURCE_CLASSES)]
    has_lesion = known["lesion_pixels_measured"].fillna(0) > 0
    grouped = known.assign(has_lesion=has_lesion).groupby("class")
    counts = pd.DataFrame(
        {
            "slices": grouped.size(),
            "cases": grouped["case_id"].nunique(),
            "lesion_slices": grouped["has_lesion"].sum(),
        }
    )
    counts = counts.reindex(list(SOURCE_CLASSES), fill_value=0).astype("int64")
    counts["lesion_slice_share"] = (
        counts["lesion_slices"] / counts["slices"].where(counts["slices"] > 0)
    ).astype("Float64")
    return counts.rename_axis("class").reset_index()


def _in_set(column: str, values: Sequence[object]) -> gxe.Expectation:
    return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(values))


def slice_checks(params: ValidateParams) -> list[Check]:
    """Row-level expectations on the slice table (see the module docstring for severities)."""
    checks = [
        Check(
            "expected_columns",
            gxe.ExpectTableColumnsToMatchSet(
                column_set=list(SLICE_TABLE_COLUMNS), exact_match=False
            ),
        ),
        Check("unique_ids", gxe.ExpectColumnValuesToBeUnique(column="id")),
        Check("id_names_class_and_case", _in_set("id_names_class_and_case", [True])),
        Check("class_is_known", _in_set("class", SOURCE_CLASSES)),
        Check(
            "case_id_present", gxe.ExpectColumnValuesToMatchRegex(column="case_id", regex=r"^\S+$")
        ),
        Check("image_readable", _in_set("image_readable", [True])),
        Check("image_single_channel", _in_set("image_channels", [1])),
        Check("image_8_bit", _in_set("image_dtype", ["uint8"])),
        Check("every_image_has_a_mask", _in_set("mask_exists", [True])),
        Check("mask_readable", _in_set("mask_readable", [True])),
        Check("mask_single_channel", _in_set("mask_channels", [1])),
        Check("masks_binary", _in_set("mask_binary", [True])),
        Check("image_and_mask_same_size", _in_set("sizes_equal", [True])),
    ]
    for side in ("width", "height"):
        checks.append(
            Check(
                f"image_{side}_within_bounds",
                gxe.ExpectColumnValuesToBeBetween(
                    column=f"image_{side}", min_value=params.min_side, max_value=params.max_side
                ),
                param="validate.min_side / validate.max_side",
            )
        )
    checks += [
        Check("manifest_size_matches_image", _in_set("manifest_size_matches_image", [True])),
        Check(
            "manifest_lesion_pixels_match_mask",
            _in_set("manifest_lesion_pixels_match_mask", [True]),
        ),
        Check(
            "manifest_sha256_matches_files",
            _in_set("manifest_sha256_matches_files", [True]),
        ),
        Check(
            "lesion_fraction_within_0_1",
            gxe.ExpectColumnValuesToBeBetween(column="lesion_fraction", min_value=0, max_value=1),
        ),
        Check(
            "no_identical_image_in_two_cases",
            gxe.ExpectColumnValuesToBeBetween(column="cases_sharing_content", max_value=1),
        ),
    ]
    for class_name, regex in CASE_ID_FORMATS.items():
        checks.append(
            Check(
                f"{class_name.lower()}_case_id_format",
                gxe.ExpectColumnValuesToMatchRegex(
                    column="case_id",
                    regex=regex,
                    row_condition=f'`class` == "{class_name}"',
                    condition_parser="pandas",
                ),
                critical=False,
            )
        )
    return checks


def class_checks(params: ValidateParams) -> list[Check]:
    """Aggregate expectations on `class_table` (one row per class)."""
    slices, cases = params.slices_per_class, params.cases_per_class
    return [
        Check(
            "slices_per_class_within_bounds",
            gxe.ExpectColumnValuesToBeBetween(
                column="slices", min_value=slices.min, max_value=slices.max
            ),
            param="validate.slices_per_class.min / .max",
        ),
        Check(
            "cases_per_class_within_bounds",
            gxe.ExpectColumnValuesToBeBetween(
                column="cases", min_value=cases.min, max_value=cases.max
            ),
            param="validate.cases_per_class.min / .max",
        ),
        # What split will need, checked here so that a small archive stops at the gate with
        # the reason, not later in split (validate.cases_per_class.min may be set lower).
        Check(
            "cases_per_class_enough_to_split",
            gxe.ExpectColumnValuesToBeBetween(column="cases", min_value=MIN_CASES_PER_CLASS),
            param=f"the {len(SPLITS)} splits of split.ratios ({', '.join(SPLITS)}: one case "
            "of every class each, whatever the ratios)",
        ),
        Check(
            "lesion_slice_share_per_class",
            gxe.ExpectColumnValuesToBeBetween(
                column="lesion_slice_share", min_value=params.min_lesion_slice_share, max_value=1
            ),
            param="validate.min_lesion_slice_share",
        ),
    ]


def combine_reports(suite: str, rows: int, reports: Sequence[ValidationReport]) -> ValidationReport:
    """One report out of several suites over the same data (for one summary, one exit)."""
    outcomes = tuple(outcome for report in reports for outcome in report.outcomes)
    return ValidationReport(suite=suite, rows=rows, outcomes=outcomes)


def data_metrics(
    table: pd.DataFrame, classes: pd.DataFrame, report: ValidationReport
) -> dict[str, float | int | None]:
    """Flat numbers for metrics/data.json: counts, lesion statistics, expectation tallies."""
    metrics: dict[str, float | int | None] = {
        "slices": len(table),
        "cases": int((table["class"] + "/" + table["case_id"]).nunique()),
    }
    for row in classes.to_dict("records"):
        name = str(row["class"]).lower()
        metrics[f"slices_{name}"] = int(row["slices"])
        metrics[f"cases_{name}"] = int(row["cases"])
        metrics[f"lesion_slices_{name}"] = int(row["lesion_slices"])
        share = row["lesion_slice_share"]
        metrics[f"lesion_slice_share_{name}"] = None if pd.isna(share) else float(share)
    fractions = table["lesion_fraction"].dropna()
    on_lesion_slices = fractions[fractions > 0].to_numpy(dtype=float)
    for statistic, function in (("mean", np.mean), ("median", np.median), ("max", np.max)):
        value = float(function(on_lesion_slices)) if on_lesion_slices.size else None
        metrics[f"lesion_fraction_{statistic}"] = value
    metrics["expectations_total"] = len(report.outcomes)
    metrics["expectations_failed"] = len(report.failed)
    metrics["expectations_failed_critical"] = len(report.critical_failures)
    return metrics


def validated_manifest(manifest: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """The manifest with its paths rewritten relative to `folder` (where it will be written)."""
    rewritten = manifest.copy()
    for column in ("image_path", "mask_path"):
        rewritten[column] = [
            relative_to(resolve_path(manifest, path), folder) for path in manifest[column]
        ]
    return rewritten


def _write_docs_index(data_docs: Path, suites: Sequence[str]) -> None:
    links = "\n".join(f'<li><a href="{name}/index.html">{name}</a></li>' for name in suites)
    write_text_atomic(
        data_docs / "index.html",
        "<!doctype html><meta charset='utf-8'><title>Data Docs</title>\n"
        f"<h1>Great Expectations Data Docs</h1>\n<ul>\n{links}\n</ul>\n",
    )


def validate_extracted(
    manifest_path: Path, outputs: ValidateOutputs, params: ValidateParams
) -> ValidationReport:
    """Check the extracted data; write reports always and the validated manifest on success.

    Raises `ValidationFailed` (a `DataError`) naming each failed critical check.
    """
    manifest = read_manifest(manifest_path)
    table = build_slice_table(manifest, workers=params.workers)
    classes = class_table(table)
    suites = {
        "slices": (table, slice_checks(params), "id"),
        "classes": (classes, class_checks(params), "class"),
    }
    with atomic_path(outputs.data_docs) as docs:  # one site per suite, replaced together
        reports = [
            run_suite(
                data, checks, f"extracted_{name}", id_column=id_column, data_docs_dir=docs / name
            )
            for name, (data, checks, id_column) in suites.items()
        ]
        _write_docs_index(docs, list(suites))
        make_data_docs_offline(docs)
    report = combine_reports("extracted_data", len(table), reports)
    write_json(outputs.metrics, data_metrics(table, classes, report))
    plot_class_counts(manifest, outputs.statistics, title="Extracted data")
    enforce(report)
    write_manifest(outputs.manifest, validated_manifest(manifest, outputs.manifest.parent))
    return report
