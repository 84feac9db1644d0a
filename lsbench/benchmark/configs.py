"""The configs of ``lsbench train`` and ``lsbench evaluate``: the Python API's objects, and the CLI's options.

Kept apart from the code that runs them so the command line can build its options without
importing torch (``lsbench --help`` stays fast).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dec_models.archs import SIZES
from ..options import option

# TrainConfig fields that are create_model() options of the model a run trains.
MODEL_OPTIONS = ("img_size", "grid", "latent_mode", "dec_backward", "dec_width", "dec_resolution", "canon_width",
                 "canon_resolution", "aug_strength", "loss_weight")


@dataclass
class TrainConfig:
    """One training run; ``None`` fields take the dataset's paper default (:func:`paper_defaults`).

    The fields are the options of ``lsbench train`` (derived from them); the whole config is stored
    in every checkpoint and in ``config.json``.
    """

    model: str = option(help="{arch}_{method}, e.g. swin_dec (see `lsbench models`).", short="-m")
    data: str = option(help="Dataset folder (made by `lsbench generate`).", short="-d")
    out: str = option(help="Run folder: last.pt, best.pt, log.jsonl, config.json.", short="-o")
    size: str | None = option(None, help="Backbone size (default: tiny, or the --init-from checkpoint's).",
                              choices=SIZES)
    img_size: int | None = option(None, help="Model input size (images are resized; default: the paper's, "
                                  "or the --init-from checkpoint's).", min=1)
    pretrained: str | None = option(None, help="Backbone weights: a checkpoint file (timm, torch or lsbench: "
                                    "its backbone only), 'timm' (local cache) or 'none'.")
    init_from: str | None = option(None, help="Start from this lsbench checkpoint (any method of the same arch, "
                                   "size and classes): backbone, head and matching canonicalizers copied, new "
                                   "canonicalizers at the identity.")
    epochs: int | None = option(None, help="Default: the paper's for this dataset.", min=1)
    batch_size: int | None = option(None, help="Default: the paper's for this dataset.", min=1)
    lr: float | None = option(None, help="Peak learning rate (AdamW).")
    weight_decay: float | None = option(None, help="AdamW weight decay.")
    warmup_epochs: float | None = option(None, help="Linear warmup, in epochs.", min=0)
    scheduler: str | None = option(None, help="Learning-rate schedule after warmup.", choices=("cosine", "constant"))
    label_smoothing: float | None = option(None, help="Label smoothing of the task loss, in [0, 1).")
    mixup: float | None = option(None, help="Mixup/CutMix alpha (classification; 0 = off).")
    random_erase: float | None = option(None, help="Random-erasing probability.", min=0, max=1)
    layer_decay: float | None = option(None, help="timm's layer-wise learning-rate decay, in (0, 1].")
    grad_clip: float | None = option(5.0, help="Clip the gradient norm to this.")
    train_split: str = option("train", help="Split to train on.")
    val_split: str = option("test", help="Split to validate on after every epoch.")
    val_limit: int | None = option(2000, help="Validation samples per epoch.", min=1)
    max_steps_per_epoch: int | None = option(None, help="Cap steps per epoch (quick runs).", min=1)
    workers: int = option(2, help="DataLoader workers.", min=0)
    seed: int = option(0, help="Seed of the weights, data order and augmentations.")
    amp: bool = option(True, help="Mixed precision on CUDA (--no-amp: full float32).")
    shuffle_buffer: int = option(1000, help="Samples in the shuffle buffer.", min=1)
    log_every: int = option(10, help="Write log.jsonl every N steps.", min=1)
    grid: int = option(4, help="Monotone-scaling grid cells per axis.", min=1)
    latent_mode: str = option(
        "equivariant", help="Adapted layers: equivariant or invariant.", choices=("equivariant", "invariant")
    )
    # None: the method's own default (its registry entry); the resolved value is what runs record.
    dec_backward: str | None = option(
        None, help="DEC backward: implicit or phantom (the paper code's) (default: the method's, implicit).",
        choices=("implicit", "phantom"),
    )
    dec_width: int | None = option(
        None, help="Channels of DEC's canonicalizer CNN, first layer (the second has twice as many) "
        "(default: the method's, 32).", min=1,
    )
    dec_resolution: int | None = option(
        None, help="Longer side DEC's canonicalizer sees the map at, area-downsampled (default: the method's, 8).",
        min=1,
    )
    canon_width: int | None = option(
        None, help="Channels Canon's energy sees, projected by a 1x1 conv before the candidates are warped "
        "(0: all) (default: the method's, 16).", min=0,
    )
    canon_resolution: int | None = option(
        None, help="Longer side Canon's energy sees the map at (default: the method's, 8).", min=1,
    )
    aug_strength: float | None = option(
        None, help="Strength of Ω for aug/invl/augl (default: the method's, 0.25).", min=0
    )
    loss_weight: float | None = option(
        None, help="Weight of the extra loss of invl/augl (default: the method's, 1.0).", min=0
    )

    def model_options(self) -> dict[str, Any]:
        """The :func:`~lsbench.dec_models.registry.create_model` options this run builds its model with."""
        return {k: getattr(self, k) for k in MODEL_OPTIONS}

    def __post_init__(self) -> None:
        # Folders as the CLI always recorded them (``ds/`` and ``ds`` are one run's data, for --resume).
        self.data, self.out = str(Path(self.data)), str(Path(self.out))
        if self.init_from is not None:
            self.init_from = str(Path(self.init_from))


@dataclass(frozen=True)
class EvaluateConfig:
    """One evaluation: a model on a dataset split.  The fields are the options of ``lsbench evaluate``."""

    model: str = option(help="{arch}_{method} (with --checkpoint), or timm:NAME[.TAG] (its published weights from "
                        "the local timm/HF cache, or --checkpoint FILE).", short="-m")
    data: Path = option(help="Dataset folder.", short="-d")
    checkpoint: Path | None = option(None, help="best.pt/last.pt from `lsbench train`.", short="-c")
    split: str = option("test", help="Split to evaluate.")
    out: Path | None = option(None, help="Folder for the result JSON (None: write none).", short="-o")
    batch_size: int = option(64, help="Images per forward.", min=1)
    limit: int | None = option(None, help="Evaluate only the first N samples (quick looks).", min=1)
    workers: int | None = option(None, help="DataLoader workers (default: 0 on CPU, up to 8 with CUDA).", min=0)
    img_size: int | None = option(None, help="Input size (default: the model's).", min=1)
    eque_draws: int = option(4, help="Scalings Φ~Ω per image for EquE (segmentation).", min=0)
    eque_strength: float = option(0.25, help="Strength of Ω for EquE.", min=0)
    skip_corrupt: bool = option(False, help="Skip corrupt shards and samples instead of stopping (each named in a "
                                "warning, also with -q, and in the result).")
    save_predictions: bool = option(False, help="Also write one record per sample (key, group, variant, scales, "
                                    "label, top-5, p(label)) beside the result: RESULT.predictions.jsonl.gz.")
    amp: bool = option(True, help="Mixed precision on CUDA (--no-amp: full float32).")
    seed: int = option(0, help="Seed of the EquE draws.")
    # Set by `lsbench study` (Python only): the run this result belongs to, for the leaderboard's ± over seeds.
    study: dict[str, Any] | None = option(None, cli=False)
