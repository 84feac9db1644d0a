"""The registry of the ImageNet pipeline's stage backends: their names and factories.

The interfaces and data types are in :mod:`.types`; the backends in :mod:`.classical` and
:mod:`.learned`, imported here only when one is built (so this registry imports no backend at
module level, and the backends import only :mod:`.types`).

=============  ===========================================  =====================================
stage          learned backend (local checkpoints)          offline backends
=============  ===========================================  =====================================
detect         ``gdino``: GroundingDINO, prompt = class      ``annotation``: the dataset's box
               name, box 0.35 / text 0.25, top box           (ILSVRC XML); ``prior``: a centred
                                                             box prior
segment        ``sam``: SAM with the box as prompt           ``grabcut``: OpenCV GrabCut in the box
inpaint        ``lama``: TorchScript big-lama.pt             ``opencv``: OpenCV Telea inpainting
=============  ===========================================  =====================================
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from .types import Detector, Inpainter, Segmenter

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
