"""A table as markdown (``leaderboard.md``): for READMEs, papers' supplements and terminals.

Every string taken from a result is made one line, HTML-escaped and markdown-escaped (``|``
included), so a hostile model name can neither add a column nor inject markup where the markdown is
rendered.
"""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import quote

from . import zoo
from .columns import Column, format_cell
from .paper import PAPER_NOTE, paper_tables
from .plots import Chart
from .rows import Row
from .tables import Table
from .zoo import zoo_rows


def md_escape(value: Any) -> str:
    """A markdown table cell: one line, HTML-escaped, markdown punctuation (``|`` included) backslash-escaped."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return re.sub(r"([\\|`*_\[\]])", r"\\\1", text)


def table_markdown(table: Table, rows: list[Row], cols: list[Column], shown: list[Chart]) -> str:
    """The dataset's leaderboard as markdown; ``shown``: the table's charts (:func:`.plots.charts`)."""
    ds = table.dataset
    lines = [
        f"# lsbench leaderboard: {md_escape(table.name)} / {md_escape(table.split)}",
        "",
        f"Generator {md_escape(ds['generator'])}, task {md_escape(ds['task'])}, {ds['num_classes']} classes, "
        f"{ds['num_samples']} samples, manifest sha256 {md_escape(ds['manifest_sha256'])}, "
        f"{len(table.results)} results.",
        "",
        "| " + " | ".join(md_escape(c.title) for c in cols) + " |",
        "|" + "|".join("---:" if c.numeric else "---" for c in cols) + "|",
    ]
    for row in rows:
        cells = [format_cell(row, c)[0] for c in cols]
        if row.paper:
            cells[0] += " (paper)"
        lines.append("| " + " | ".join(md_escape(c) for c in cells) + " |")
    studies = [row for row in rows if row.links]
    if studies:  # each mean ± std row's seeds: result files and run folders
        lines += ["", "Runs of the study rows (mean ± sample std over seeds):", ""]
        for row in studies:
            links = ", ".join(f"seed {seed}: [result]({quote(result)}), [run]({quote(run)}/)"
                              for seed, result, run in row.links)
            lines.append(f"- {md_escape(row.model)} (n {row.n}): {links}")
    zrows = zoo_rows(table)
    if zoo.shown(zrows):  # the zoo view; the same numbers are in zoo.csv
        lines += ["", "## Model zoo", "", "Clean = the scale-1.0 reference of each group, local-scale = every other "
                  "variant, drop = clean − local-scale (%). CSV: [zoo.csv](zoo.csv).", "",
                  "| " + " | ".join(md_escape(c.title) for c in zoo.COLUMNS) + " |",
                  "|" + "|".join("---" if c.key in ("model", "input") else "---:" for c in zoo.COLUMNS) + "|"]
        lines += ["| " + " | ".join(md_escape(zoo.cell(row, c)) for c in zoo.COLUMNS) + " |" for row in zrows]
    lines += ["", "## Charts"]  # the charts' titles and sentences are ours, no result's text
    for c in shown:
        lines += ["", f"![{c.title}]({c.src})" if not c.missing else c.missing]
    lines += ["", md_escape(PAPER_NOTE)]
    for pt in paper_tables(table):
        notes = " ".join(md_escape(note) for note in pt["notes"])
        lines.append(f"- {md_escape(pt['source'])}: {md_escape(pt['caption'])} {notes}")
    return "\n".join(lines) + "\n"
