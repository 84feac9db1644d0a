"""What each method does in training: the loss of one batch, ``method_loss(model, x, y, ...)``.

- ``base``  — the task loss on the batch as it is.
- ``aug``   — random monotone scaling ``x ← warp(x, φ)``, ``φ ~ Ω(strength)`` (and the mask,
  nearest, for segmentation); Aug is also the starting point of the other methods in the paper.
- ``invl``  — Aug plus the invariance loss (Eq. 25) ``λ ‖p(x) − p(warp(x, φ))‖²`` on softmax
  probabilities (classification).
- ``augl``  — Aug plus EquE (Eq. 23) as a loss: ``λ ‖warp(p(x), φ) − p(warp(x, φ))‖²`` per pixel on
  class-probability maps (segmentation); for classification, the mean squared difference of the
  backbone's last feature maps.
- ``canon``, ``dec`` — the task loss; the canonicalizers inside the model do the work.

Losses use the segmentation convention of the paper: background (class 0) weight 0.1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import monotone as M
from .registry import LSModel

BACKGROUND_WEIGHT = 0.1


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


def method_loss(
    model: LSModel,
    x: Tensor,
    y: Tensor,
    *,
    label_smoothing: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Training loss of one batch for ``model.config.method``; returns ``(loss, logs)``."""
    cfg = model.config
    method, task = cfg.method, cfg.task
    logs: dict[str, float] = {}
    if method in ("base", "canon", "dec"):
        logits = model(x)
        loss = task_loss(logits, y, task, label_smoothing)
        logs["task_loss"] = loss.item()
        logs.update(model.solver_stats())
        return loss, logs

    phi = random_scaling(x, cfg.aug_strength, cfg.grid, generator)
    xs, ys = warp_batch(x, y, phi, task)
    logits_s = model(xs)
    loss = task_loss(logits_s, ys, task, label_smoothing)
    logs["task_loss"] = loss.item()
    if method == "aug":
        return loss, logs
    # The extra losses compare the model on x with the model on the scaled x.
    psi = random_scaling(x, cfg.aug_strength, cfg.grid, generator)
    x2 = M.warp(x, psi.to(x.dtype))
    if method == "invl":
        p = torch.softmax(model(x), dim=1)
        p2 = torch.softmax(model(x2), dim=1)
        extra = (p - p2).pow(2).sum(dim=1).mean()
        logs["invariance_loss"] = extra.item()
    else:  # augl
        if task == "seg":  # per-pixel squared L2 between class-probability maps
            a, b = torch.softmax(model(x), dim=1), torch.softmax(model(x2), dim=1)
            extra = (M.warp(a, psi.to(a.dtype)) - b).pow(2).sum(dim=1).mean()
        else:  # mean squared difference of the last feature maps (their scale is arbitrary)
            a, b = model.features(x)[-1], model.features(x2)[-1]
            extra = (M.warp(a, psi.to(a.dtype)) - b).pow(2).mean()
        logs["equivariance_loss"] = extra.item()
    return loss + cfg.loss_weight * extra, logs
