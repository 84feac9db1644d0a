"""Table rows: one per result of ours, in display units, and how rows rank.

A :class:`Row` is what every renderer (HTML, markdown, plots) reads, whether it comes from one of our
result files (:func:`our_row`) or from the paper's tables (:mod:`.paper`).  Units: accuracy, mIoU,
std across scales, per-scale accuracy and P(correct) in % (results store fractions); InvE ×10⁻² as
stored (Eq. 24, like the paper); InvE(code) ×100 (the paper prints its code-form InvE in 10⁻²
units and its rows share that column); EquE, EquE(code) as stored.

Results of one study run group (:func:`our_rows`: the same model and protocol, one result per seed,
``study.group`` in the result) make one row: every value the mean over the seeds, ``±`` the sample
standard deviation (ddof 1) for the metrics, ``n`` the number of seeds; one seed shows no ``±``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...dec_models.archs import list_archs
from ...dec_models.names import METHOD_NAMES
from ..results import Result, one_line
from .tables import LeaderboardError

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
    pm: dict[str, float] = field(default_factory=dict)  # "±" per value key (the paper's, or the std over seeds)
    decimals: dict[str, int] = field(default_factory=dict)  # paper's printed decimals per value key
    scales: list[tuple[ScaleKey, str, Number, Number]] = field(default_factory=list)  # key, label, acc, p(correct)
    checkpoint: str = MISSING
    config: str = ""
    counts: dict[ScaleKey, int | None] = field(default_factory=dict)  # samples per bin (ours; the paper: none)
    n: int | None = None  # seeds averaged (study rows), None for a lone result and the paper's rows
    runs: list[tuple[int, Path, Path]] = field(default_factory=list)  # (seed, result file, run folder)
    links: list[tuple[int, str, str]] = field(default_factory=list)  # the same as hrefs from the table's page


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
            if a in list_archs() and m in METHOD_NAMES:
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
    counts = {scale_key(b["lo"], b["hi"]): b.get("count") for b in metrics["per_scale"]}
    sha = model.get("checkpoint_sha256")
    return Row(
        model=model["name"], method=method, arch=arch, source=result.rel, values=values, scales=scales, counts=counts,
        checkpoint=sha[:12] if sha else MISSING, config=one_line(json.dumps(model["config"], sort_keys=True), 600),
    )


def by_primary(rows: Iterable[Row]) -> list[Row]:
    """Highest primary metric first; rows without one last (ties: by model name)."""
    def key(row: Row) -> tuple[bool, float, str]:
        value = row.values.get("primary")
        missing = value is None or not math.isfinite(value)
        return (missing, 0.0 if missing else -value, row.model)

    return sorted(rows, key=key)


# The values that get a "± std over seeds"; the rest (speed, size) are shown as the mean alone.
SPREAD = ("primary", "inve", "inve_code", "eque", "eque_code", "std")


def _mean(values: list[Number]) -> Number:
    """The mean of the finite values, or None if any seed lacks the value (a mean of some seeds would
    pass for a mean of all)."""
    return statistics.fmean(values) if values and all(finite(v) for v in values) else None  # type: ignore[arg-type]


def seed_row(results: list[Result]) -> Row:
    """One row for the results of one study run group (one per seed, see the module docstring)."""
    members = sorted(results, key=lambda r: r.data["study"]["seed"])
    rows = [our_row(r) for r in members]
    study = members[0].data["study"]
    seeds = [r.data["study"]["seed"] for r in members]
    per_seed = {k: [r.values.get(k) for r in rows] for k in rows[0].values}
    bins = {key: label for r in rows for key, label, _, _ in r.scales}
    row = Row(model=rows[0].model, method=rows[0].method, arch=rows[0].arch, source="", config=rows[0].config,
              n=len(rows), values={k: _mean(v) for k, v in per_seed.items()})
    if row.n > 1:
        row.pm = {k: statistics.stdev(per_seed[k]) for k in SPREAD if row.values.get(k) is not None}  # type: ignore
    row.scales = [
        (key, label, _mean([_bin(r, key, 2) for r in rows]), _mean([_bin(r, key, 3) for r in rows]))
        for key, label in sorted(bins.items())
    ]
    row.counts = {key: sum(r.counts.get(key) or 0 for r in rows) for key in bins}  # samples over all seeds
    row.source = f"study {study['name']}, seed{'s' if row.n > 1 else ''} {', '.join(map(str, seeds))}"
    row.checkpoint = f"{row.n} run{'s' if row.n > 1 else ''}"
    row.runs = [(r.data["study"]["seed"], r.path, r.path.parent / r.data["study"]["run_dir"]) for r in members]
    return row


def _bin(row: Row, key: ScaleKey, index: int) -> Number:
    return next((b[index] for b in row.scales if b[0] == key), None)


def our_rows(results: Iterable[Result]) -> list[Row]:
    """One row per result, except that a study's results of one run group make one row (mean ± std over
    seeds).  A group holding one seed twice (e.g. a stale result of a retrained run) is refused."""
    rows: list[Row] = []
    groups: dict[tuple[str, str], dict[int, Result]] = {}
    for result in results:
        study = result.data.get("study")
        if study is None:
            rows.append(our_row(result))
            continue
        group = groups.setdefault((study["name"], study["group"]), {})
        if study["seed"] in group:
            raise LeaderboardError(one_line(
                f"study {study['name']!r}: {group[study['seed']].path} and {result.path} are both seed "
                f"{study['seed']} of run group {study['group']}; remove the stale one", limit=1000))
        group[study["seed"]] = result
    rows += [seed_row(list(group.values())) for group in groups.values()]
    return rows
