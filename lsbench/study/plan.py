"""A study expanded into runs: which to train, from what, where, and how far each has got.

Per dataset, arch and seed the protocol is the paper's (Sec. 5.1): one starting run (Aug by
default), then every other method fine-tuned from that run's final weights (``last.pt``: the
datasets have no validation split, so the study never picks a checkpoint by its test accuracy).
Every run is evaluated on each requested split.

A run's folder is keyed by its identity — the dataset, the fully resolved ``lsbench train`` config
(without where it writes and how many loader workers it uses) and its starting run's key — hashed,
so the same study planned twice gives the same folders, a changed option gives a new run, and a
finished run is found again and skipped::

    OUT/runs/{dataset}/{arch}_{method}-seed{seed}-{hash}/   run.json, last.pt, log.jsonl, done.json
    OUT/results/{dataset}/*.json                            one result per run and split
    OUT/site/                                               the leaderboard
    OUT/summary.json                                        mean ± std per method (measured, per seed)

``run.json`` holds the resolved config and the dataset's manifest sha256; a folder whose record no
longer matches (the dataset was regenerated, or lsbench resolves the options differently now) is one
error line before anything starts.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..benchmark.configs import TrainConfig
from ..benchmark.results import result_filename
from ..benchmark.train import resolve
from ..dataset import Dataset, open_dataset
from ..dec_models.methods import get_method
from ..dec_models.methods import paper_defaults as method_defaults
from ..errors import ConfigError
from ..util import dumps_json, loads_json
from .config import BUDGETS, START_NONE, StudyConfig

# TrainConfig fields that say where and how a run executes, not what it computes.
NOT_IDENTITY = frozenset({"out", "data", "workers", "log_every", "init_from"})
WEIGHTS = "last.pt"  # fine-tunes start from, and evaluations score, a run's final weights
DONE, PARTIAL, TODO = "done", "partial", "todo"


def _digest(obj: Any, n: int = 10) -> str:
    return hashlib.sha256(dumps_json(obj).encode()).hexdigest()[:n]


@dataclass
class Run:
    """One training run of a study and its evaluations."""

    key: str  # "{arch}_{method}-seed{seed}-{hash}": its folder's name
    group: str  # shared by the runs that differ only in the seed (a leaderboard row)
    dataset: str  # the dataset folder's name
    arch: str
    method: str
    seed: int
    role: str  # "start" or "finetune"
    parent: str | None  # key of the run it is fine-tuned from
    train: TrainConfig  # resolved; ``out`` is the run folder, ``init_from`` the parent's weights
    splits: tuple[str, ...]
    results: dict[str, Path]  # split → the result file its evaluation writes
    status: str = TODO
    epochs_done: int = 0
    note: str = ""  # what "partial" means here (epoch 3/8, 1/2 evaluated)
    estimate_s: float | None = None

    @property
    def folder(self) -> Path:
        return Path(self.train.out)

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS

    @property
    def model(self) -> str:
        return self.train.model

    def study_record(self, study: StudyConfig) -> dict[str, Any]:
        """The ``study`` object of this run's results (read by the leaderboard's ± over seeds)."""
        return {"name": study.name, "group": self.group, "run": self.key, "seed": self.seed, "role": self.role,
                "run_dir": Path(os.path.relpath(self.folder, Path(study.out) / "results" / self.dataset)).as_posix()}


@dataclass
class Plan:
    """The study's runs, starting runs before the runs fine-tuned from them."""

    study: StudyConfig
    runs: list[Run]
    datasets: dict[str, Dataset] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.study.out)

    @property
    def results_dir(self) -> Path:
        return self.out / "results"

    @property
    def site(self) -> Path:
        return self.out / "site"

    def run(self, key: str) -> Run:
        return next(r for r in self.runs if r.key == key)

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.runs) for s in (DONE, PARTIAL, TODO)}


def default_splits(info: Dataset, train_split: str) -> tuple[str, ...]:
    """``test`` and every ``test_*`` split (the scale brackets) the dataset has."""
    return tuple(s for s in info.splits if s != train_split and (s == "test" or s.startswith("test_")))


def _train_values(study: StudyConfig, info: Dataset, arch: str, role: str) -> dict[str, Any]:
    """The budget's values for this role, then the study's own options, then its [train] table."""
    values = BUDGETS[study.budget].values(role, info.generator, info.task, arch)
    own = {"size": study.size, "img_size": study.img_size, "batch_size": study.batch_size,
           "max_steps_per_epoch": study.max_steps_per_epoch,
           "epochs": study.epochs if role == "start" else study.finetune_epochs,
           "lr": study.lr if role == "start" else study.finetune_lr}
    values.update({k: v for k, v in own.items() if v is not None})
    values.update(study.train_overrides())
    if role == "finetune":  # a fine-tune's weights are its starting run's
        values.pop("pretrained", None)
    return values


def _identity(cfg: TrainConfig, method: str) -> dict[str, Any]:
    """What a run computes: its resolved config without where and how it runs, and without the options
    of other methods (an Aug run records DEC's defaults too: a new DEC default must not retrain it)."""
    unread = set(method_defaults()) - set(get_method(method).defaults)
    return {k: v for k, v in asdict(cfg).items() if k not in NOT_IDENTITY | unread}


def _make_run(study: StudyConfig, info: Dataset, data: str, arch: str, method: str, seed: int,
              splits: tuple[str, ...], parent: Run | None) -> Run:
    role = "start" if parent is None else "finetune"
    dataset = Path(data).name
    values = _train_values(study, info, arch, role)
    raw = TrainConfig(model=f"{arch}_{method}", data=data, out="-", seed=seed, workers=study.workers,
                      init_from=str(parent.weights) if parent else None, **values)
    cfg = resolve(raw, info)
    identity = _identity(cfg, method)
    key = f"{cfg.model}-seed{seed}-{_digest({'dataset': dataset, 'train': identity, 'parent': parent and parent.key})}"
    group = _digest({"dataset": dataset, "train": {k: v for k, v in identity.items() if k != "seed"},
                     "parent": parent and parent.group})
    cfg.out = str(Path(study.out) / "runs" / dataset / key)
    return Run(key=key, group=group, dataset=dataset, arch=arch, method=method, seed=seed, role=role,
               parent=parent and parent.key, train=cfg, splits=splits, results={})


def plan_study(study: StudyConfig) -> Plan:
    """Expand ``study`` into its runs and read how far each has got (see the module docstring).

    A missing dataset, an unknown split or a run folder made with other settings is one
    :class:`ConfigError` line; nothing is written.
    """
    runs: list[Run] = []
    datasets: dict[str, Dataset] = {}
    for data in study.data:
        info = open_dataset(Path(data)).require_complete()
        datasets[Path(data).name] = info
        splits = study.splits or default_splits(info, "train")
        if not splits:
            raise ConfigError(f"{data} has no test split to evaluate; pass --splits")
        for split in splits:
            info.split(split)
        for arch in study.archs:
            for seed in study.seeds:
                start = None
                if study.start != START_NONE:
                    start = _make_run(study, info, data, arch, study.start, seed, splits, None)
                    runs.append(start)
                for method in study.methods:
                    if method != study.start:
                        runs.append(_make_run(study, info, data, arch, method, seed, splits, start))
    return refresh(Plan(study, runs, datasets))


def refresh(plan: Plan) -> Plan:
    """Read each run's status (and result files) from its folder again; returns ``plan``."""
    for run in plan.runs:
        _read_status(plan, run)
    return plan


def run_record(plan: Plan, run: Run) -> dict[str, Any]:
    """What ``run.json`` holds: enough to recognise the run and to refuse a changed one."""
    info = plan.datasets[run.dataset]
    return {"key": run.key, "group": run.group, "study": plan.study.name, "role": run.role, "parent": run.parent,
            "dataset": {"name": info.name, "folder": run.dataset, "manifest_sha256": info.sha256},
            "train": asdict(run.train)}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = loads_json(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):  # no run there (a path through a file: said when writing)
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); remove the run folder to redo the run") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} cannot be read (not a JSON object); remove the run folder to redo the run")
    return data


def _read_status(plan: Plan, run: Run) -> None:
    run.status, run.note, run.results = TODO, "", {}
    record = _read_json(run.folder / "run.json")
    if record is not None:
        want = run_record(plan, run)
        if record.get("dataset", {}).get("manifest_sha256") != want["dataset"]["manifest_sha256"]:
            raise ConfigError(f"{run.folder} was trained on another version of dataset {run.dataset} (its manifest "
                              "changed); remove the run folder to retrain it, or use another --out")
        changed = sorted(k for k, v in _identity(run.train, run.method).items()
                         if record.get("train", {}).get(k) != v)
        if changed:
            raise ConfigError(f"{run.folder} was trained with other {', '.join(changed)}; remove the run folder to "
                              "retrain it, or use another --out")
    done = _read_json(run.folder / "done.json")
    info = plan.datasets[run.dataset]
    if done is not None:
        if not isinstance(done.get("weights_sha256"), str):
            raise ConfigError(f"{run.folder / 'done.json'} records no weights_sha256; remove the run folder to redo "
                              "the run")
        run.results = {s: result_path(plan.results_dir / run.dataset, run.model, done["weights_sha256"], info.name, s)
                       for s in run.splits}
        run.epochs_done = run.train.epochs
        missing = [s for s, p in run.results.items() if not p.is_file()]
        run.status = PARTIAL if missing else DONE
        if missing:
            run.note = f"trained; {len(run.splits) - len(missing)}/{len(run.splits)} evaluated"
        return
    run.epochs_done = epochs_logged(run.folder)
    if (run.folder / WEIGHTS).is_file() or run.epochs_done:
        run.status = PARTIAL
        run.note = f"epoch {run.epochs_done}/{run.train.epochs}"


def result_path(results_dir: Path, model: str, weights_sha256: str, dataset_name: str, split: str) -> Path:
    """Where ``lsbench evaluate`` writes the result of these weights on this split."""
    return results_dir / result_filename({"model": {"name": model, "checkpoint_sha256": weights_sha256},
                                          "dataset": {"name": dataset_name, "split": split}})


def epochs_logged(folder: Path) -> int:
    """Epochs a run has finished, from its ``log.jsonl`` (0 if none)."""
    try:
        lines = (folder / "log.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0
    done = 0
    for line in lines:
        try:
            record = loads_json(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(record, dict) and record.get("event") == "epoch" and isinstance(record.get("epoch"), int):
            done = max(done, record["epoch"] + 1)
    return done


def table(plan: Plan) -> list[dict[str, Any]]:
    """The plan as rows (``lsbench study plan``)."""
    rows = []
    for run in plan.runs:
        rows.append({"run": run.key, "dataset": run.dataset, "model": run.model, "seed": run.seed,
                     "from": run.parent or "—", "epochs": run.train.epochs, "status": run.status, "note": run.note,
                     "estimate_s": run.estimate_s})
    return rows
