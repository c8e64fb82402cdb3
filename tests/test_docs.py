"""The docs hold together: every relative link and #anchor in README.md, CONTRIBUTING.md and
docs/*.md resolves, by GitHub's rules (a heading's anchor is its rendered text, lower case,
punctuation dropped, spaces as hyphens, repeats numbered -1, -2, ...); README stays a front door
that maps every docs page."""

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

PROJECT_ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150

FENCE = re.compile(r"^\s*(```|~~~)")
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target may be <bracketed> and followed by a "title".
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(<[^>]*>|[^\s)]+)(?:\s+\"[^\"]*\")?\s*\)"
)
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_TARGET = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']+)["']""")
HTML_ANCHOR = re.compile(r"""<a\s[^>]*\b(?:id|name)\s*=\s*["']([^"']+)["']""")
URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def doc_files(root: Path) -> list[Path]:
    """The Markdown files whose links are checked: README.md, CONTRIBUTING.md, docs/*.md."""
    files = [root / "README.md", root / "CONTRIBUTING.md", *sorted((root / "docs").glob("*.md"))]
    return [path for path in files if path.is_file()]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, where links and headings are Markdown."""
    lines, in_fence = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append((number, line))
    return lines


def rendered_heading_text(markdown: str) -> str:
    """A heading's text as GitHub renders it: code spans keep their content, links their text,
    emphasis markers and HTML tags go."""
    text = CODE_SPAN.sub(lambda match: match.group(2), markdown)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)


def github_anchor(heading_text: str) -> str:
    """GitHub's anchor slug of a rendered heading (github-slugger): lower case, every character
    that is not a letter, digit, mark, space, hyphen or underscore dropped, each space a hyphen."""
    kept = (char for char in heading_text.strip().lower() if slug_keeps(char))
    return "".join(kept).replace(" ", "-")


def slug_keeps(char: str) -> bool:
    """Letters, marks, numbers and connectors (the underscore) stay in a slug, as do space and
    hyphen; every other character (punctuation, symbols) is dropped."""
    return (
        char in " -" or unicodedata.category(char)[0] in "LMN" or unicodedata.category(char) == "Pc"
    )


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown file offers: its headings' slugs (repeats numbered as GitHub
    does) and explicit <a id/name> anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    previous = ""
    for _, line in prose_lines(text):
        heading = None
        atx = ATX_HEADING.match(line)
        if atx:
            heading = atx.group(2)
        elif SETEXT_UNDERLINE.match(line) and previous.strip() and previous.lstrip()[0] != "|":
            heading = previous
        if heading is not None:
            slug = github_anchor(rendered_heading_text(heading))
            repeats = seen.get(slug, 0)
            seen[slug] = repeats + 1
            found.add(slug if repeats == 0 else f"{slug}-{repeats}")
        found.update(match.group(1) for match in HTML_ANCHOR.finditer(line))
        previous = line
    return found


def link_targets(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link in prose: inline, reference definitions and HTML
    href/src; code spans are skipped, as GitHub does not render links inside them."""
    targets = []
    for number, line in prose_lines(text):
        prose = CODE_SPAN.sub("", line)
        found = [match.group(1) for match in INLINE_LINK.finditer(prose)]
        definition = REFERENCE_DEFINITION.match(prose)
        if definition:
            found.append(definition.group(1))
        found += [match.group(1) for match in HTML_TARGET.finditer(prose)]
        targets += [(number, target.strip("<>")) for target in found]
    return targets


def broken_links(root: Path) -> list[str]:
    """One line per relative link or #anchor in the checked files that does not resolve."""
    broken = []
    anchors_by_file: dict[Path, set[str]] = {}
    for source in doc_files(root):
        for number, target in link_targets(source.read_text(encoding="utf-8")):
            if URL_SCHEME.match(target):
                continue  # a web address, not something this repository must hold
            path_part, _, anchor = target.partition("#")
            where = f"{source.relative_to(root)}:{number}: {target}"
            linked = (source.parent / unquote(path_part)).resolve() if path_part else source
            if not linked.exists():
                broken.append(f"{where}: no such file {linked}")
                continue
            if not anchor:
                continue
            if linked.suffix != ".md" or linked.is_dir():
                broken.append(f"{where}: an #anchor into a file that is not Markdown")
                continue
            if linked not in anchors_by_file:
                anchors_by_file[linked] = anchors(linked.read_text(encoding="utf-8"))
            if unquote(anchor) not in anchors_by_file[linked]:
                broken.append(f"{where}: no heading or anchor #{anchor} in {linked.name}")
    return broken


def test_every_relative_link_and_anchor_in_the_docs_resolves():
    assert doc_files(PROJECT_ROOT)[2:], "docs/*.md is missing"
    assert broken_links(PROJECT_ROOT) == []


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Benchmarks (`make bench`)", "benchmarks-make-bench"),
        (
            "Training on several GPUs or machines (`train.strategy`)",
            "training-on-several-gpus-or-machines-trainstrategy",
        ),
        ("Export: the SavedModel and metadata.json", "export-the-savedmodel-and-metadatajson"),
        ("What it is, and what it is not", "what-it-is-and-what-it-is-not"),
        ("Full size: 512 px, Kaggle scale, a GPU", "full-size-512-px-kaggle-scale-a-gpu"),
        ("A -- B  c", "a----b--c"),
        ("**Bold** and [a link](x.md) and `snake_case`", "bold-and-a-link-and-snake_case"),
        ("Données réelles", "données-réelles"),
        ("Cafe\u0301 -- 1.5 mm", "cafe\u0301----15-mm"),
    ],
)
def test_a_heading_anchor_follows_githubs_slug_rules(heading, anchor):
    assert github_anchor(rendered_heading_text(heading)) == anchor


@given(st.text(max_size=40))
def test_an_anchor_is_its_own_anchor_and_holds_no_space_or_punctuation(heading):
    anchor = github_anchor(heading)
    assert github_anchor(anchor) == anchor
    assert " " not in anchor and all(slug_keeps(char) for char in anchor)


def test_a_repeated_heading_gets_a_numbered_anchor_and_code_blocks_hold_none():
    text = "# Setup\n\n## Setup\n\n```bash\n# Setup\n```\n\nTitle\n=====\n"
    assert anchors(text) == {"setup", "setup-1", "title"}


def test_a_broken_file_link_or_anchor_is_reported_and_good_ones_are_not(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "CONTRIBUTING.md").write_text("# Add a stage\n")
    (tmp_path / "docs" / "page.md").write_text(
        "# A page\n\n## Its section\n\n[up](../README.md#top) [here](#its-section)\n"
    )
    (tmp_path / "README.md").write_text(
        "# Top\n\n"
        "[fine](docs/page.md#its-section) [fine too](CONTRIBUTING.md#add-a-stage) [web](https://x.org/y)\n"
        "[gone](docs/missing.md) and [wrong anchor](docs/page.md#its-sections)\n"
        "`[in code](nowhere.md)` and ![picture](docs/none.png)\n"
        "\n```\n[in a block](nowhere.md)\n```\n"
    )
    broken = broken_links(tmp_path)
    assert [line.split(": ")[0:2] for line in broken] == [
        ["README.md:4", "docs/missing.md"],
        ["README.md:4", "docs/page.md#its-sections"],
        ["README.md:5", "docs/none.png"],
    ], broken


def test_the_readme_is_a_front_door_that_maps_every_docs_page():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES
    for command in ("make repro", "make test", "reports/index.html"):
        assert command in readme
    assert "not a medical device" in readme
    linked = {target.partition("#")[0] for _, target in link_targets(readme)}
    for page in sorted((PROJECT_ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in linked, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("page", sorted((PROJECT_ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_each_docs_page_opens_with_who_it_is_for(page):
    paragraphs = page.read_text(encoding="utf-8").split("\n\n")
    assert paragraphs[0].startswith("# "), page
    assert paragraphs[1].startswith("For "), f"{page.name} should open with who it is for"
