"""What an ImageNet-LS dataset holds and how it is made: :class:`ImagenetConfig` and its checks.

The option fields are those of ``lsbench generate imagenet`` (derived from them, one declaration
each); Python users build the same object.  ``offline`` picks the classical backend for every
stage left at its learned default (:meth:`ImagenetConfig.resolved`), for the CLI and Python alike.
:meth:`ImagenetConfig.identity` is what the manifest records (where the photos live and how the
run goes — device, batch, cache — are not), so a rerun with the same options resumes and a
different one is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from ...errors import ConfigError
from ...options import check_ranges, option
from .stages import DETECTORS, INPAINTERS, SEGMENTERS
from .types import ANCHORS

PAPER_SCALES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
IMAGE_FORMATS = ("jpg", "png")
CHECKPOINT_OPTIONS = {
    "gdino": ("gdino_checkpoint", "--gdino-checkpoint", "--detector annotation or --detector prior"),
    "sam": ("sam_checkpoint", "--sam-checkpoint", "--segmenter grabcut"),
    "lama": ("lama_checkpoint", "--lama-checkpoint", "--inpainter opencv"),
}


def parse_scales(text: str) -> tuple[float, ...]:
    """``--scales`` as typed: comma-separated factors (``0.7,0.8,...``)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--scales takes comma-separated numbers, got {text!r}") from None


@dataclass(frozen=True)
class ImagenetConfig:
    """Everything that defines the dataset (``identity``) plus how to run it (device, batch, cache)."""

    DEFAULT_SHARD_SIZE: ClassVar[int] = 1000
    # Where the photos live is not what they are: the dataset is identified by ``source_digest``
    # (the listing), so a moved source tree still resumes.  ``offline`` is resolved into the
    # backends, which the identity records.
    RUN_FIELDS: ClassVar[tuple[str, ...]] = (
        "src", "boxes", "offline", "device", "batch_size", "fp16", "cache_dir", "out"
    )

    src: Path | None = option(None, help="ImageNet root (train/<wnid>/, val/) or any ImageFolder.")
    demo: bool = option(False, help="Use the real photos bundled with scikit-image/matplotlib (offline).")
    boxes: Path | None = option(None, help="Folder of ILSVRC XML box annotations (default: found in --src).")
    train: int = option(10000, help="Number of train images (one random scale each).", min=0)
    test: int = option(
        50000, help="Number of test images: groups of every --scales value (7 per photo).", min=0
    )
    scales: tuple[float, ...] = option(
        PAPER_SCALES, help="Test scale factors (must include 1.0).", min=0.1, max=4, parse=parse_scales,
    )
    scale_range: tuple[float, float] = option((0.7, 1.3), help="Train scale factor range MIN MAX.", min=0.1, max=4)
    detector: str = option(
        "gdino", help="gdino (GroundingDINO), annotation (dataset boxes) or prior.", choices=DETECTORS
    )
    segmenter: str = option("sam", help="sam (Segment Anything) or grabcut (OpenCV).", choices=SEGMENTERS)
    inpainter: str = option("lama", help="lama (big-lama.pt TorchScript) or opencv (Telea).", choices=INPAINTERS)
    offline: bool = option(
        False, help="Classical backends for every stage not set explicitly: annotation boxes with --demo, else "
        "the box prior; grabcut; opencv."
    )
    gdino_checkpoint: str | None = option(None, help="Local GroundingDINO checkpoint (HF-format folder).")
    gdino_config: str | None = option(None, help="Not used (lsbench loads transformers-format folders).")
    text_encoder: str | None = option(None, help="Local bert-base-uncased folder for GroundingDINO.")
    sam_checkpoint: str | None = option(None, help="Local SAM checkpoint (e.g. sam_vit_h_4b8939.pth).")
    sam_type: str = option("vit_h", help="SAM architecture: vit_h, vit_l or vit_b.")
    lama_checkpoint: str | None = option(None, help="Local big-lama.pt (TorchScript).")
    box_threshold: float = option(0.35, help="GroundingDINO box threshold.")
    text_threshold: float = option(0.25, help="GroundingDINO text threshold.")
    min_mask: float = option(0.01, help="Reject masks smaller than this fraction of the photo.", min=0, max=1)
    max_mask: float = option(0.7, help="Reject masks larger than this fraction of the photo.", min=0, max=1)
    min_in_box: float = option(
        0.8, help="Reject masks with less than this fraction inside the box.", min=0, max=1
    )
    dilate: int = option(
        15, help="Inpaint the mask dilated by this many px (covers the object's edge).", min=0
    )
    feather: float = option(1.0, help="Gaussian feather of the pasted object's alpha, in px.", min=0)
    anchor: str = option("centre", help="Scale objects about their box 'centre' or 'bottom' centre.", choices=ANCHORS)
    max_side: int = option(512, help="Downscale larger photos to this longest side first (px).", min=64)
    image_format: str = option(
        "jpg", flag="--format", help="Sample image format: jpg (quality 95) or png.", choices=IMAGE_FORMATS
    )
    max_attempts: int = option(
        20, help="Give up after this many rejected photos in a row for one group.", min=1
    )
    device: str = option("cpu", help="Device for the learned backends (cpu, cuda, cuda:1).")
    batch_size: int = option(
        8, help="Photos per batch through the stages (halved on GPU out-of-memory).", min=1
    )
    fp16: bool = option(True, help="Half precision on CUDA where safe.")
    cache_dir: Path | None = option(None, help="Stage cache (default: OUT/cache); share it between runs.")
    seed: int = option(0, help="Seed: the same command and sources give the same dataset.")
    prior_fraction: float = option(
        0.6, help="The prior detector's centred box, as a fraction of the photo's width and height.", min=0.05, max=1
    )
    jpeg_quality: int = option(95, cli=False)  # Python only
    # Filled in by the generator: the sources' listing digest, the output folder.
    source_digest: str = option("", cli=False)
    out: Path | None = option(None, cli=False)

    @property
    def group_size(self) -> int:
        return len(self.scales)

    def resolved(self) -> ImagenetConfig:
        """This config with ``offline`` applied: every stage still at its learned default gets its
        classical backend (the dataset's boxes with ``demo``, else the box prior; grabcut; opencv)."""
        if not self.offline:
            return self
        return replace(
            self,
            detector=("annotation" if self.demo else "prior") if self.detector == "gdino" else self.detector,
            segmenter="grabcut" if self.segmenter == "sam" else self.segmenter,
            inpainter="opencv" if self.inpainter == "lama" else self.inpainter,
        )

    def identity(self) -> dict[str, Any]:
        """What the manifest records as the dataset's config (the generator adds ``num_classes``, ``task``)."""
        names = (
            "demo", "train", "test", "scales", "scale_range", "detector", "segmenter", "inpainter",
            "gdino_checkpoint", "gdino_config", "text_encoder", "sam_checkpoint", "sam_type", "lama_checkpoint",
            "box_threshold", "text_threshold", "prior_fraction", "min_mask", "max_mask", "min_in_box", "dilate",
            "feather", "anchor", "max_side", "image_format", "jpeg_quality", "max_attempts", "seed", "source_digest",
        )
        d = {k: getattr(self, k) for k in names}
        d["scales"], d["scale_range"] = list(self.scales), list(self.scale_range)
        return d

    def backend_options(self) -> dict[str, Any]:
        keys = ("gdino_checkpoint", "gdino_config", "text_encoder", "sam_checkpoint", "sam_type", "lama_checkpoint",
                "box_threshold", "text_threshold", "prior_fraction", "device", "batch_size", "fp16")
        return {k: getattr(self, k) for k in keys}

    def stage_settings(self) -> dict[str, Any]:
        """What a cached stage output depends on (besides the photo's bytes and class)."""
        from .cache import file_fingerprint  # numpy: here, not when the CLI declares the options

        ckpts = {}
        for name in (self.detector, self.segmenter, self.inpainter):
            if name in CHECKPOINT_OPTIONS:
                ckpts[name] = file_fingerprint(getattr(self, CHECKPOINT_OPTIONS[name][0]))
        if self.detector == "gdino" and self.text_encoder:  # the tokenizer shapes the detections too
            ckpts["text_encoder"] = file_fingerprint(self.text_encoder)
        keys = ("detector", "segmenter", "inpainter", "gdino_config", "text_encoder", "sam_type", "box_threshold",
                "text_threshold", "prior_fraction", "min_mask", "max_mask", "min_in_box", "dilate", "max_side")
        half = self.fp16 and self.device.startswith("cuda") and {self.detector, self.segmenter} & {"gdino", "sam"}
        return {k: getattr(self, k) for k in keys} | {"checkpoints": ckpts, "half": bool(half), "v": 1}


def check_config(cfg: ImagenetConfig) -> None:
    """Every option problem as one line, before any work starts (``offline`` applied first)."""
    cfg = cfg.resolved()
    if (cfg.src is None) == (not cfg.demo):
        raise ConfigError("pass --src with an ImageNet/ImageFolder tree, or --demo for the bundled photos")
    if cfg.train < 0 or cfg.test < 0 or cfg.train + cfg.test == 0:
        raise ConfigError("--train and --test must be ≥ 0 and not both 0")
    if not cfg.scales or any(not 0.1 <= s <= 4 for s in cfg.scales):
        raise ConfigError(f"--scales must be factors in [0.1, 4], got {list(cfg.scales)}")
    if sorted(set(cfg.scales)) != sorted(cfg.scales):
        raise ConfigError(f"--scales has repeated values: {list(cfg.scales)}")
    if 1.0 not in cfg.scales:
        raise ConfigError("--scales must contain 1.0: that variant is each test group's reference")
    if cfg.test % cfg.group_size:
        raise ConfigError(f"--test counts images and must be a multiple of {cfg.group_size} (one group per photo)")
    if cfg.train > 0 and cfg.scale_range[0] == cfg.scale_range[1] == 1.0:
        raise ConfigError("--scale-range 1 1 would make every train image unscaled; widen it")
    lo, hi = cfg.scale_range
    if not 0.1 <= lo <= hi <= 4:
        raise ConfigError(f"--scale-range must satisfy 0.1 ≤ min ≤ max ≤ 4, got {lo}, {hi}")
    for what, name, names in (("detector", cfg.detector, DETECTORS), ("segmenter", cfg.segmenter, SEGMENTERS),
                              ("inpainter", cfg.inpainter, INPAINTERS)):
        if name not in names:
            raise ConfigError(f"unknown --{what} {name!r}; choose one of {', '.join(names)}")
    for name in (cfg.detector, cfg.segmenter, cfg.inpainter):
        if name in CHECKPOINT_OPTIONS:
            attr, flag, alternative = CHECKPOINT_OPTIONS[name]
            path = getattr(cfg, attr)
            if not path:
                raise ConfigError(
                    f"the {name} backend needs {flag} (a local file; nothing is downloaded), or use {alternative}"
                )
            if not Path(path).exists():
                raise ConfigError(
                    f"{flag} {path} does not exist; put the checkpoint there or use {alternative} (offline)"
                )
    if cfg.detector == "gdino" and cfg.text_encoder and not Path(cfg.text_encoder).is_dir():
        raise ConfigError(f"--text-encoder {cfg.text_encoder} is not a folder (a local bert-base-uncased)")
    if not 0 <= cfg.min_mask < cfg.max_mask <= 1:
        raise ConfigError("--min-mask and --max-mask must satisfy 0 ≤ min < max ≤ 1 (fractions of the photo)")
    check_ranges(cfg, ("min_in_box", "anchor", "image_format", "max_side", "batch_size", "max_attempts", "dilate",
                       "feather", "prior_fraction"))
