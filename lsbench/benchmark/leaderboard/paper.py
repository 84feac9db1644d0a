"""The paper's reported numbers as reference rows beside ours.

``paper_results.json`` (next to this module) holds Tables 1, 2, 3, 5 and 6 of the paper, transcribed
as printed (%, ×10⁻², with their ``±`` and decimals).  They are shown, marked ``paper``, in tables
whose ``dataset.generator`` is ``gso``, ``mnist`` or ``imagenet`` and whose task (and, for
classification, class count) is the paper's.  The paper's tables come from its code, whose InvE/EquE
are the code forms (DESIGN.md, Metrics): they go in the ``(code)`` columns, not beside our Eq. 23/24
numbers.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from .rows import Row, scale_key
from .tables import Table

PAPER_PATH = resources.files(__package__).joinpath("paper_results.json")
KINDS = ("gso", "mnist", "imagenet")
PAPER_NOTE = (
    "Rows marked paper are the numbers the paper reports (transcribed as printed). Per DESIGN.md the paper's "
    "tables come from its code's metric forms: compare its InvE/EquE with our InvE(code)/EquE(code) as well."
)
# The paper's classification tasks have 1,000 classes (3-digit MNIST-LS, ImageNet): its numbers are
# no reference for e.g. a 1-digit, 10-class MNIST-LS.
PAPER_NUM_CLASSES = {"mnist": 1000, "imagenet": 1000}


@functools.lru_cache(maxsize=1)
def load_paper() -> dict[str, Any]:
    """The transcribed paper tables (``paper_results.json``)."""
    return json.loads(PAPER_PATH.read_text(encoding="utf-8"))


def dataset_kind(generator: str) -> str | None:
    """``gso`` / ``mnist`` / ``imagenet`` for a generator name, else None (no paper rows)."""
    generator = generator.lower()
    return next((kind for kind in KINDS if kind in generator), None)


def paper_row(entry: dict[str, Any], table: dict[str, Any]) -> Row:
    """A reference row from one entry of a paper table (values are stored as printed: %, ×10⁻²)."""
    primary = "miou" if table["task"] == "seg" else "accuracy"
    keys = {"primary": primary, "inve_code": "inve", "eque_code": "eque", "std": "accuracy_std_across_scales"}
    values = {k: entry.get(src) for k, src in keys.items()}
    pm = {k: entry[f"{src}_pm"] for k, src in keys.items() if f"{src}_pm" in entry}
    decimals = {k: table["decimals"][src] for k, src in keys.items() if src in table["decimals"]}
    if "per_scale" in table["decimals"]:
        decimals["scale"] = table["decimals"]["per_scale"]
    scales = [(scale_key(b["lo"], b["hi"]), b["label"], b["accuracy"], None) for b in entry.get("per_scale", [])]
    return Row(
        model=f"{entry['arch']}_{entry['method']}", method=entry["method"], arch=entry["arch"],
        source=table["source"], paper=True, values=values, pm=pm, decimals=decimals, scales=scales,
        config=f"{table['caption']} ({entry['paper_arch']}, {entry['paper_method']})",
    )


def paper_tables(table: Table) -> list[dict[str, Any]]:
    """The paper tables shown beside a table: same dataset kind and task, and the paper's class count."""
    kind = dataset_kind(table.dataset["generator"])
    if kind is None:
        return []
    expected = PAPER_NUM_CLASSES.get(kind)
    if expected is not None and table.dataset["num_classes"] != expected:
        return []
    return [t for t in load_paper().get(kind, []) if t["task"] == table.task]
