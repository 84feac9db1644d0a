"""Table rows: one per result of ours, in display units, and how rows rank.

A :class:`Row` is what every renderer (HTML, markdown, plots) reads, whether it comes from one of our
result files (:func:`our_row`) or from the paper's tables (:mod:`.paper`).  Units: accuracy, mIoU,
std across scales, per-scale accuracy and P(correct) in % (results store fractions); InvE ×10⁻² as
stored (Eq. 24, like the paper); InvE(code) ×100 (the paper prints its code-form InvE in 10⁻²
units and its rows share that column); EquE, EquE(code) as stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ...dec_models.registry import ARCHS, METHODS
from ..results import Result, one_line

MISSING = "—"

Number = float | None
ScaleKey = tuple[float, float]


@dataclass
class Row:
    """One table row; numbers already in display units (see the module docstring)."""

    model: str
    method: str
    arch: str
    source: str
    paper: bool = False
    values: dict[str, Number] = field(default_factory=dict)
    pm: dict[str, float] = field(default_factory=dict)  # paper's "±" per value key
    decimals: dict[str, int] = field(default_factory=dict)  # paper's printed decimals per value key
    scales: list[tuple[ScaleKey, str, Number, Number]] = field(default_factory=list)  # key, label, acc, p(correct)
    checkpoint: str = MISSING
    config: str = ""
    plots: list[tuple[str, str]] = field(default_factory=list)  # (relative path, caption)


def finite(value: Any) -> bool:
    """A real, finite number (not None, not a bool, not NaN/inf)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _pct(value: Number) -> Number:
    return None if value is None else 100.0 * value


def scale_key(lo: float, hi: float) -> ScaleKey:
    """The key a per-scale bin is matched by across rows (its bounds, rounded)."""
    return (round(float(lo), 4), round(float(hi), 4))


def arch_method(model: dict[str, Any]) -> tuple[str, str]:
    """(arch, method) from the config (``arch``/``method`` or an ``{arch}_{method}`` name), else the model name."""
    config = model.get("config") or {}
    arch, method = config.get("arch"), config.get("method")
    if isinstance(arch, str) and isinstance(method, str):
        return arch, method
    for name in (config.get("name"), model.get("name")):
        if isinstance(name, str):
            a, _, m = name.partition("_")
            if a in ARCHS and m in METHODS:
                return a, m
    return MISSING, MISSING


def our_row(result: Result) -> Row:
    """The row of one result file."""
    model, metrics, eff = result.data["model"], result.data["metrics"], result.data["efficiency"]
    primary = metrics.get("miou") if result.data["dataset"]["task"] == "seg" else metrics.get("accuracy")
    arch, method = arch_method(model)
    values = {
        "primary": _pct(primary),
        "inve": metrics.get("inve"),
        # ×100: the paper prints its (code-form) InvE in 10⁻² units, and its rows share this column.
        "inve_code": None if metrics.get("inve_code") is None else 100 * metrics["inve_code"],
        "eque": metrics.get("eque"),
        "eque_code": metrics.get("eque_code"),
        "std": _pct(metrics.get("accuracy_std_across_scales")),
        "images_per_s": eff["images_per_s"],
        "ms_per_batch": eff["ms_per_batch"],
        "params_m": eff["parameters"] / 1e6,
        "deq_iterations": eff.get("deq_iterations"),
    }
    scales = [
        (scale_key(b["lo"], b["hi"]), b["label"], _pct(b.get("accuracy")), _pct(b.get("p_correct")))
        for b in metrics["per_scale"]
    ]
    sha = model.get("checkpoint_sha256")
    return Row(
        model=model["name"], method=method, arch=arch, source=result.rel, values=values, scales=scales,
        checkpoint=sha[:12] if sha else MISSING, config=one_line(json.dumps(model["config"], sort_keys=True), 600),
    )


def by_primary(rows: Iterable[Row]) -> list[Row]:
    """Highest primary metric first; rows without one last (ties: by model name)."""
    def key(row: Row) -> tuple[bool, float, str]:
        value = row.values.get("primary")
        missing = value is None or not math.isfinite(value)
        return (missing, 0.0 if missing else -value, row.model)

    return sorted(rows, key=key)
