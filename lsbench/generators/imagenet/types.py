"""The data and interfaces the ImageNet pipeline's stages share: boxes, detections, masks and the
three backend protocols.  Imports nothing of the pipeline, so every module (backends, sources,
compose, the registry in :mod:`.stages`) can depend on it without a cycle.

A stage works on a *batch* of source photos so learned backends can run batched on a GPU; the
classical backends simply loop.  Images are ``(H, W, 3)`` uint8 RGB arrays of any size (photos
in a batch differ in size); boxes are ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive.  Every
backend records its name (``backend``) so each sample says which one produced it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotations only: the config (and the CLI's start) import these names without numpy
    import numpy as np

Box = tuple[float, float, float, float]


ANCHORS = ("centre", "bottom")  # what an object is rescaled about: its box centre or bottom centre


@dataclass(frozen=True)
class Detection:
    """The object's box in pixels ``(x0, y0, x1, y1)`` and the detector's confidence in [0, 1]."""

    box: Box
    score: float
    backend: str


@dataclass(frozen=True)
class Segmentation:
    """The object's mask, ``(H, W)`` bool, and the segmenter's quality score (higher is better)."""

    mask: np.ndarray
    score: float
    backend: str


class Detector(Protocol):
    name: str

    def detect(
        self, images: Sequence[np.ndarray], prompts: Sequence[str], annotations: Sequence[list[Box] | None]
    ) -> list[Detection | None]:
        """One detection (the best) per image, ``None`` where nothing passes the thresholds.

        ``prompts`` are the class names; ``annotations`` the dataset's boxes for the photo, if any.
        """


class Segmenter(Protocol):
    name: str

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[Box]) -> list[Segmentation]:
        """One mask per image, prompted by its box."""


class Inpainter(Protocol):
    name: str

    def inpaint(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Fill ``masks`` (``(H, W)`` bool, True = remove) in each image; returns ``(H, W, 3)`` uint8."""
