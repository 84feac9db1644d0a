"""Studies: the paper's experiment as one command (``lsbench study plan|run FILE``).

A study is datasets × archs × methods × seeds under one protocol and budget (:mod:`.config`):
per dataset, arch and seed one starting run (Aug), every other method fine-tuned from its weights
(:mod:`.plan`), each run evaluated on the test splits and the seeds of a method averaged on the
leaderboard (mean ± std, :mod:`.report`).  Runs are independent, resumable jobs (:mod:`.execute`)
launched here, in a process pool or on SLURM through ``submitit`` (:mod:`.launch`)::

    from lsbench.study import launch, load_study, plan_study, report

    plan = plan_study(load_study("mnist.toml", seeds=(0, 1, 2)))
    launch(plan).raise_failures(plan)
    report(plan)                      # OUT/summary.json and OUT/site/
"""

import importlib
import sys
import types

# name → module, loaded on first use (PEP 562): `lsbench study --help` and the study config's parsing
# need no torch, the planner and launcher do.
_EXPORTS = {
    "BUDGETS": "config", "StudyConfig": "config", "load_study": "config", "estimate": "estimate",
    "Outcome": "launch", "StudyError": "launch", "launch": "launch", "Plan": "plan", "Run": "plan",
    "plan_study": "plan", "table": "plan", "report": "report", "summarize": "report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def _function(name: str) -> property:
    """``launch``, ``estimate`` and ``report`` share their submodules' names: importing a submodule binds
    it on the package, which would hide the function.  A property of the package's class wins over that
    binding (the import system's ``setattr`` lands in the ignoring setter; the submodule stays in
    ``sys.modules``)."""

    def get(self):
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)

    return property(get, lambda self, value: None)


class _Package(types.ModuleType):
    launch = _function("launch")
    estimate = _function("estimate")
    report = _function("report")


sys.modules[__name__].__class__ = _Package
