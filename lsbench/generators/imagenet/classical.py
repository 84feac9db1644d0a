"""The offline backends: dataset boxes or a box prior, GrabCut, OpenCV inpainting (CPU, no weights)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import ConfigError
from .opencv import import_cv2
from .types import Box, Detection, Segmentation


def _clip_box(box: Box, width: int, height: int) -> Box:
    x0, y0, x1, y1 = box
    return (max(0.0, min(x0, width)), max(0.0, min(y0, height)), max(0.0, min(x1, width)), max(0.0, min(y1, height)))


class AnnotationDetector:
    """The dataset's own box for the photo's class (the largest, if several); score 1."""

    name = "annotation"

    def detect(self, images, prompts, annotations) -> list[Detection | None]:
        out: list[Detection | None] = []
        for image, boxes in zip(images, annotations):
            h, w = image.shape[:2]
            boxes = [_clip_box(b, w, h) for b in boxes or ()]
            boxes = [b for b in boxes if b[2] - b[0] >= 1 and b[3] - b[1] >= 1]
            if not boxes:
                out.append(None)
                continue
            best = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            out.append(Detection(best, 1.0, self.name))
        return out


class BoxPriorDetector:
    """A centred box covering ``fraction`` of the width and height (ImageNet objects are mostly centred)."""

    name = "prior"

    def __init__(self, fraction: float = 0.6):
        if not 0.05 <= fraction <= 1.0:
            raise ConfigError(f"--prior-fraction must be in [0.05, 1], got {fraction}")
        self.fraction = fraction

    def detect(self, images, prompts, annotations) -> list[Detection | None]:
        out: list[Detection | None] = []
        for image in images:
            h, w = image.shape[:2]
            mx, my = w * (1 - self.fraction) / 2, h * (1 - self.fraction) / 2
            out.append(Detection((mx, my, w - mx, h - my), 1.0, self.name))
        return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component of a bool mask, with its holes filled."""
    cv2 = import_cv2()
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    blob = (labels == keep).astype(np.uint8)
    # Fill holes: everything not reachable from the border through background is object.
    inverse = 1 - blob
    n, labels, _, _ = cv2.connectedComponentsWithStats(inverse, connectivity=4)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
    holes = (inverse == 1) & ~np.isin(labels, list(border))
    return (blob == 1) | holes


class GrabCutSegmenter:
    """OpenCV GrabCut initialised with the box (``iterations`` rounds), at ≤ ``work_side`` px.

    GrabCut is O(pixels × iterations); running it on a copy whose longest side is ``work_side``
    and upsampling the mask keeps a photo to a fraction of a second.  Score = share of the box the
    mask fills (GrabCut has no confidence).
    """

    name = "grabcut"

    def __init__(self, iterations: int = 5, work_side: int = 320):
        self.iterations = iterations
        self.work_side = work_side

    def _one(self, image: np.ndarray, box: Box) -> Segmentation:
        cv2 = import_cv2()
        h, w = image.shape[:2]
        ratio = min(1.0, self.work_side / max(h, w))
        small = image
        if ratio < 1.0:
            small = cv2.resize(image, (round(w * ratio), round(h * ratio)), interpolation=cv2.INTER_AREA)
        sh, sw = small.shape[:2]
        x0, y0, x1, y1 = (v * ratio for v in _clip_box(box, w, h))
        # GrabCut needs background samples outside the rectangle: keep a 1-px border.
        rx0, ry0 = int(np.clip(np.floor(x0), 1, sw - 2)), int(np.clip(np.floor(y0), 1, sh - 2))
        rx1, ry1 = int(np.clip(np.ceil(x1), rx0 + 1, sw - 1)), int(np.clip(np.ceil(y1), ry0 + 1, sh - 1))
        gc = np.zeros((sh, sw), np.uint8)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's GMM initialisation uses OpenCV's RNG: fix it for reproducibility
        try:
            cv2.grabCut(small[:, :, ::-1].copy(), gc, (rx0, ry0, rx1 - rx0, ry1 - ry0), bgd, fgd, self.iterations,
                        cv2.GC_INIT_WITH_RECT)
            fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
        except cv2.error:  # degenerate input (e.g. a flat image): no mask, the photo is then rejected
            fg = np.zeros((sh, sw), bool)
        if ratio != 1.0:
            fg = cv2.resize(fg.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
        mask = largest_component(fg) if fg.any() else fg
        bx0, by0, bx1, by1 = (int(round(v)) for v in _clip_box(box, w, h))
        area = max(1, (bx1 - bx0) * (by1 - by0))
        return Segmentation(mask, float(mask[by0:by1, bx0:bx1].sum() / area), self.name)

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[Box]) -> list[Segmentation]:
        return [self._one(image, box) for image, box in zip(images, boxes)]


class OpenCVInpainter:
    """OpenCV's Telea inpainting (``radius`` px neighbourhood); pixels outside the mask are kept."""

    name = "opencv"

    def __init__(self, radius: int = 5):
        self.radius = radius

    def inpaint(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> list[np.ndarray]:
        cv2 = import_cv2()
        out = []
        for image, mask in zip(images, masks):
            filled = cv2.inpaint(image, mask.astype(np.uint8) * 255, self.radius, cv2.INPAINT_TELEA)
            out.append(np.where(mask[..., None], filled, image))
        return out
