"""Comparative charts of one table, every model in the same chart, one PNG each in the table's ``plots/``:

* ``plots/scale-accuracy.png``    per-scale accuracy, one line per model over the scale bins (the paper's
  Tables 3/6 as lines); the paper's rows that have per-scale numbers as dashed lines;
* ``plots/scale-pcorrect.png``    P(correct class) per scale bin, one line per model (the paper's Fig. 8);
* ``plots/inve-vs-accuracy.png``  InvE against accuracy (mIoU for segmentation), one labelled point per
  model of ours, the better corner (high accuracy, low InvE) marked;
* ``plots/accuracy-vs-speed.png`` accuracy (mIoU) against images/s, one labelled point per model of ours.

The per-scale x axis is the table's bins in order (:func:`.columns.scale_columns`) less the bins no sample
of any plotted row reaches (count 0; a paper row, which has no counts, reaches a bin it has a number for).
Study rows plot their mean over seeds, the scatter charts with ± the std over seeds as error bars.

What a chart shows is computed first, as data (:func:`charts` → :class:`Chart`), and drawn after
(:func:`draw_charts`), so tests check bins and series without reading pixels.  A chart with nothing to show
is not drawn; its :attr:`Chart.missing` is the one sentence the page prints instead.

matplotlib is driven through its object API on the Agg canvas (no pyplot, no global state), so building a
site in a library call or a test leaves nothing behind and needs no display.  The PNGs are deterministic:
a fixed size and no metadata (no software version, no date).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...util import atomic_open
from ..results import one_line
from .columns import scale_columns
from .rows import Number, Row, ScaleKey, finite
from .tables import Table

SIZE = (8.0, 4.2)  # inches at DPI: 800 × 420 px, what the page's <img> reserves
DPI = 100
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf"]  # matplotlib's tab10
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
ACC_INDEX, PCORRECT_INDEX = 2, 3  # positions of accuracy and P(correct) in Row.scales entries


@dataclass
class Series:
    """One line of a per-scale chart: a value (%) per bin of the chart, None where the row has none."""

    name: str
    values: list[Number]
    paper: bool = False


@dataclass
class Point:
    """One labelled point of a scatter chart; ``xerr``/``yerr`` the std over a study row's seeds."""

    name: str
    x: float
    y: float
    xerr: float | None = None
    yerr: float | None = None


@dataclass
class Chart:
    """A chart's data: ``bins`` and ``series`` (per-scale line charts) or ``points`` (scatter charts)."""

    file: str  # the PNG's name in plots/
    title: str
    caption: str
    xlabel: str
    ylabel: str
    bins: list[str] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    better: tuple[float, float] | None = None  # the better corner, in axes fractions
    log_x: bool = False
    missing: str = ""  # why it is not drawn (one sentence); "" if it is

    @property
    def src(self) -> str:
        """The PNG relative to the table's page."""
        return f"plots/{self.file}"


def _bin_value(row: Row, key: ScaleKey, label: str, index: int) -> Number:
    """A row's value in a bin; paper bins also join by label (as in the table's columns)."""
    value = next((b[index] for b in row.scales if b[0] == key), None)
    if value is None and row.paper:
        value = next((b[index] for b in row.scales if b[1] == label), None)
    return value if finite(value) else None


def _reached(row: Row, key: ScaleKey, label: str) -> bool:
    """Some sample of ``row`` falls in the bin (its count; rows without counts: it has a number there)."""
    count = row.counts.get(key)
    if count is not None:
        return count > 0
    return any(_bin_value(row, key, label, i) is not None for i in (ACC_INDEX, PCORRECT_INDEX))


def chart_bins(rows: list[Row]) -> list[tuple[ScaleKey, str]]:
    """The per-scale x axis: the rows' bins in order, less those no sample of any of the rows reaches."""
    return [(key, label) for key, label in scale_columns(rows) if any(_reached(r, key, label) for r in rows)]


def _series_names(rows: list[Row]) -> list[str]:
    """Legend names: the model (paper rows: and their table); a name two of our rows share: and the source."""
    names = [f"{row.model} ({row.source})" if row.paper else row.model for row in rows]
    return [f"{name} ({row.source})" if names.count(name) > 1 and not row.paper else name
            for name, row in zip(names, rows)]


def scale_series(rows: list[Row], index: int) -> tuple[list[str], list[Series]]:
    """(bin labels, one series per row with a number in a shown bin) of the accuracy (``index`` 2) or
    P(correct) (``index`` 3) per-scale chart.  Only the rows with such numbers are plotted, and the bins
    are the ones those rows reach."""
    plotted = [row for row in rows if any(finite(b[index]) for b in row.scales)]
    bins = chart_bins(plotted)
    series = []
    for row, name in zip(plotted, _series_names(plotted)):
        values = [_bin_value(row, key, label, index) for key, label in bins]
        if any(v is not None for v in values):
            series.append(Series(name, values, row.paper))
    return [label for _, label in bins], series


def scatter_points(rows: list[Row], x_key: str, y_key: str) -> list[Point]:
    """One point per row of ours with finite ``values[x_key]`` and ``values[y_key]``."""
    ours = [row for row in rows if not row.paper]
    return [
        Point(name, row.values[x_key], row.values[y_key], row.pm.get(x_key), row.pm.get(y_key))  # type: ignore[arg-type]
        for row, name in zip(ours, _series_names(ours))
        if finite(row.values.get(x_key)) and finite(row.values.get(y_key))
    ]


def charts(table: Table, rows: list[Row]) -> list[Chart]:
    """The table's four charts, in page order; those with nothing to show have ``missing`` set."""
    metric = "mIoU" if table.task == "seg" else "accuracy"
    primary = f"{metric} (%)"
    out = []
    for file, index, what, caption in [
        ("scale-accuracy.png", ACC_INDEX, "accuracy",
         "Per-scale accuracy (%), one line per model over the scale bins; dashed lines are the paper's numbers."),
        ("scale-pcorrect.png", PCORRECT_INDEX, "P(correct class)",
         "P(correct class) per scale bin (%), one line per model (as the paper's Fig. 8)."),
    ]:
        bins, series = scale_series(rows, index)
        chart = Chart(file, f"Per-scale {what}", caption, "local scale", f"{what} (%)", bins=bins, series=series)
        if not series:
            chart.missing = f"The per-scale {what} chart is not drawn: no row has per-scale {what}."
        out.append(chart)

    points = scatter_points(rows, "primary", "inve")
    chart = Chart("inve-vs-accuracy.png", f"InvE vs {metric}",
                  f"InvE (×10⁻², lower is more invariant) against {metric}, one point per model of ours "
                  "(error bars: std over seeds); better is the lower right.",
                  primary, "InvE (×10⁻²)", points=points, better=(1.0, 0.0))
    if not points:
        chart.missing = f"The InvE vs {metric} chart is not drawn: no result of ours has both an InvE and {metric}."
    out.append(chart)

    points = scatter_points(rows, "images_per_s", "primary")
    speeds = [p.x for p in points]
    chart = Chart("accuracy-vs-speed.png", f"{metric[0].upper()}{metric[1:]} vs images/s",
                  f"{metric[0].upper()}{metric[1:]} against evaluation speed, one point per model of ours; better is "
                  "the upper right (speeds compare only when measured on the same hardware).",
                  "images/s", primary, points=points, better=(1.0, 1.0),
                  log_x=bool(speeds) and min(speeds) > 0 and max(speeds) / min(speeds) > 30)
    if not points:
        chart.missing = (f"The {metric} vs images/s chart is not drawn: no result of ours has both {metric} "
                         "and a speed.")
    out.append(chart)
    return out


def _mpl_text(text: str, limit: int = 48) -> str:
    """Text safe for matplotlib: one line, ``$`` would start mathtext, a leading ``_`` hides a legend entry."""
    text = one_line(text, limit).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _style(i: int) -> tuple[str, str]:
    return COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)]


def _draw_lines(ax, chart: Chart) -> None:
    xs = list(range(len(chart.bins)))
    for i, s in enumerate(chart.series):
        color, marker = _style(i)
        ys = [float("nan") if v is None else v for v in s.values]  # a gap where a row has no number
        ax.plot(xs, ys, linestyle="--" if s.paper else "-", marker=marker, markersize=4, linewidth=1.4,
                color=color, label=_mpl_text(s.name))
    ax.set_xticks(xs, [_mpl_text(label, 24) for label in chart.bins], rotation=30 if len(xs) > 6 else 0,
                  fontsize=8)
    ax.set_xlim(-0.3, len(xs) - 0.7)
    ncol = 1 if len(chart.series) <= 18 else 2
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, ncol=ncol,
              frameon=False)


Box = tuple[float, float, float, float]  # x0, y0, x1, y1
# Where a point's label may go: offset (points), horizontal and vertical alignment.
LABEL_PLACES = [(5, 3, "left", "bottom"), (5, -3, "left", "top"), (-5, 3, "right", "bottom"), (-5, -3, "right", "top")]


def _overlap(a: Box, b: Box) -> float:
    """The area two boxes (x0, y0, x1, y1) share."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _label_box(x: float, y: float, w: float, h: float, place: tuple[float, float, str, str]) -> Box:
    """The box (pixels) of a ``w`` × ``h`` label of the point at (x, y) placed at ``place`` (offset in points)."""
    dx, dy, ha, va = place
    dx, dy = dx * DPI / 72, dy * DPI / 72
    x0 = x + dx if ha == "left" else x + dx - w
    y0 = y + dy if va == "bottom" else y + dy - h
    return (x0, y0, x0 + w, y0 + h)


def _label_places(ax, points: list[Point], labels: list[str]) -> list[tuple[float, float, str, str]]:
    """For each point the place in :data:`LABEL_PLACES` whose label box (roughly, in pixels of the axes)
    overlaps least the labels placed before it and the other points' markers."""
    to_axes = ax.transScale + ax.transLimits  # data → axes fractions, log x included
    width, height = 0.8 * SIZE[0] * DPI, 0.8 * SIZE[1] * DPI
    centres = [to_axes.transform((p.x, p.y)) * (width, height) for p in points]
    boxes: list[Box] = [(x - 4, y - 4, x + 4, y + 4) for x, y in centres]
    pt = DPI / 72  # pixels per point; labels are 7-point text
    places = []
    for (x, y), label in zip(centres, labels):
        size = (x, y, 0.6 * 7 * pt * len(label), 1.3 * 7 * pt)
        best = min(LABEL_PLACES, key=lambda place: sum(_overlap(_label_box(*size, place), b) for b in boxes))
        boxes.append(_label_box(*size, best))
        places.append(best)
    return places


def _draw_points(ax, chart: Chart) -> None:
    for i, p in enumerate(chart.points):
        color, marker = _style(i)
        ax.errorbar([p.x], [p.y], xerr=None if p.xerr is None else [p.xerr], yerr=None if p.yerr is None else [p.yerr],
                    fmt=marker, color=color, markersize=6, capsize=2, linewidth=1)
    if chart.log_x:
        ax.set_xscale("log")
    ax.margins(0.22)  # the data ends 15 % in from each side: the better corner's arrow lies beyond every point
    ax.autoscale_view()
    labels = [_mpl_text(p.name, 32) for p in chart.points]
    for p, label, (dx, dy, ha, va) in zip(chart.points, labels, _label_places(ax, chart.points, labels)):
        ax.annotate(label, (p.x, p.y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=7,
                    color="#333")
    if chart.better is not None:
        cx, cy = chart.better
        tip = (0.985 if cx else 0.015, 0.975 if cy else 0.025)
        tail = (tip[0] + (-0.075 if cx else 0.075), tip[1] + (-0.085 if cy else 0.085))
        ax.annotate("better", xy=tip, xycoords="axes fraction", xytext=tail, textcoords="axes fraction",
                    ha="center", va="center", fontsize=8, color="#2e7d32",
                    arrowprops={"arrowstyle": "->", "color": "#2e7d32", "linewidth": 1.2})


def draw_chart(chart: Chart, path: Path) -> None:
    """Draw one chart with something to show as a PNG at ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    (_draw_lines if chart.series else _draw_points)(ax, chart)
    ax.set_xlabel(chart.xlabel, fontsize=9)
    ax.set_ylabel(chart.ylabel, fontsize=9)
    ax.set_title(chart.title, fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#ddd", linewidth=0.6)
    ax.set_axisbelow(True)
    with atomic_open(path, "wb") as f:  # complete or absent, as every lsbench file
        fig.savefig(f, format="png", dpi=DPI, metadata={"Software": None})


def clear_plots(plot_dir: Path) -> None:
    """Create ``plot_dir`` and remove PNGs of an earlier build (a chart not drawn this time leaves none)."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    for old in plot_dir.glob("*.png"):
        old.unlink()


def draw_charts(shown: list[Chart], plot_dir: Path) -> None:
    """Draw the charts that have something to show into ``plot_dir`` (:func:`clear_plots` it first)."""
    for chart in shown:
        if not chart.missing:
            draw_chart(chart, plot_dir / chart.file)
