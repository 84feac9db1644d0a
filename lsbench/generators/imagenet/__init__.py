"""Locally scaled ImageNet (ImageNet-LS, paper Sec. 5.3): detect → segment → inpaint → rescale → paste.

Each source photo's object is found (detector, prompt = class name), cut out (segmenter) and
removed from the photo (inpainter); the object is then pasted back onto the inpainted background
rescaled about its anchor.  Each *test* photo becomes a group of every ``scales`` value (the
paper's 0.7, 0.8, …, 1.3; the s = 1 variant is the group's reference, composed the same way);
each *train* photo one image with s drawn from ``scale_range``.  Unusable photos are rejected
(logged in ``rejections.jsonl``, yield per stage in the manifest) and the group takes its next
candidate; which photo a group gets is seeded and balanced over classes, so the dataset is the
same for any worker count.  ``--demo`` uses the real photos bundled with scikit-image and
matplotlib; ``--offline`` the classical backends (no weights).

Modules: :mod:`.config` (:class:`ImagenetConfig`, the options and their checks), :mod:`.pipeline`
(``generate``: sources → cached stage outputs → groups → shards), :mod:`.types` (boxes,
detections, masks and the backend protocols), :mod:`.stages` (the backend registry),
:mod:`.classical` (the offline backends), :mod:`.learned` (GroundingDINO/SAM/LaMa),
:mod:`.opencv` (OpenCV's import), :mod:`.sources` (the ILSVRC/ImageFolder readers),
:mod:`.compose` (the rescale-and-paste geometry) and :mod:`.cache` (the per-photo stage cache).
"""

from ...util import lazy_exports

# Loaded on first use: importing the package for its config does not import the pipeline (numpy, PIL, ...).
_LAZY = {
    **dict.fromkeys(["PAPER_SCALES", "ImagenetConfig", "check_config"], ".config"),
    **dict.fromkeys(["generate", "make_shard", "rejection_summary_line"], ".pipeline"),
}
__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY)
