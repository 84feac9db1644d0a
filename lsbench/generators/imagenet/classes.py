"""The 1,000 ILSVRC-2012 classes: wnid, label and names (``lsbench/assets/imagenet_classes.tsv``).

Label ``i`` is the ``i``-th wnid in sorted order (torchvision's ``ImageFolder``/``ImageNet`` and
timm checkpoints use the same order).  The detection prompt is the class's first WordNet lemma.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

WNID_RE = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class ImageNetClass:
    label: int
    wnid: str
    names: tuple[str, ...]

    @property
    def prompt(self) -> str:
        """What the detector is asked for: the first lemma, e.g. ``"tabby"`` for n02123045."""
        return self.names[0]


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """All 1,000 classes in label order."""
    text = resources.files("lsbench").joinpath("assets/imagenet_classes.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines()[1:] if line]
    return tuple(ImageNetClass(int(i), w, tuple(n.strip() for n in names.split(","))) for i, w, names in rows)


@lru_cache(maxsize=1)
def by_wnid() -> dict[str, ImageNetClass]:
    return {c.wnid: c for c in imagenet_classes()}
