"""``lsbench train``: fit any ``{arch}_{method}`` model on a dataset folder.

Defaults follow the paper per dataset (:func:`paper_defaults`), every value can be overridden.
AdamW (optionally with timm's layer-wise decay), warmup + cosine schedule, AMP on CUDA, a
checkpoint every epoch (``last.pt``; ``best.pt`` on the best validation accuracy) holding the full
config and everything needed to ``--resume``, a JSONL log (``log.jsonl``) of losses, accuracy, learning
rate and DEQ iterations/residuals.  Under ``torchrun`` it trains with DDP: shards are split by rank
and the validation counts are summed over ranks.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.join import Join

from ..dataset import Dataset, open_dataset
from ..dec_models import checkpoint, transfer
from ..dec_models.archs import get_arch
from ..dec_models.methods import LEGACY
from ..dec_models.methods import paper_defaults as method_defaults
from ..dec_models.registry import LSModel, create_model, get_method, list_families, parse_name
from ..errors import ConfigError
from ..lock import lock_folder
from ..options import check_ranges
from ..util import atomic_open, os_error, sha256_file, undo_new_folders, writable_folder, write_json_atomic
from . import distributed
from .configs import TrainConfig
from .data import loader
from .preprocess import Preprocess, for_backbone, legacy

# Options a resumed run may change (everything else must match the checkpoint's run).  More
# epochs extend a run; with the cosine schedule that also stretches the remaining decay.
RESUMABLE_CHANGES = frozenset({"out", "epochs", "workers", "val_limit", "log_every", "pretrained"})


def paper_defaults(generator: str, arch: str, task: str) -> dict[str, Any]:
    """The paper's settings (A1): MNIST 50 epochs at lr 1e-4 (Swin 8e-4, DINOv2 2e-5), batch 64;
    ImageNet Table A1; segmentation 40 epochs."""
    if task == "seg":
        base = {"epochs": 40, "batch_size": 16, "lr": 1e-4, "weight_decay": 0.05, "warmup_epochs": 1,
                "scheduler": "cosine", "label_smoothing": 0.0, "mixup": 0.0, "random_erase": 0.0,
                "layer_decay": None, "img_size": 256}
    elif generator == "imagenet":
        base = {"epochs": 20, "batch_size": 80, "lr": 1e-7, "weight_decay": 0.05, "warmup_epochs": 5,
                "scheduler": "cosine", "label_smoothing": 0.1, "mixup": 0.8, "random_erase": 0.25,
                "layer_decay": 0.75, "img_size": 224}
    else:  # mnist and anything else: the MNIST protocol
        lr = {"swin": 8e-4, "dinov2": 2e-5}.get(arch, 1e-4)
        base = {"epochs": 50, "batch_size": 64, "lr": lr, "weight_decay": 0.0, "warmup_epochs": 0,
                "scheduler": "cosine", "label_smoothing": 0.0, "mixup": 0.0, "random_erase": 0.0,
                "layer_decay": None, "img_size": 224}
    if arch == "dinov2" and base["img_size"] % 14:
        base["img_size"] = 14 * round(base["img_size"] / 14)
    return base


def resolve(cfg: TrainConfig, info: Dataset, source: dict[str, Any] | None = None) -> TrainConfig:
    """Fill ``None`` fields from the ``--init-from`` checkpoint's model config ``source`` (size, input
    size), :func:`paper_defaults` and the method's registered defaults, and check what the user gave."""
    arch, method = parse_name(cfg.model)
    if arch in list_families():
        raise ConfigError(f"{cfg.model} is a plain pretrained classifier for `lsbench evaluate`; train an "
                          "{arch}_{method} model (see `lsbench models`), e.g. with --pretrained timm")
    if cfg.init_from is not None and str(cfg.pretrained or "none").lower() != "none":
        raise ConfigError("--init-from and --pretrained both give the starting weights; pass one of them")
    values = asdict(cfg)
    for key in ("size", "img_size"):
        if values[key] is None and source is not None:
            values[key] = source[key]
    values["size"] = values["size"] or "tiny"
    # The method's own defaults; fields it does not read record the value the other methods train with.
    own = get_method(method).defaults
    shared = {k: v for k, v in {**method_defaults(), **own}.items() if k in values}
    defaults = paper_defaults(info.generator, arch, info.task) | shared
    for key, value in defaults.items():
        if values.get(key) is None:
            values[key] = value
    out = TrainConfig(**values)
    check_ranges(out)
    if out.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {out.lr}")
    for split in (out.train_split, out.val_split):
        info.split(split)
    if out.mixup and info.task != "cls":
        raise ConfigError("--mixup is for classification datasets")
    checks = [
        (0 <= out.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
        (out.layer_decay is None or 0 < out.layer_decay <= 1, "--layer-decay must be in (0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return out


class _LossModule(nn.Module):
    """The whole method-specific loss as one forward, so DDP sees every parameter use."""

    def __init__(self, model: LSModel):
        super().__init__()
        self.model = model
        self.loss = get_method(model.config.method).loss

    def forward(self, x, y, label_smoothing: float, generator):
        return self.loss(self.model, x, y, label_smoothing=label_smoothing, generator=generator)


def _param_groups(model: LSModel, cfg: TrainConfig) -> list[dict[str, Any]]:
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    if not cfg.layer_decay or cfg.layer_decay >= 1:
        # No decay on biases, norms and the backbone's own list (position embeddings, class token).
        skip = {f"backbone.{n}" for n in getattr(model.backbone, "no_weight_decay", set)()}
        return param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=skip)

    groups = param_groups_layer_decay(model.backbone, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    for g in groups:  # timm's lr_scale per layer becomes a fixed factor on our schedule
        g["lr_scale"] = g.get("lr_scale", 1.0)
    if model.seg_head is not None:
        groups.append({"params": list(model.seg_head.parameters()), "weight_decay": cfg.weight_decay, "lr_scale": 1.0})
    return groups


def _schedule(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _seed_epoch(seed: int, rank: int, epoch: int, generator: torch.Generator) -> None:
    """Seed every RNG training draws from (torch CPU+CUDA, numpy for timm's Mixup, ``random`` for
    RandomErasing, the method's generator) from (seed, rank, epoch): a run resumed at an epoch
    boundary draws exactly what the uninterrupted run drew, on every rank, with no state to save."""
    s = (seed * 1_000_003 + rank * 10_007 + epoch) % 2**31
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s)
    generator.manual_seed(s + 1)


@torch.no_grad()
def accuracy(model: LSModel, dataset: Dataset, split: str, *, size: int, batch_size: int,
             device: torch.device, limit: int | None, workers: int,
             preprocess: Preprocess | None = None) -> dict[str, float]:
    """Top-1 accuracy (classification) or pixel accuracy (segmentation), exact across ranks."""
    model.eval()
    correct = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    for x, y, _ in loader(dataset, split, size=size, batch_size=batch_size, train=False, workers=workers,
                          preprocess=preprocess):
        if limit is not None and seen >= limit:
            break
        x, y = x.to(device), y.to(device)
        pred = model(x).argmax(dim=1)
        correct += (pred == y).sum()
        count += y.numel()
        seen += len(x)
    if dist.is_initialized():
        dist.all_reduce(correct)
        dist.all_reduce(count)
    model.train()
    return {"accuracy": (correct / count.clamp_min(1)).item(), "count": count.item()}


def _nothing_to_resume(out: Path) -> bool:
    """``--resume`` of a run with no ``last.pt``: True when a run was started there (killed before its
    first epoch ended; nothing was kept, so it starts over), an error when there is no run at all."""
    if (out / "last.pt").is_file():
        return False
    if not any((out / name).is_file() for name in ("config.json", "log.jsonl")):
        raise ConfigError(f"--resume: {out} holds no run to resume (last.pt not found); rerun without --resume")
    return True


def _log_until(path: Path, epoch: int | None) -> list[str]:
    """The lines of ``log.jsonl`` a run continuing after ``epoch`` keeps (``None``, a fresh start: none).

    A run killed mid-epoch had logged steps past its last checkpoint, which the resumed run logs again:
    those go, and so does a line cut short by the kill."""
    if epoch is None or not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] <= epoch:
            kept.append(line + "\n")
    return kept


def _no_half_made_run(fn):
    """``train`` leaves no run folder it created without a checkpoint in it: when it fails before its
    first ``last.pt`` (a full disk, a corrupt sample, Ctrl-C in the first epoch), the folders it made go
    again, with what it had written (config.json, log.jsonl; :func:`lsbench.util.undo_new_folders`).  A
    folder that was there before is kept.  A write error without a file name (the log) names the run."""

    @functools.wraps(fn)
    def wrapper(cfg: TrainConfig, *args: Any, **kwargs: Any) -> TrainResult:
        if int(os.environ.get("RANK", "0")) != 0:  # rank 0 makes the folder and cleans up
            return fn(cfg, *args, **kwargs)
        out = Path(cfg.out)
        with undo_new_folders(out, contents=lambda: not (out / "last.pt").exists()):
            writable_folder(out)  # a read-only disk or a path through a file is said before any work
            try:
                return fn(cfg, *args, **kwargs)
            except OSError as e:
                problem = os_error(e, out) if e.filename is None else e
                if problem is e:
                    raise
                raise problem from e

    return wrapper


@dataclass
class TrainResult:
    out: Path
    best: Path
    last: Path
    epochs: int
    metrics: dict[str, float]


@_no_half_made_run
def train(cfg: TrainConfig, *, resume: bool = False, progress: Callable[[int, int], None] | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) and return where the checkpoints are; see the module docstring."""
    restarted = resume and _nothing_to_resume(Path(cfg.out))
    resume = resume and not restarted
    info = open_dataset(Path(cfg.data)).require_complete()
    source = checkpoint.read(Path(cfg.init_from)) if cfg.init_from and not resume else None
    cfg = resolve(cfg, info, source["model_config"] if source else None)
    for split in {cfg.train_split, cfg.val_split}:
        info.verify(split)
    out = Path(cfg.out)
    rank, world, device = distributed.setup()
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)

    last_path, best_path = out / "last.pt", out / "best.pt"
    ckpt = None
    if resume:
        ckpt = checkpoint.read(last_path)
        stored = ckpt.get("train_config", {})
        # A run started before a model option existed resumes with the design it was started with
        # (checkpoint.read fills the option from LEGACY).
        cfg = replace(cfg, **{k: ckpt["model_config"][k] for k in LEGACY if k not in stored})
        changed = [k for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES and stored.get(k) != v]
        if ckpt.get("world_size", world) != world:
            changed.append(f"world size ({ckpt['world_size']} processes)")
        if changed:
            raise ConfigError(f"--resume: {last_path} was trained with other {', '.join(changed)}; "
                              "use the same options or a new --out")
    elif last_path.exists():
        raise ConfigError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose another --out")

    model = create_model(
        cfg.model, info.num_classes, task=info.task, size=cfg.size,
        pretrained=None if ckpt else cfg.pretrained, **cfg.model_options(),
    ).to(device)
    if ckpt:
        model.load_state_dict(ckpt["state_dict"])
        init = ckpt.get("init_from")
    elif source is not None:
        any_size = get_arch(parse_name(cfg.model)[0]).any_input_size
        report = transfer.init_from(model, source, cfg.init_from, any_input_size=any_size)
        init = {"path": cfg.init_from, "sha256": sha256_file(cfg.init_from), "model": source["model_config"]["name"]}
        if log and rank == 0:
            log(f"started from {cfg.init_from} ({init['model']}, sha256 {init['sha256'][:12]}): {report.summary()}")
    else:
        init = None
    # How images become inputs, recorded so evaluation feeds the model as it was trained: a resumed run
    # or a fine-tune keeps its checkpoint's (none recorded: the ImageNet statistics it was trained with).
    kept = ckpt if ckpt else source
    if kept is not None:
        pre = Preprocess.from_dict(kept["preprocess"]) if kept.get("preprocess") else legacy(cfg.img_size)
        pre = pre.with_size(cfg.img_size)
    else:
        pre = for_backbone(model.config.timm_name, cfg.img_size)
    loss_module: nn.Module = _LossModule(model)
    if world > 1:
        loss_module = nn.parallel.DistributedDataParallel(loss_module, find_unused_parameters=True)

    groups = _param_groups(model, cfg)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    n_train = info.splits[cfg.train_split]
    steps_per_epoch = max(1, math.ceil(n_train / (cfg.batch_size * world)))
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    factor = _schedule(cfg, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lambda s, g=g: factor(s) * g.get("lr_scale", 1.0) for g in groups]
    )
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = distributed.amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    mixup = None
    if cfg.mixup:
        from timm.data import Mixup

        mixup = Mixup(mixup_alpha=cfg.mixup, label_smoothing=cfg.label_smoothing, num_classes=info.num_classes)
    eraser = None
    if cfg.random_erase:
        from timm.data.random_erasing import RandomErasing

        eraser = RandomErasing(cfg.random_erase, mode="pixel", device=str(device))

    start_epoch, best_acc, metrics = 0, -1.0, {}
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch = ckpt["epoch"] + 1
        best_acc = ckpt.get("best_accuracy", -1.0)
        metrics = ckpt.get("metrics", {})
    # One run per folder: a second train into it stops here, with one line naming this one (released below).
    lock = lock_folder(out, what="run folder", hint="choose another --out") if rank == 0 else None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        config = {"train": asdict(cfg), "model": asdict(model.config), "init_from": init, "preprocess": pre.to_dict()}
        write_json_atomic(out / "config.json", config)
        if restarted and log:
            log(f"{out} has no checkpoint yet (killed before its first epoch ended): training it from the start")
        # Under the lock: the log keeps exactly what last.pt covers (nothing on a fresh start), so a run
        # killed and resumed logs each step once, as the uninterrupted run does.
        kept = _log_until(out / "log.jsonl", ckpt["epoch"] if ckpt else None)
        with atomic_open(out / "log.jsonl", "w") as f:
            f.writelines(kept)
    log_file = open(out / "log.jsonl", "a") if rank == 0 else None  # noqa: SIM115 - closed in finally

    total_steps = (cfg.epochs - start_epoch) * steps_per_epoch
    done = 0
    try:
        model.train()
        for epoch in range(start_epoch, cfg.epochs):
            _seed_epoch(cfg.seed, rank, epoch, generator)
            t0 = time.perf_counter()
            running, seen = 0.0, 0
            batches = loader(info, cfg.train_split, size=cfg.img_size, batch_size=cfg.batch_size, train=True,
                             workers=cfg.workers, seed=cfg.seed,
                             epoch=epoch, shuffle_buffer=cfg.shuffle_buffer, preprocess=pre)
            # Ranks may hold different numbers of samples (shards are split by rank): DDP's Join lets
            # a rank that runs out early shadow the others' all-reduces instead of hanging.
            with Join([loss_module]) if world > 1 else contextlib.nullcontext():
                for step, (x, y, _) in enumerate(batches):
                    if step >= steps_per_epoch:
                        break
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    if mixup is not None and len(x) % 2 == 0:
                        x, y = mixup(x, y)
                    if eraser is not None:
                        x = eraser(x)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        loss, logs = loss_module(x, y, cfg.label_smoothing if mixup is None else 0.0, generator)
                    if not torch.isfinite(loss):
                        raise ConfigError(f"loss became {loss.item()} at epoch {epoch} step {step}; lower --lr")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if cfg.grad_clip:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    running += loss.item() * len(x)
                    seen += len(x)
                    done += 1
                    if log_file and step % cfg.log_every == 0:
                        lr_now = scheduler.get_last_lr()[0]
                        record = {"epoch": epoch, "step": step, "loss": loss.item(), "lr": lr_now, **logs}
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
                    if progress:
                        progress(done, total_steps)
            val = accuracy(model, info, cfg.val_split, size=cfg.img_size, batch_size=cfg.batch_size, device=device,
                           limit=cfg.val_limit, workers=cfg.workers, preprocess=pre)
            metrics = {"epoch": epoch, "train_loss": running / max(1, seen), "val_accuracy": val["accuracy"],
                       "val_count": val["count"], "epoch_seconds": time.perf_counter() - t0, **model.solver_stats()}
            if rank == 0:
                log_file.write(json.dumps({"event": "epoch", **metrics}) + "\n")
                log_file.flush()
                os.fsync(log_file.fileno())  # on disk before the checkpoint that covers it (once an epoch)
                state = {"train_config": asdict(cfg), "epoch": epoch, "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                         "world_size": world, "metrics": metrics,
                         "best_accuracy": max(best_acc, val["accuracy"]), "dataset": info.name,
                         "init_from": init, "preprocess": pre.to_dict()}
                checkpoint.save(last_path, model, **state)
                if val["accuracy"] > best_acc:  # the weights and their provenance; resuming uses last.pt
                    keep = ("train_config", "epoch", "metrics", "best_accuracy", "dataset", "world_size", "init_from",
                            "preprocess")
                    checkpoint.save(best_path, model, **{k: state[k] for k in keep})
                if log:
                    log(f"epoch {epoch + 1}/{cfg.epochs}: loss {metrics['train_loss']:.4f}, "
                        f"{cfg.val_split} accuracy {val['accuracy']:.4f}")
            best_acc = max(best_acc, val["accuracy"])
    finally:
        if log_file:
            log_file.close()
        if lock is not None:
            lock.release()
    return TrainResult(out, best_path, last_path, cfg.epochs, metrics)
