"""Where a study's runs execute: here one at a time, here in N processes, or as SLURM jobs.

Runs are independent jobs (:func:`.execute.execute`), fine-tunes waiting for their starting run;
lsbench does not schedule them itself:

- ``--launcher local`` runs them in this process, in plan order (starting runs first);
  ``--jobs N`` in N spawned processes (:mod:`concurrent.futures`), each fine-tune submitted when its
  starting run has finished, each process with its share of the CPU threads.
- ``--launcher slurm`` submits one ``submitit`` job per run: fine-tunes carry
  ``--dependency=afterok:<start job>``, a last job depending on all of them builds the leaderboard,
  and the command returns once everything is queued (job ids in ``OUT/slurm/jobs.json``; a rerun
  does not resubmit a run whose job is still queued or running).  Several GPUs per run run one task
  per GPU under DDP (submitit's torch.distributed environment; the torchrun equivalent).  The
  same code runs with submitit's own local executor (``cluster="local"``: the tests), where each
  fine-tune is submitted once its starting run's job has returned.

A run that fails does not stop the others (its fine-tunes are skipped); the study then ends with one
line naming the failed runs and their logs.  A rerun picks up where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LsbenchError
from ..lock import lock_folder
from ..processes import die_with_parent
from ..util import write_json_atomic
from .execute import Log, RunJob, execute, job_of
from .plan import DONE, Plan, Run


class StudyError(LsbenchError):
    """Some runs of a study failed (the others finished); the message names them."""


@dataclass
class Outcome:
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # key → one line
    skipped: list[str] = field(default_factory=list)  # fine-tunes of a failed start
    submitted: dict[str, str] = field(default_factory=dict)  # key → SLURM job id (not waited for)

    def raise_failures(self, plan: Plan) -> None:
        if not self.failed:
            return
        first_key, first = next(iter(self.failed.items()))
        more = f" and {len(self.failed) - 1} more" if len(self.failed) > 1 else ""
        skipped = f"; {len(self.skipped)} fine-tunes skipped" if self.skipped else ""
        raise StudyError(f"{len(self.failed)} of {len(plan.runs)} runs failed{skipped}: {first_key}: {first}{more} "
                         f"(logs in {plan.out / 'runs'}); fix it and rerun: finished runs are kept")


def _todo(plan: Plan) -> list[Run]:
    return [r for r in plan.runs if r.status != DONE]


def _children(plan: Plan, key: str) -> list[Run]:
    return [r for r in _todo(plan) if r.parent == key]


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


# --------------------------------------------------------------------------- local


def run_sequential(plan: Plan, *, log: Log | None = None,
                   progress: Callable[[Run, str], Any] | None = None) -> Outcome:
    """In this process, in plan order; the first user error stops the study (one line)."""
    outcome = Outcome()
    todo = _todo(plan)
    for n, run in enumerate(todo, 1):
        if log:
            log(f"[{n}/{len(todo)}] {run.key}" + (f" (from {run.parent})" if run.parent else ""))
        execute(job_of(plan, run), log=log, progress=(lambda stage, r=run: progress(r, stage)) if progress else None)
        outcome.finished.append(run.key)
    return outcome


def _pool_job(job: RunJob) -> str:
    """A pool process: the run's own messages go to ``run.log`` in its folder."""
    folder = Path(job.train["out"])
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "run.log", "a", encoding="utf-8") as f:
        def log(line: str) -> None:
            f.write(line + "\n")
            f.flush()

        try:
            return execute(job, log=log)
        except Exception as e:
            log(f"error: {_one_line(e)}")
            raise


def _pool_process(parent: int, start_method: str) -> None:
    """A run process's initializer: it dies with ``parent`` (:mod:`lsbench.processes`), and starts its
    DataLoader workers as ``lsbench train`` does here (``start_method``).  A spawned process otherwise
    spawns its own children too: every epoch's DataLoader workers then re-import torch before they can
    watch their parent, and those of a killed study outlived it by 4–10 s (measured), holding its stderr."""
    import multiprocessing

    die_with_parent(parent)
    multiprocessing.set_start_method(start_method, force=True)


def run_pool(plan: Plan, jobs: int, *, log: Log | None = None) -> Outcome:
    """``jobs`` processes; a fine-tune is submitted when its starting run has finished."""
    import multiprocessing

    outcome = Outcome()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    todo = _todo(plan)
    keys = {r.key for r in todo}
    ready = [r for r in todo if r.parent is None or r.parent not in keys]
    # Run processes die with this one (a SIGKILL of `study run` leaves no training behind); they are started
    # from submit(), in this thread.  See _pool_process for their DataLoader workers.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_pool_process,
                             initargs=(os.getpid(), multiprocessing.get_start_method())) as pool:
        running: dict[Future, Run] = {}

        def submit(run: Run) -> None:
            running[pool.submit(_pool_job, job_of(plan, run, threads=threads))] = run
            if log:
                log(f"started {run.key}")

        for run in ready:
            submit(run)
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                run = running.pop(future)
                error = future.exception()
                if error is None:
                    outcome.finished.append(run.key)
                    if log:
                        log(f"finished {run.key}")
                    for child in _children(plan, run.key):
                        submit(child)
                else:
                    outcome.failed[run.key] = _one_line(error)
                    outcome.skipped += [c.key for c in _children(plan, run.key)]
                    if log:
                        log(f"failed {run.key}: {_one_line(error)} (see {run.folder / 'run.log'})")
    return outcome


# --------------------------------------------------------------------------- submitit


def executor_for(plan: Plan, name: str) -> Any:
    """A ``submitit.AutoExecutor`` with the study's SLURM options (ignored by the local executor)."""
    import submitit

    s = plan.study
    try:
        executor = submitit.AutoExecutor(folder=plan.out / "slurm" / "%j", cluster=s.cluster)
    except RuntimeError as e:  # submitit: 'Could not detect "srun", are you indeed on a slurm cluster?'
        raise StudyError(f"--launcher slurm needs a SLURM cluster here ({e}); run with --launcher local "
                         "(--jobs N for several runs at once)") from None
    tasks = max(1, s.slurm_gpus)
    params: dict[str, Any] = {"name": name, "timeout_min": s.slurm_time, "nodes": 1, "tasks_per_node": tasks,
                              "gpus_per_node": s.slurm_gpus, "cpus_per_task": s.slurm_cpus}
    if s.slurm_mem_gb:
        params["mem_gb"] = s.slurm_mem_gb
    if s.slurm_partition:
        params["slurm_partition"] = s.slurm_partition
    extra = dict(item.split("=", 1) for item in s.slurm_extra)
    if extra:
        params["slurm_additional_parameters"] = extra
    executor.update_parameters(**params)
    return executor


def _with_dependency(plan: Plan, executor: Any, after: list[str], kind: str = "afterok") -> None:
    extra = dict(item.split("=", 1) for item in plan.study.slurm_extra)
    if after:
        extra["dependency"] = f"{kind}:" + ":".join(after)
    executor.update_parameters(slurm_additional_parameters=extra)


def report_job(study: dict[str, Any]) -> str:
    """The last SLURM job: the leaderboard and summary of the finished study."""
    from .config import StudyConfig
    from .plan import plan_study
    from .report import report

    return str(report(plan_study(StudyConfig(**study))))


def run_submitit(plan: Plan, *, log: Log | None = None) -> Outcome:
    """One job per run.  On SLURM: queued with dependencies, not waited for.  Elsewhere (submitit's
    local executor): each fine-tune submitted when its start has returned, all waited for."""
    from dataclasses import asdict

    outcome = Outcome()
    study = plan.study
    slurm = study.cluster == "slurm"
    distributed = study.slurm_gpus > 1
    todo = _todo(plan)
    jobs_file = plan.out / "slurm" / "jobs.json"
    queued = _still_queued(plan, jobs_file) if slurm else {}
    ids: dict[str, str] = dict(queued)
    handles: dict[str, Any] = {}

    def submit(run: Run, after: list[str]) -> None:
        executor = executor_for(plan, f"{study.name}:{run.key}")
        if slurm:
            _with_dependency(plan, executor, after)
        job = executor.submit(execute, job_of(plan, run, distributed=distributed))
        handles[run.key], ids[run.key] = job, str(job.job_id)
        if log:
            log(f"submitted {run.key} as job {job.job_id}" + (f" after {', '.join(after)}" if after else ""))

    for run in todo:
        if run.key in queued:
            if log:
                log(f"{run.key} is still queued or running as job {queued[run.key]}")
            continue
        if run.parent is None or run.parent not in {r.key for r in todo}:
            submit(run, [])
        elif slurm:
            submit(run, [ids[run.parent]])
    if slurm:
        if ids:
            executor = executor_for(plan, f"{study.name}:report")
            _with_dependency(plan, executor, list(ids.values()), "afterany")
            job = executor.submit(report_job, asdict(study))
            ids["report"] = str(job.job_id)
            if log:
                log(f"submitted the leaderboard as job {job.job_id}, after all runs")
        plan.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(jobs_file, ids)
        outcome.submitted = ids
        return outcome
    waiting = dict(handles)
    while waiting:
        for key in list(waiting):
            job = waiting.pop(key)
            try:
                job.result()
                outcome.finished.append(key)
                for child in _children(plan, key):
                    submit(child, [])
                    waiting[child.key] = handles[child.key]
            except Exception as e:  # noqa: BLE001 - submitit re-raises the job's error with its traceback
                outcome.failed[key] = _one_line(e).split(" Traceback")[0]
                outcome.skipped += [c.key for c in _children(plan, key)]
    return outcome


def _still_queued(plan: Plan, jobs_file: Path) -> dict[str, str]:
    """Runs whose recorded SLURM job is still pending or running (not resubmitted)."""
    import json

    try:
        ids = json.loads(jobs_file.read_text())
    except (OSError, ValueError):
        return {}
    import submitit

    alive = {}
    for key, job_id in ids.items():
        if key == "report":
            continue
        try:
            state = submitit.SlurmJob(plan.out / "slurm" / "%j", job_id).state
        except Exception:  # noqa: BLE001 - no sacct/squeue here: treat as finished
            continue
        if state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING"):
            alive[key] = job_id
    return alive


def launch(plan: Plan, *, log: Log | None = None, progress: Callable[[Run, str], Any] | None = None) -> Outcome:
    """Run (or queue) every run of ``plan`` that is not done, with the study's launcher.

    The study folder is held meanwhile (:mod:`lsbench.lock`; each run's folder is held by the process
    training it): a second ``study run`` of the same study stops with one line naming this one."""
    study = plan.study
    with lock_folder(plan.out, what="study folder", hint="use another --out"):
        if study.launcher == "slurm":
            outcome = run_submitit(plan, log=log)
        elif study.jobs > 1:
            outcome = run_pool(plan, study.jobs, log=log)
        else:
            outcome = run_sequential(plan, log=log, progress=progress)
    return outcome
