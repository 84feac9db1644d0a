"""Locally scaled MNIST (MNIST-LS, paper Sec. 5.2): K-digit numbers, each digit its own scale.

Each image shows ``digits`` MNIST digits forming a number (label = the number, e.g. 3 digits →
1,000 classes); every digit is resized by its own factor drawn uniformly from ``scale_range``
(LANCZOS, as the paper's code).  Train images come from the MNIST train split, test images
from the test split.

**Groups.**  Test images come in groups of ``1 + variants`` that share the same digits (same
MNIST indices) and the same layout randomness: variant 0 is the ``reference`` with every digit
at scale 1.0, the others draw new per-digit scales.  Optional bracket splits ``test_04_10``,
``test_10_20``, ``test_20_30`` draw the variants' scales from [0.4, 1.0], [1.0, 2.0], [2.0, 3.0]
(paper Table 3).  Train images are single samples (group size 1, no reference).

**Layouts.**
- ``reading`` (default): digits in reading order, like words in a line of text: left to right,
  wrapping to a new line when the next digit does not fit (so three digits at scale 3.0, 84 px
  each, become two lines in 224 px).  Free space is split randomly between the margins and gaps;
  each digit sits at a random height within its line.  Digits never overlap and never leave the
  image; options under which the worst case (every digit at the largest scale) would not fit
  are refused up front.
- ``tiles``: the paper code's protocol — each digit resized (``int(28 * s)`` px) and centred in a
  70-px tile (cropped if larger), the K tiles placed horizontally, vertically or diagonally at
  random on a ``70 * K``-px square canvas (210 px for 3 digits).

Every sample's randomness derives from ``(seed, split, group)``, so the dataset is identical
whatever the worker count.
"""

from ...util import lazy_exports

# Loaded on first use: importing the package for its config does not import the pipeline (numpy, PIL, ...).
_LAZY = {
    **dict.fromkeys(["MnistConfig"], ".config"),
    **dict.fromkeys(["generate", "make_group", "make_shard", "render"], ".pipeline"),
}
__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = sorted(_LAZY)
