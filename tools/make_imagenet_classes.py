"""Write ``lsbench/assets/imagenet_classes.tsv``: the 1,000 ILSVRC-2012 classes in label order.

Source: the synset list and WordNet lemmas that ship with timm (``timm/data/_info``, Apache-2.0;
the lemmas are WordNet 3.0 data, WordNet licence).  Label ``i`` is the ``i``-th wnid in sorted
order, the convention of torchvision's ``ImageFolder``/``ImageNet`` and of every timm checkpoint.

    python tools/make_imagenet_classes.py
"""

from __future__ import annotations

from pathlib import Path

import timm.data

OUT = Path(__file__).resolve().parents[1] / "lsbench" / "assets" / "imagenet_classes.tsv"


def main() -> None:
    info = Path(timm.data.__file__).parent / "_info"
    wnids = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    rows = ["label\twnid\tnames"] + [f"{i}\t{w}\t{lemmas[w].strip()}" for i, w in enumerate(wnids)]
    OUT.write_text("\n".join(rows) + "\n")
    print(f"wrote {OUT} ({len(wnids)} classes)")


if __name__ == "__main__":
    main()
