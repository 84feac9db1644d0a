"""The adaptation methods, registered by name: the ``method`` of a ``{arch}_{method}`` model.

A :class:`Method` holds all that one method is — the canonicalizer it puts into the adapted layers
(or none), the loss of one training batch, and the hyperparameters the paper trains it with — so a
new method is one :func:`register_method` call here, not an edit in the registry, the trainer and
the leaderboard.

- ``base``  — the task loss on the batch as it is.
- ``aug``   — random monotone scaling ``x ← warp(x, φ)``, ``φ ~ Ω(strength)`` (and the mask,
  nearest, for segmentation); Aug is also the starting point of the other methods in the paper.
- ``canon`` — a Canon canonicalizer (energy search over 64 candidate scalings, Sec. 5.1) in the
  adapted layers; the task loss.
- ``invl``  — Aug plus the invariance loss (Eq. 25) ``λ ‖p(x) − p(warp(x, ψ))‖²`` on softmax
  probabilities (classification).
- ``augl``  — Aug plus EquE (Eq. 23) as a loss: ``λ ‖warp(p(x), ψ) − p(warp(x, ψ))‖²`` per pixel on
  class-probability maps (segmentation); for classification, the mean squared difference of the
  backbone's last feature maps.
- ``dec``   — a DEC canonicalizer (Sec. 4.2) in the adapted layers; the task loss.

Losses use the segmentation convention of the paper: background (class 0) weight 0.1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import monotone as M
from ..util import Registry
from . import canonicalizer as C

if TYPE_CHECKING:
    from .registry import LSModel, ModelConfig

BACKGROUND_WEIGHT = 0.1


class Loss(Protocol):
    """The training loss of one batch; returns ``(loss, logs)`` (logs: floats for ``log.jsonl``)."""

    def __call__(self, model: LSModel, x: Tensor, y: Tensor, *, label_smoothing: float = 0.0,
                 generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]: ...


CanonicalizerFactory = Callable[["ModelConfig"], Callable[[int], nn.Module]]


@dataclass(frozen=True)
class Method:
    """One method: ``canonicalizer(cfg)`` gives the per-layer canonicalizer builder (``channels →
    module``; ``None``: the backbone stays plain), ``loss`` trains it, ``defaults`` are the
    :class:`~.registry.ModelConfig` fields it reads, at the values the paper trains it with."""

    name: str
    loss: Loss
    canonicalizer: CanonicalizerFactory | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)


_METHODS = Registry("method")


def register_method(method: Method) -> Method:
    """Add ``method`` under its name (each name once)."""
    return _METHODS.add(method.name, method)


def get_method(name: str) -> Method:
    return _METHODS.lookup(name)


def list_methods() -> list[str]:
    """Registered method names, in registration order."""
    return list(_METHODS)


def paper_defaults() -> dict[str, Any]:
    """Every registered method's defaults in one dict: what a model records for the fields its own
    method does not read (the methods that share a field train it with the same value)."""
    out: dict[str, Any] = {}
    for method in _METHODS.values():
        out.update(method.defaults)
    return out


# --------------------------------------------------------------------------- shared loss pieces


def task_loss(logits: Tensor, y: Tensor, task: str, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy; segmentation ``(B, K, H, W)`` vs ``(B, H, W)`` with background weight 0.1."""
    if task == "seg":
        weight = torch.ones(logits.shape[1], device=logits.device, dtype=logits.dtype)
        weight[0] = BACKGROUND_WEIGHT
        return F.cross_entropy(logits, y, weight=weight, label_smoothing=label_smoothing)
    return F.cross_entropy(logits, y, label_smoothing=label_smoothing)


def random_scaling(x: Tensor, strength: float, grid: int, generator: torch.Generator | None = None) -> Tensor:
    """``φ ~ Ω``, one per sample, ``(B, 2, grid + 1, grid + 1)`` on ``x``'s device."""
    return M.sample(x.shape[0], grid, strength, generator, dtype=torch.float32).to(x.device)


def warp_batch(x: Tensor, y: Tensor, phi: Tensor, task: str) -> tuple[Tensor, Tensor]:
    """Scale images (bilinear) and, for segmentation, masks (nearest) by the same ``phi``."""
    xs = M.warp(x, phi.to(x.dtype))
    if task == "seg":
        y = M.warp(y.unsqueeze(1).float(), phi.float(), mode="nearest")[:, 0].round().long()
    return xs, y


# --------------------------------------------------------------------------- the losses


def plain_loss(model: LSModel, x: Tensor, y: Tensor, *, label_smoothing: float = 0.0,
               generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
    """The task loss on the batch as it is (base, canon, dec), with the DEQ solver's stats."""
    loss = task_loss(model(x), y, model.config.task, label_smoothing)
    return loss, {"task_loss": loss.item(), **model.solver_stats()}


def aug_loss(model: LSModel, x: Tensor, y: Tensor, *, label_smoothing: float = 0.0,
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
    """The task loss on the batch scaled by ``φ ~ Ω(aug_strength)`` (images and masks alike)."""
    cfg = model.config
    phi = random_scaling(x, cfg.aug_strength, cfg.grid, generator)
    xs, ys = warp_batch(x, y, phi, cfg.task)
    loss = task_loss(model(xs), ys, cfg.task, label_smoothing)
    return loss, {"task_loss": loss.item()}


def _second_scaling(model: LSModel, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``(ψ, warp(x, ψ))`` for the extra losses, which compare the model on x with it on the scaled x."""
    psi = random_scaling(x, model.config.aug_strength, model.config.grid, generator)
    return psi, M.warp(x, psi.to(x.dtype))


def invl_loss(model: LSModel, x: Tensor, y: Tensor, *, label_smoothing: float = 0.0,
              generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
    """Aug plus ``λ ‖p(x) − p(warp(x, ψ))‖²`` on softmax probabilities (Eq. 25)."""
    loss, logs = aug_loss(model, x, y, label_smoothing=label_smoothing, generator=generator)
    _, x2 = _second_scaling(model, x, generator)
    p = torch.softmax(model(x), dim=1)
    p2 = torch.softmax(model(x2), dim=1)
    extra = (p - p2).pow(2).sum(dim=1).mean()
    logs["invariance_loss"] = extra.item()
    return loss + model.config.loss_weight * extra, logs


def augl_loss(model: LSModel, x: Tensor, y: Tensor, *, label_smoothing: float = 0.0,
              generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
    """Aug plus EquE (Eq. 23) as a loss, ``λ ‖warp(p(x), ψ) − p(warp(x, ψ))‖²``."""
    loss, logs = aug_loss(model, x, y, label_smoothing=label_smoothing, generator=generator)
    psi, x2 = _second_scaling(model, x, generator)
    if model.config.task == "seg":  # per-pixel squared L2 between class-probability maps
        a, b = torch.softmax(model(x), dim=1), torch.softmax(model(x2), dim=1)
        extra = (M.warp(a, psi.to(a.dtype)) - b).pow(2).sum(dim=1).mean()
    else:  # mean squared difference of the last feature maps (their scale is arbitrary)
        a, b = model.features(x)[-1], model.features(x2)[-1]
        extra = (M.warp(a, psi.to(a.dtype)) - b).pow(2).mean()
    logs["equivariance_loss"] = extra.item()
    return loss + model.config.loss_weight * extra, logs


# --------------------------------------------------------------------------- the canonicalizers


def canon_canonicalizer(cfg: ModelConfig) -> Callable[[int], nn.Module]:
    return lambda ch: C.Canon(ch, grid=cfg.grid, num_candidates=cfg.canon_candidates, width=cfg.canon_width,
                              resolution=cfg.canon_resolution)


def dec_canonicalizer(cfg: ModelConfig) -> Callable[[int], nn.Module]:
    return lambda ch: C.DEC(ch, grid=cfg.grid, backward=cfg.dec_backward, solver=cfg.dec_solver,
                            max_iter=cfg.dec_max_iter, tol=cfg.dec_tol,
                            channels=(cfg.dec_width, 2 * cfg.dec_width), resolution=cfg.dec_resolution)


# --------------------------------------------------------------------------- the registered methods

# DEC's canonicalizer CNN: the paper's is 2 layers of 64 and 128 channels; lsbench's default is
# DEC_WIDTH, 2 * DEC_WIDTH channels on the map area-downsampled to DEC_RESOLUTION px (see perf/dec_overhead.py
# for what each costs and gives).
DEC_WIDTH, DEC_RESOLUTION = 32, 8
# Canon: its energy sees the map projected to CANON_WIDTH channels (1x1 conv, before the 64 candidates
# are warped) at CANON_RESOLUTION px.
CANON_WIDTH, CANON_RESOLUTION = 16, 8
# What models recorded before a field existed (checkpoint.read fills them in): the canonicalizers of a
# checkpoint without these fields are the first designs (DEC 64/128 channels at up to 32 px; Canon on
# all channels at 32 px).
LEGACY = {"dec_width": 64, "dec_resolution": 32, "canon_width": 0, "canon_resolution": 32}
# Canon's 64 candidates are Sec. 5.1's; DEC's Anderson solver and implicit backward are Sec. 4.2's.
# The paper gives no strength of Ω, weight λ, DEQ tolerance or iteration cap: those values are ours.
register_method(Method("base", plain_loss))
AUG = register_method(Method("aug", aug_loss, defaults={"aug_strength": 0.25}))
register_method(Method("canon", plain_loss, canon_canonicalizer, defaults={
    "canon_candidates": 64, "canon_width": CANON_WIDTH, "canon_resolution": CANON_RESOLUTION,
}))
register_method(Method("invl", invl_loss, defaults={**AUG.defaults, "loss_weight": 1.0}))
register_method(Method("augl", augl_loss, defaults={**AUG.defaults, "loss_weight": 1.0}))
register_method(Method("dec", plain_loss, dec_canonicalizer, defaults={
    "dec_backward": "implicit", "dec_solver": "anderson", "dec_max_iter": 20, "dec_tol": 1e-3,
    "dec_width": DEC_WIDTH, "dec_resolution": DEC_RESOLUTION,
}))
