"""The zoo view: one line per evaluated model, as timm's results CSVs compare ImageNet variants.

Per result of a table: clean accuracy (the scale-1.0 references of the groups) beside locally
scaled accuracy (every other variant) and the drop, InvE, the spread of P(correct class) over the
scale bins (max − min over non-empty bins: how much the model's confidence depends on scale),
parameters, GMACs, images/s, the preprocessing (input size, crop) and how many object boxes its
crop cut.  Written as ``zoo.csv`` (numbers at full precision, the input as text; spreadsheets and
pandas read it) and as a section of the table's HTML page and markdown, from the same
:func:`zoo_rows`.  Results written before lsbench recorded clean accuracy leave those cells empty.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any

from .tables import Table


@dataclass(frozen=True)
class ZooColumn:
    key: str  # also the CSV header
    title: str
    unit: str  # "%" (fraction shown ×100), "" or a scale word for the renderers
    decimals: int


COLUMNS = [
    ZooColumn("model", "Model", "", 0),
    ZooColumn("accuracy_clean", "Clean acc.", "%", 2),
    ZooColumn("accuracy_scaled", "Local-scale acc.", "%", 2),
    ZooColumn("accuracy_drop", "Drop", "%", 2),
    ZooColumn("inve", "InvE (×10⁻²)", "", 3),
    ZooColumn("p_correct_spread", "P(correct) spread", "", 3),
    ZooColumn("params_m", "Params (M)", "", 2),
    ZooColumn("gmacs", "GMACs", "", 2),
    ZooColumn("images_per_s", "img/s", "", 1),
    ZooColumn("input", "Input", "", 0),
    ZooColumn("objects_cut", "Objects cut", "", 0),
    ZooColumn("objects_boxed", "of boxed", "", 0),
]


def _spread(per_scale: list[dict[str, Any]]) -> float | None:
    values = [b["p_correct"] for b in per_scale if b.get("count") and b.get("p_correct") is not None]
    return max(values) - min(values) if len(values) > 1 else None


def _input(pre: dict[str, Any] | None) -> str:
    if not pre:
        return ""
    if pre["kind"] == "timm":
        return f"{pre['size']} px, {pre['crop_mode']} crop {pre['crop_pct']:g}, {pre['interpolation']}"
    return f"{pre['size']} px, whole image"


def zoo_rows(table: Table) -> list[dict[str, Any]]:
    """One dict per result (keys of :data:`COLUMNS`), best locally scaled accuracy first."""
    rows = []
    for r in table.results:
        d = r.data
        m, e = d["metrics"], d["efficiency"]
        rows.append({
            "model": d["model"]["name"], "accuracy_clean": m.get("accuracy_clean"),
            "accuracy_scaled": m.get("accuracy_scaled"), "accuracy_drop": m.get("accuracy_drop"),
            "inve": m.get("inve"), "p_correct_spread": _spread(m.get("per_scale") or []),
            "params_m": e["parameters"] / 1e6, "gmacs": e.get("gmacs"), "images_per_s": e["images_per_s"],
            "input": _input(d.get("preprocess")),
            "objects_cut": m.get("objects_cut"), "objects_boxed": m.get("objects_boxed"),
        })
    return sorted(rows, key=lambda row: (row["accuracy_scaled"] is None, -(row["accuracy_scaled"] or 0)))


def shown(rows: list[dict[str, Any]]) -> bool:
    """Whether a table has zoo numbers at all (results of this lsbench version record clean accuracy)."""
    return any(row["accuracy_clean"] is not None for row in rows)


def cell(row: dict[str, Any], col: ZooColumn) -> str:
    """The text both renderers show (fractions as percentages)."""
    value = row[col.key]
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if col.unit == "%":
        return f"{100 * value:.{col.decimals}f}"
    return f"{value:.{col.decimals}f}"


def zoo_csv(rows: list[dict[str, Any]]) -> str:
    """``zoo.csv``: the numbers as they are in the results (fractions, not percentages), empty when absent."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([c.key for c in COLUMNS])
    for row in rows:
        # A leading = + - @ would make a spreadsheet run the cell as a formula: quote it with '.
        writer.writerow(["" if row[c.key] is None else _safe(row[c.key]) for c in COLUMNS])
    return buf.getvalue()


def _safe(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value
