"""``lsbench evaluate``: score one model on one dataset split into a versioned results JSON.

Streams the split's shards (``webdataset``, DataLoader workers, pinned memory), runs the model
(CUDA with AMP when present, else CPU), accumulates every metric of :mod:`.metrics` as sums and
counts — exact under ``torchrun``, where ranks evaluate disjoint shards and the sums are reduced —
and writes one JSON validated against ``result.schema.json``: model (name, config, checkpoint
sha256), dataset (name, split, manifest sha256), metrics with per-scale tables, efficiency
(images/s, ms per batch, peak memory, parameters, DEQ iterations/residual), environment.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..dataset import Dataset, open_dataset
from ..dec_models import checkpoint as ckpt_io
from ..dec_models.registry import count_parameters, create_model, get_arch, list_families, parse_name
from ..errors import ConfigError
from ..options import check_ranges
from ..util import sha256_file, undo_new_folders, writable_folder
from . import distributed
from .configs import EvaluateConfig
from .data import Skipped, loader
from .metrics import Metrics, all_reduce_state, equivariance_errors
from .predictions import SampleLog, gather, predictions_path, write_predictions
from .preprocess import Preprocess, legacy
from .results import SCHEMA_VERSION, result_filename, validate_result, write_result


@dataclass
class Built:
    """The model to evaluate with what feeds it and where its weights come from."""

    net: nn.Module
    config: dict[str, Any]
    preprocess: Preprocess
    weights: Path | None  # the file the weights were read from (checkpoint, or the timm cache)
    init_from: dict[str, Any] | None = None  # the checkpoint it was fine-tuned from


def timm_preprocess(net: nn.Module, timm_name: str, img_size: int | None) -> Preprocess:
    """A timm model's own eval preprocessing, as timm's ``validate.py`` resolves it (``resolve_data_config``
    with the test input size and crop where the model has them), at ``img_size`` if given."""
    from timm.data import resolve_data_config

    args = {"input_size": (3, img_size, img_size)} if img_size else {}
    config = resolve_data_config(args, model=net, use_test_size=True)
    return Preprocess.from_timm(config, f"timm data config of {timm_name} (test size, as timm's validate.py)")


def build_model(name: str, info: Dataset, checkpoint: Path | None, img_size: int | None,
                log: Callable[[str], None] | None = None) -> Built:
    """The model to evaluate: an lsbench checkpoint, a ``timm:`` model with its weights file, or (no
    ``--checkpoint``) a ``timm:NAME[.TAG]`` with its published weights from the local cache."""
    family, tail = parse_name(name)
    if family in list_families():  # a plain model: --checkpoint is its own state dict, not an lsbench checkpoint
        net = create_model(name, info.num_classes, task=info.task, pretrained=checkpoint or "timm",
                           img_size=img_size)
        pre = timm_preprocess(net.net, tail, img_size)
        net.config["img_size"] = pre.size  # the test size where the model has one
        return Built(net, net.config, pre, Path(net.config["weights"]))
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
    if img_size is not None and img_size != stored["img_size"] and not get_arch(model.config.arch).any_input_size:
        raise ConfigError(
            f"{name} was built for {stored['img_size']}-px inputs (position embeddings, windows); "
            "leave --img-size out or pass that size"
        )
    size = img_size or stored["img_size"]
    if ckpt.get("preprocess"):  # as it was trained
        pre = Preprocess.from_dict(ckpt["preprocess"]).with_size(size)
    else:
        pre = legacy(size)
        if log:
            log(f"{checkpoint} records no preprocessing (written before lsbench recorded it): "
                "fed as it was trained then, squashed to the input size with ImageNet mean/std")
    return Built(model, stored, pre, Path(checkpoint), ckpt.get("init_from"))


def _scale_bins(info: Dataset) -> str:
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


def _local_quota(shards: list[dict[str, Any]], skip: set[str], rank: int, world: int, limit: int | None) -> int:
    """Samples rank ``rank`` of ``world`` evaluates: all of its shards (every ``world``-th kept shard, as
    ``split_by_node`` deals them), or with ``limit`` its part of the split's first ``limit`` samples.

    (An even share, ``ceil(total / world)``, cut ranks holding more samples than others short: with
    one shard on two ranks, half the split went unevaluated — found by ``perf/gpu_check.py``'s ``ddp``.)
    """
    kept = [s["num_samples"] for s in shards if Path(s["name"]).name not in skip]
    start, quota = 0, 0
    for i, n in enumerate(kept):
        if i % world == rank:
            quota += n if limit is None else max(0, min(n, limit - start))
        start += n
    return quota


def _output_checked(fn):
    """``evaluate`` checks that ``config.out`` can be written before it evaluates (a read-only disk is said
    at once, not after the run), and removes the folders it created for it if it then fails."""

    @functools.wraps(fn)
    def wrapper(config: EvaluateConfig, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], Path | None]:
        if config.out is None or int(os.environ.get("RANK", "0")) != 0:  # rank 0 writes
            return fn(config, *args, **kwargs)
        with undo_new_folders(Path(config.out)):
            writable_folder(Path(config.out))
            return fn(config, *args, **kwargs)

    return wrapper


@_output_checked
def evaluate(
    config: EvaluateConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], Path | None]:
    """Evaluate and (on rank 0, if ``config.out`` is set) write the result JSON; returns (result, path).

    ``warn`` (default: ``log``) hears what ``skip_corrupt`` leaves out — each corrupt shard and each corrupt
    sample, as it is met — so a quiet command (no ``log``) still says it; the result lists them too
    (``dataset.skipped``)."""
    warn = warn or log
    check_ranges(config)
    model, data, checkpoint, split, out = config.model, config.data, config.checkpoint, config.split, config.out
    batch_size, limit, workers, img_size = config.batch_size, config.limit, config.workers, config.img_size
    eque_draws, eque_strength, seed = config.eque_draws, config.eque_strength, config.seed
    start = time.perf_counter()
    name = model
    parse_name(name)  # checked once, with the closest names as a hint, before any data is read
    data = Path(data)
    info = open_dataset(data).require_complete()
    info.split(split)  # an unknown split is refused before any work
    rank, world, device = distributed.setup()
    if workers is None:
        # On a CPU-only machine decoding workers compete with the model for the same cores
        # (measured: 0.89× of a raw forward loop with 2 workers on 2 cores, 0.94× with none).
        workers = min(8, (os.cpu_count() or 2) // 2) if device.type == "cuda" else 0
    corrupt = info.verify(split, skip_corrupt=config.skip_corrupt, log=warn if rank == 0 else None)
    skipped_samples: list[str] = []

    def skipped(s: Skipped) -> None:  # every rank meets its own shards' samples
        skipped_samples.append(f"{Path(s.shard).name}:{s.key}")
        if warn:
            warn(f"skipping {s.problem}")

    built = build_model(name, info, checkpoint, img_size, log=log if rank == 0 else None)
    net, model_config, pre, init_from = built.net.to(device).eval(), built.config, built.preprocess, built.init_from
    size = pre.size
    gmacs = _gmacs(net, size, device)
    samples = SampleLog(info.task, config.save_predictions, device)
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = distributed.amp_dtype(device)
    # streams ≥ workers: DataLoader workers interleave their batches, so a group may resume later.
    metrics = Metrics(info.task, info.num_classes, _scale_bins(info), streams=max(8, workers), device=device)
    generator = torch.Generator().manual_seed(seed + rank)
    total_local = _local_quota(info.split(split)["shards"], set(corrupt), rank, world, limit)
    seen, batches, forward_s = 0, 0, 0.0
    deq_its: list[float] = []
    deq_res: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loop_start = time.perf_counter()
    batches_iter = loader(info, split, size=size, batch_size=batch_size, train=False, workers=workers,
                          skip=set(corrupt), preprocess=pre, skip_corrupt=config.skip_corrupt, on_skip=skipped)
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
            samples.update(probs, y, metas)
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
    computed = {**metrics.compute_from(state), **samples.compute(all_reduce_state({"s": samples.sums})["s"])}
    records = gather(samples.records) if config.save_predictions else []
    left_out = sorted(corrupt) + sorted(gather(skipped_samples))  # shards, then SHARD:KEY samples
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
            "config": model_config,
            # the weights file: the --checkpoint, or a timm model's published weights in the local cache
            "checkpoint": str(built.weights) if built.weights else None,
            "checkpoint_sha256": sha256_file(built.weights) if built.weights else None,
            "parameters": parameters,
            "init_from": init_from,
        },
        "dataset": {
            "name": info.name, "generator": info.generator, "directory": str(data.resolve()), "split": split,
            "manifest_sha256": info.sha256, "num_samples": int(images), "task": info.task,
            "num_classes": info.num_classes, **({"skipped": left_out} if left_out else {}),
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
            "gmacs": gmacs,
        },
        "preprocess": pre.to_dict(),
        "evaluation": evaluation_options(config),
        "environment": {
            "device": str(device), "hardware": _hardware(device), "world_size": world, "versions": _versions(),
            "command": shlex.join(sys.argv), "wall_time_s": time.perf_counter() - start,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    if config.study is not None:
        result["study"] = config.study
    if config.save_predictions:
        result["predictions"] = {"file": None, "records": len(records)}
    validate_result(result)
    path = None
    if out is not None and rank == 0:
        new_file = None
        if config.save_predictions:  # the records first: a result never names a file that is not there
            file = predictions_path(Path(out) / result_filename(result))
            Path(out).mkdir(parents=True, exist_ok=True)
            new_file = None if file.exists() else file
            write_predictions(file, records)
            result["predictions"]["file"] = file.name
        try:
            path = write_result(result, out)
        except BaseException:  # no predictions file of this run left without its result
            if new_file is not None:
                new_file.unlink(missing_ok=True)
            raise
    return result, path


def evaluation_options(config: EvaluateConfig) -> dict[str, Any]:
    """The options that change a result's numbers (not batch size or workers), recorded in it; a zoo sweep
    skips a model only when its stored result was made with the same (:mod:`.zoo`)."""
    return {"split": config.split, "limit": config.limit, "img_size": config.img_size,
            "eque_draws": config.eque_draws, "eque_strength": config.eque_strength, "amp": config.amp,
            "seed": config.seed, "skip_corrupt": config.skip_corrupt}


def _gmacs(net: nn.Module, size: int, device: torch.device) -> float | None:
    """Multiply-accumulates of one forward of one image, in 10⁹ (``torch.utils.flop_counter``: FLOPs / 2;
    a DEC model's count includes the solver steps this input took)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size, device=device)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            net(x)
    except Exception:  # noqa: BLE001 - an operator the counter cannot trace: no count rather than no result
        return None
    return counter.get_total_flops() / 2e9
