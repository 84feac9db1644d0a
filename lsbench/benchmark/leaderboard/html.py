"""The static HTML pages: one sortable page per table and a front page linking them.

The pages need no server and no network: no external resources, images referenced relatively, and a
Content-Security-Policy that only lets the page's own script run (by its sha256).  The stylesheet
and the sorting script are package files (``static/leaderboard.css``, ``static/leaderboard.js``),
inlined into every page so a page works opened from disk.  Every string taken from a result (model
names, config values, file names, dataset names) is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
from importlib import resources
from typing import Any

from . import zoo
from .columns import Column, format_cell
from .paper import PAPER_NOTE, paper_tables
from .plots import DPI, SIZE, Chart
from .rows import MISSING, Row
from .tables import Table
from .zoo import zoo_rows


@functools.cache
def static_text(name: str) -> str:
    """A file of ``static/`` as it goes into a page: on its own line after the opening tag."""
    return "\n" + resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def esc(value: Any) -> str:
    """HTML-escape any value (quotes included, safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _csp(script: str) -> str:
    """Content-Security-Policy: only this page's own script runs; nothing is fetched from elsewhere."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (f"default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
            "base-uri 'none'; form-action 'none'")


def page(title: str, body: str, script: str = "") -> str:
    """A complete self-contained HTML document."""
    script_tag = f"<script>{script}</script>\n" if script else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{esc(_csp(script))}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{esc(title)}</title>\n<style>{static_text('leaderboard.css')}</style>\n</head>\n"
        f"<body>\n{body}\n{script_tag}</body>\n</html>\n"
    )


def _meta_html(table: Table) -> str:
    ds = table.dataset
    items = [("Dataset", ds["name"]), ("Split", ds["split"]), ("Generator", ds["generator"]), ("Task", ds["task"]),
             ("Classes", ds["num_classes"]), ("Samples", ds["num_samples"]),
             ("Manifest sha256", ds["manifest_sha256"]), ("Results", len(table.results))]
    cells = "".join(f"<dt>{esc(k)}</dt><dd><code>{esc(v)}</code></dd>" for k, v in items)
    return f"<dl class=\"meta\">{cells}</dl>"


def _row_html(row: Row, cols: list[Column]) -> str:
    cells = []
    for col in cols:
        text, sort_value = format_cell(row, col)
        if col.numeric:
            cells.append(f"<td class=\"num\" data-value=\"{esc(sort_value)}\">{esc(text)}</td>")
        elif col.key == "model":
            badge = "<span class=\"badge\">paper</span>" if row.paper else ""
            cells.append(f"<td class=\"model\" title=\"{esc(row.config)}\">{esc(text)}{badge}</td>")
        elif col.key == "source" and row.links:
            links = ", ".join(f"<a href=\"{esc(result)}\">seed {seed}</a> (<a href=\"{esc(run)}/\">run</a>)"
                              for seed, result, run in row.links)
            cells.append(f"<td>{esc(text)}<br><small>{links}</small></td>")
        else:
            cells.append(f"<td>{esc(text)}</td>")
    kind = "paper" if row.paper else "ours"
    return f"<tr class=\"{kind}\" data-source=\"{esc(row.source)}\">{''.join(cells)}</tr>"


def _head_html(cols: list[Column]) -> str:
    cells = "".join(
        f"<th data-key=\"{esc(c.key)}\" data-type=\"{'num' if c.numeric else 'text'}\" "
        f"data-first=\"{c.first_direction}\" title=\"click to sort\">{esc(c.title)}</th>"
        for c in cols
    )
    return f"<thead><tr>{cells}</tr></thead>"


def _charts_html(shown: list[Chart]) -> str:
    """The drawn charts as figures; one sentence for each chart with nothing to show."""
    width, height = (round(inches * DPI) for inches in SIZE)
    parts = [
        f"<figure><img src=\"{esc(c.src)}\" alt=\"{esc(c.title)}\" width=\"{width}\" height=\"{height}\">"
        f"<figcaption>{esc(c.caption)}</figcaption></figure>" if not c.missing
        else f"<p class=\"notes\">{esc(c.missing)}</p>"
        for c in shown
    ]
    return "\n".join(parts)


def _paper_notes_html(table: Table) -> str:
    ptables = paper_tables(table)
    if not ptables:
        return "<p class=\"notes\">The paper reports no numbers for this kind of dataset.</p>"
    items = []
    for pt in ptables:
        notes = "".join(f"<li>{esc(n)}</li>" for n in pt["notes"])
        items.append(f"<li><b>{esc(pt['source'])}</b>: {esc(pt['caption'])}<ul>{notes}</ul></li>")
    return f"<p class=\"notes\">{esc(PAPER_NOTE)}</p><ul class=\"notes\">{''.join(items)}</ul>"


def _zoo_html(rows: list[dict[str, Any]]) -> str:
    """The zoo section (clean vs locally scaled accuracy per model) with the CSV link; empty without numbers."""
    if not zoo.shown(rows):
        return ""
    head = "".join(f"<th>{esc(c.title)}</th>" for c in zoo.COLUMNS)
    num = ' class="num"'

    def td(row: dict[str, Any], c: zoo.ZooColumn) -> str:
        return f"<td{'' if c.key in ('model', 'input') else num}>{esc(zoo.cell(row, c))}</td>"

    body = "\n".join("<tr>" + "".join(td(row, c) for c in zoo.COLUMNS) + "</tr>" for row in rows)
    return (
        "<h2>Model zoo</h2>\n<p class=\"notes\">Clean = the scale-1.0 reference of each group, local-scale = every "
        "other variant, drop = clean − local-scale (all in %); P(correct) spread = max − min over the scale bins; "
        "objects cut = object boxes the model's centre crop does not keep whole. "
        "<a href=\"zoo.csv\">Download CSV</a>.</p>\n"
        f"<div class=\"scroll\"><table id=\"zoo\"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n"
        "</tbody></table></div>\n"
    )


def table_html(table: Table, rows: list[Row], cols: list[Column], shown: list[Chart]) -> str:
    """The dataset page (click a header to sort; ``index.html?sort=<key>&dir=asc|desc`` sorts on load).

    The board scrolls sideways in its own box (``#board-scroll``) with the model column kept in view;
    ``shown`` are the table's charts (:func:`.plots.charts`)."""
    title = f"lsbench leaderboard: {table.name} / {table.split}"
    body_rows = "\n".join(_row_html(row, cols) for row in rows)
    body = (
        f"<p><a href=\"../index.html\">All datasets</a></p>\n<h1>{esc(title)}</h1>\n{_meta_html(table)}\n"
        "<p class=\"notes\">Click a column header to sort (or open "
        "<code>index.html?sort=KEY&amp;dir=asc|desc</code>). "
        "Acc, mIoU, std and per-scale numbers in %; InvE ×10⁻²; rows marked paper are the paper's reported "
        "numbers (see Paper reference below).</p>\n"
        f"<div class=\"scroll\" id=\"board-scroll\"><table id=\"board\">{_head_html(cols)}\n<tbody>\n{body_rows}\n"
        "</tbody></table></div>\n"
        f"{_zoo_html(zoo_rows(table))}"
        f"<h2>Charts</h2>\n{_charts_html(shown)}\n<h2>Paper reference</h2>\n{_paper_notes_html(table)}"
    )
    return page(title, body, static_text("leaderboard.js"))


def index_html(tables: list[Table], best: dict[str, Row | None]) -> str:
    """The site's front page: one line per table."""
    lines = []
    for t in tables:
        top = best.get(t.slug)
        leader = f"{top.model} ({top.values['primary']:.2f} %)" if top else MISSING
        lines.append(
            f"<tr><td><a href=\"{esc(t.slug)}/index.html\">{esc(t.name)}</a></td><td>{esc(t.split)}</td>"
            f"<td>{esc(t.dataset['generator'])}</td><td>{esc(t.task)}</td><td class=\"num\">{len(t.results)}</td>"
            f"<td>{esc(leader)}</td><td><a href=\"{esc(t.slug)}/leaderboard.md\">markdown</a>, "
            f"<a href=\"{esc(t.slug)}/zoo.csv\">CSV</a></td></tr>"
        )
    body = (
        "<h1>lsbench leaderboard</h1>\n<table><thead><tr><th>Dataset</th><th>Split</th><th>Generator</th><th>Task</th>"
        "<th>Results</th><th>Best of ours</th><th>Downloads</th></tr></thead>\n<tbody>\n"
        + "\n".join(lines) + "\n</tbody></table>"
    )
    return page("lsbench leaderboard", body)
