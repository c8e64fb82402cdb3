"""The `report` stage's page: what it shows for each shape of evaluate output, its model card,
its phantom caveats, escaping, and the comparison page (through the real `git` and `dvc`).

The page is checked in a real browser in tests/test_report_browser.py.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.expectations import make_data_docs_offline
from pipeline.io import DataError
from pipeline.params import load_params
from pipeline.report.html import table
from pipeline.report.model_card import PHANTOM_ARCHIVE, PHANTOM_CAVEAT
from pipeline.report.page import (
    headline_keys,
    metric_rows,
    number,
    parse_key,
    split_counts,
    unit_of,
    write_comparison,
    write_report,
)
from stages import synthesize as synthesize_stage
from stages.report import params_document
from tests.conftest import DEFAULT_LR, PROJECT_ROOT, DvcProject
from tests.report_fixtures import RUN_LR, SHAPES, evaluate_metrics, git, write_tiny_run

CLASSES = ("hemorrhagic", "ischemic")
SECTIONS_WITH_PHANTOM_NUMBERS = 4  # header, training, test results, pictures (+ model card)


def build(root: Path) -> str:
    page = write_report(root, params_document(load_params(root / "params.yaml")))
    return page.read_text(encoding="utf-8")


@pytest.fixture(scope="module", params=SHAPES)
def run(request, tmp_path_factory) -> tuple[str, Path, str]:
    """(shape, run folder, page HTML) of a tiny run with evaluate outputs of each shape."""
    root = write_tiny_run(tmp_path_factory.mktemp(f"run_{request.param}"), request.param)
    return request.param, root, build(root)


def text_of(page: str) -> str:
    """The page's visible text, roughly (tags dropped, entities kept)."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.DOTALL)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("dice_ischemic", ("dice", "ischemic", None)),
        ("dice_hemorrhagic_ci_low", ("dice", "hemorrhagic", "_ci_low")),
        ("triage_sensitivity_ischemic_ci_high", ("triage_sensitivity", "ischemic", "_ci_high")),
        ("volume_loa_low_ml_hemorrhagic", ("volume_loa_low_ml", "hemorrhagic", None)),
        ("pooled_dice_ischemic", ("pooled_dice", "ischemic", None)),
        ("dice_coef_multiclass", ("dice_coef_multiclass", None, None)),
    ],
)
def test_evaluate_keys_split_into_metric_class_and_bound(key, expected):
    parsed = parse_key(key, CLASSES)
    assert (parsed.base, parsed.lesion_class, parsed.bound) == expected


@pytest.mark.parametrize(
    ("base", "unit"),
    [
        ("hd95_mm", "mm"),
        ("hd95", "px"),
        ("volume_bias_ml", "mL"),
        ("train_images_per_s", "images/s"),
        ("training_s", "s"),
        ("train_seconds", "s"),  # train.json before issue 14
        ("test_cases", "cases"),
        ("pooled_slice_hd95_mm", "mm"),
        ("pooled_slice_lesion_f1", "score 0-1"),
        ("dice", "score 0-1"),
        ("val_dice", "score 0-1"),
        ("dice_mean", "score 0-1"),
        ("val_dice_coef_multiclass", "score 0-1"),
        ("lesion_fraction_median", "score 0-1"),
        ("read_mb", "MB"),
        ("train_slices_after", "slices"),
        # Names that carry no unit claim none (issue 25: these read "score 0-1").
        ("pairs", ""),
        ("devices", ""),
        ("ratio_before", ""),
        ("augmented_barrel", ""),
        ("expectations_failed", ""),
        ("batch_size", ""),
    ],
)
def test_units_come_from_the_metric_names(base, unit):
    assert unit_of(base) == unit


def test_split_counts_read_both_key_orders():
    new = {"train_slices_hemorrhagic": 80, "train_cases_hemorrhagic": 5, "test_slices": 9}
    old = {"train_hemorrhagic_slices": 80, "train_hemorrhagic_cases": 5, "test_slices": 9}
    expected = {("train", "hemorrhagic"): {"slices": 80, "cases": 5}}
    assert split_counts(new, ("hemorrhagic", "ischemic")) == expected
    assert split_counts(old, ("hemorrhagic", "ischemic")) == expected


def test_numbers_carry_their_unit_and_nulls_read_na():
    assert number(2.8, "mm") == "2.800 mm"
    assert number(6, "cases") == "6"  # the unit is in the column head
    assert number(3.7e-06) == "3.70e-06"
    assert number(None, "mm") == "n/a"


def test_per_case_keys_give_intervals_and_triage_slice_keys_do_not():
    slices = json.loads((PROJECT_ROOT / "tests/fixtures/report/evaluate_slices.json").read_text())
    cases = json.loads((PROJECT_ROOT / "tests/fixtures/report/evaluate_cases.json").read_text())
    by_base = {row.base: row for row in metric_rows(cases, CLASSES)}
    assert by_base["dice"].low == {"hemorrhagic": 0.861, "ischemic": 0.512}
    assert by_base["triage_auc"].reasons["hemorrhagic"].startswith("every test case")
    assert {"triage_sensitivity", "volume_bias_ml", "pooled_dice"} <= set(by_base)
    assert not any(row.has_interval for row in metric_rows(slices, CLASSES))
    assert headline_keys(slices, CLASSES) == [
        "dice_hemorrhagic",
        "dice_ischemic",
        "dice_mean",
        "dice_coef_multiclass",
    ]
    assert "dice_ischemic_ci_high" in headline_keys(cases, CLASSES)


def test_page_holds_the_headline_values_of_evaluate(run):
    _, root, page = run
    metrics = evaluate_metrics(root)
    text = text_of(page)
    for key in headline_keys(metrics, CLASSES):
        assert number(metrics[key]) in text, key


def test_page_follows_the_shape_of_the_evaluate_outputs(run):
    shape, _, page = run
    per_case = shape == "cases"
    assert ("hemorrhagic (95% CI)" in page) is per_case
    assert ("Per test case (patient)" in page) is per_case
    assert ("Triage: is there a lesion in this patient?" in page) is per_case
    assert ("evaluate/volume_bland_altman.png" in page) is per_case
    assert ("Per test slice" in page) is not per_case
    assert ("does not measure lesion volumes" in page) is not per_case
    table = re.search(r'<table class="sortable" id="cases">.*?</table>', page, re.DOTALL)
    assert table and table.group(0).count("<tr>") == (1 + 12 if per_case else 1 + 3)


def test_run_section_shows_the_changed_param_commit_and_versions(run):
    _, root, page = run
    assert "1 params differ from the committed params.yaml" in page
    assert f"<td>lr</td><td>{RUN_LR}</td><td>{DEFAULT_LR}</td>" in page
    head = (root / ".git" / "HEAD").exists()
    assert head and re.search(r"git commit .*?<td>[0-9a-f]{40} tiny run", page)
    for package in ("tensorflow", "keras", "dvc", "great-expectations"):
        assert f"<td>{package}" in page


def test_model_card_and_phantom_caveats(run):
    _, _, page = run
    assert "This is not a medical device" in page
    assert "Research and education" in page
    assert page.count(PHANTOM_CAVEAT) >= SECTIONS_WITH_PHANTOM_NUMBERS
    for section in ("training", "test", "pictures"):
        body = re.search(rf'<section id="{section}">(.*?)</section>', page, re.DOTALL)
        assert body and PHANTOM_CAVEAT in body.group(1), section
    assert "Failure modes seen in the worst test cases" in page
    assert re.search(r"<li>(case|slice) .*Dice 0\.000", page)


def test_real_data_gets_provenance_and_licences_instead_of_the_phantom_caveat(tmp_path):
    root = write_tiny_run(tmp_path / "run", "cases")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["extract"]["archive"] = "data/raw/kaggle_stroke.zip"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    page = build(root)
    assert PHANTOM_CAVEAT not in page
    for words in ("PhysioNet", "CT-ICH", "CC BY 4.0", "AISD", "non-commercial"):
        assert words in page


def test_every_link_and_picture_of_the_page_is_a_file_inside_reports(run):
    _, root, page = run
    reports = (root / "reports").resolve()
    addresses = re.findall(r'(?:src|href)="([^"#][^"]*)"', page)
    assert len(addresses) >= 10
    for address in addresses:
        if address.startswith("data:"):
            continue
        target = (reports / address).resolve()
        assert reports in target.parents and target.is_file(), address


def test_text_from_files_is_escaped(tmp_path):
    root = write_tiny_run(tmp_path / "run", "cases")
    cases = root / "metrics" / "cases.csv"
    cases.write_text(cases.read_text().replace("0019990", "<script>alert(1)</script>", 1))
    page = build(root)
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


class CellText(HTMLParser):
    """The text of every table cell, as a browser's parser reads it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("td", "th"):
            self._inside = True
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.cells[-1] += data


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.text(max_size=12), min_size=2, max_size=2), max_size=4))
def test_any_text_in_a_table_reads_back_as_the_same_text(rows):
    """Whatever a file holds (markup, quotes, ampersands), a cell shows it as text."""
    parser = CellText()
    parser.feed(table(["a", "b"], rows, sortable=True))
    assert parser.cells == ["a", "b", *[text for row in rows for text in row]]


def test_an_unreadable_table_is_named(tmp_path):
    root = write_tiny_run(tmp_path / "run", "cases")
    (root / "metrics" / "cases.csv").write_bytes(b"case_id,dice\n\xff\xfe,1\n")
    with pytest.raises(DataError, match=r"cases\.csv: cannot read as UTF-8 CSV"):
        build(root)


def test_a_missing_metrics_file_is_named(tmp_path):
    root = write_tiny_run(tmp_path / "run", "slices")
    (root / "metrics" / "train.json").unlink()
    with pytest.raises(DataError, match=r"metrics/train\.json: cannot read .*run train first"):
        build(root)
    assert not (root / "reports" / "index.html").exists()


def test_data_docs_point_every_cdn_asset_at_a_vendored_copy(run):
    _, root, _ = run
    docs = root / "reports" / "data_docs"
    pages = [p for p in docs.rglob("*.html") if "vendor" not in p.parts]
    assert len(pages) >= 7
    for page in pages:
        text = page.read_text(encoding="utf-8")
        loaded = re.findall(r'<(?:script|img|link)\b[^>]*?(?:src|href)="(https?://[^"]+)"', text)
        assert loaded == [], page
        assert "crossorigin" not in text and "integrity=" not in text
    assert (docs / "vendor" / "jquery-3.7.1" / "jquery.min.js").is_file()


def test_data_docs_with_an_unknown_cdn_address_are_refused(tmp_path):
    docs = tmp_path / "docs"
    (docs / "site" / "static").mkdir(parents=True)
    page = docs / "site" / "index.html"
    page.write_text('<script src="https://cdn.example.org/new-library@2/x.js"></script>')
    with pytest.raises(DataError, match=r"index\.html: Data Docs load https://cdn\.example\.org"):
        make_data_docs_offline(docs)


def test_compare_page_shows_metric_and_param_differences(tmp_path):
    """Two commits of a project: the page holds both values, their difference, and the
    param that changed, as `dvc metrics diff` and `dvc params diff` read them."""
    project = DvcProject(tmp_path / "project")
    project.path.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(PROJECT_ROOT / name, project.path / name)
    (project.path / "metrics").mkdir()
    evaluate = json.loads((PROJECT_ROOT / "tests/fixtures/report/evaluate_slices.json").read_text())
    (project.path / "metrics" / "evaluate.json").write_text(json.dumps(evaluate))
    git(project.path, "init", "-q", "-b", "main")
    project.dvc("init", "-q")
    git(project.path, "add", "-A")
    git(project.path, "commit", "-q", "-m", "baseline")
    evaluate["dice_ischemic"] = 0.75
    (project.path / "metrics" / "evaluate.json").write_text(json.dumps(evaluate))
    params = yaml.safe_load((project.path / "params.yaml").read_text())
    params["lr"] = 2 * DEFAULT_LR
    (project.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(project.path, "commit", "-q", "-am", "higher lr")

    output = tmp_path / "compare.html"
    project.run(
        sys.executable,
        "-m",
        "stages.report",
        "--compare",
        "HEAD~1",
        "HEAD",
        "--output",
        str(output),
        env={"PYTHONPATH": str(PROJECT_ROOT)},
    )
    page = output.read_text(encoding="utf-8")
    row = re.search(r"<td>dice_ischemic</td>(.*?)</tr>", page)
    assert row, page
    cells = re.findall(r">([^<]+)</td>", row.group(1))
    assert cells == ["score 0-1", "0.884", "0.750", "-0.134", "-15.1%"]
    assert f"<td>lr</td><td>{DEFAULT_LR}</td><td>{2 * DEFAULT_LR}</td>" in page
    assert "HEAD~1: " in page and "baseline" in page and "higher lr" in page
    assert PHANTOM_CAVEAT in page  # both revisions ran on the phantom


def test_compare_names_a_revision_dvc_cannot_read(tmp_path):
    root = write_tiny_run(tmp_path / "run", "slices")
    with pytest.raises(DataError, match="metrics diff"):
        write_comparison(root, "HEAD", "no-such-branch", tmp_path / "compare.html")


def test_the_phantom_archive_is_where_synthesize_writes_it():
    assert PHANTOM_ARCHIVE == synthesize_stage.ARCHIVE_PATH
