"""A DPT-style segmentation head on a backbone's multi-level features (Ranftl et al. 2021).

``reassemble``: each of 4 feature maps ``(B, C_i, h_i, w_i)`` is projected to ``width`` channels
and resampled to strides 4, 8, 16 and 32 of the input (ViT-like backbones give four maps of one
resolution; hierarchical ones already have those strides).  ``fuse``: from coarse to fine, each
level is added to the upsampled coarser result and refined by residual conv units.  ``head``:
conv → upsample to the input size → per-pixel class logits ``(B, K, H, W)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

STRIDES = (4, 8, 16, 32)


class _ResidualConvUnit(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _Fusion(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.skip = _ResidualConvUnit(width)
        self.refine = _ResidualConvUnit(width)
        self.out = nn.Conv2d(width, width, 1)

    def forward(self, x: Tensor, coarser: Tensor | None) -> Tensor:
        if coarser is not None:
            x = self.skip(x) + F.interpolate(coarser, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.refine(x))


class DPTHead(nn.Module):
    """``forward(features, size)``: 4 maps → logits ``(B, num_classes, *size)``."""

    def __init__(self, in_channels: list[int], num_classes: int, width: int = 128):
        super().__init__()
        if len(in_channels) != len(STRIDES):
            raise ValueError(f"DPTHead takes {len(STRIDES)} feature maps, got {len(in_channels)}")
        self.project = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.fusion = nn.ModuleList(_Fusion(width) for _ in in_channels)
        self.head = nn.Sequential(
            nn.Conv2d(width, width // 2, 3, padding=1), nn.ReLU(), nn.Conv2d(width // 2, num_classes, 1)
        )

    def forward(self, features: list[Tensor], size: tuple[int, int]) -> Tensor:
        h, w = size
        levels = []
        for proj, feat, stride in zip(self.project, features, STRIDES):
            target = (max(1, h // stride), max(1, w // stride))
            levels.append(F.interpolate(proj(feat), size=target, mode="bilinear", align_corners=False))
        x = None
        for fusion, level in zip(reversed(self.fusion), reversed(levels)):
            x = fusion(level, x)
        return F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False)
