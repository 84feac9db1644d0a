"""Checkpoints that carry their config and load with ``torch.load(..., weights_only=True)``.

A checkpoint is a dict of plain types and tensors: ``format``, ``lsbench_version``,
``model_config`` (a :class:`~.registry.ModelConfig` dict — enough to rebuild the model),
``state_dict`` and, for training checkpoints, ``train_config``, ``epoch``, ``optimizer``,
``scheduler``, ``scaler``, ``rng`` and ``metrics``.  DEC models record the DEQ backward used
(``implicit`` or ``phantom``) in their ``model_config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import ConfigError
from ..util import atomic_open
from .methods import LEGACY
from .registry import LSModel, config_dict, model_from_config
from .weights import torch_load

FORMAT = "lsbench-checkpoint"


def save(path: Path, model: LSModel, **extra: Any) -> Path:
    """Write atomically (:func:`lsbench.util.atomic_open`: temporary file, fsync, rename; a full disk is
    one :class:`~lsbench.errors.DiskFullError` line and leaves an earlier checkpoint intact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "lsbench_version": __version__,
        "model_config": config_dict(model),
        "state_dict": model.state_dict(),
        **extra,
    }
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return path


def read(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``), with one clear error line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} not found; pass the .pt file written by `lsbench train`")
    ckpt = torch_load(path, "checkpoint")  # one line: corrupt, truncated, not a torch file, or code refused
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConfigError(f"{path} is not an lsbench checkpoint (written by `lsbench train`)")
    if isinstance(ckpt.get("model_config"), dict):  # written before a field existed: the design it was made with
        ckpt["model_config"] = {**LEGACY, **ckpt["model_config"]}
    return ckpt


def load_model(path: Path) -> tuple[LSModel, dict[str, Any]]:
    """Rebuild the model from a checkpoint's config and load its weights; returns (model, checkpoint)."""
    ckpt = read(path)
    try:
        model = model_from_config(ckpt["model_config"])
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: its weights do not fit its own model config ({type(e).__name__}); "
                          "the file is damaged or from an incompatible lsbench version") from e
    return model, ckpt
