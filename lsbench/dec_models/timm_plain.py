"""The ``timm:NAME`` family: any plain timm classifier, scored with its own weights.

These models are not adapted and not trained here; they let ``lsbench evaluate`` compare a
published or externally trained network with the ``{arch}_{method}`` models.  Their weights must
fit every tensor (a randomly initialised head would make the score meaningless), unlike a
backbone's pretrained weights, where an ``{arch}_{method}`` model keeps its own head.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .weights import cached_weights, pretrained_cfg, read_state_dict

PREFIX = "timm"
USAGE = "timm:NAME"
SUMMARY = "a plain timm classifier, scored by `lsbench evaluate` with its weights as --checkpoint"


class TimmModel(nn.Module):
    """A plain timm classifier under the interface of :class:`~.registry.LSModel` (``config``, stats)."""

    def __init__(self, net: nn.Module, config: dict[str, Any]):
        super().__init__()
        self.net = net
        self.config = config  # plain dict, like a checkpoint's model_config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def solver_stats(self) -> dict[str, float]:
        return {}


def check_name(timm_name: str) -> None:
    """Refuse a name timm does not know, suggesting the closest ones."""
    import timm

    if not timm.is_model(timm_name):
        close = difflib.get_close_matches(timm_name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(f'{PREFIX}:{c}' for c in close)}?)" if close else ""
        raise ConfigError(f"timm has no model {timm_name!r}{hint}")


def create(timm_name: str, num_classes: int, task: str = "cls", pretrained: str | Path | None = None,
           img_size: int | None = None) -> TimmModel:
    """``timm:timm_name`` for ``num_classes`` classes; ``pretrained`` is a file with all its weights,
    ``"timm"`` for the published weights of ``timm_name[.tag]`` from the local cache (through timm's own
    pretrained loading; never downloaded), or ``None``/``"none"`` (random init); ``img_size`` defaults
    to the model's own input size."""
    import timm

    name = f"{PREFIX}:{timm_name}"
    if task != "cls":
        raise ConfigError("plain timm models are classifiers; segmentation needs an lsbench model")
    weights = None
    if str(pretrained).lower() == "timm":
        net, weights = _published(timm_name, num_classes)
    else:
        net = timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    if weights is None and pretrained is not None and str(pretrained).lower() != "none":
        state = read_state_dict(Path(pretrained))
        own = net.state_dict()
        mismatched = [k for k, v in own.items() if k not in state or state[k].shape != v.shape]
        if mismatched:  # evaluation must not run with a randomly initialised part (e.g. the head)
            raise ConfigError(
                f"{pretrained} does not fit {name} with {num_classes} classes "
                f"({len(mismatched)} tensors missing or of another shape, e.g. {mismatched[0]})"
            )
        net.load_state_dict({k: state[k] for k in own})
        weights = Path(pretrained)
    size = img_size or net.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    config = {"name": name, "timm_name": timm_name, "num_classes": num_classes, "img_size": size,
              "pretrained_tag": net.pretrained_cfg.get("tag") if str(pretrained).lower() == "timm" else None,
              "weights": str(weights) if weights else None}
    return TimmModel(net, config)


def _published(timm_name: str, num_classes: int) -> tuple[nn.Module, Path]:
    """The published weights of ``timm_name`` from the local Hugging Face cache, through timm's own loader
    (its checkpoint filters apply); the class count must be the dataset's."""
    import timm

    published = pretrained_cfg(timm_name).num_classes
    if published != num_classes:
        raise ConfigError(
            f"{PREFIX}:{timm_name}'s published weights classify {published} classes, the dataset has {num_classes}; "
            "evaluate it on a dataset with its classes (ImageNet-LS: 1000, timm's ImageNet-1k order)"
        )
    path = cached_weights(timm_name, otherwise="or pass --checkpoint FILE with its weights")
    try:
        net = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    except Exception as e:  # noqa: BLE001 - a corrupt or mismatched file in the cache
        first = (str(e).splitlines() or [""])[0]
        raise ConfigError(f"cannot load the cached weights {path} ({type(e).__name__}: {first})") from e
    return net, path
