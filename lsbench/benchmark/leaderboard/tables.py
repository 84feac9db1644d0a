"""Grouping results into tables: one per (dataset name, split), each of one dataset only.

A table ranks results computed on the same data, so every result in it must carry the same
``dataset.manifest_sha256``; otherwise the whole build is refused (one line naming both files and
hashes) before anything is written.  Each table gets a unique file-name-safe ``slug`` for its folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...errors import DataError
from ...util import safe_name
from ..results import Result, one_line


class LeaderboardError(DataError):
    """A results folder the leaderboard cannot rank: missing, empty, invalid, or mixing datasets."""


@dataclass
class Table:
    """All results of one (dataset name, split); they share one dataset manifest hash."""

    name: str
    split: str
    results: list[Result]
    slug: str = ""

    @property
    def dataset(self) -> dict[str, Any]:
        return self.results[0].data["dataset"]

    @property
    def task(self) -> str:
        return self.dataset["task"]


def check_same_dataset(name: str, split: str, results: list[Result]) -> None:
    """Refuse a table whose results were computed on different datasets (manifest hashes differ)."""
    first = results[0]
    want = first.data["dataset"]["manifest_sha256"]
    for other in results[1:]:
        got = other.data["dataset"]["manifest_sha256"]
        if got != want:
            raise LeaderboardError(one_line(
                f"refusing to rank dataset {name!r} split {split!r}: {other.path} has dataset manifest sha256 {got} "
                f"but {first.path} has {want}; evaluate every model on the same dataset (or rename one)",
                limit=1000,
            ))


def group_results(results: list[Result]) -> list[Table]:
    """One :class:`Table` per (dataset name, split), sorted, each checked and given a unique slug
    (``{dataset name}-{split}`` reduced to ``[A-Za-z0-9._-]``, never ``index.html``)."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        ds = result.data["dataset"]
        groups.setdefault((ds["name"], ds["split"]), []).append(result)
    tables, used = [], set()
    for (name, split), members in sorted(groups.items()):
        check_same_dataset(name, split, members)
        base = safe_name(f"{name}-{split}", limit=60, strip="-.")
        slug, n = base, 1
        while slug.lower() in used or slug.lower() == "index.html":
            n += 1
            slug = f"{base}-{n}"
        used.add(slug.lower())
        tables.append(Table(name, split, members, slug))
    return tables
