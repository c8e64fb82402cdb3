"""HTML building blocks of the run report: escaped text, tables, figures, sections, the page.

Everything a page needs is inline (style sheet, the table-sorting script) or a relative link
to a file beside it, so a copied `reports/` folder opens with no network: no CDN, no web font
(the system's sans-serif font). Every text that comes from a file (ids, keys, messages) goes
through `escape`, so a hostile case id shows as text, never as markup.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

STYLE = """
:root { --ink: #1d232b; --muted: #5b6672; --rule: #d5dbe1; --band: #f3f5f7;
        --warn: #8a4b00; --warn-bg: #fff4e0; --bad: #a1161b; --bad-bg: #fdeced; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans",
       sans-serif; color: var(--ink); background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 36px 0 6px; padding-top: 8px; border-top: 2px solid var(--rule); }
h3 { font-size: 16px; margin: 20px 0 6px; }
p { margin: 6px 0; }
a { color: #0b5cad; }
nav { display: flex; flex-wrap: wrap; gap: 6px 18px; padding: 8px 0; font-size: 14px; }
.reading { font-size: 16px; font-weight: 600; margin: 4px 0 10px; }
.note { color: var(--muted); font-size: 13.5px; }
.banner { background: var(--bad-bg); color: var(--bad); border: 1px solid #f1b8bb;
          padding: 8px 12px; border-radius: 4px; font-weight: 600; }
.caveat { background: var(--warn-bg); color: var(--warn); border-left: 4px solid #e0a040;
          padding: 6px 10px; font-size: 14px; margin: 8px 0; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; }
th, td { border: 1px solid var(--rule); padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: var(--band); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.differs td { background: #fffbe6; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th::after { content: " \\2195"; color: var(--muted); font-weight: 400; }
.scroll { max-height: 460px; overflow: auto; display: inline-block; max-width: 100%; }
.scroll th { position: sticky; top: 0; }
figure { margin: 10px 0 16px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); display: block; }
figcaption { color: var(--muted); font-size: 13.5px; margin-top: 4px; max-width: 900px; }
.side { display: flex; flex-wrap: wrap; gap: 4px 28px; align-items: flex-start; }
.side > .gallery { flex: 1 1 480px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr));
           gap: 12px; }
.gallery figure { margin: 0; }
details { margin: 8px 0; }
summary { cursor: pointer; color: #0b5cad; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
dt { font-weight: 600; }
dd { margin: 0; }
code { background: var(--band); padding: 0 3px; border-radius: 3px; font-size: 13px; }
"""

# Click a column head to sort by it (numbers numerically, empty cells last); click again to
# reverse. Cells may carry data-sort with the raw number behind a formatted one.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (head, column) {
    head.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var up = head.getAttribute("data-order") !== "up";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-order"); });
      head.setAttribute("data-order", up ? "up" : "down");
      function key(row) {
        var cell = row.cells[column];
        var raw = cell.getAttribute("data-sort");
        var text = raw !== null ? raw : cell.textContent.trim();
        var number = parseFloat(text);
        return text === "" ? null : (isNaN(number) ? text.toLowerCase() : number);
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def escape(text: object) -> str:
    return html.escape(str(text), quote=True)


@dataclass(frozen=True)
class Cell:
    """A table cell: `text` is shown (escaped), `sort` is the raw value to sort by."""

    text: str
    numeric: bool = False
    sort: float | None = None
    markup: bool = False  # `text` is already HTML (a link), built by this module


def cell(value: object) -> Cell:
    """Numbers right-aligned; everything else as escaped text."""
    if isinstance(value, Cell):
        return value
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return Cell(str(value), numeric=numeric, sort=float(value) if numeric else None)


def link(href: str, text: str) -> Cell:
    return Cell(f'<a href="{escape(href)}">{escape(text)}</a>', markup=True)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    sortable: bool = False,
    scroll: bool = False,
    row_classes: Sequence[str] | None = None,
    table_id: str = "",
) -> str:
    """An HTML table; `rows` hold plain values or `Cell`s."""
    classes = ' class="sortable"' if sortable else ""
    identity = f' id="{escape(table_id)}"' if table_id else ""
    # Long column names (cases.csv) may break after an underscore rather than overflow.
    head = "".join(f"<th>{escape(h).replace('_', '_<wbr>')}</th>" for h in headers)
    lines = []
    for index, row in enumerate(rows):
        row_class = row_classes[index] if row_classes else ""
        cells = []
        for value in row:
            item = cell(value)
            attributes = ' class="num"' if item.numeric else ""
            if item.sort is not None:
                attributes += f' data-sort="{item.sort!r}"'
            content = item.text if item.markup else escape(item.text)
            cells.append(f"<td{attributes}>{content}</td>")
        css = f' class="{escape(row_class)}"' if row_class else ""
        lines.append(f"<tr{css}>{''.join(cells)}</tr>")
    markup = (
        f"<table{classes}{identity}><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(lines)}</tbody></table>"
    )
    return f'<div class="scroll">{markup}</div>' if scroll else markup


def figure(src: str, caption: str, alt: str) -> str:
    """An image (a path relative to the page) with its caption; `loading=eager` so that a
    screenshot and the browser test see every picture."""
    return (
        f'<figure><img src="{escape(src)}" alt="{escape(alt)}" loading="eager">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def side_by_side(*blocks: str) -> str:
    """Tables or galleries next to each other, wrapping below on a narrow window."""
    return (
        '<div class="side">'
        + "".join(
            f"<div>{b}</div>" if not b.startswith('<div class="gallery"') else b for b in blocks
        )
        + "</div>"
    )


def paragraph(text: str, css: str = "") -> str:
    attribute = f' class="{css}"' if css else ""
    return f"<p{attribute}>{escape(text)}</p>"


def definition_list(items: Iterable[tuple[str, str]]) -> str:
    body = "".join(f"<dt>{escape(term)}</dt><dd>{escape(text)}</dd>" for term, text in items)
    return f"<dl>{body}</dl>"


@dataclass(frozen=True)
class Section:
    """One part of the page: an anchor id, a title, its one-line reading and its body HTML."""

    anchor: str
    title: str
    reading: str
    body: str

    def render(self) -> str:
        return (
            f'<section id="{escape(self.anchor)}"><h2>{escape(self.title)}</h2>'
            f"{paragraph(self.reading, 'reading')}{self.body}</section>"
        )


def page(title: str, header: str, sections: Sequence[Section]) -> str:
    """The whole document: inline style and script, a table of contents, the sections."""
    contents = "".join(
        f'<a href="#{escape(section.anchor)}">{escape(section.title)}</a>' for section in sections
    )
    body = "".join(section.render() for section in sections)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # An empty icon: the browser asks for no favicon.ico.
        '<link rel="icon" href="data:,">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><main><h1>{escape(title)}</h1>{header}<nav>{contents}</nav>{body}</main>"
        f"<script>{SORT_SCRIPT}</script></body></html>\n"
    )
