"""The four stages of the ImageNet pipeline behind one small interface each, and their registry.

A stage works on a *batch* of source photos so learned backends can run batched on a GPU; the
classical backends simply loop.  Images are ``(H, W, 3)`` uint8 RGB arrays of any size (photos
in a batch differ in size); boxes are ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive.

=============  ===========================================  =====================================
stage          learned backend (local checkpoints)          offline backends
=============  ===========================================  =====================================
detect         ``gdino``: GroundingDINO, prompt = class      ``annotation``: the dataset's box
               name, box 0.35 / text 0.25, top box           (ILSVRC XML); ``prior``: a centred
                                                             box prior
segment        ``sam``: SAM with the box as prompt           ``grabcut``: OpenCV GrabCut in the box
inpaint        ``lama``: TorchScript big-lama.pt             ``opencv``: OpenCV Telea inpainting
=============  ===========================================  =====================================

Every backend records its name (``backend``) so each sample says which one produced it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ...errors import ConfigError

Box = tuple[float, float, float, float]


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


DETECTORS = ("gdino", "annotation", "prior")
SEGMENTERS = ("sam", "grabcut")
INPAINTERS = ("lama", "opencv")


def _choice(kind: str, name: str, names: tuple[str, ...]) -> None:
    if name not in names:
        raise ConfigError(f"unknown {kind} backend {name!r}; choose one of {', '.join(names)}")


def build_detector(name: str, options: dict[str, Any]) -> Detector:
    """The detector called ``name``; ``options`` holds checkpoints, device, thresholds."""
    _choice("detector", name, DETECTORS)
    if name == "gdino":
        from .learned import GroundingDinoDetector

        return GroundingDinoDetector.load(options)
    from .classical import AnnotationDetector, BoxPriorDetector

    return AnnotationDetector() if name == "annotation" else BoxPriorDetector(options.get("prior_fraction", 0.6))


def build_segmenter(name: str, options: dict[str, Any]) -> Segmenter:
    _choice("segmenter", name, SEGMENTERS)
    if name == "sam":
        from .learned import SamSegmenter

        return SamSegmenter.load(options)
    from .classical import GrabCutSegmenter

    return GrabCutSegmenter()


def build_inpainter(name: str, options: dict[str, Any]) -> Inpainter:
    _choice("inpainter", name, INPAINTERS)
    if name == "lama":
        from .learned import LamaInpainter

        return LamaInpainter.load(options)
    from .classical import OpenCVInpainter

    return OpenCVInpainter()
