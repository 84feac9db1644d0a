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

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..shards import ShardSpec, encode_png
from . import mnist_idx
from .runner import BuildResult, Progress, SplitPlan, build, split_rng

DIGIT_PX = 28
TILE_PX = 70
BRACKETS = ((0.4, 1.0), (1.0, 2.0), (2.0, 3.0))
LAYOUTS = ("reading", "tiles")


def bracket_split(lo: float, hi: float) -> str:
    """Split name of a scale bracket: ``test_04_10`` for [0.4, 1.0] (tenths, no dots in names)."""
    return f"test_{round(lo * 10):02d}_{round(hi * 10):02d}"


@dataclass(frozen=True)
class MnistConfig:
    """Everything that determines the dataset's content (recorded in the manifest)."""

    digits: int = 3
    size: int = 224
    scale_min: float = 0.4
    scale_max: float = 2.0
    train: int = 6000
    test: int = 50000
    variants: int = 4
    brackets: bool = False
    bracket_count: int = 10000
    layout: str = "reading"
    seed: int = 0
    source: str = "lsbench-embedded-mnist"
    source_sha256: str = ""
    mnist_dir: str | None = None  # where to read from (not part of the dataset's identity)

    def identity(self) -> dict[str, Any]:
        cfg = asdict(self)
        cfg.pop("mnist_dir")
        return cfg

    @property
    def group_size(self) -> int:
        return 1 + self.variants

    @property
    def num_classes(self) -> int:
        return 10**self.digits


def _frame_px(scale: float, layout: str) -> int:
    # The paper's code truncates (int(28 * s)); for our own layout round to nearest.
    return max(1, int(DIGIT_PX * scale) if layout == "tiles" else round(DIGIT_PX * scale))


def _reading_fits(k: int, px: int, size: int) -> bool:
    per_line = size // px
    return per_line >= 1 and -(-k // per_line) * px <= size


def check_config(cfg: MnistConfig) -> None:
    """Refuse impossible options with one line that says what to change."""
    if not 1 <= cfg.digits <= 4:
        raise ConfigError(f"--digits must be 1–4, got {cfg.digits}")
    if cfg.layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, got {cfg.layout!r}")
    if not 0 < cfg.scale_min < cfg.scale_max:
        raise ConfigError(f"--scale-range needs 0 < min < max, got {cfg.scale_min} {cfg.scale_max}")
    for opt, value in (("--train", cfg.train), ("--test", cfg.test)):
        if value < 1:
            raise ConfigError(f"{opt} must be at least 1, got {value}")
    if cfg.brackets and cfg.bracket_count < 1:
        raise ConfigError(f"--bracket-count must be at least 1, got {cfg.bracket_count}")
    if cfg.variants < 1:
        raise ConfigError(
            f"--variants must be at least 1 (the reference plus at least one scaled variant), got {cfg.variants}"
        )
    counts = [("--test", cfg.test)] + ([("--bracket-count", cfg.bracket_count)] if cfg.brackets else [])
    for opt, value in counts:
        if value % cfg.group_size:
            raise ConfigError(
                f"{opt} {value} is not a multiple of the group size {cfg.group_size} "
                f"(1 reference + {cfg.variants} variants); use e.g. {value - value % cfg.group_size or cfg.group_size}"
            )
    top = max(cfg.scale_max, BRACKETS[-1][1] if cfg.brackets else 0.0)
    if cfg.layout == "tiles":
        if cfg.size != TILE_PX * cfg.digits:
            raise ConfigError(
                f"the tiles layout draws on the paper's fixed {TILE_PX}-px tiles: --size must be "
                f"{TILE_PX * cfg.digits} for {cfg.digits} digits (got {cfg.size})"
            )
    elif not _reading_fits(cfg.digits, _frame_px(top, "reading"), cfg.size):
        raise ConfigError(
            f"{cfg.digits} digits at scale {top} ({_frame_px(top, 'reading')} px each) do not fit in "
            f"{cfg.size}×{cfg.size} px without overlapping; lower the max scale or raise --size"
        )


@functools.lru_cache(maxsize=4)
def _source(split: str, mnist_dir: str | None) -> mnist_idx.MnistSplit:
    return mnist_idx.load(split, None if mnist_dir is None else Path(mnist_dir))


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
    px = [_frame_px(s, cfg.layout) for s in scales]
    resized = [
        np.asarray(Image.fromarray(img).resize((n, n), Image.Resampling.LANCZOS)) for img, n in zip(digit_images, px)
    ]
    canvas = np.zeros((cfg.size, cfg.size), dtype=np.uint8)
    boxes, inks = [], []
    extra: dict[str, Any] = {}
    if cfg.layout == "reading":
        positions, extra["lines"] = _reading_positions(px, cfg.size, **layout_rng)
        placed = [(x, y, (0, 0, cfg.size, cfg.size)) for x, y in positions]
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
            "size": cfg.size,
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


def generate(
    out: Path,
    *,
    mnist_dir: Path | None = None,
    digits: int = 3,
    size: int | None = None,
    scale_range: tuple[float, float] = (0.4, 2.0),
    train: int = 6000,
    test: int = 50000,
    variants: int = 4,
    brackets: bool = False,
    bracket_count: int = 10000,
    layout: str = "reading",
    seed: int = 0,
    workers: int = 1,
    shard_size: int = 1000,
    overwrite: bool = False,
    progress: Progress | None = None,
    log=None,
) -> BuildResult:
    """Generate MNIST-LS into ``out`` (resumes an unfinished identical run).  Paper defaults.

    ``size`` defaults to 224 (``reading``) or ``70 * digits`` (``tiles``).  ``log`` receives
    one-line notices (e.g. that the embedded digits are used).
    """
    if size is None:
        size = TILE_PX * digits if layout == "tiles" else 224
    if size < DIGIT_PX:
        raise ConfigError(f"--size must be at least {DIGIT_PX}, got {size}")
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be at least 1, got {shard_size}")
    cfg = MnistConfig(
        digits=digits, size=size, scale_min=float(scale_range[0]), scale_max=float(scale_range[1]),
        train=train, test=test, variants=variants, brackets=brackets, bracket_count=bracket_count,
        layout=layout, seed=seed, mnist_dir=None if mnist_dir is None else str(Path(mnist_dir).resolve()),
    )
    check_config(cfg)
    source, digest = _source_digest(mnist_dir)
    cfg = MnistConfig(**{**asdict(cfg), "source": source, "source_sha256": digest})
    if log is not None and mnist_dir is None:
        log(
            "using the 5,000 real MNIST digits embedded in lsbench (2,500 train / 2,500 test stand-ins); "
            "pass --mnist-dir with the MNIST idx files for the paper's dataset"
        )
    splits = [SplitPlan("train", train), SplitPlan("test", test, cfg.group_size, grouped=True)]
    if brackets:
        splits += [SplitPlan(bracket_split(lo, hi), bracket_count, cfg.group_size, grouped=True) for lo, hi in BRACKETS]
    identity = cfg.identity() | {"num_classes": cfg.num_classes}
    return build(
        Path(out),
        name=f"mnist-ls-{digits}digit",
        generator="mnist",
        config=identity,
        seed=seed,
        splits=splits,
        shard_size=shard_size,
        make_shard=functools.partial(make_shard, cfg),
        workers=workers,
        overwrite=overwrite,
        progress=progress,
    )
