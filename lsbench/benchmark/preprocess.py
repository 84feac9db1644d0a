"""How a model's input is made from a stored image: recorded, so every score says how it was fed.

Two kinds, one :class:`Preprocess` record (written into checkpoints and result JSONs):

- ``"squash"`` — lsbench's own models: the whole image resized to ``size × size`` (bilinear,
  antialiased, on tensors), normalised with ``mean``/``std``.  No crop: objects of a locally scaled
  image may sit near its frame, and a crop would cut them.  ``lsbench train`` records it with the
  mean/std of the timm backbone the model was built from; checkpoints written before that have no
  record and keep the ImageNet statistics (:data:`LEGACY`).
- ``"timm"`` — a pretrained ``timm:`` model, fed exactly as timm's own evaluation feeds it: its data
  config (``timm.data.resolve_data_config``: input size, interpolation, ``crop_pct``, ``crop_mode``,
  mean/std) and timm's own eval transform (``timm.data.create_transform``) on the decoded PIL image
  in the DataLoader workers.  timm's transform is used as it is, not re-implemented on tensors,
  because per-sample predictions must equal timm's pipeline: tensor resizing differs from PIL's by
  ±1 grey level, enough to flip the top-1 of near ties.

A centre crop can cut a locally scaled object: :meth:`Preprocess.inside` says, per object box of the
stored image, whether it stays whole inside the model's input (the evaluation counts the cut ones).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """One model's input pipeline; ``size`` is the side of the square model input, in pixels."""

    kind: str  # "squash" or "timm"
    size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "squash"
    source: str = "lsbench"  # where the settings come from, e.g. "timm pretrained_cfg of resnet50.a1_in1k"

    def __post_init__(self) -> None:
        if self.kind not in ("squash", "timm"):
            raise ValueError(f"preprocess kind must be 'squash' or 'timm', got {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**{**fields, "mean": tuple(fields.get("mean", IMAGENET_MEAN)),
                      "std": tuple(fields.get("std", IMAGENET_STD))})

    @classmethod
    def from_timm(cls, data_config: dict[str, Any], source: str) -> Preprocess:
        """From a ``timm.data.resolve_data_config`` dict (square inputs only)."""
        h, w = data_config["input_size"][-2:]
        if h != w:
            raise ValueError(f"non-square model input {h}x{w} is not supported")
        return cls(kind="timm", size=int(h), mean=tuple(data_config["mean"]), std=tuple(data_config["std"]),
                   interpolation=data_config.get("interpolation", "bilinear"),
                   crop_pct=float(data_config.get("crop_pct") or 0.875),
                   crop_mode=data_config.get("crop_mode") or "center", source=source)

    def with_size(self, size: int) -> Preprocess:
        return Preprocess(**{**asdict(self), "size": size})

    # ------------------------------------------------------------------ applying it

    def transform(self):
        """A picklable callable ``uint8 image (H, W[, C]) → float (3, size, size)``."""
        return _Transform(self)

    def _resized(self, h: int, w: int) -> tuple[int, int, int, int]:
        """``(rh, rw, top, left)``: the image size after the resize and the crop window's offset in it
        (negative: padding), as timm's eval transform does it."""
        s = self.size
        if self.kind == "squash":
            return s, s, 0, 0
        scale = math.floor(s / self.crop_pct)
        if self.crop_mode == "squash":
            rh = rw = scale
        elif self.crop_mode == "border":  # timm's ResizeKeepRatio(longest=1.0), then CenterCropOrPad
            ratio = max(h / scale, w / scale)
            rh, rw = round(h / ratio), round(w / ratio)
        else:  # torchvision Resize(int): the shorter side to `scale`, the longer truncated
            if h <= w:
                rh, rw = scale, int(scale * w / h)
            else:
                rh, rw = int(scale * h / w), scale
        return rh, rw, _offset(rh, s), _offset(rw, s)

    def inside(self, box: list[float] | tuple[float, ...], h: int, w: int) -> bool:
        """Whether box ``(x0, y0, x1, y1)`` (pixels of an ``h × w`` stored image) stays whole in the input."""
        rh, rw, top, left = self._resized(h, w)
        x0, y0, x1, y1 = (float(v) for v in box)
        sx, sy = rw / w, rh / h
        eps = 1e-6
        return (x0 * sx - left >= -eps and y0 * sy - top >= -eps and x1 * sx - left <= self.size + eps
                and y1 * sy - top <= self.size + eps)


def _offset(resized: int, size: int) -> int:
    """Where the ``size`` window starts in a ``resized`` side: torchvision's ``CenterCrop`` rounding, or (the
    side shorter than the window) minus timm's ``CenterCropOrPad`` left/top padding."""
    return int(round((resized - size) / 2.0)) if resized >= size else -((size - resized) // 2)


# What checkpoints written before preprocessing was recorded were fed with (and lsbench models still are,
# apart from mean/std): the whole image squashed, ImageNet statistics.
def legacy(size: int) -> Preprocess:
    return Preprocess(kind="squash", size=size, source="lsbench (no record in the checkpoint: ImageNet mean/std)")


def for_backbone(timm_name: str, size: int) -> Preprocess:
    """What ``lsbench train`` records: squash to ``size``, the mean/std of ``timm_name``'s pretrained config."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name, allow_unregistered=True) if timm_name else None
    mean = tuple(getattr(cfg, "mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(cfg, "std", None) or IMAGENET_STD)
    return Preprocess(kind="squash", size=size, mean=mean, std=std, source=f"lsbench (mean/std of {timm_name})")


class _Transform:
    """Picklable (DataLoader workers): holds the record, builds timm's transform lazily per process."""

    def __init__(self, pre: Preprocess):
        self.pre = pre
        self._timm = None
        import torch

        self._mean = torch.tensor(pre.mean).view(3, 1, 1)
        self._std = torch.tensor(pre.std).view(3, 1, 1)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_timm": None}

    def __call__(self, image: np.ndarray):
        if self.pre.kind == "timm":
            return self._timm_call(image)
        import torch.nn.functional as F

        from ..shards import image_to_tensor

        t = image_to_tensor(image)  # float in [0, 1], (C, H, W)
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        elif t.shape[0] == 4:
            t = t[:3]
        s = self.pre.size
        if t.shape[-2:] != (s, s):
            t = F.interpolate(t.unsqueeze(0), size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
        return (t - self._mean) / self._std

    def _timm_call(self, image: np.ndarray):
        from PIL import Image

        if self._timm is None:
            from timm.data import create_transform

            p = self.pre
            self._timm = create_transform(input_size=(3, p.size, p.size), interpolation=p.interpolation,
                                          mean=p.mean, std=p.std, crop_pct=p.crop_pct, crop_mode=p.crop_mode)
        return self._timm(Image.fromarray(image).convert("RGB"))
