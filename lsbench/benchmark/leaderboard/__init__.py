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

A rebuild replaces the site whole (:func:`lsbench.util.atomic_folder`): it is built in a hidden sibling
``.{out}.tmp-{pid}`` and swapped into place when complete, so ``out`` is always the old site or the new
one — an outside probe found a rebuild into a full disk that had already deleted the old plots and left
an ``index.html`` pointing at missing files, and a fresh build that left a 0-byte PNG.  As the swap drops
the old folder, a folder holding anything but a site (results, a ``.git``) is refused, never replaced.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from ...errors import DiskFullError, OutputError
from ...lock import lock_folder
from ...util import atomic_folder, os_error_line, os_error_reason, write_bytes_atomic
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


def write_table(table: Table, rows: list[Row], out_dir: Path, site: Path | None = None) -> tuple[Path, Row | None]:
    """Write one dataset folder of ``rows`` (:func:`table_rows`) into ``out_dir``; returns it and our best row.

    ``site``: where the folder will be served from, if not ``out_dir`` (a build folder swapped in later);
    links to results and runs are relative to it."""
    folder = out_dir / table.slug
    page = (site if site is not None else out_dir) / table.slug
    ours = [row for row in rows if not row.paper]
    for row in ours:
        row.links = [(seed, _href(result, page), _href(run, page)) for seed, result, run in row.runs]
    cols, shown = columns(table, rows), charts(table, rows)
    clear_plots(folder / "plots")
    draw_charts(shown, folder / "plots")
    write_bytes_atomic(folder / "index.html", table_html(table, rows, cols, shown).encode("utf-8"))
    write_bytes_atomic(folder / "leaderboard.md", table_markdown(table, rows, cols, shown).encode("utf-8"))
    write_bytes_atomic(folder / "zoo.csv", zoo_csv(zoo_rows(table)).encode("utf-8"))
    best = ours[0] if ours and ours[0].values.get("primary") is not None else None
    return folder, best


def _is_site_part(entry: Path) -> bool:
    """An entry a site build makes: the front page, or a table's folder."""
    if entry.name == "index.html" and entry.is_file():
        return True
    return entry.is_dir() and not entry.is_symlink() and any((entry / n).is_file() for n in ("index.html",
                                                                                            "leaderboard.md"))


def check_site_folder(out_dir: Path) -> None:
    """Refuse an ``out_dir`` a rebuild must not replace: a file, or a folder holding more than a site."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise LeaderboardError(f"--out {out_dir} is a file (or a link), not a site folder; choose another --out")
    if out_dir.is_dir() and Path(os.getcwd()).is_relative_to(out_dir.resolve()):
        raise LeaderboardError(f"--out {out_dir} is (or holds) the current folder, which a rebuild would replace under "
                               "you; choose a folder of its own for the site, e.g. --out site")
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if not _is_site_part(p))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise LeaderboardError(
                f"--out {out_dir} holds files that are not part of a leaderboard site ({shown}); a rebuild replaces "
                "the folder whole, so choose a new or empty folder for --out (or move them elsewhere)"
            )


def _cannot_write(out_dir: Path, error: BaseException, *, existed: bool) -> LeaderboardError | None:
    """The one line for a site that could not be written, naming ``out_dir`` (not the build folder)."""
    cause = error if isinstance(error, OSError) else error.__cause__
    reason = os_error_reason(cause)
    if reason is None:
        return None
    kept = "the site there is unchanged" if existed else "nothing was written"
    return LeaderboardError(one_line(f"cannot write the site to {out_dir}: {reason}; {kept}"))


def _holding_site_lock(fn):
    """``build`` with the site's lock held (:mod:`lsbench.lock`): beside the site folder, which a rebuild may
    replace whole, so a second build into the same ``--out`` stops with one line naming the first."""

    @functools.wraps(fn)
    def locked(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
        try:
            lock = lock_folder(Path(os.path.abspath(out_dir)), what="folder of the site", hint="choose another --out",
                               beside=True)  # absolute: the lock of --out . is beside the folder, not in it
        except OSError as e:
            line = os_error_line(e)
            if line is None:
                raise
            raise LeaderboardError(one_line(f"cannot write the site to {out_dir}: {line}")) from None
        with lock:
            return fn(results_dir, out_dir)

    return locked


@_holding_site_lock
def build(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Build the site from ``results_dir`` into ``out_dir``; returns the dataset folders written.

    Raises :class:`LeaderboardError` (one line) for a missing/empty results folder, a file that is not
    JSON or not a valid result, results of one table computed on different datasets, an ``out_dir`` that
    holds more than a site (:func:`check_site_folder`), or one that cannot be written (full, read-only).
    Nothing is written unless every input is valid, and the site is swapped in only when complete: on
    any failure an earlier site in ``out_dir`` is left exactly as it was.
    """
    try:
        results = load_results(Path(results_dir))
    except ResultError as e:  # the same line, as the leaderboard's error
        raise LeaderboardError(str(e)) from None
    tables = group_results(results)
    rows = [table_rows(table) for table in tables]  # refusals (e.g. a seed twice in a study group) come here
    out_dir = Path(out_dir)
    if out_dir.name in ("", ".."):  # "." or "..": the folder by its own name, so its build folder is a sibling
        out_dir = Path(os.path.abspath(out_dir))
    check_site_folder(out_dir)
    existed = out_dir.is_dir()
    try:
        with atomic_folder(out_dir) as building:
            best = {}
            for table, shown in zip(tables, rows):
                _, best[table.slug] = write_table(table, shown, building, site=out_dir)
            write_bytes_atomic(building / "index.html", index_html(tables, best).encode("utf-8"))
    except (OSError, OutputError, DiskFullError) as e:
        problem = _cannot_write(out_dir, e, existed=existed)
        if problem is None:
            raise
        raise problem from e
    return [out_dir / table.slug for table in tables]
