"""Stage `report`: one offline HTML page of a run, with a model card; and a page comparing two.

The page reads only what earlier stages wrote for people and for `dvc metrics`: the flat
metrics JSONs under metrics/ and the tables and pictures under reports/. It shows whatever
keys and files are there, so that it follows the evaluate stage as that grows (confidence
intervals appear as columns when `<key>_ci_low`/`_ci_high` exist, the per-case table when
metrics/cases.csv exists, ...). Pictures are linked by paths relative to
reports/index.html, so the page works from a copied reports/ folder with no network.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from pipeline.classes import class_labels
from pipeline.io import DataError, write_text_atomic
from pipeline.params import ParamsError, parse_params, parse_params_yaml
from pipeline.report.html import (
    Cell,
    Section,
    escape,
    figure,
    page,
    paragraph,
    side_by_side,
    table,
)
from pipeline.report.model_card import (
    INTENDED_USE,
    NOT_A_DEVICE,
    NOT_INTENDED_FOR,
    PHANTOM_CAVEAT,
    PHANTOM_PROVENANCE,
    is_phantom,
    kaggle_provenance,
)

STAGE_METRICS = ("extract", "data", "split", "augment", "train", "evaluate", "infer")
REPORT_PAGE = Path("reports/index.html")
# Distributions whose versions a reader needs to rerun the numbers (the first found of
# each group: the CPU and the CUDA lock install TensorFlow under different names).
PACKAGES: tuple[tuple[str, ...], ...] = (
    ("tensorflow-cpu", "tensorflow"),
    ("keras",),
    ("numpy",),
    ("scipy",),
    ("pandas",),
    ("opencv-python-headless",),
    ("great-expectations",),
    ("dvc",),
    ("dvclive",),
    ("pydantic",),
    ("matplotlib",),
)
REFERENCE_METRIC_NOTE = (
    "dice_coef_multiclass is the reference notebook's metric, kept for comparison only. It "
    "averages over every pixel of every class, background included; background fills about "
    "98% of each slice, so a model that predicts no lesion at all already scores about 0.98. "
    "That is why it reads higher than the lesion Dice above, which leaves the background out."
)
CI_SUFFIXES = ("_ci_low", "_ci_high")
SLICE_DETECTION = ("slice_sensitivity", "slice_specificity")  # shown with triage
SCORE_UNIT = "score 0-1"
NO_UNIT = "no unit"  # a loss, a learning rate


@dataclass(frozen=True)
class MetricInfo:
    label: str
    unit: str
    definition: str


# What each evaluate metric means, by its key without the class suffix. Unknown keys are
# still shown, labelled by their key and the unit their name carries.
METRICS: dict[str, MetricInfo] = {
    "dice": MetricInfo("Dice", SCORE_UNIT, "2|P and T| / (|P| + |T|) of predicted P, truth T"),
    "iou": MetricInfo("IoU (Jaccard)", SCORE_UNIT, "|P and T| / |P or T|"),
    "slice_dice": MetricInfo(
        "Dice per slice, mean", SCORE_UNIT, "mean over slices holding the class in P or T"
    ),
    "hd95": MetricInfo(
        "HD95", "px", "95th percentile of border distances, both directions pooled (medpy)"
    ),
    "hd95_mm": MetricInfo(
        "HD95", "mm", "larger of the two directed 95th percentiles of border distances"
    ),
    "slice_hd95_mm": MetricInfo(
        "HD95 per slice, mean", "mm", "mean over slices holding the class in P and T"
    ),
    "nsd": MetricInfo(
        "Normalised surface Dice", SCORE_UNIT, "share of border within the tolerance of the other"
    ),
    "lesion_precision": MetricInfo("Lesion precision", SCORE_UNIT, "predicted lesions that hit"),
    "lesion_recall": MetricInfo("Lesion recall", SCORE_UNIT, "true lesions found"),
    "lesion_f1": MetricInfo("Lesion F1", SCORE_UNIT, "2TP / (2TP + FP + FN) over lesions"),
    "slice_lesion_f1": MetricInfo(
        "Lesion F1 (2-D lesions)", SCORE_UNIT, "lesion F1 over each slice's 2-D components"
    ),
    "slice_sensitivity": MetricInfo(
        "Slice sensitivity", SCORE_UNIT, "slices with the class on which it was predicted"
    ),
    "slice_specificity": MetricInfo(
        "Slice specificity", SCORE_UNIT, "slices without the class on which none was predicted"
    ),
    "triage_threshold_ml": MetricInfo(
        "Triage threshold", "mL", "predicted volume above which a case is called positive"
    ),
    "triage_sensitivity": MetricInfo("Triage sensitivity", SCORE_UNIT, "positive cases called"),
    "triage_specificity": MetricInfo("Triage specificity", SCORE_UNIT, "negative cases not called"),
    "triage_auc": MetricInfo("Triage ROC AUC", SCORE_UNIT, "of the predicted volume as a score"),
    "volume_bias_ml": MetricInfo("Volume bias", "mL", "mean of predicted minus true volume"),
    "volume_loa_low_ml": MetricInfo("Lower limit of agreement", "mL", "bias - 1.96 SD"),
    "volume_loa_high_ml": MetricInfo("Upper limit of agreement", "mL", "bias + 1.96 SD"),
    "volume_median_abs_error_ml": MetricInfo(
        "Median absolute volume error", "mL", "median of |predicted - true volume|"
    ),
    "test_cases": MetricInfo("Test cases", "cases", "cases (patients) behind the figure"),
    "slice_dice_count": MetricInfo("Slices in the per-slice mean", "slices", ""),
    "surface_slice_count": MetricInfo("Slices with the class in both masks", "slices", ""),
    "truth_lesions": MetricInfo("True lesions", "lesions", ""),
    "predicted_lesions": MetricInfo("Predicted lesions", "lesions", ""),
}
UNIT_SUFFIXES = (
    ("_mm", "mm"),
    ("_ml", "mL"),
    ("_px", "px"),
    ("_ms", "ms"),
    ("_mb", "MB"),
    ("_seconds", "s"),
    ("_s", "s"),
)
COUNT_ENDINGS = ("count", "cases", "lesions", "slices", "epoch", "epochs")
# Scores in [0, 1] outside METRICS, by how their names start (lesion_fraction_mean, ...).
SCORES = (
    "dice_mean",
    "dice_coef_multiclass",
    "pixel_accuracy",
    "lesion_slice_share",
    "lesion_fraction",
)


def unit_of(base: str) -> str:
    """The unit a metric's name carries: `_mm`, `_ml`, `_px`, `<what>_per_s`, a count, a
    score; "" for a name that carries none."""
    if base.startswith("pooled_"):
        return unit_of(base.removeprefix("pooled_"))
    if base in METRICS:
        return METRICS[base].unit
    for split in ("val_", "train_"):  # dvclive's per-split names: val_dice, train_dice_mean
        if base.startswith(split) and unit_of(base.removeprefix(split)) == SCORE_UNIT:
            return SCORE_UNIT
    rate = re.search(r"([a-z]+)_per_s$", base)
    if rate:
        return f"{rate[1]}/s"
    for suffix, unit in UNIT_SUFFIXES:
        if base.endswith(suffix) or f"{suffix}_" in base:
            return unit
    if base.startswith("pixels_"):
        return "pixels"
    if base.endswith("crossentropy"):
        return "nats per pixel"
    if base.endswith(("loss", "_lr")):
        return NO_UNIT
    counted = [word for word in base.split("_") if word in COUNT_ENDINGS]
    if counted:
        return counted[-1]
    # A score only by name; any other key (a ratio, a count of files, a device) claims no unit.
    return SCORE_UNIT if base.startswith(SCORES) else ""


def label_of(base: str) -> str:
    if base.startswith("pooled_"):
        return f"{label_of(base.removeprefix('pooled_'))}, pooled over slices"
    return METRICS[base].label if base in METRICS else base.replace("_", " ")


def number(value: object, unit: str = "") -> str:
    """A metric as text: counts as integers, the rest to 3 significant decimals."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        if 0 < abs(value) < 0.001:  # a learning rate, say
            text = f"{value:.2e}"
        else:
            text = f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    else:
        return str(value)
    silent = (SCORE_UNIT, NO_UNIT, *COUNT_ENDINGS)  # said once, in the column head
    return f"{text} {unit}" if unit and unit not in silent else text


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class RunFacts:
    """What the page says about the run itself (git, time, params, software, machine)."""

    commit: str | None
    commit_subject: str
    modified_files: tuple[str, ...]
    built_at: str
    params: dict[str, object]
    committed_params: dict[str, object] | None
    packages: tuple[tuple[str, str], ...]
    device: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RunData:
    """The report's inputs: metrics per stage, the folder of reports, the facts."""

    root: Path
    metrics: dict[str, dict[str, object]]
    facts: RunFacts
    classes: tuple[str, ...]
    phantom: bool
    extract_archive: str = ""

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def reports_files(self, pattern: str) -> list[Path]:
        return sorted(self.reports.glob(pattern))

    def href(self, path: Path) -> str:
        return path.relative_to(self.reports).as_posix()


def read_metrics(root: Path) -> dict[str, dict[str, object]]:
    """metrics/<stage>.json of every stage before `report`; a missing or bad file is an error."""
    metrics: dict[str, dict[str, object]] = {}
    for name in STAGE_METRICS:
        path = root / "metrics" / f"{name}.json"
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise DataError(f"{path}: cannot read ({error.strerror}); run {name} first") from None
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(loaded, dict):
            raise DataError(f"{path}: expected a flat JSON object, got {type(loaded).__name__}")
        metrics[name] = loaded
    return metrics


def flatten(mapping: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Nested params as dotted keys (`train.reduce_lr.patience`), lists kept whole."""
    flat: dict[str, object] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and key != "rgb_map":
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout


def committed_params(root: Path) -> dict[str, object] | None:
    """params.yaml as committed at HEAD, with the defaults filled in like the run's own."""
    text = _git(root, "show", "HEAD:params.yaml")
    if text is None:
        return None
    raw = parse_params_yaml(text, source="HEAD:params.yaml")
    try:
        return flatten(parse_params(raw).model_dump(mode="json"))
    except ParamsError:  # committed under an older schema: compare the raw file
        return flatten(raw if isinstance(raw, dict) else {})


def package_versions() -> tuple[tuple[str, str], ...]:
    found = [("python", platform.python_version())]
    for names in PACKAGES:
        for name in names:
            try:
                found.append((name, metadata.version(name)))
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            found.append((names[0], "not installed"))
    return tuple(found)


def device_facts(train_metrics: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """The training device when train recorded it; otherwise this machine's CPU and GPUs."""
    recorded = [(key, str(value)) for key, value in train_metrics.items() if "device" in key]
    if recorded:
        return tuple(("train " + key.replace("_", " "), value) for key, value in recorded)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = "none found (nvidia-smi absent)"
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False
        )
        gpus = "; ".join(listed.stdout.split("\n")[:8]).strip("; ") or "none listed"
    return (
        ("machine that built this report", f"{platform.system()} {platform.machine()}"),
        ("CPU", f"{cpu}, {os.cpu_count()} logical cores"),
        ("GPUs", gpus),
        ("note", "train did not record its device; these are the report machine's"),
    )


def built_at() -> str:
    """UTC time of this build; SOURCE_DATE_EPOCH (reproducible builds) fixes it."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def run_facts(root: Path, params: Mapping[str, object], train: Mapping[str, object]) -> RunFacts:
    head = _git(root, "log", "-1", "--format=%H%x00%s%x00%cI")
    commit, subject = None, ""
    if head and "\x00" in head:
        commit, subject, date = head.strip().split("\x00")
        subject = f"{subject} ({date})"
    status = _git(root, "status", "--porcelain", "--untracked-files=no") or ""
    return RunFacts(
        commit=commit,
        commit_subject=subject,
        modified_files=tuple(line[3:] for line in status.splitlines() if line.strip()),
        built_at=built_at(),
        params=flatten(params),
        committed_params=committed_params(root) if commit else None,
        packages=package_versions(),
        device=device_facts(train),
    )


def collect_run(root: Path, params: Mapping[str, object]) -> RunData:
    """Everything the page shows, read from `root` (the project folder)."""
    metrics = read_metrics(root)
    params = json.loads(json.dumps(params))  # tuples as lists, as YAML reads them back
    classes = class_labels(params["rgb_map"])[1:]  # type: ignore[arg-type]
    archive = str(params["extract"]["archive"])  # type: ignore[index]
    return RunData(
        root=root,
        metrics=metrics,
        facts=run_facts(root, params, metrics["train"]),
        classes=classes,
        phantom=is_phantom(archive),
        extract_archive=archive,
    )


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV an earlier stage wrote; unreadable is an error naming it."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read as UTF-8 CSV ({error})") from None


def as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# ----------------------------------------------------------------------- evaluate keys


@dataclass(frozen=True)
class ParsedKey:
    base: str
    lesion_class: str | None
    bound: str | None  # "_ci_low" / "_ci_high"


def parse_key(key: str, classes: Sequence[str]) -> ParsedKey:
    """`triage_sensitivity_ischemic_ci_low` -> (triage_sensitivity, ischemic, _ci_low)."""
    bound = next((suffix for suffix in CI_SUFFIXES if key.endswith(suffix)), None)
    stem = key[: -len(bound)] if bound else key
    for name in classes:
        if stem.endswith(f"_{name}"):
            return ParsedKey(stem[: -len(name) - 1], name, bound)
    return ParsedKey(stem, None, bound)


@dataclass
class MetricRow:
    base: str
    values: dict[str, object] = field(default_factory=dict)  # class -> value
    low: dict[str, object] = field(default_factory=dict)
    high: dict[str, object] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def has_interval(self) -> bool:
        return bool(self.low or self.high)


def metric_rows(evaluate: Mapping[str, object], classes: Sequence[str]) -> list[MetricRow]:
    """Per-class rows of the evaluate metrics, in the order their keys first appear.

    Confusion pixel counts (`pixels_true_*`) and null reasons are left to their own places.
    """
    rows: dict[str, MetricRow] = {}
    for key, value in evaluate.items():
        if key.startswith("pixels_true_") or key.endswith("_null_reason"):
            continue
        parsed = parse_key(key, classes)
        if parsed.lesion_class is None:
            continue
        row = rows.setdefault(parsed.base, MetricRow(parsed.base))
        target = {None: row.values, "_ci_low": row.low, "_ci_high": row.high}[parsed.bound]
        target[parsed.lesion_class] = value
        reason = evaluate.get(f"{key}_null_reason")
        if value is None and reason:
            row.reasons[parsed.lesion_class] = str(reason)
    return list(rows.values())


def headline_keys(evaluate: Mapping[str, object], classes: Sequence[str]) -> list[str]:
    """The keys the page leads with: lesion Dice per class (with its interval when there is
    one), their mean, and the reference's `dice_coef_multiclass`."""
    keys = []
    for name in classes:
        keys += [k for k in (f"dice_{name}", f"dice_{name}_ci_low", f"dice_{name}_ci_high")]
    keys += ["dice_mean", "dice_coef_multiclass"]
    return [key for key in keys if key in evaluate]


def per_case_metrics(evaluate: Mapping[str, object], classes: Sequence[str]) -> bool:
    """True for the per-case (patient) evaluate; False for the older slice-pooled one."""
    return any(f"test_cases_{name}" in evaluate for name in classes) or any(
        key.startswith("pooled_") for key in evaluate
    )


def with_interval(row: MetricRow, name: str, unit: str) -> str:
    text = number(row.values.get(name), unit)
    if row.values.get(name) is None and name in row.reasons:
        return f"n/a ({row.reasons[name]})"
    if name in row.low or name in row.high:
        text += f" ({number(row.low.get(name))} to {number(row.high.get(name))})"
    return text


def metrics_table(rows: Sequence[MetricRow], classes: Sequence[str]) -> str:
    intervals = any(row.has_interval for row in rows)
    headers = ["metric", "unit", *[f"{c} (95% CI)" if intervals else c for c in classes]]
    body = [
        [label_of(row.base), unit_of(row.base)]
        + [with_interval(row, name, unit_of(row.base)) for name in classes]
        for row in rows
    ]
    return table(headers, body)


# ------------------------------------------------------------------------------ sections


def caveat(data: RunData) -> str:
    return paragraph(PHANTOM_CAVEAT, "caveat") if data.phantom else ""


def figures(data: RunData, items: Iterable[tuple[Path, str]], wide: bool = False) -> str:
    """The pictures that exist, in a grid of plots, or `wide`: one under the other at their
    own size (panels and montages, whose detail a grid would shrink away)."""
    shown = [
        figure(data.href(path), caption, alt=path.stem.replace("_", " "))
        for path, caption in items
        if path.is_file()
    ]
    if not shown:
        return ""
    return "".join(shown) if wide else f'<div class="gallery">{"".join(shown)}</div>'


def run_section(data: RunData) -> Section:
    facts = data.facts
    if facts.commit:
        commit = f"{facts.commit} {facts.commit_subject}"
        changed = (
            f"{len(facts.modified_files)} tracked files differ from it: "
            + ", ".join(facts.modified_files[:12])
            + (" ..." if len(facts.modified_files) > 12 else "")
            if facts.modified_files
            else "the working tree matches it"
        )
    else:
        commit, changed = "not a git checkout", ""
    committed = facts.committed_params
    differing = [
        key
        for key, value in facts.params.items()
        if committed is not None and committed.get(key, "(absent)") != value
    ]
    params_rows = [
        [
            key,
            json.dumps(facts.params[key]),
            json.dumps(committed[key]) if committed and key in committed else "(absent)",
        ]
        for key in differing
    ]
    if committed is None:
        params_text = paragraph("No committed params.yaml to compare with: every param below.")
    elif differing:
        params_text = paragraph(
            f"{len(differing)} params differ from the committed params.yaml:"
        ) + table(["param", "this run", "committed"], params_rows)
    else:
        params_text = paragraph("Every param equals the committed params.yaml.")
    all_rows = [
        [key, json.dumps(value), "differs" if key in differing else ""]
        for key, value in facts.params.items()
    ]
    body = (
        "<h3>Source</h3>"
        + table(
            ["what", "value"],
            [
                ["git commit (HEAD when the report was built)", commit],
                ["working tree", changed],
                ["report built", facts.built_at],
            ],
        )
        + "<h3>Params</h3>"
        + params_text
        + "<details><summary>All params of this run</summary>"
        + table(
            ["param", "value", "vs committed"],
            all_rows,
            row_classes=["differs" if row[2] else "" for row in all_rows],
        )
        + "</details><h3>Software and device</h3>"
        + side_by_side(
            table(["package", "version"], facts.packages),
            table(["device", "value"], facts.device),
        )
    )
    reading = (
        f"Commit {facts.commit[:10] if facts.commit else '(none)'}, "
        f"{len(differing)} params changed from the commit, built {facts.built_at}."
    )
    return Section("run", "The run", reading, body)


def split_counts(
    split: dict[str, object], classes: Sequence[str]
) -> dict[tuple[str, str], dict[str, object]]:
    """split.json's slices and cases by (split, class): the keys `<split>_<what>_<class>`,
    or `<split>_<class>_<what>` in metrics written before issue 14 renamed them."""
    names = "|".join(classes)
    patterns = (
        re.compile(rf"^(?P<split>\w+?)_(?P<what>slices|cases)_(?P<lesion>{names})$"),
        re.compile(rf"^(?P<split>\w+?)_(?P<lesion>{names})_(?P<what>slices|cases)$"),
    )
    counts: dict[tuple[str, str], dict[str, object]] = {}
    for key, value in split.items():
        for pattern in patterns:
            if found := pattern.match(key):
                counts.setdefault((found["split"], found["lesion"]), {})[found["what"]] = value
    return counts


def data_section(data: RunData) -> Section:
    extract, checks = data.metrics["extract"], data.metrics["data"]
    split, augment = data.metrics["split"], data.metrics["augment"]
    counted = ("pairs", "entries", "matched_pairs")
    per_group = re.compile(r"^(pairs|cases|lesion_slices)_")
    problems = {
        key: value
        for key, value in extract.items()
        if key not in counted and not per_group.match(key)
    }
    extract_rows = [
        [key.replace("_", " "), number(extract[key])] for key in extract if key not in problems
    ]
    problem_rows = [[key.replace("_", " "), number(value)] for key, value in problems.items()]
    failed_critical = checks.get("expectations_failed_critical", 0)
    verdict = "passed" if not failed_critical else "FAILED"
    checks_text = (
        f"Validation {verdict}: {number(checks.get('expectations_total'))} expectations, "
        f"{number(checks.get('expectations_failed'))} failed "
        f"({number(failed_critical)} critical)."
    )
    split_rows = [
        [name, lesion, number(v.get("slices")), number(v.get("cases"))]
        for (name, lesion), v in split_counts(split, data.classes).items()
    ]
    augment_rows = [[key.replace("_", " "), number(value)] for key, value in augment.items()]
    docs = data.reports / "data_docs" / "index.html"
    docs_link = (
        f'<p><a href="{escape(data.href(docs))}">Data Docs</a>: every expectation with its '
        "observed values (Great Expectations, works offline).</p>"
        if docs.is_file()
        else paragraph("No Data Docs were written for this run.")
    )
    extract_report = data.reports / "extract_report.txt"
    extract_link = (
        f'<p><a href="{escape(data.href(extract_report))}">extract_report.txt</a> lists each '
        "file not used and why.</p>"
        if extract_report.is_file()
        else ""
    )
    source = (
        "the synthetic phantom (no patient data)"
        if data.phantom
        else f"the archive {data.extract_archive}"
    )
    body = (
        paragraph(f"Source: {source}.")
        + "<h3>Extraction</h3>"
        + side_by_side(
            table(["count", "value"], extract_rows),
            table(
                ["problem (every category extract counts; 0 = none seen)", "files"], problem_rows
            ),
        )
        + extract_link
        + "<h3>Validation</h3>"
        + paragraph(checks_text)
        + docs_link
        + "<h3>Split (by patient) and augmentation</h3>"
        + side_by_side(
            table(["split", "class", "slices", "cases (patients)"], split_rows),
            table(["augmentation (training split only)", "value"], augment_rows),
        )
        + figures(
            data,
            [
                (data.reports / "dataset_statistics.png", "Slices per class after extraction."),
                (data.reports / "split_statistics.png", "Slices per class and split."),
                (
                    data.reports / "phantom_montage.png",
                    "Phantom slices with their masks (hemorrhage red, infarct green).",
                ),
            ],
        )
    )
    problems_seen = sum(v for v in problems.values() if isinstance(v, int))
    reading = (
        f"{number(extract.get('pairs'))} image/mask pairs from {source}; "
        f"{problems_seen} files not used; validation {verdict}; "
        f"{number(split.get('test_slices'))} test slices from "
        f"{number(split.get('test_cases'))} patients."
    )
    return Section("data", "The data", reading, body)


def training_section(data: RunData) -> Section:
    train = data.metrics["train"]
    rows = [[key.replace("_", " "), number(value, unit_of(key))] for key, value in train.items()]
    pictures = figures(
        data,
        [
            (
                data.reports / "train" / "train_metrics.png",
                "Lesion Dice per epoch, train and "
                "validation (dice_coef_multiclass is the reference metric).",
            ),
            (data.reports / "train" / "train_losses.png", "Loss per epoch, train and validation."),
        ],
    )
    montage = figures(
        data,
        [
            (
                data.reports / "train" / "epoch_change_montage.png",
                "The mini_test slices (rows) with their truth, then predicted after chosen "
                "epochs: the masks forming.",
            )
        ],
        wide=True,
    )
    reading = (
        f"Best validation mean lesion Dice {number(train.get('val_dice_mean'))} at epoch "
        f"{number(train.get('best_epoch'))} of {number(train.get('epochs'))}; "
        f"{number(train.get('training_s', train.get('train_seconds')), 's')} of training at "
        f"{number(train.get('train_images_per_s'), 'images/s')}."
    )
    body = caveat(data) + side_by_side(table(["figure", "value"], rows), pictures) + montage
    return Section("training", "Training", reading, body)


def per_case_table(data: RunData) -> tuple[str, str]:
    """(heading, table HTML) of cases.csv when evaluate wrote it, else of slice_dice.csv."""
    for folder, name, heading in (
        ("metrics", "cases.csv", "Per test case (patient)"),
        (
            "reports/evaluate",
            "slice_dice.csv",
            "Per test slice (the evaluate stage of this run scores slices)",
        ),
    ):
        path = data.root / folder / name
        if path.is_file():
            headers, rows = read_csv_rows(path)
            body = [[cell_of(row.get(h, "")) for h in headers] for row in rows]
            return heading, table(headers, body, sortable=True, scroll=True, table_id="cases")
    return "Per test case", paragraph("The evaluate stage of this run wrote no per-case table.")


def cell_of(text: str) -> Cell:
    value = as_number(text)
    if value is None:
        return Cell(text)
    shown = text if value.is_integer() and "." not in text else f"{value:.3f}"
    return Cell(shown, numeric=True, sort=value)


def triage_block(rows: Sequence[MetricRow], data: RunData) -> str:
    triage = [row for row in rows if row.base.startswith("triage_")]
    if triage:
        return "<h3>Triage: is there a lesion in this patient?</h3>" + metrics_table(
            triage, data.classes
        )
    slice_level = [row for row in rows if row.base in SLICE_DETECTION]
    if not slice_level:
        return ""
    return (
        "<h3>Detection per slice</h3>"
        + paragraph(
            "This run's evaluate stage calls lesions per slice, not per patient, and gives no "
            "intervals; a patient-level triage table appears when evaluate writes triage_* keys."
        )
        + metrics_table(slice_level, data.classes)
    )


def volume_block(rows: Sequence[MetricRow], data: RunData) -> str:
    volume = [row for row in rows if row.base.startswith("volume_")]
    plots = [
        p
        for p in data.reports_files("evaluate/*.png")
        if any(word in p.stem.lower() for word in ("bland", "altman", "volume"))
    ]
    if not volume and not plots:
        return "<h3>Lesion volume</h3>" + paragraph(
            "This run's evaluate stage does not measure lesion volumes."
        )
    return (
        "<h3>Lesion volume agreement</h3>"
        + (metrics_table(volume, data.classes) if volume else "")
        + figures(data, [(p, "Predicted vs true lesion volume per test case.") for p in plots])
    )


def test_section(data: RunData) -> Section:
    evaluate = data.metrics["evaluate"]
    rows = metric_rows(evaluate, data.classes)
    segmentation = [
        row
        for row in rows
        if not row.base.startswith(("triage_", "volume_", "pooled_"))
        and row.base not in SLICE_DETECTION
    ]
    pooled = [row for row in rows if row.base.startswith("pooled_")]
    per_case = per_case_metrics(evaluate, data.classes)
    how = (
        "Each figure is the mean over test cases (patients), each scored as a 3-D volume."
        if per_case
        else "Each figure is pooled over all test slices' pixels (not per patient)."
    )
    classless = [
        key
        for key, value in evaluate.items()
        if parse_key(key, data.classes).lesion_class is None
        and not key.endswith("_null_reason")
        and not isinstance(value, str)
    ]
    overall = [
        [label_of(key), number(evaluate[key], unit_of(key))]
        for key in classless
        if not key.startswith("pixels_")
    ]
    pixels = [
        [key.replace("_", " "), number(evaluate[key])]
        for key in classless
        if key.startswith("pixels_")
    ]
    heading, cases = per_case_table(data)
    pictures = [
        (path, caption_of(path))
        for path in data.reports_files("evaluate/*.png")
        if not any(word in path.stem.lower() for word in ("bland", "altman", "volume"))
    ]
    body = (
        caveat(data)
        + paragraph(how + " Background is left out of every lesion metric.")
        + side_by_side(
            metrics_table(segmentation, data.classes), table(["overall figure", "value"], overall)
        )
        + paragraph(REFERENCE_METRIC_NOTE, "note")
        + (
            "<details><summary>Pixel confusion counts</summary>"
            + table(["test pixels", "count"], pixels)
            + "</details>"
            if pixels
            else ""
        )
        + (
            "<h3>Pooled over slices (for comparison)</h3>" + metrics_table(pooled, data.classes)
            if pooled
            else ""
        )
        + triage_block(rows, data)
        + volume_block(rows, data)
        + figures(data, pictures)
        + f"<h3>{escape(heading)}</h3>"
        + paragraph("Click a column head to sort.", "note")
        + cases
    )
    dice = "; ".join(
        f"{name} Dice {with_interval(next(r for r in rows if r.base == 'dice'), name, '')}"
        for name in data.classes
        if any(r.base == "dice" for r in rows)
    )
    reference = number(evaluate.get("dice_coef_multiclass"))
    reading = f"{dice} (the reference's dice_coef_multiclass: {reference})."
    return Section("test", "Test results", reading, body)


def caption_of(path: Path) -> str:
    captions = {
        "confusion_matrix": "Pixel confusion matrix of the test split (colour: share of the "
        "actual class).",
        "slice_dice_histogram": "Per-slice Dice of each lesion class.",
    }
    return captions.get(path.stem, path.stem.replace("_", " "))


def overlays(data: RunData) -> tuple[list[Path], list[Path]]:
    pictures = data.reports_files("evaluate/overlays/*.png")
    best = [p for p in pictures if p.name.startswith("best")]
    worst = [p for p in pictures if p.name.startswith("worst")]
    return best, worst


def pictures_section(data: RunData) -> Section:
    best, worst = overlays(data)
    infer = data.metrics["infer"]
    montage = data.reports / "infer" / "mini_test_output.png"
    body = (
        caveat(data)
        + paragraph(
            "Each picture: the CT slice | ground truth | prediction (hemorrhage red, "
            "infarct green); the title gives the slice and its Dice."
        )
        + "<h3>Best test slices</h3>"
        + (figures(data, [(p, p.stem) for p in best], wide=True) or paragraph("None written."))
        + "<h3>Worst test slices</h3>"
        + (figures(data, [(p, p.stem) for p in worst], wide=True) or paragraph("None written."))
        + "<h3>mini_test predictions (infer stage)</h3>"
        + (
            figures(
                data, [(montage, "The mini_test slices: image | truth | prediction.")], wide=True
            )
            or paragraph("The infer stage wrote no montage.")
        )
        + paragraph("Inference speed, measured by infer on the machine that ran it:")
        + table(
            ["figure", "value"],
            [[key.replace("_", " "), number(v, unit_of(key))] for key, v in infer.items()],
        )
    )
    reading = f"{len(best)} best and {len(worst)} worst test slices, and the mini_test montage."
    return Section("pictures", "Pictures", reading, body)


def failure_modes(data: RunData) -> list[str]:
    """Plain-words failure modes of the worst test cases (or slices) of each class."""
    lines: list[str] = []
    cases = data.root / "metrics" / "cases.csv"
    slices = data.reports / "evaluate" / "slice_dice.csv"
    if cases.is_file():
        _, rows = read_csv_rows(cases)
        for name in data.classes:
            scored = [
                (as_number(row.get(f"dice_{name}", "")), row)
                for row in rows
                if as_number(row.get(f"dice_{name}", "")) is not None
            ]
            for dice, row in sorted(scored, key=lambda item: item[0])[:3]:
                truth = as_number(row.get(f"truth_volume_ml_{name}", "")) or 0.0
                predicted = as_number(row.get(f"predicted_volume_ml_{name}", "")) or 0.0
                lines.append(
                    f"case {row.get('case_id', '?')} ({name}): Dice {dice:.3f}, "
                    f"{volume_verdict(truth, predicted)} (true {truth:.2f} mL, predicted "
                    f"{predicted:.2f} mL)"
                )
    elif slices.is_file():
        _, rows = read_csv_rows(slices)
        scored = [
            (as_number(r["dice"]), r) for r in rows if as_number(r.get("dice", "")) is not None
        ]
        for dice, row in sorted(scored, key=lambda item: item[0])[:5]:
            what = (
                "lesion missed on this slice, or predicted where there is none"
                if dice == 0
                else "lesion found but its outline disagrees with the truth"
            )
            lines.append(f"slice {row['id']} ({row['class']}): Dice {dice:.3f}, {what}")
    return lines


def volume_verdict(truth_ml: float, predicted_ml: float) -> str:
    if truth_ml > 0 and predicted_ml == 0:
        return "lesion missed entirely"
    if truth_ml == 0 and predicted_ml > 0:
        return "false alarm: lesion predicted in a patient without one"
    if predicted_ml < 0.5 * truth_ml:
        return "under-segmented (less than half the true volume)"
    if predicted_ml > 2.0 * truth_ml:
        return "over-segmented (more than twice the true volume)"
    return "outline disagrees with the truth"


def model_card_section(data: RunData) -> Section:
    train, split = data.metrics["train"], data.metrics["split"]
    params = data.facts.params
    if data.phantom:
        provenance = (
            f"{PHANTOM_PROVENANCE} Seed {params.get('seed')}: "
            f"{params.get('phantom.hemorrhagic_cases')} hemorrhagic and "
            f"{params.get('phantom.ischemic_cases')} ischemic cases. "
            + PHANTOM_CAVEAT
        )
    else:
        provenance = kaggle_provenance(data.extract_archive)
    definitions = [
        [info.label, info.unit, info.definition]
        for base, info in METRICS.items()
        if info.definition
        and any(row.base == base for row in metric_rows(data.metrics["evaluate"], data.classes))
    ]
    failures = failure_modes(data)
    items = [
        (
            "Model",
            f"FlexUNet (U-Net), {number(train.get('params_count'))} parameters, "
            f"input {params.get('image_size')} x {params.get('image_size')} px grey CT "
            "slices in a brain window; output per pixel: background, hemorrhagic, ischemic.",
        ),
        ("Intended use", INTENDED_USE),
        ("Not intended for", NOT_INTENDED_FOR),
        ("Training data", provenance),
        (
            "Evaluation data",
            f"The test split: {number(split.get('test_slices'))} slices from "
            f"{number(split.get('test_cases'))} patients, held out by patient "
            "(no patient in two splits).",
        ),
        (
            "Known limitations",
            "Trained and tested on few patients; 2-D slices without 3-D "
            "context; grey PNG input without Hounsfield units or pixel "
            "spacing; one hemorrhage/infarct per case in the phantom; "
            "performance on other scanners, protocols and populations is "
            "unknown.",
        ),
    ]
    body = (
        paragraph(NOT_A_DEVICE, "banner")
        + "<dl>"
        + "".join(f"<dt>{escape(t)}</dt><dd>{escape(d)}</dd>" for t, d in items)
        + "</dl><h3>Metrics and their definitions</h3>"
        + table(["metric", "unit", "definition"], definitions)
        + "<h3>Failure modes seen in the worst test cases</h3>"
        + (
            "<ul>" + "".join(f"<li>{escape(line)}</li>" for line in failures) + "</ul>"
            if failures
            else paragraph("No per-case or per-slice table to read them from.")
        )
        + paragraph(
            "In the spirit of Mitchell et al. 2019, 'Model Cards for Model Reporting'.", "note"
        )
    )
    reading = "Research and education only, not a medical device; trained on " + (
        "a synthetic phantom." if data.phantom else "the Kaggle archive (see licences)."
    )
    return Section("model-card", "Model card", reading, body)


def header(data: RunData) -> str:
    evaluate = data.metrics["evaluate"]
    dice = next((row for row in metric_rows(evaluate, data.classes) if row.base == "dice"), None)
    parts = [
        f"{name} lesion Dice {with_interval(dice, name, '') if dice else 'n/a'}"
        for name in data.classes
    ]
    interval = " (95% confidence intervals in brackets)" if dice and dice.has_interval else ""
    return (
        paragraph(NOT_A_DEVICE, "banner")
        + paragraph(
            "Stroke CT lesion segmentation, one run: "
            + "; ".join(parts)
            + f" on the test split{interval}. Commit {(data.facts.commit or 'none')[:10]}, "
            f"built {data.facts.built_at}."
        )
        + caveat(data)
    )


def build_page(data: RunData) -> str:
    sections = [
        run_section(data),
        data_section(data),
        training_section(data),
        test_section(data),
        pictures_section(data),
        model_card_section(data),
    ]
    return page("Run report: stroke CT lesion segmentation", header(data), sections)


def write_report(root: Path, params: Mapping[str, object]) -> Path:
    """Build reports/index.html under `root` from the run's metrics and reports."""
    data = collect_run(root, params)
    target = root / REPORT_PAGE
    write_text_atomic(target, build_page(data))
    return target


# ------------------------------------------------------------------------------ compare


def dvc_json(root: Path, *args: str) -> dict:
    """`dvc <args> --json` in `root`, parsed; the same reading as the command a person runs."""
    executable = Path(sys.executable).with_name("dvc")
    command = [str(executable) if executable.is_file() else "dvc", *args, "--json"]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise DataError(f"{' '.join(command[1:])} failed in {root}: {result.stderr.strip()}")
    return json.loads(result.stdout or "{}")


def describe_rev(root: Path, rev: str) -> str:
    line = _git(root, "log", "-1", "--format=%h %s (%cI)", rev)
    return f"{rev}: {line.strip()}" if line else rev


def comparison_page(
    rev_a: str,
    rev_b: str,
    metrics_diff: Mapping[str, Mapping[str, Mapping[str, object]]],
    params_diff: Mapping[str, Mapping[str, Mapping[str, object]]],
    descriptions: tuple[str, str],
) -> str:
    """Metrics of both revisions with their differences (those that differ first), and the
    params that differ."""
    classes = sorted(
        {
            key.split(".", 1)[1].lower()
            for entries in params_diff.values()
            for key in entries
            if key.startswith("rgb_map.") and key != "rgb_map.background"
        }
    )
    metric_rows = []
    for file, entries in metrics_diff.items():
        for key, values in entries.items():
            old, new, diff = values.get("old"), values.get("new"), values.get("diff")
            numeric = isinstance(old, int | float) and isinstance(new, int | float)
            relative = f"{100 * diff / old:+.1f}%" if numeric and diff and old else ""
            unit = unit_of(parse_key(key, classes).base)
            shown = [number(old), number(new), number(diff) if diff else "", relative]
            metric_rows.append([file, key, unit, *shown])
    metric_rows.sort(key=lambda row: (row[5] == "", row[0], row[1]))
    changed = sum(row[5] != "" for row in metric_rows)
    param_rows = [
        [file, key, json.dumps(values.get("old")), json.dumps(values.get("new"))]
        for file, entries in params_diff.items()
        for key, values in entries.items()
        if values.get("old") != values.get("new")
    ]
    phantom = any(
        is_phantom(str(values.get(side)))
        for entries in params_diff.values()
        for key, values in entries.items()
        if key == "extract.archive"
        for side in ("old", "new")
    )
    sections = [
        Section(
            "metrics",
            "Metrics",
            f"{changed} of {len(metric_rows)} metrics differ between {rev_a} and {rev_b}.",
            (paragraph(PHANTOM_CAVEAT, "caveat") if phantom else "")
            + paragraph("Metrics that differ come first; click a column head to sort.", "note")
            + table(
                ["file", "metric", "unit", rev_a, rev_b, f"{rev_b} - {rev_a}", "change"],
                metric_rows,
                sortable=True,
            ),
        ),
        Section(
            "params",
            "Params that differ",
            f"{len(param_rows)} params differ.",
            table(["file", "param", rev_a, rev_b], param_rows)
            if param_rows
            else paragraph("No param differs."),
        ),
    ]
    head = paragraph(NOT_A_DEVICE, "banner") + "".join(paragraph(text) for text in descriptions)
    return page(f"Comparing {rev_a} and {rev_b}", head, sections)


def write_comparison(root: Path, rev_a: str, rev_b: str, output: Path) -> Path:
    """The page a person wants after `dvc metrics diff REV_A REV_B`, written to `output`."""
    metrics_diff = dvc_json(root, "metrics", "diff", rev_a, rev_b, "--all")
    params_diff = dvc_json(root, "params", "diff", rev_a, rev_b, "--all")
    descriptions = (describe_rev(root, rev_a), describe_rev(root, rev_b))
    write_text_atomic(
        output, comparison_page(rev_a, rev_b, metrics_diff, params_diff, descriptions)
    )
    return output
