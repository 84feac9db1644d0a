"""Per-scale plots of our rows: accuracy (with the paper's matching rows as reference lines) and
P(correct class), one PNG each.

matplotlib is driven through its object API on the Agg canvas (no pyplot, no global state), so
building a site in a library call or a test leaves nothing behind and needs no display.
"""

from __future__ import annotations

from pathlib import Path

from ...util import safe_name
from ..results import one_line
from .rows import Number, Row, finite


def _mpl_text(text: str) -> str:
    """Text safe for matplotlib: ``$`` would start mathtext."""
    return text.replace("$", r"\$")


def _bar_plot(path: Path, labels: list[str], values: list[Number], title: str, ylabel: str,
              reference: list[tuple[str, list[Number]]]) -> None:
    """One bar chart over scale labels, optional reference lines (paper), saved as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = list(range(len(labels)))
    ax.bar(xs, [v if finite(v) else 0.0 for v in values], color="#4c72b0", label="ours")
    for name, ref in reference:
        points = [(x, v) for x, v in zip(xs, ref) if finite(v)]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o--", color="#c44e52", label=_mpl_text(name))
    ax.set_xticks(xs, [_mpl_text(label) for label in labels], rotation=30 if len(labels) > 5 else 0, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("local scale")
    ax.set_title(_mpl_text(one_line(title, 70)), fontsize=9)
    if reference:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")


def _paper_reference(row: Row, rows: list[Row]) -> list[tuple[str, list[Number]]]:
    """Per-scale accuracy of paper rows with the same arch and method, aligned to ``row``'s bins."""
    refs = []
    for other in rows:
        if not other.paper or (other.arch, other.method) != (row.arch, row.method) or not other.scales:
            continue
        by_key = {k: acc for k, _, acc, _ in other.scales}
        by_label = {lab: acc for _, lab, acc, _ in other.scales}
        aligned = [by_key.get(k, by_label.get(lab)) for k, lab, _, _ in row.scales]
        if any(v is not None for v in aligned):
            refs.append((other.source, aligned))
    return refs


def clear_plots(plot_dir: Path) -> None:
    """Create ``plot_dir`` and remove PNGs of an earlier build (plot names depend on rank and model)."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    for old in plot_dir.glob("*.png"):
        old.unlink()


def plot_row(row: Row, rank: int, rows: list[Row], plot_dir: Path) -> list[tuple[str, str]]:
    """Write the per-scale accuracy and P(correct) plots of one of our rows; (relative path, caption) each."""
    labels = [label for _, label, _, _ in row.scales]
    stem = f"{rank:02d}-{safe_name(row.model, limit=40, strip='-.')}"
    written = []
    kinds = [("acc", 2, "accuracy (%)", "Per-scale accuracy", _paper_reference(row, rows)),
             ("pcorrect", 3, "P(correct class) (%)", "P(correct) per scale", [])]
    for suffix, index, ylabel, what, reference in kinds:
        values = [scale[index] for scale in row.scales]
        if not any(finite(v) for v in values):
            continue
        path = plot_dir / f"{stem}-{suffix}.png"
        _bar_plot(path, labels, values, f"{row.model}: {what}", ylabel, reference)
        written.append((f"plots/{path.name}", f"{what} of {row.model} (#{rank}, {row.source})"))
    return written
