"""Locally scaled Google Scanned Objects (GSO-LS, paper Sec. 5.1): segmentation scenes rendered in Blender.

Each image shows two distinct objects in front of a fixed camera, lit by and seen against an HDRI
world; each object's distance to the camera, hence its apparent size, is its own.  The mask holds
each pixel's class id (object ``k`` of the dataset's object list is class ``k + 1``; 0 = background).

**Groups.**  Test images come in groups of ``1 + variants``: variant 0 is the ``reference`` (scales
1.0); every other variant moves each object along its camera ray to ``reference distance / scale``
with its own scale drawn from ``scale_range``, so it stays at the same image position and only
its apparent size changes; the HDRI and its rotation, the camera, the objects' orientations and
the render seed stay fixed.  Train images are single scenes with drawn scales (no reference).

**Assets.**  ``objects`` objects are drawn (seeded) from the GSO folder and listed in the
manifest with their class ids and licences; the HDRIs are split (seeded) into disjoint train and
test sets (a quarter, at least one, for test).  Without ``gso_dir``/``hdri_dir`` (``--gso``/
``--hdri``) the embedded demo assets are used (see :mod:`.assets`).

Every group's randomness derives from ``(seed, split, group)``, so the dataset does not depend on
the worker count.

Modules: :mod:`.config` (:class:`GsoConfig`, the options and their checks), :mod:`.pipeline`
(asset draws, one group's renders, ``generate``), :mod:`.scene` (the geometry), :mod:`.render`
(the Blender renderer) and :mod:`.assets` (GSO folders, HDRIs, the embedded demo assets).
"""

from ...util import lazy_exports

# Loaded on first use: importing the package for its config does not import the pipeline (numpy, PIL, ...).
_LAZY = {
    **dict.fromkeys(["GsoConfig", "check_config"], ".config"),
    **dict.fromkeys(["choose_objects", "generate", "make_group", "make_shard", "split_hdris"], ".pipeline"),
}
__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY)
