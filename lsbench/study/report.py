"""A finished study's outputs: the leaderboard site and ``summary.json`` (mean ± std per method).

``summary.json`` is the study's own measurement record: per dataset, split and run group (one
method, all seeds), every seed's Acc/mIoU, InvE and InvE(code) with the run it came from, and the
mean and sample standard deviation over the seeds (``std`` is ``null`` for one seed).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ..benchmark.results import read_result
from ..lock import lock_folder
from ..util import write_json_atomic
from .plan import DONE, Plan, refresh

METRICS = ("accuracy", "miou", "inve", "inve_code", "eque")


def summarize(plan: Plan) -> dict[str, Any]:
    """Per (dataset, split, group): the seeds' metrics, their mean and std."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for run in plan.runs:
        if run.status != DONE:
            continue
        for split, path in run.results.items():
            metrics = read_result(path)["metrics"]
            entry = groups.setdefault((run.dataset, split, run.group), {
                "dataset": run.dataset, "split": split, "model": run.model, "method": run.method, "arch": run.arch,
                "role": run.role, "group": run.group, "seeds": [],
            })
            entry["seeds"].append({"seed": run.seed, "run": run.key, "result": path.relative_to(plan.out).as_posix(),
                                   **{k: metrics.get(k) for k in METRICS if metrics.get(k) is not None}})
    rows = []
    for entry in groups.values():
        for key in METRICS:
            values = [s[key] for s in entry["seeds"] if key in s]
            if values:
                entry[key] = {"mean": statistics.fmean(values),
                              "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}
        rows.append(entry)
    counts = plan.counts()
    return {"study": plan.study.name, "budget": plan.study.budget, "runs": len(plan.runs), **counts, "groups": rows}


def report(plan: Plan) -> Path:
    """Write ``summary.json`` and the leaderboard site of the study's results; returns the site folder."""
    from ..benchmark.leaderboard import build

    with lock_folder(plan.out, what="study folder", hint="use another --out"):  # also the SLURM report job's
        refresh(plan)  # the runs' statuses as they are now, not as planned
        write_json_atomic(plan.out / "summary.json", summarize(plan))
        build(plan.results_dir, plan.site)
    return plan.site
