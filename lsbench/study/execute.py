"""One run of a study, start to end: train (or resume), mark it done, evaluate every split.

:func:`execute` is what every launcher calls — in this process, in a pool process or inside a
SLURM job — so a run is the same whichever way it is started.  Its argument is a plain
:class:`RunJob` (picklable for ``submitit`` and ``concurrent.futures``).  It is idempotent: a run
with ``done.json`` is not trained again, an interrupted one resumes from ``last.pt`` (epoch
boundaries; :mod:`lsbench.benchmark.train` replays the same random draws), and only missing
evaluations are computed.  Under DDP (several GPUs in one SLURM job, one task each) every rank
trains and evaluates; rank 0 writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..lock import lock_folder
from ..util import sha256_file, write_json_atomic

Log = Callable[[str], None]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RunJob:
    """Everything one run needs, as plain values."""

    key: str
    record: dict[str, Any]  # run.json
    train: dict[str, Any]  # the resolved TrainConfig
    splits: tuple[str, ...]
    results_dir: str
    study: dict[str, Any]  # the results' ``study`` object
    eval_batch_size: int
    workers: int
    threads: int | None = None  # torch CPU threads (pool processes share the cores)
    distributed: bool = False  # export submitit's torch.distributed environment first


def job_of(plan: Any, run: Any, *, threads: int | None = None, distributed: bool = False) -> RunJob:
    from .plan import run_record

    return RunJob(key=run.key, record=run_record(plan, run), train=asdict(run.train), splits=run.splits,
                  results_dir=str(plan.results_dir / run.dataset), study=run.study_record(plan.study),
                  eval_batch_size=plan.study.eval_batch_size, workers=plan.study.workers, threads=threads,
                  distributed=distributed)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def execute(job: RunJob, *, log: Log | None = None, progress: Callable[[str], Progress | None] | None = None) -> str:
    """Train and evaluate ``job``'s run (skipping what is done); returns its key.

    ``progress(stage)`` may return a ``(done, total)`` callback for the stage ("train", "evaluate test").
    """
    import torch

    from ..benchmark.configs import EvaluateConfig, TrainConfig
    from ..benchmark.evaluate import evaluate
    from ..benchmark.train import train

    if job.distributed:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if job.threads:
        torch.set_num_threads(job.threads)
    cfg = TrainConfig(**job.train)
    folder = Path(cfg.out)
    rank = _rank()
    say = log if rank == 0 else None
    done_path = folder / "done.json"
    if not done_path.is_file():
        # One process trains a run (rank 0 holds its folder; train() takes the same lock again): another
        # study process on this run stops with one line naming this one.
        held = lock_folder(folder, what="study run folder", hint="use another study --out") if rank == 0 else None
        with held or nullcontext():
            if not done_path.is_file():  # not finished meanwhile by a process that held the folder before us
                if rank == 0:
                    folder.mkdir(parents=True, exist_ok=True)
                    write_json_atomic(folder / "run.json", job.record)
                resume = (folder / "last.pt").is_file()
                train(cfg, resume=resume, progress=progress("train") if progress and rank == 0 else None, log=say)
                if rank == 0:
                    write_json_atomic(done_path, {"key": job.key, "weights_sha256": sha256_file(folder / "last.pt")})
            if torch.distributed.is_initialized():  # the other ranks read done.json next
                torch.distributed.barrier()
    weights = folder / "last.pt"
    for split in job.splits:
        if _evaluated(job, split):
            continue
        config = EvaluateConfig(model=cfg.model, data=Path(cfg.data), checkpoint=weights, split=split,
                                out=Path(job.results_dir), batch_size=job.eval_batch_size, workers=job.workers,
                                study=job.study)
        result, path = evaluate(config, progress=progress(f"evaluate {split}") if progress and rank == 0 else None,
                                log=say)
        if say and path is not None:
            m = result["metrics"]
            shown = ", ".join(f"{k} {m[k]:.4f}" for k in ("accuracy", "miou", "inve") if m.get(k) is not None)
            say(f"{job.key} on {split}: {shown}")
    return job.key


def _evaluated(job: RunJob, split: str) -> bool:
    import json

    from .plan import result_path

    sha = json.loads((Path(job.train["out"]) / "done.json").read_text())["weights_sha256"]
    name = job.record["dataset"]["name"]
    return result_path(Path(job.results_dir), job.train["model"], sha, name, split).is_file()
