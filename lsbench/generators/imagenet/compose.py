"""Rescale the extracted object about its anchor and paste it onto the inpainted background.

Geometry: the object (a premultiplied RGBA cut-out of the photo) is scaled by ``s`` about its
anchor ``a`` — the centre of its mask box (``"centre"``, the paper code's choice) or the middle of
its bottom edge (``"bottom"``, objects that stand on something stay on it) — so a pixel ``p`` of
the object lands at ``a + s (p − a)``.  Down-scaling averages areas (``INTER_AREA``), up-scaling is
Lanczos; alpha is scaled with area/bilinear filters (no ringing) and then feathered with a Gaussian
of ``feather`` px (the alpha only: the object's pixels stay sharp) or, with ``feather`` = 0,
thresholded to a hard edge; either way its sum — the object's area — scales by ``s²`` (up to the
frame clip).  Pixels where the pasted alpha is 0 are the inpainted background, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .opencv import import_cv2
from .types import ANCHORS, Box


@dataclass(frozen=True)
class Cutout:
    """The object cut out of its photo: ``rgb`` ``(h, w, 3)`` uint8, ``alpha`` ``(h, w)`` uint8 (0/255)
    and the crop's top-left corner ``origin`` ``(x, y)`` in photo pixels."""

    rgb: np.ndarray
    alpha: np.ndarray
    origin: tuple[int, int]

    @property
    def box(self) -> Box:
        """The mask's box in photo pixels (x1/y1 exclusive)."""
        h, w = self.alpha.shape
        return (self.origin[0], self.origin[1], self.origin[0] + w, self.origin[1] + h)


@dataclass(frozen=True)
class Composite:
    """A composed image ``(H, W, 3)`` uint8, the pasted alpha ``(H, W)`` float32 in [0, 1], the
    object's box ``(x0, y0, x1, y1)`` (alpha ≥ 0.5, clipped at the frame; None if it left the frame)
    and the scale factors actually applied along x and y (integer output sizes round them)."""

    image: np.ndarray
    alpha: np.ndarray
    box: Box | None
    scale_xy: tuple[float, float]


def cut_out(image: np.ndarray, mask: np.ndarray) -> Cutout:
    """Crop ``image`` ``(H, W, 3)`` to the box of the bool ``mask`` ``(H, W)`` (must be non-empty)."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return Cutout(image[y0:y1, x0:x1].copy(), (mask[y0:y1, x0:x1] * np.uint8(255)).astype(np.uint8), (x0, y0))


def anchor_point(box: Box, anchor: str) -> tuple[float, float]:
    """The point an object is scaled about, for a box ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = box
    if anchor == "centre":
        return ((x0 + x1) / 2, (y0 + y1) / 2)
    if anchor == "bottom":
        return ((x0 + x1) / 2, y1)
    raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")


def _resize(cv2, array: np.ndarray, size: tuple[int, int], up: bool, smooth_only: bool) -> np.ndarray:
    if up:
        flag = cv2.INTER_LINEAR if smooth_only else cv2.INTER_LANCZOS4
    else:
        flag = cv2.INTER_AREA
    return cv2.resize(array, size, interpolation=flag)


def paste(background: np.ndarray, cutout: Cutout, scale: float, anchor: tuple[float, float],
          feather: float = 1.0) -> Composite:
    """Paste ``cutout`` scaled by ``scale`` about ``anchor`` onto ``background`` ``(H, W, 3)`` uint8.

    ``scale`` = 1 pastes the object back at its own pixels (only the feathering softens its edge),
    so a group's reference is composed exactly like its variants.  ``feather`` = 0 gives a hard
    (binary) edge.
    """
    cv2 = import_cv2()
    H, W = background.shape[:2]
    h, w = cutout.alpha.shape
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    sx, sy = nw / w, nh / h
    alpha = cutout.alpha.astype(np.float32) / 255.0
    premult = cutout.rgb.astype(np.float32) * alpha[..., None]  # no halo of the old background at the edge
    if (nw, nh) != (w, h):
        up = scale > 1
        premult = _resize(cv2, premult, (nw, nh), up, smooth_only=False)
        alpha = np.clip(_resize(cv2, alpha, (nw, nh), up, smooth_only=True), 0.0, 1.0)
        premult = np.clip(premult, 0.0, 255.0 * alpha[..., None])  # Lanczos overshoot stays within the alpha
    # Top-left corner of the scaled crop: the anchor is fixed, everything else moves by s about it.
    ax, ay = anchor
    x = round(ax + sx * (cutout.origin[0] - ax))
    y = round(ay + sy * (cutout.origin[1] - ay))
    colour = premult / np.maximum(alpha, 1e-6)[..., None]  # the object's own colour where alpha > 0
    if feather > 0:
        # Feather the alpha only, so the object stays sharp.  In the ring the blur adds outside the
        # object the colour is the blurred colour renormalised by the blurred alpha: the edge fades
        # towards the object's own nearby colour.
        pad = int(np.ceil(3 * feather)) + 1
        alpha, premult = np.pad(alpha, pad), np.pad(premult, ((pad, pad), (pad, pad), (0, 0)))
        colour = np.pad(colour, ((pad, pad), (pad, pad), (0, 0)))
        soft = cv2.GaussianBlur(alpha, (0, 0), feather)
        spread = np.stack([cv2.GaussianBlur(premult[..., c], (0, 0), feather) for c in range(3)], -1)
        ring = (alpha <= 0) & (soft > 0)
        colour[ring] = spread[ring] / soft[ring][:, None]
        alpha = soft
        x, y = x - pad, y - pad
    else:
        alpha = (alpha >= 0.5).astype(np.float32)  # a hard edge; the area still scales by s²
    colour = np.clip(colour, 0.0, 255.0)
    hh, ww = alpha.shape
    # Clip the paste window at the frame.
    fx0, fy0, fx1, fy1 = max(0, x), max(0, y), min(W, x + ww), min(H, y + hh)
    out = background.copy()
    full_alpha = np.zeros((H, W), np.float32)
    if fx0 >= fx1 or fy0 >= fy1:
        return Composite(out, full_alpha, None, (sx, sy))
    a = alpha[fy0 - y:fy1 - y, fx0 - x:fx1 - x]
    c = colour[fy0 - y:fy1 - y, fx0 - x:fx1 - x]
    region = out[fy0:fy1, fx0:fx1].astype(np.float32)
    blended = c * a[..., None] + region * (1.0 - a[..., None])
    touched = a > 0
    out[fy0:fy1, fx0:fx1][touched] = np.clip(np.rint(blended[touched]), 0, 255).astype(np.uint8)
    full_alpha[fy0:fy1, fx0:fx1] = a
    ys, xs = np.nonzero(full_alpha >= 0.5)
    box = None if len(xs) == 0 else (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return Composite(out, full_alpha, box, (sx, sy))
