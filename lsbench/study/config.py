"""A study's config: datasets × archs × methods × seeds under one protocol and budget.

One :class:`StudyConfig` is both the Python API's object and the command line's options
(``lsbench study run --archs resnet,vit --seeds 0,1,2``); a study file is the same fields as a small
TOML file, flags overriding the file::

    name = "mnist-resnet"
    data = ["data/mnist-ls-1d"]      # relative paths are relative to the file
    archs = ["resnet"]
    methods = ["aug", "invl", "dec"]
    seeds = [0, 1, 2]
    budget = "cpu"

    [train]                          # any other `lsbench train` option, for every run
    latent_mode = "equivariant"

Budgets (:data:`BUDGETS`) fill what the study leaves unset, separately for the starting run and the
fine-tunes: ``paper`` is the paper's protocol (A1: MNIST trains 50 epochs and fine-tunes 40; the
segmentation models fine-tune 60 epochs at 2e-5; ImageNet Table A1 from the timm weights — the
rest are ``lsbench train``'s per-dataset defaults), ``cpu`` a small one for a laptop (micro
backbones at 64 px, 8 epochs at 1e-3, fine-tunes 3 epochs at 3e-4, batch 32: the setting in which
the paper's ordering was first reproduced on a CPU).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..benchmark.configs import TrainConfig
from ..dec_models.archs import SIZES, list_archs
from ..errors import ConfigError
from ..options import check_ranges, non_finite, option

LAUNCHERS = ("local", "slurm")
BUDGET_NAMES = ("cpu", "paper")
START_NONE = "none"


def _words(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in str(text).split(",") if w.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in _words(text))
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None


def _pairs(text: str) -> tuple[str, ...]:
    items = _words(text)
    for item in items:
        if "=" not in item:
            raise ConfigError(f"expected KEY=VALUE items, got {item!r}")
    return items


@dataclass
class StudyConfig:
    """One study; the fields are the keys of a study file and the options of ``lsbench study``."""

    name: str = option("study", help="Study name (leaderboard rows, SLURM job names).")
    data: tuple[str, ...] = option((), help="Dataset folders (comma-separated).", parse=_words, short="-d")
    out: str | None = option(None, help="Study folder: runs/, results/, site/ (default: the file's name, or "
                             "'study').", short="-o")
    archs: tuple[str, ...] = option(("resnet",), help="Architectures (comma-separated).", parse=_words)
    methods: tuple[str, ...] = option(("aug", "invl", "dec"), help="Methods (comma-separated).", parse=_words)
    seeds: tuple[int, ...] = option((0,), help="Seeds (comma-separated); each gives one run per method.",
                                    parse=_ints)
    start: str = option("aug", help="Method of the starting run every other method is fine-tuned from "
                        "('none': each method from scratch).")
    budget: str = option("cpu", help="Epochs, learning rates, sizes of the runs.", choices=BUDGET_NAMES)
    splits: tuple[str, ...] = option((), help="Splits to evaluate (default: test and every test_* split).",
                                     parse=_words)
    size: str | None = option(None, help="Backbone size (default: the budget's).", choices=SIZES)
    img_size: int | None = option(None, help="Input size (default: the budget's).", min=1)
    epochs: int | None = option(None, help="Epochs of the starting run (default: the budget's).", min=1)
    finetune_epochs: int | None = option(None, help="Epochs of each fine-tune (default: the budget's).", min=1)
    lr: float | None = option(None, help="Learning rate of the starting run (default: the budget's).")
    finetune_lr: float | None = option(None, help="Learning rate of the fine-tunes (default: the budget's).")
    batch_size: int | None = option(None, help="Training batch size (default: the budget's).", min=1)
    max_steps_per_epoch: int | None = option(None, help="Cap steps per epoch (quick looks).", min=1)
    train: tuple[str, ...] = option((), help="Other `lsbench train` options for every run, KEY=VALUE,... "
                                    "(a [train] table in the file).", parse=_pairs)
    eval_batch_size: int = option(64, help="Images per forward when evaluating.", min=1)
    workers: int = option(1, help="DataLoader workers per run.", min=0)
    launcher: str = option("local", help="Where runs execute: this machine, or SLURM jobs (submitit).",
                           choices=LAUNCHERS)
    jobs: int = option(1, help="Runs at once with --launcher local (processes).", min=1)
    slurm_partition: str | None = option(None, help="SLURM partition.")
    slurm_time: int = option(24 * 60, help="SLURM time limit per run, minutes.", min=1)
    slurm_gpus: int = option(1, help="GPUs per run (one node; several run under DDP).", min=0)
    slurm_cpus: int = option(8, help="CPUs per GPU task.", min=1)
    slurm_mem_gb: int | None = option(None, help="Memory per node, GB.", min=1)
    slurm_extra: tuple[str, ...] = option((), help="More sbatch options, KEY=VALUE,... (e.g. account=abc).",
                                          parse=_pairs)
    # Python only: submitit's cluster for --launcher slurm ("local"/"debug" run the same jobs on this machine).
    cluster: str = option("slurm", cli=False)
    file: str | None = option(None, cli=False)  # the study file this config was read from

    def train_overrides(self) -> dict[str, Any]:
        """The ``train`` KEY=VALUE items as TrainConfig values (typed like the field's default)."""
        fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
        out: dict[str, Any] = {}
        for item in self.train:
            key, _, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if key not in fields or key in STUDY_OWNED:
                raise ConfigError(_unknown_train_key(key))
            out[key] = _typed(text.strip(), key)
            if non_finite(out[key]) is not None:
                raise ConfigError(f"[train] {key} must be a finite number, got {text.strip()}")
        return out


# TrainConfig fields the study sets itself for every run.
STUDY_OWNED = frozenset({"model", "data", "out", "seed", "init_from", "workers"})


def _unknown_train_key(key: str) -> str:
    allowed = sorted(f.name for f in dataclasses.fields(TrainConfig) if f.name not in STUDY_OWNED)
    return f"[train] has no key {key!r}: use one of {', '.join(allowed)}"


def _typed(text: str, key: str) -> Any:
    """``text`` as the TrainConfig field ``key`` expects (bool, int, float, str, None)."""
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# --------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Budget:
    """TrainConfig values of the starting run and of the fine-tunes, by dataset (generator, task)."""

    name: str
    start: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    # Per (generator or task): extra values, e.g. the paper's fine-tune epochs per dataset.
    by_dataset: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)

    def values(self, role: str, generator: str, task: str, arch: str) -> dict[str, Any]:
        key = "seg" if task == "seg" else generator
        start, finetune = self.by_dataset.get(key, ({}, {}))
        out = {**self.start, **start} if role == "start" else {**self.finetune, **finetune}
        if arch == "dinov2" and out.get("img_size"):  # patch 14: the nearest multiple
            out["img_size"] = 14 * max(1, round(out["img_size"] / 14))
        return out


BUDGETS = {
    # The paper: MNIST trains 50 epochs (lsbench train's default) and fine-tunes 40; segmentation
    # fine-tunes 60 epochs at 2e-5; ImageNet fine-tunes from the timm weights (Table A1, 20 epochs).
    "paper": Budget("paper", by_dataset={
        "mnist": ({}, {"epochs": 40}),
        "seg": ({"pretrained": "timm"}, {"epochs": 60, "lr": 2e-5}),
        "imagenet": ({"pretrained": "timm"}, {}),
    }),
    # A laptop: the setting where Aug → InvL/DEC first reproduced the paper's ordering on a CPU.
    "cpu": Budget(
        "cpu",
        start={"size": "micro", "img_size": 64, "epochs": 8, "lr": 1e-3, "batch_size": 32, "val_limit": 1000},
        finetune={"size": "micro", "img_size": 64, "epochs": 3, "lr": 3e-4, "batch_size": 32, "val_limit": 1000},
    ),
}


# --------------------------------------------------------------------------- study files


def _line_of(text: str, key: str, table: str | None = None) -> int | None:
    """The 1-based line where ``key`` is set (inside ``[table]`` if given), for error messages."""
    current = None
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([^\]]+?)\s*\]", stripped)
        if header:
            current = header.group(1)
            continue
        if current == table and re.match(rf"^[\"']?{re.escape(key)}[\"']?\s*=", stripped):
            return n
    return None


class StudyFile:
    """A parsed study file: its values and where each key is, for one-line errors ``FILE:LINE: ...``."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise ConfigError(f"study file {path} not found; pass a TOML file (see `lsbench study --help`)")
        try:
            self.text = path.read_text(encoding="utf-8")
            self.values = tomllib.loads(self.text)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read study file {path} ({e})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None

    def where(self, key: str, table: str | None = None) -> str:
        line = _line_of(self.text, key, table)
        return f"{self.path}:{line}" if line else str(self.path)


_FIELDS = {f.name: f for f in dataclasses.fields(StudyConfig) if f.metadata.get("cli", True)}


def _from_file(study: StudyFile) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in study.values.items():
        if key == "train":
            if not isinstance(value, dict):
                raise ConfigError(f"{study.where(key)}: train must be a table ([train] with KEY = VALUE lines)")
            items = []
            for k, v in value.items():
                if k not in {f.name for f in dataclasses.fields(TrainConfig)} or k in STUDY_OWNED:
                    raise ConfigError(f"{study.where(k, 'train')}: {_unknown_train_key(k)}")
                if non_finite(v) is not None:
                    raise ConfigError(f"{study.where(k, 'train')}: [train] {k} must be a finite number, got {v}")
                items.append(f"{k}={'none' if v is None else v}")
            values["train"] = tuple(items)
            continue
        name = key.replace("-", "_")
        if name not in _FIELDS or name in ("file", "cluster"):
            known = ", ".join(sorted(k for k in _FIELDS))
            raise ConfigError(f"{study.where(key)}: unknown key {key!r}; a study file takes {known} "
                              "and a [train] table")
        default = _FIELDS[name].default
        if isinstance(default, tuple):
            value = tuple(value) if isinstance(value, list) else _FIELDS[name].metadata["parse"](str(value))
        values[name] = value
    return values


def load_study(file: str | Path | None = None, **flags: Any) -> StudyConfig:
    """The study of ``file`` (TOML) with ``flags`` (non-``None`` values) over it, checked.

    Unknown keys, archs and methods are one :class:`ConfigError` line naming ``FILE:LINE``; nothing
    is read from the datasets here (see :func:`lsbench.study.plan.plan_study`).
    """
    study = StudyFile(Path(file)) if file is not None else None
    values = _from_file(study) if study else {}
    base = Path(file).parent if file is not None else Path(".")
    for key in ("data", "out"):  # relative to the study file, as it was written
        if key in values and values[key] is not None:
            if key == "data":
                values[key] = tuple(str(base / d) for d in values[key])
            else:
                values[key] = str(base / values[key])
    for key, value in flags.items():
        if value is not None and value != ():
            values[key] = value
    try:
        cfg = StudyConfig(**values)
    except TypeError as e:
        raise ConfigError(f"study: {e}") from None
    cfg.file = str(file) if file is not None else None
    if cfg.out is None:
        cfg.out = str(Path(file).with_suffix("")) if file is not None else "study"
    check(cfg, study)
    return cfg


def check(cfg: StudyConfig, study: StudyFile | None = None) -> None:
    """One line for the first problem of ``cfg`` (with the file's line where it came from)."""
    def where(key: str) -> str:
        return f"{study.where(key)}: " if study and key in study.values else ""

    try:
        check_ranges(cfg)
    except ConfigError as e:
        key = str(e).split()[0].lstrip("-").replace("-", "_")
        raise ConfigError(f"{where(key)}{e}") from None
    for key in ("data", "archs", "methods", "splits"):
        if not all(isinstance(v, str) for v in getattr(cfg, key)):
            raise ConfigError(f"{where(key)}{key} must be a list of strings")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in cfg.seeds):
        raise ConfigError(f"{where('seeds')}seeds must be a list of integers, got {list(cfg.seeds)}")
    if not cfg.data:
        raise ConfigError("a study needs at least one dataset: data = [...] in the file, or --data DIR")
    from ..dec_models.methods import list_methods  # torch: only when a study is checked, not for --help

    for key, known in (("archs", list_archs()), ("methods", list_methods())):
        items = getattr(cfg, key)
        if not items:
            raise ConfigError(f"{where(key)}{key} is empty")
        for item in items:
            if item not in known:
                raise ConfigError(f"{where(key)}unknown {key[:-1]} {item!r}: use {', '.join(known)}")
        if len(set(items)) != len(items):
            raise ConfigError(f"{where(key)}{key} lists one twice: {', '.join(items)}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"{where('seeds')}seeds must be distinct integers, got {list(cfg.seeds)}")
    if cfg.start != START_NONE and cfg.start not in list_methods():
        raise ConfigError(f"{where('start')}unknown start method {cfg.start!r}: use one of "
                          f"{', '.join(list_methods())} or {START_NONE}")
    names = [Path(d).name for d in cfg.data]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where('data')}two datasets share a folder name ({', '.join(names)}); rename one")
    cfg.train_overrides()  # checked here, before anything starts
