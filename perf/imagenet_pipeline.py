"""Throughput of ``lsbench generate imagenet`` with the offline backends, written to JSON.

Measures, in one run on this machine, on the real photos bundled with scikit-image/matplotlib
(``--demo``; each photo is decoded at its own size, longest side ≤ 512 px like ImageNet's):

- per stage, photos/s of the classical backends: decode, detect (annotation boxes and the box
  prior), segment (GrabCut), inpaint (OpenCV Telea), cut-out;
- variant images/s from the stage cache: a dataset of ``--images`` test images (groups of the 7
  paper scales) generated with a warm cache, for ``--workers`` 1 and 2 — the issue's goal is
  ≥ 200 variant images/s on 2 CPU cores;
- a cold cache (stages once per photo, then its 7 pastes), and the reference the cache
  replaces: stages recomputed for every variant image (stage + paste costs from this run).

Usage: ``python perf/imagenet_pipeline.py [--images 1400 --workers 2]``.  Writes
``perf/results/imagenet_pipeline.json`` and prints it.  Learned backends (GroundingDINO, SAM,
LaMa) are timed by ``perf/imagenet_learned.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from lsbench import __version__
from lsbench.generators.imagenet import compose, pipeline
from lsbench.generators.imagenet.classical import (
    AnnotationDetector,
    BoxPriorDetector,
    GrabCutSegmenter,
    OpenCVInpainter,
)
from lsbench.generators.imagenet.config import ImagenetConfig
from lsbench.generators.imagenet.sources import annotation_boxes, decode_photo, demo_set, read_photo_bytes
from lsbench.generators.runner import RunOptions

OFFLINE = {"detector": "annotation", "segmenter": "grabcut", "inpainter": "opencv"}


def _rate(fn, items, repeat: int) -> tuple[float, list]:
    """Items per second of ``fn`` over ``items`` (repeated), and the last outputs."""
    start = time.perf_counter()
    outs = []
    for _ in range(repeat):
        outs = [fn(x) for x in items]
    return repeat * len(items) / (time.perf_counter() - start), outs


def stage_rates(repeat: int) -> dict:
    photos = [p for ps in demo_set().by_label.values() for p in ps]
    raw = [read_photo_bytes(p) for p in photos]
    decode, decoded = _rate(lambda b: decode_photo(b, 512), raw, repeat)
    images = [im for im, _ in decoded]
    boxes = [annotation_boxes(p, (im.shape[1], im.shape[0]), size)
             for p, (im, size) in zip(photos, decoded)]
    ann = AnnotationDetector()
    prior = BoxPriorDetector()
    detect_ann, dets = _rate(lambda ib: ann.detect([ib[0]], [""], [ib[1]])[0], list(zip(images, boxes)), repeat)
    detect_prior, _ = _rate(lambda im: prior.detect([im], [""], [None])[0], images, repeat)
    grabcut = GrabCutSegmenter()
    segment, segs = _rate(lambda ib: grabcut.segment([ib[0]], [ib[1].box])[0], list(zip(images, dets)), repeat)
    opencv = OpenCVInpainter()
    masks = [pipeline._dilate(s.mask, 15) for s in segs]
    inpaint, _ = _rate(lambda im_m: opencv.inpaint([im_m[0]], [im_m[1]])[0], list(zip(images, masks)), repeat)
    cut, _ = _rate(lambda im_s: compose.cut_out(im_s[0], im_s[1].mask), list(zip(images, segs)), repeat)
    total = 1 / sum(1 / r for r in (decode, detect_ann, segment, inpaint, cut))
    return {
        "photos": [p.id for p in photos],
        "sizes": [list(im.shape[:2]) for im in images],
        "photos_per_s": {"decode": decode, "detect_annotation": detect_ann, "detect_prior": detect_prior,
                         "segment_grabcut": segment, "inpaint_opencv": inpaint, "cut_out": cut,
                         "all_stages": total},
    }


def cached_rate(images: int, workers: int, root: Path) -> dict:
    """Variant images/s once every photo's stages are cached (``images`` test images)."""
    cache = root / "cache"
    out = root / f"warm-w{workers}"
    warmup = ImagenetConfig(demo=True, train=0, test=28, cache_dir=cache, **OFFLINE)
    pipeline.generate(warmup, root / f"warmup-w{workers}")
    start = time.perf_counter()
    result = pipeline.generate(ImagenetConfig(demo=True, train=0, test=images, cache_dir=cache, **OFFLINE), out,
                               RunOptions(workers=workers, shard_size=max(7, images // (4 * workers) // 7 * 7)))
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return {"workers": workers, "images": result.samples, "seconds": seconds, "images_per_s": result.samples / seconds}


def cold_rate(root: Path) -> dict:
    """A group of 7 variants with an empty cache: stages once, then 7 pastes (lsbench's cold path)."""
    start = time.perf_counter()
    result = pipeline.generate(ImagenetConfig(demo=True, train=0, test=28, cache_dir=root / "cold-cache", **OFFLINE),
                               root / "cold")
    seconds = time.perf_counter() - start
    return {"images": result.samples, "seconds": seconds, "images_per_s": result.samples / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1400, help="variant images for the cached run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="repetitions of the per-stage timing")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "imagenet_pipeline.json")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lsbench-perf-imagenet-"))
    try:
        stages = stage_rates(args.repeat)
        cached = [cached_rate(args.images, w, root) for w in sorted({1, args.workers})]
        cold = cold_rate(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    best = max(c["images_per_s"] for c in cached)
    # The reference: a pipeline without a per-photo cache pays the stages for every variant
    # image (same stage and paste costs, both measured above in this run, one process).
    paste_s = 1 / cached[0]["images_per_s"]
    stage_s = 1 / stages["photos_per_s"]["all_stages"]
    uncached_per_image = stage_s + paste_s
    result = {
        "benchmark": "imagenet_pipeline",
        "lsbench": __version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "stages_cpu": stages,
        "cached_variants": cached,
        "cold_cache_groups": cold,
        "reference_stages_per_variant_images_per_s": 1 / uncached_per_image,
        "goal_variant_images_per_s": 200,
        "ratio_cached_vs_uncached": best * uncached_per_image,
        "median_photo_pixels": float(np.median([h * w for h, w in stages["sizes"]])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
