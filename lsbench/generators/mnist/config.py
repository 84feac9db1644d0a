"""What an MNIST-LS dataset holds: :class:`MnistConfig`, its options and the checks across them.

The fields are the options of ``lsbench generate mnist`` (derived from them, one declaration
each); Python users build the same object.  :meth:`MnistConfig.identity` is what the manifest
records, so a rerun with the same options resumes and a different one is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...errors import ConfigError
from ...options import check_ranges, option

DIGIT_PX = 28
TILE_PX = 70
BRACKETS = ((0.4, 1.0), (1.0, 2.0), (2.0, 3.0))
LAYOUTS = ("reading", "tiles")


@dataclass(frozen=True)
class MnistConfig:
    """Everything that determines the dataset's content (paper defaults)."""

    DEFAULT_SHARD_SIZE: ClassVar[int] = 1000

    mnist_dir: Path | None = option(
        None, help="Folder with the MNIST idx files (*-idx3-ubyte[.gz]); default: the embedded 5,000 real digits."
    )
    digits: int = option(3, help="Digits per image (10**K classes; 1 gives a 10-class task).", min=1, max=4)
    size: int | None = option(
        None, help="Image side in px (default 224; the tiles layout uses 70*K).", min=DIGIT_PX
    )
    scale_range: tuple[float, float] = option((0.4, 2.0), help="Per-digit scale factor range MIN MAX.")
    train: int = option(6000, help="Number of train images.", min=1)
    test: int = option(50000, help="Number of test images, counting every variant of every group.", min=1)
    variants: int = option(4, help="Scaled variants per test group, besides the reference.")
    brackets: bool = option(False, help="Also write the scale-bracket test splits [0.4,1], [1,2], [2,3].")
    bracket_count: int = option(10000, help="Images per bracket split.")
    layout: str = option(
        "reading", help="'reading' (digits left to right, wrapping) or 'tiles' (paper code).", choices=LAYOUTS
    )
    seed: int = option(0, help="Seed: the same command gives byte-identical shards.")
    # Set by the generator from the digits it reads (part of the identity, not options).
    source: str = option("lsbench-embedded-mnist", cli=False)
    source_sha256: str = option("", cli=False)

    @property
    def image_size(self) -> int:
        """``size``, or its default for the layout."""
        if self.size is not None:
            return self.size
        return TILE_PX * self.digits if self.layout == "tiles" else 224

    @property
    def scale_min(self) -> float:
        return float(self.scale_range[0])

    @property
    def scale_max(self) -> float:
        return float(self.scale_range[1])

    @property
    def group_size(self) -> int:
        return 1 + self.variants

    @property
    def num_classes(self) -> int:
        return 10**self.digits

    def identity(self) -> dict[str, Any]:
        """What the manifest records as the dataset's config (where the digits are read from is not)."""
        return {
            "digits": self.digits, "size": self.image_size, "scale_min": self.scale_min,
            "scale_max": self.scale_max, "train": self.train, "test": self.test, "variants": self.variants,
            "brackets": self.brackets, "bracket_count": self.bracket_count, "layout": self.layout,
            "seed": self.seed, "source": self.source, "source_sha256": self.source_sha256,
            "num_classes": self.num_classes,
        }


def frame_px(scale: float, layout: str) -> int:
    """Side in px of a digit at ``scale``.  The paper's code truncates (``int(28 * s)``); for our
    own layout round to nearest."""
    return max(1, int(DIGIT_PX * scale) if layout == "tiles" else round(DIGIT_PX * scale))


def _reading_fits(k: int, px: int, size: int) -> bool:
    per_line = size // px
    return per_line >= 1 and -(-k // per_line) * px <= size


def check_config(cfg: MnistConfig) -> None:
    """Refuse impossible options with one line that says what to change."""
    check_ranges(cfg, ("size", "digits", "layout"))
    if not 0 < cfg.scale_min < cfg.scale_max:
        raise ConfigError(f"--scale-range needs 0 < min < max, got {cfg.scale_min} {cfg.scale_max}")
    check_ranges(cfg, ("train", "test"))
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
    size = cfg.image_size
    top = max(cfg.scale_max, BRACKETS[-1][1] if cfg.brackets else 0.0)
    if cfg.layout == "tiles":
        if size != TILE_PX * cfg.digits:
            raise ConfigError(
                f"the tiles layout draws on the paper's fixed {TILE_PX}-px tiles: --size must be "
                f"{TILE_PX * cfg.digits} for {cfg.digits} digits (got {size})"
            )
    elif not _reading_fits(cfg.digits, frame_px(top, "reading"), size):
        raise ConfigError(
            f"{cfg.digits} digits at scale {top} ({frame_px(top, 'reading')} px each) do not fit in "
            f"{size}×{size} px without overlapping; lower the max scale or raise --size"
        )
