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

from .config import BUDGETS, StudyConfig, load_study
from .estimate import estimate
from .launch import Outcome, StudyError, launch
from .plan import Plan, Run, plan_study, table
from .report import report, summarize

__all__ = ["BUDGETS", "Outcome", "Plan", "Run", "StudyConfig", "StudyError", "estimate", "launch", "load_study",
           "plan_study", "report", "summarize", "table"]
