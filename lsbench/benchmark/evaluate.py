"""``lsbench evaluate``: score one model on one dataset split into a versioned results JSON.

Streams the split's shards (``webdataset``, DataLoader workers, pinned memory), runs the model
(CUDA with AMP when present, else CPU), accumulates every metric of :mod:`.metrics` as sums and
counts — exact under ``torchrun``, where ranks evaluate disjoint shards and the sums are reduced —
and writes one JSON validated against ``result.schema.json``: model (name, config, checkpoint
sha256), dataset (name, split, manifest sha256), metrics with per-scale tables, efficiency
(images/s, ms per batch, peak memory, parameters, DEQ iterations/residual), environment.
"""

from __future__ import annotations

import difflib
import json
import os
import platform
import re
import resource
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..dec_models import checkpoint as ckpt_io
from ..dec_models.registry import count_parameters, model_names
from ..errors import ConfigError
from ..shards import manifest_sha256, sha256_file
from . import distributed
from .data import DatasetInfo, loader, verify_shards
from .leaderboard import result_validator
from .metrics import Metrics, all_reduce_state, equivariance_errors

SCHEMA_VERSION = 1


def resolve_model_name(name: str) -> str:
    """``{arch}_{method}`` or ``timm:NAME``; unknown names suggest the closest ones."""
    if name.startswith("timm:"):
        import timm

        timm_name = name[5:]
        if not timm.is_model(timm_name):
            close = difflib.get_close_matches(timm_name, timm.list_models(), n=3)
            hint = f" (did you mean {', '.join('timm:' + c for c in close)}?)" if close else ""
            raise ConfigError(f"timm has no model {timm_name!r}{hint}")
        return name
    if name not in model_names():
        close = difflib.get_close_matches(name, model_names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `lsbench models` lists them"
        raise ConfigError(f"unknown model {name!r}{hint}")
    return name


class _TimmModel(nn.Module):
    """A plain timm classifier under the same interface as :class:`LSModel` (``config``, stats)."""

    def __init__(self, net: nn.Module, config: dict[str, Any]):
        super().__init__()
        self.net = net
        self.config = config  # plain dict, like a checkpoint's model_config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def solver_stats(self) -> dict[str, float]:
        return {}


def build_model(name: str, info: DatasetInfo, checkpoint: Path | None,
                img_size: int | None) -> tuple[nn.Module, dict[str, Any], int]:
    """The model to evaluate, its config dict and its input size."""
    if name.startswith("timm:"):
        import timm

        from ..dec_models.registry import read_state_dict

        if info.task != "cls":
            raise ConfigError("plain timm models are classifiers; segmentation needs an lsbench model")
        net = timm.create_model(name[5:], pretrained=False, num_classes=info.num_classes)
        source = checkpoint
        if source is None:
            raise ConfigError(
                f"{name}: pass --checkpoint FILE with its weights (evaluating random weights is meaningless)"
            )
        state = read_state_dict(Path(source))
        own = net.state_dict()
        mismatched = [k for k, v in own.items() if k not in state or state[k].shape != v.shape]
        if mismatched:  # evaluation must not run with a randomly initialised part (e.g. the head)
            raise ConfigError(
                f"{source} does not fit timm:{name[5:]} with {info.num_classes} classes "
                f"({len(mismatched)} tensors missing or of another shape, e.g. {mismatched[0]})"
            )
        net.load_state_dict({k: state[k] for k in own})
        size = img_size or net.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
        config = {"name": name, "timm_name": name[5:], "num_classes": info.num_classes, "img_size": size}
        return _TimmModel(net, config), config, size
    if checkpoint is None:
        raise ConfigError(f"{name}: pass --checkpoint runs/NAME/best.pt (written by `lsbench train`)")
    model, ckpt = ckpt_io.load_model(checkpoint)
    stored = ckpt["model_config"]
    if stored["name"] != name:
        raise ConfigError(f"{checkpoint} holds a {stored['name']} model, not {name}; pass the matching --model")
    if stored["num_classes"] != info.num_classes or stored["task"] != info.task:
        raise ConfigError(
            f"{checkpoint} was trained for {stored['num_classes']} classes ({stored['task']}), the dataset has "
            f"{info.num_classes} ({info.task}); evaluate it on the dataset it was trained for"
        )
    if img_size is not None and img_size != stored["img_size"] and stored.get("arch", name.split("_")[0]) != "resnet":
        raise ConfigError(
            f"{name} was built for {stored['img_size']}-px inputs (position embeddings, windows); "
            "leave --img-size out or pass that size"
        )
    size = img_size or stored["img_size"]
    return model, stored, size


def _scale_bins(info: DatasetInfo) -> str:
    return "imagenet" if info.generator == "imagenet" else "auto"


def _versions() -> dict[str, str]:
    import timm

    return {"lsbench": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


def _hardware(device: torch.device) -> dict[str, Any]:
    hw: dict[str, Any] = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                          "cpu_count": torch.get_num_threads()}
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
    return hw


def validate_result(result: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` if ``result`` does not follow the shipped JSON Schema (the same
    cached validator the leaderboard reads results with)."""
    import jsonschema

    error = jsonschema.exceptions.best_match(result_validator().iter_errors(result))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ConfigError(f"result does not follow the schema at {where}: {error.message}")


def result_filename(result: dict[str, Any]) -> str:
    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"

    sha = (result["model"]["checkpoint_sha256"] or "none")[:8]
    parts = (result["model"]["name"], result["dataset"]["name"], result["dataset"]["split"], sha)
    return "__".join(safe(p) for p in parts) + ".json"


def evaluate(
    model: str,
    data: Path,
    *,
    checkpoint: Path | None = None,
    split: str = "test",
    out: Path | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    workers: int | None = None,
    img_size: int | None = None,
    eque_draws: int = 4,
    eque_strength: float = 0.25,
    skip_corrupt: bool = False,
    amp: bool = True,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], Path | None]:
    """Evaluate and (on rank 0, if ``out`` is given) write the result JSON; returns (result, path)."""
    start = time.perf_counter()
    name = resolve_model_name(model)
    data = Path(data)
    info = DatasetInfo.read(data)
    if split not in info.splits:
        raise ConfigError(f"{data} has no split {split!r} (it has {', '.join(sorted(info.splits))})")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    rank, world, device = distributed.setup()
    if workers is None:
        # On a CPU-only machine decoding workers compete with the model for the same cores
        # (measured: 0.89× of a raw forward loop with 2 workers on 2 cores, 0.94× with none).
        workers = min(8, (os.cpu_count() or 2) // 2) if device.type == "cuda" else 0
    corrupt = verify_shards(data, split, skip_corrupt=skip_corrupt, log=log if rank == 0 else None)
    net, config, size = build_model(name, info, checkpoint, img_size)
    net = net.to(device).eval()
    use_amp = amp and device.type == "cuda"
    amp_dtype = distributed.amp_dtype(device)
    # streams ≥ workers: DataLoader workers interleave their batches, so a group may resume later.
    metrics = Metrics(info.task, info.num_classes, _scale_bins(info), streams=max(8, workers), device=device)
    generator = torch.Generator().manual_seed(seed + rank)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if workers < 0:
        raise ConfigError(f"--workers must be at least 0, got {workers}")
    total = info.splits[split] if limit is None else min(limit, info.splits[split])
    total_local = -(-total // world)
    seen, batches, forward_s = 0, 0, 0.0
    deq_its: list[float] = []
    deq_res: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loop_start = time.perf_counter()
    batches_iter = loader(data, split, size=size, task=info.task, batch_size=batch_size, train=False,
                          workers=workers, skip=set(corrupt))
    with torch.inference_mode():
        for x, y, metas in batches_iter:
            if seen >= total_local:
                break
            if seen + len(x) > total_local:  # --limit: evaluate exactly that many samples
                keep = total_local - seen
                x, y, metas = x[:keep], y[:keep], metas[:keep]
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = net(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            forward_s += time.perf_counter() - t0
            stats = net.solver_stats()  # of this forward, before the EquE forwards below
            probs = torch.softmax(logits.float(), dim=1)
            metrics.update(probs, y, metas)
            if info.task == "seg" and eque_draws > 0:
                def model_fn(t: torch.Tensor) -> torch.Tensor:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        return torch.softmax(net(t).float(), dim=1)

                sq, code = equivariance_errors(model_fn, x, draws=eque_draws, strength=eque_strength,
                                               generator=generator)
                metrics.add_equivariance(sq, code, draws=eque_draws)
            if stats:
                deq_its.append(stats["deq_iterations"])
                deq_res.append(stats["deq_residual"])
            seen += len(x)
            batches += 1
            if progress:
                progress(min(seen, total_local), total_local)
    loop_s = time.perf_counter() - loop_start
    state = all_reduce_state(metrics.state())
    counts = all_reduce_state({"counts": torch.tensor([float(seen), loop_s, forward_s, float(batches)],
                                                      dtype=torch.float64, device=device)})["counts"]
    computed = metrics.compute_from(state)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    images = counts[0].item()
    parameters = count_parameters(net)
    result = {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "name": name,
            "config": config,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
            "parameters": parameters,
        },
        "dataset": {
            "name": info.name, "generator": info.generator, "directory": str(data.resolve()), "split": split,
            "manifest_sha256": manifest_sha256(data), "num_samples": int(images), "task": info.task,
            "num_classes": info.num_classes,
        },
        "metrics": computed,
        "efficiency": {
            # Harness throughput: decode + transfer + forward + metrics, summed over ranks.
            "images_per_s": images / max(loop_s, 1e-9) if world == 1 else images / max(counts[1].item() / world, 1e-9),
            "ms_per_batch": 1e3 * counts[2].item() / max(counts[3].item(), 1),
            "batch_size": batch_size,
            "peak_memory_mb": peak_mb,
            "parameters": parameters,
            "deq_iterations": sum(deq_its) / len(deq_its) if deq_its else None,
            "deq_residual": sum(deq_res) / len(deq_res) if deq_res else None,
        },
        "environment": {
            "device": str(device), "hardware": _hardware(device), "world_size": world, "versions": _versions(),
            "command": shlex.join(sys.argv), "wall_time_s": time.perf_counter() - start,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    validate_result(result)
    path = None
    if out is not None and rank == 0:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / result_filename(result)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
    return result, path
