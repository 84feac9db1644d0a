"""Study commands: ``study plan`` and ``study run`` (:mod:`lsbench.study`).

Every key of a study file is also an option; an option given on the command line wins over the
file's value, and a value given in neither is the :class:`~lsbench.study.StudyConfig` default.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.progress import Progress
from rich.table import Table

from ..study.config import StudyConfig
from .app import _log, app, console, err_console, progress_columns, study_app, user_errors
from .derive import Override, options_from

app.add_typer(study_app, name="study")

FILE = typer.Argument(None, help="Study file (TOML; every key is also an option, options win).", show_default=False)
FLAGS = Override(StudyConfig, flags=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


def _plan(file: Path | None, flags: dict[str, Any]):
    from ..study import load_study, plan_study

    return plan_study(load_study(file, **flags))


@study_app.command("plan")
@user_errors
@options_from(flags=FLAGS)
def plan(
    file: Path | None = FILE,
    flags: StudyConfig = ...,
    estimate: bool = typer.Option(True, help="Time one training step per model kind here to estimate the cost."),
) -> None:
    """Show every run of a study (done / partial / todo) and what the rest will cost on this machine."""
    from ..study import estimate as estimate_cost
    from ..study import table

    study_plan = _plan(file, flags)  # type: ignore[arg-type]
    total = estimate_cost(study_plan) if estimate else None
    rows = table(study_plan)
    grid = Table("model", "seed", "run id", "from", "epochs", "status", "estimate",
                 caption=f"{study_plan.out}: " + ", ".join(f"{n} {s}" for s, n in study_plan.counts().items())
                 + (f"; about {_duration(total)} of training and evaluation left here" if total is not None else ""))
    for row in rows:
        status = {"done": "[green]done[/green]", "partial": "[yellow]partial[/yellow]"}.get(row["status"], "todo")
        grid.add_row(row["model"], str(row["seed"]), row["run"].rpartition("-")[2], row["from"].rpartition("-")[2],
                     str(row["epochs"]),
                     status + (f" ({row['note']})" if row["note"] else ""), _duration(row["estimate_s"]))
    console.print(grid)


@contextmanager
def _stage_bars(quiet: bool):
    """A ``(run, stage) -> (done, total) callback`` factory: one rich bar per run and stage."""
    if quiet:
        yield None
        return
    bars = Progress(*progress_columns(), console=err_console, transient=False)

    def stage(run: Any, name: str):
        task = None

        def update(done: int, total: int) -> None:
            nonlocal task
            if task is None:
                bars.start()
                task = bars.add_task(f"{run.model} seed {run.seed}: {name}", total=total,
                                     unit="step" if name == "train" else "img")
            bars.update(task, completed=done, total=total)

        return update

    try:
        yield stage
    finally:
        bars.stop()


@study_app.command("run")
@user_errors
@options_from(flags=FLAGS)
def run(
    file: Path | None = FILE,
    flags: StudyConfig = ...,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train, fine-tune and evaluate every run not done yet, then build the leaderboard (mean ± std over seeds)."""
    from ..benchmark.leaderboard import LeaderboardError
    from ..study import launch, report

    study_plan = _plan(file, flags)  # type: ignore[arg-type]
    log = _log(quiet)
    counts = study_plan.counts()
    if log:
        log(f"study {study_plan.study.name}: {len(study_plan.runs)} runs in {study_plan.out} "
            f"({', '.join(f'{n} {s}' for s, n in counts.items())})")
    with _stage_bars(quiet) as progress:
        outcome = launch(study_plan, log=log, progress=progress)
    if outcome.submitted:
        console.print(f"queued {len(outcome.submitted)} SLURM jobs (ids in {study_plan.out / 'slurm' / 'jobs.json'}); "
                      "the last builds the leaderboard; `lsbench study plan` shows progress", markup=False)
        return
    try:
        site = report(study_plan)
    except LeaderboardError:
        if not outcome.failed:
            raise
        site = None  # nothing evaluated yet: the failures below are the news
    outcome.raise_failures(study_plan)
    if not quiet and site is not None:
        for md in sorted(site.glob("*/leaderboard.md")):
            console.print(md.read_text(encoding="utf-8"), markup=False, highlight=False, soft_wrap=True)
        console.print(f"summary {study_plan.out / 'summary.json'}; open {(site / 'index.html').resolve()}",
                      markup=False, highlight=False, soft_wrap=True)
