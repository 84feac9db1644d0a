"""Many models on one dataset split in one go: ``lsbench evaluate -m A -m B`` or ``--models FILE``.

One result per model, each through :func:`~.evaluate.evaluate` unchanged.  A model whose result for
this dataset (manifest sha256), split and weights (sha256 of the checkpoint or of the published
weights in the local cache) is already in the output folder is skipped, so a zoo sweep that was
interrupted, or extended by a few names, only runs what is missing.  One model failing (absent
weights, wrong class count, out of memory) is reported and the rest go on; the caller gets every
outcome and decides the exit code.  Under ``torchrun`` a failure stops the sweep (the other ranks would
wait for the failed one in a collective).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..dataset import open_dataset
from ..errors import ConfigError, LsbenchError
from ..util import sha256_file
from .configs import EvaluateConfig
from .results import read_result


def read_model_list(path: Path) -> list[str]:
    """One model name per line; blank lines and ``#`` comments are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--models {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    names = [line.split("#", 1)[0].strip() for line in lines]
    names = [n for n in names if n]
    if not names:
        raise ConfigError(f"--models {path} names no model (one name per line, # for comments)")
    return names


def _weights_sha256(config: EvaluateConfig) -> str | None:
    """The sha256 of the weights ``config`` would evaluate, or None when it cannot be known up front."""
    if config.checkpoint is not None:
        return sha256_file(config.checkpoint) if Path(config.checkpoint).is_file() else None
    if config.model.startswith("timm:"):
        from ..dec_models.weights import cached_weights

        try:
            return sha256_file(cached_weights(config.model.split(":", 1)[1]))
        except LsbenchError:
            return None
    return None


def existing_result(config: EvaluateConfig, manifest_sha256: str) -> Path | None:
    """A result in ``config.out`` of this model, dataset, weights and evaluation options (and, with
    ``save_predictions``, its predictions file), if there is one."""
    from .evaluate import evaluation_options
    from .predictions import predictions_path

    out = Path(config.out) if config.out is not None else None
    paths = sorted(out.rglob("*.json")) if out is not None and out.is_dir() else []
    sha = _weights_sha256(config) if paths else None
    if sha is None:
        return None
    options = evaluation_options(config)
    for path in paths:
        try:
            data = read_result(path)
        except LsbenchError:  # another file in the folder; not this model's result
            continue
        d, m = data["dataset"], data["model"]
        if not (m["name"] == config.model and m["checkpoint_sha256"] == sha and d["manifest_sha256"] == manifest_sha256
                and data.get("evaluation") == options):
            continue
        if config.save_predictions and not (data.get("predictions") and predictions_path(path).is_file()):
            continue
        return path
    return None


@dataclass
class Outcome:
    model: str
    status: str  # "done", "skipped" or "failed"
    path: Path | None = None
    error: str | None = None
    result: dict[str, Any] | None = field(default=None, repr=False)


def evaluate_many(config: EvaluateConfig, models: list[str], *, log: Callable[[str], None] | None = None,
                  run: Callable[[EvaluateConfig], tuple[dict[str, Any], Path | None]] | None = None) -> list[Outcome]:
    """Evaluate each of ``models`` with ``config``'s other options; see the module docstring.

    ``run`` evaluates one config (default :func:`~.evaluate.evaluate`; the CLI passes one with its
    progress bar)."""
    if run is None:
        from .evaluate import evaluate as run
    manifest_sha = open_dataset(Path(config.data)).require_complete().sha256
    outcomes = []
    for i, name in enumerate(dict.fromkeys(models)):  # each name once, in order
        cfg = replace(config, model=name)
        prefix = f"[{i + 1}/{len(set(models))}] {name}"
        found = existing_result(cfg, manifest_sha)
        if found is not None:
            outcomes.append(Outcome(name, "skipped", found))
            if log:
                log(f"{prefix}: skipped, its result for these weights and this dataset is {found}")
            continue
        try:
            result, path = run(cfg)
        except (LsbenchError, torch.OutOfMemoryError) as e:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise  # under torchrun the other ranks wait in a collective: stop them all instead of hanging
            outcomes.append(Outcome(name, "failed", error=str(e)))
            if log:
                log(f"{prefix}: failed: {e}")
            continue
        outcomes.append(Outcome(name, "done", path, result=result))
    return outcomes
