"""The MNIST-LS pipeline: compose one group of images from MNIST digits; shards and the build.

The dataset is described in the package docstring; the options in :mod:`.config`.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...errors import ConfigError
from ...shards import ShardSpec, encode_png
from ...util import split_rng
from ..runner import BuildResult, RunOptions, SplitPlan, build
from . import idx as mnist_idx
from .config import BRACKETS, TILE_PX, MnistConfig, check_config, frame_px


def bracket_split(lo: float, hi: float) -> str:
    """Split name of a scale bracket: ``test_04_10`` for [0.4, 1.0] (tenths, no dots in names)."""
    return f"test_{round(lo * 10):02d}_{round(hi * 10):02d}"


@functools.lru_cache(maxsize=4)
def _source(split: str, mnist_dir: Path | None) -> mnist_idx.MnistSplit:
    return mnist_idx.load(split, mnist_dir)


def _reading_positions(px: list[int], size: int, hfrac: np.ndarray, vfrac: np.ndarray, jitter: np.ndarray):
    """Top-left corners for square digits of ``px`` pixels, reading order with line wrapping."""
    lines: list[list[int]] = [[]]
    width = 0
    for k, w in enumerate(px):
        if lines[-1] and width + w > size:
            lines.append([])
            width = 0
        lines[-1].append(k)
        width += w
    heights = [max(px[k] for k in line) for line in lines]
    vf = vfrac[: len(lines) + 1] + 1e-9
    vgaps = np.floor((size - sum(heights)) * vf / vf.sum()).astype(int)
    positions: list[tuple[int, int]] = [(0, 0)] * len(px)
    y = int(vgaps[0])
    for li, line in enumerate(lines):
        hf = hfrac[: len(line) + 1] + 1e-9
        gaps = np.floor((size - sum(px[k] for k in line)) * hf / hf.sum()).astype(int)
        x = int(gaps[0])
        for pos, k in enumerate(line):
            positions[k] = (x, y + int(jitter[k] * (heights[li] - px[k])))
            x += px[k] + int(gaps[pos + 1])
        y += heights[li] + int(vgaps[li + 1])
    return positions, len(lines)


def _tile_positions(px: list[int], direction: int):
    """Paper code: digit k centred in tile k; tiles in a row, a column or the diagonal."""
    k = len(px)
    offset = (k * TILE_PX - TILE_PX) // 2  # the strip is centred on the square canvas
    out = []
    for i, n in enumerate(px):
        pad = (TILE_PX - n) // 2
        tx, ty = [(i * TILE_PX, offset), (offset, i * TILE_PX), (i * TILE_PX, i * TILE_PX)][direction]
        out.append((tx + pad, ty + pad, (tx, ty, tx + TILE_PX, ty + TILE_PX)))
    return out


def _paste(canvas: np.ndarray, digit: np.ndarray, x: int, y: int, clip: tuple[int, int, int, int]):
    """Paste ``digit`` at ``(x, y)`` clipped to ``clip``; returns frame and ink boxes (x0, y0, x1, y1)."""
    n = digit.shape[0]
    x0, y0 = max(x, clip[0]), max(y, clip[1])
    x1, y1 = min(x + n, clip[2]), min(y + n, clip[3])
    part = digit[y0 - y : y1 - y, x0 - x : x1 - x]
    region = canvas[y0:y1, x0:x1]
    np.maximum(region, part, out=region)
    rows, cols = np.flatnonzero(part.any(axis=1)), np.flatnonzero(part.any(axis=0))
    ink = [x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1] if rows.size else None
    return [x0, y0, x1, y1], ink


def render(digit_images: list[np.ndarray], scales: list[float], cfg: MnistConfig, layout_rng: dict[str, Any]):
    """Compose one image ``(size, size)`` uint8; returns it with per-digit sizes and boxes."""
    px = [frame_px(s, cfg.layout) for s in scales]
    resized = [
        np.asarray(Image.fromarray(img).resize((n, n), Image.Resampling.LANCZOS)) for img, n in zip(digit_images, px)
    ]
    canvas = np.zeros((cfg.image_size, cfg.image_size), dtype=np.uint8)
    boxes, inks = [], []
    extra: dict[str, Any] = {}
    if cfg.layout == "reading":
        positions, extra["lines"] = _reading_positions(px, cfg.image_size, **layout_rng)
        placed = [(x, y, (0, 0, cfg.image_size, cfg.image_size)) for x, y in positions]
    else:
        placed = _tile_positions(px, layout_rng["direction"])
        extra["direction"] = ("horizontal", "vertical", "diagonal")[layout_rng["direction"]]
    for img, (x, y, clip) in zip(resized, placed):
        box, ink = _paste(canvas, img, x, y, clip)
        boxes.append(box)
        inks.append(ink)
    return canvas, px, boxes, inks, extra


def _split_setup(cfg: MnistConfig, split: str) -> tuple[str, float, float, bool]:
    """(MNIST source split, scale lo, scale hi, grouped) for one of our splits."""
    if split == "train":
        return "train", cfg.scale_min, cfg.scale_max, False
    if split == "test":
        return "test", cfg.scale_min, cfg.scale_max, True
    for lo, hi in BRACKETS:
        if split == bracket_split(lo, hi):
            return "test", lo, hi, True
    raise ConfigError(f"unknown MNIST-LS split {split!r}")


def make_group(cfg: MnistConfig, split: str, group: int) -> list[dict[str, Any]]:
    """All samples of one group (1 for train, ``1 + variants`` for test splits)."""
    source_split, lo, hi, grouped = _split_setup(cfg, split)
    src = _source(source_split, cfg.mnist_dir)
    rng = split_rng(cfg.seed, split, group)
    k = cfg.digits
    indices = rng.integers(0, len(src.labels), size=k)
    if cfg.layout == "reading":
        layout_rng = {"hfrac": rng.random(k + 1), "vfrac": rng.random(k + 1), "jitter": rng.random(k)}
    else:
        layout_rng = {"direction": int(rng.integers(3))}
    scale_sets = [np.ones(k)] + [rng.uniform(lo, hi, size=k) for _ in range(cfg.variants)] if grouped else [
        rng.uniform(lo, hi, size=k)
    ]
    digits = [int(d) for d in src.labels[indices]]
    label = int("".join(map(str, digits)))
    images = [src.images[i] for i in indices]
    samples = []
    for variant, scales in enumerate(scale_sets):
        scales = [round(float(s), 6) for s in scales]
        canvas, px, boxes, inks, extra = render(images, scales, cfg, layout_rng)
        meta = {
            "group": group,
            "variant": variant,
            "reference": grouped and variant == 0,
            "split": split,
            "label": label,
            "digits": digits,
            "scales": scales,
            "sizes_px": px,
            "boxes": boxes,
            "ink_boxes": inks,
            "layout": cfg.layout,
            "size": cfg.image_size,
            "scale_range": [lo, hi],
            "source": {"dataset": src.source, "split": source_split, "indices": [int(i) for i in indices]},
            **extra,
        }
        samples.append({"__key__": f"{group:07d}_{variant:02d}", "png": encode_png(canvas), "cls": label, "json": meta})
    return samples


def make_shard(cfg: MnistConfig, spec: ShardSpec):
    """Samples of one shard, generated group by group (picklable for worker processes)."""
    size = 1 if spec.split == "train" else cfg.group_size
    for group in range(spec.start // size, (spec.start + spec.count) // size):
        yield from make_group(cfg, spec.split, group)


def _source_digest(mnist_dir: Path | None) -> tuple[str, str]:
    """(source name, sha256 over the four idx files) — identifies the digits, not their path."""
    h = hashlib.sha256()
    for split in ("train", "test"):
        data = mnist_idx.load(split, mnist_dir)  # validates the files, clear error if broken
        h.update(data.images.tobytes())
        h.update(data.labels.tobytes())
    return ("mnist" if mnist_dir is not None else "lsbench-embedded-mnist"), h.hexdigest()


def generate(config: MnistConfig, out: Path, run: RunOptions | None = None) -> BuildResult:
    """Generate MNIST-LS into ``out`` (resumes an unfinished identical run).

    ``run.log`` receives one-line notices (e.g. that the embedded digits are used).
    """
    run = (run or RunOptions()).checked(MnistConfig.DEFAULT_SHARD_SIZE)
    check_config(config)
    mnist_dir = None if config.mnist_dir is None else Path(config.mnist_dir).resolve()
    source, digest = _source_digest(mnist_dir)
    cfg = replace(config, size=config.image_size, mnist_dir=mnist_dir, source=source, source_sha256=digest)
    if run.log is not None and mnist_dir is None:
        run.log(
            "using the 5,000 real MNIST digits embedded in lsbench (2,500 train / 2,500 test stand-ins); "
            "pass --mnist-dir with the MNIST idx files for the paper's dataset"
        )
    splits = [SplitPlan("train", cfg.train), SplitPlan("test", cfg.test, cfg.group_size, grouped=True)]
    if cfg.brackets:
        splits += [
            SplitPlan(bracket_split(lo, hi), cfg.bracket_count, cfg.group_size, grouped=True) for lo, hi in BRACKETS
        ]
    return build(
        Path(out),
        name=f"mnist-ls-{cfg.digits}digit",
        generator="mnist",
        config=cfg.identity(),
        seed=cfg.seed,
        splits=splits,
        make_shard=functools.partial(make_shard, cfg),
        run=run,
    )
