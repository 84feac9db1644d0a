"""The leaderboard: result JSON files → per-dataset markdown, a static sortable HTML page and charts.

It only *reads* results, through :mod:`lsbench.benchmark.results` (which never imports it back):
``build(results_dir, out_dir)`` loads and validates every ``*.json`` under ``results_dir``
(recursively), groups them into one table per (dataset name, split) (:mod:`.tables`; a table ranks
results of one dataset manifest only), makes the rows — ours and the paper's (:mod:`.rows`,
:mod:`.paper`) — and the columns (:mod:`.columns`), and renders them (:mod:`.plots`,
:mod:`.html`, :mod:`.markdown`).  Everything is checked before anything is written, so a refused
build leaves no half-written site.

Site layout::

    out/index.html                      links to every table
    out/{slug}/index.html               the table (inline CSS + JS, click a header to sort,
                                        ``index.html?sort=<key>&dir=asc|desc`` sorts on load; it scrolls
                                        sideways in its own box, the model column kept in view), the charts
    out/{slug}/leaderboard.md           the same table in markdown
    out/{slug}/zoo.csv                  one line per model: clean vs locally scaled accuracy, the drop, InvE,
                                        P(correct) spread, parameters, GMACs, img/s (:mod:`.zoo`)
    out/{slug}/plots/scale-accuracy.png     per-scale accuracy, one line per model (the paper's rows dashed)
    out/{slug}/plots/scale-pcorrect.png     P(correct class) per scale, one line per model
    out/{slug}/plots/inve-vs-accuracy.png   InvE against accuracy (mIoU), one labelled point per model
    out/{slug}/plots/accuracy-vs-speed.png  accuracy (mIoU) against images/s, one labelled point per model
                                            (a chart with nothing to show is not drawn; the page says so)

``slug`` is ``{dataset name}-{split}`` reduced to ``[A-Za-z0-9._-]``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..results import ResultError, load_results, one_line
from .columns import columns
from .html import index_html, table_html
from .markdown import table_markdown
from .paper import KINDS, PAPER_PATH, load_paper, paper_row, paper_tables
from .plots import charts, clear_plots, draw_charts
from .rows import Row, arch_method, by_primary, our_rows
from .tables import LeaderboardError, Table, group_results
from .zoo import zoo_csv, zoo_rows

__all__ = ["KINDS", "PAPER_PATH", "LeaderboardError", "arch_method", "build", "load_paper", "table_rows"]


def table_rows(table: Table) -> list[Row]:
    """Our rows (best first), then the paper's reference rows (per paper table, best first)."""
    rows = by_primary(our_rows(table.results))
    for ptable in paper_tables(table):
        rows += by_primary(paper_row(entry, ptable) for entry in ptable["rows"])
    return rows


def _href(path: Path, folder: Path) -> str:
    """``path`` relative to the page in ``folder`` (links from the site to results and run folders)."""
    return Path(os.path.relpath(Path(path).resolve(), folder.resolve())).as_posix()


def write_table(table: Table, rows: list[Row], out_dir: Path) -> tuple[Path, Row | None]:
    """Write one dataset folder of ``rows`` (:func:`table_rows`); returns it and our best row."""
    folder = out_dir / table.slug
    ours = [row for row in rows if not row.paper]
    for row in ours:
        row.links = [(seed, _href(result, folder), _href(run, folder)) for seed, result, run in row.runs]
    cols, shown = columns(table, rows), charts(table, rows)
    clear_plots(folder / "plots")
    draw_charts(shown, folder / "plots")
    (folder / "index.html").write_text(table_html(table, rows, cols, shown), encoding="utf-8")
    (folder / "leaderboard.md").write_text(table_markdown(table, rows, cols, shown), encoding="utf-8")
    (folder / "zoo.csv").write_text(zoo_csv(zoo_rows(table)), encoding="utf-8")
    best = ours[0] if ours and ours[0].values.get("primary") is not None else None
    return folder, best


def build(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Build the site from ``results_dir`` into ``out_dir``; returns the dataset folders written.

    Raises :class:`LeaderboardError` (one line) for a missing/empty results folder, a file that is not
    JSON or not a valid result, results of one table computed on different datasets, or an unwritable
    ``out_dir``.  Nothing is written unless every input is valid.
    """
    try:
        results = load_results(Path(results_dir))
    except ResultError as e:  # the same line, as the leaderboard's error
        raise LeaderboardError(str(e)) from None
    tables = group_results(results)
    rows = [table_rows(table) for table in tables]  # refusals (e.g. a seed twice in a study group) come here
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        written, best = [], {}
        for table, shown in zip(tables, rows):
            folder, best[table.slug] = write_table(table, shown, out_dir)
            written.append(folder)
        (out_dir / "index.html").write_text(index_html(tables, best), encoding="utf-8")
    except OSError as e:
        problem = f"{e.strerror or e} ({e.filename})"
        raise LeaderboardError(one_line(f"cannot write the site to {out_dir}: {problem}")) from None
    return written
