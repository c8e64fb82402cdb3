"""The run report and its Data Docs in a real browser: headless Chromium from Debian's
`chromium` and `chromium-driver`, driven by Selenium, with the network closed to it.

The report is built on a tiny run (tests/report_fixtures.py) and its reports/ folder copied
elsewhere before it is opened, as a reader would receive it. A missing browser fails these
tests with the line that installs it (`make test` installs it when it can): they never skip.
Screenshots are kept in tests/output/ (git-ignored) to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.params import load_params
from pipeline.report.page import headline_keys, number, write_report
from stages.report import params_document
from tests.browser import Browser, browser, offline_problems
from tests.conftest import PROJECT_ROOT
from tests.report_fixtures import SHAPES, evaluate_metrics, write_tiny_run

SCREENSHOTS = PROJECT_ROOT / "tests" / "output"
WIDTH_PX = 1280
CLASSES = ("hemorrhagic", "ischemic")


@pytest.fixture(scope="module")
def chromium() -> Browser:
    with browser(WIDTH_PX) as session:
        yield session


@pytest.fixture(scope="module", params=SHAPES)
def copied_reports(request, tmp_path_factory) -> tuple[str, Path, dict]:
    """(shape, a copy of the run's reports/ folder, its evaluate metrics)."""
    root = write_tiny_run(tmp_path_factory.mktemp(f"run_{request.param}"), request.param)
    write_report(root, params_document(load_params(root / "params.yaml")))
    copy = tmp_path_factory.mktemp("received") / "reports"
    shutil.copytree(root / "reports", copy)
    return request.param, copy, evaluate_metrics(root)


def test_report_page_works_offline_and_shows_the_headline_metrics(chromium, copied_reports):
    shape, reports, metrics = copied_reports
    visit = chromium.visit(reports / "index.html")
    assert offline_problems(visit, reports) == []
    assert len(visit.images) >= 8 and all(image["loaded"] for image in visit.images)
    assert {link.name for link in visit.local_links()} >= {"index.html", "extract_report.txt"}
    for key in headline_keys(metrics, CLASSES):
        assert number(metrics[key]) in visit.text, key
    assert "not a medical device" in visit.text
    assert visit.scroll_width_px <= WIDTH_PX, "the page is wider than the window: cut off"

    picture = chromium.screenshot(SCREENSHOTS / f"report_{shape}_{WIDTH_PX}px.png")
    assert picture.shape[1] == WIDTH_PX and picture.shape[0] > 3000  # the whole page
    colours = np.unique(picture.reshape(-1, 3)[::7], axis=0)
    assert picture.std() > 20 and len(colours) > 200, "the screenshot is blank"


def data_docs_pages(reports: Path) -> list[Path]:
    docs = reports / "data_docs"
    return sorted(p for p in docs.rglob("*.html") if "vendor" not in p.relative_to(docs).parts)


def test_data_docs_work_offline_with_styles_scripts_and_filled_tables(chromium, copied_reports):
    _, reports, _ = copied_reports
    pages = data_docs_pages(reports)
    assert len(pages) == 7  # the index, and per suite its index, expectations, validation
    for page in pages:
        visit = chromium.visit(page)
        assert offline_problems(visit, reports) == [], page
        if page.parent == reports / "data_docs":
            continue  # our plain index of the two suites
        loaded = chromium.driver.execute_script(
            "return {sheets: Array.from(document.querySelectorAll('link[rel=stylesheet]'))"
            "  .every(function (l) { return l.sheet !== null; }),"
            " table: typeof (window.jQuery && jQuery.fn.bootstrapTable),"
            " rows: document.querySelectorAll('table tbody tr').length};"
        )
        assert loaded["sheets"], f"{page}: a style sheet did not load"
        assert loaded["table"] == "function", f"{page}: bootstrap-table did not load"
        assert loaded["rows"] > 0, f"{page}: its tables are empty"


def test_the_checks_catch_a_page_that_reaches_for_the_network(chromium, tmp_path):
    """The checks can fail: a CDN script, a missing picture and a dead link are all named."""
    page = tmp_path / "reports" / "index.html"
    page.parent.mkdir()
    page.write_text(
        "<!doctype html><title>bad</title>"
        '<script src="https://cdn.example.org/library.js"></script>'
        '<img src="missing.png"><a href="gone.html">gone</a><a href="../outside.html">out</a>'
    )
    (tmp_path / "outside.html").write_text("outside")
    problems = "\n".join(offline_problems(chromium.visit(page), page.parent))
    assert "request left the machine: https://cdn.example.org/library.js" in problems
    assert "picture not loaded" in problems and "missing.png" in problems
    assert "link does not resolve" in problems and "gone.html" in problems
    assert "link leaves the report folder" in problems
    assert "console error" in problems
