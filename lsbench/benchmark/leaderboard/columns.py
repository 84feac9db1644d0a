"""The columns of a table and how each cell is formatted.

Columns are derived from the rows shown: InvE/EquE and their code forms appear only when some row
has them, and there is one per-scale column per distinct bin (paper bins join ours by bounds or
label).  Each column knows its sort key (``index.html?sort=<key>``), its type and which direction is
better; :func:`format_cell` gives the text both renderers print and the value the page sorts by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .rows import MISSING, Number, Row, ScaleKey, finite
from .tables import Table


@dataclass
class Column:
    """A table column: sort key (``?sort=``), header, type, and how a row's cell is read."""

    key: str
    title: str
    numeric: bool
    better: str  # "high", "low" or "" (text)
    value: Callable[[Row], Any]
    decimals: int | None = None  # fixed decimals for our numbers; None: 4 significant digits
    paper_key: str = ""  # key into Row.decimals / Row.pm

    @property
    def first_direction(self) -> str:
        return "desc" if self.better == "high" else "asc"


def scale_columns(rows: list[Row]) -> list[tuple[ScaleKey, str]]:
    """One per-scale column per distinct bin (by (lo, hi)); paper bins join ours by (lo, hi) or label."""
    bins: dict[ScaleKey, str] = {}
    for row in sorted(rows, key=lambda r: r.paper):
        labels = {label: key for key, label in bins.items()}
        for key, label, _, _ in row.scales:
            if key not in bins and not (row.paper and label in labels):
                bins[key] = label
    return sorted(bins.items())


def _scale_getter(key: ScaleKey, label: str) -> Callable[[Row], Number]:
    def get(row: Row) -> Number:
        for k, _, acc, _ in row.scales:
            if k == key:
                return acc
        if row.paper:
            return next((acc for _, lab, acc, _ in row.scales if lab == label), None)
        return None

    return get


def _metric(key: str) -> Callable[[Row], Number]:
    return lambda row: row.values.get(key)


def _has_values(rows: list[Row], key: str) -> bool:
    return any(row.values.get(key) is not None for row in rows)


def columns(table: Table, rows: list[Row]) -> list[Column]:
    """The table's columns, in order; InvE/EquE and their code forms only when some row has them."""
    primary = "mIoU (%)" if table.task == "seg" else "Acc (%)"
    cols = [
        Column("model", "Model", False, "", lambda r: r.model),
        Column("method", "Method", False, "", lambda r: r.method),
        Column("arch", "Arch", False, "", lambda r: r.arch),
        Column("source", "Source", False, "", lambda r: r.source),
        Column("miou" if table.task == "seg" else "acc", primary, True, "high", _metric("primary"), 2, "primary"),
    ]
    optional = [
        ("inve", "InvE (×10⁻²)", 2), ("inve_code", "InvE(code) (×10⁻²)", 2),
        ("eque", "EquE", None), ("eque_code", "EquE(code)", None),
    ]
    cols += [Column(k, t, True, "low", _metric(k), d, k) for k, t, d in optional if _has_values(rows, k)]
    cols.append(Column("std", "Std across scales (%)", True, "low", _metric("std"), 2, "std"))
    if any(row.n is not None for row in rows):  # a study's rows: how many seeds each mean is over
        cols.append(Column("n", "n (seeds)", True, "", lambda r: r.n, 0))
    for i, (key, label) in enumerate(scale_columns(rows), 1):
        cols.append(Column(f"scale-{i}", f"Acc {label} (%)", True, "high", _scale_getter(key, label), 2, "scale"))
    cols += [
        Column("images_per_s", "Images/s", True, "high", _metric("images_per_s"), 1),
        Column("ms_per_batch", "ms/batch", True, "low", _metric("ms_per_batch"), 1),
        Column("params_m", "Params (M)", True, "low", _metric("params_m"), 2),
        Column("deq_iterations", "DEQ iters", True, "low", _metric("deq_iterations"), 1),
        Column("checkpoint", "Checkpoint", False, "", lambda r: r.checkpoint),
    ]
    return cols


def format_cell(row: Row, col: Column) -> tuple[str, str]:
    """(display text, sort value) of one cell; numbers of paper rows use the paper's decimals; the paper's
    ± and ours (std over seeds) follow the value."""
    value = col.value(row)
    if not col.numeric:
        return str(value), str(value)
    if not finite(value):
        return MISSING, ""
    decimals = row.decimals.get(col.paper_key, col.decimals) if row.paper else col.decimals
    text = f"{value:.4g}" if decimals is None else f"{value:.{decimals}f}"
    if col.paper_key in row.pm:
        text += f" ± {row.pm[col.paper_key]:.{decimals if decimals is not None else 2}f}"
    return text, repr(float(value))
