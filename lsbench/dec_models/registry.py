"""One registry for every ``{arch}_{method}`` model: ``create_model(name, num_classes, ...)``.

``arch`` ∈ resnet, vit, deit, swin, beit, dinov2 (timm backbones; ``size`` tiny/small/base, plus
``micro`` — a 2-block/1-block-per-stage version for CPU tests and demos); ``method`` ∈ base, aug,
canon, invl, augl, dec (:mod:`.baselines` says what each does in training).  Canon and DEC adapt
the backbone's layers with latent canonicalization (:mod:`.latent`); the others keep it plain.

Pretrained weights never come from the network: ``pretrained`` is ``None``/``"none"`` (random
init), a local checkpoint file (timm/torch state dict, ``.pth``/``.bin``/``.safetensors``), or
``"timm"`` for the local timm/Hugging Face cache (``~/.cache/huggingface/hub``).  A missing file
is one :class:`~lsbench.errors.ConfigError` line saying which file to put where.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from . import canonicalizer as C
from .dpt import DPTHead
from .latent import adapted_layers, canonicalize_layers

ARCHS = ("resnet", "vit", "deit", "swin", "beit", "dinov2")
METHODS = ("base", "aug", "canon", "invl", "augl", "dec")
SIZES = ("micro", "tiny", "small", "base")
TASKS = ("cls", "seg")

_MICRO_TOKENS = {"depth": 2}
# timm name and constructor overrides per (arch, size).  Sizes without a timm model of their own
# (BEiT tiny/small, DINOv2 tiny) use the family's architecture at that width: random init only.
BACKBONES: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "resnet": {
        "micro": ("resnet10t", {}),
        "tiny": ("resnet18", {}),
        "small": ("resnet34", {}),
        "base": ("resnet50", {}),
    },
    "vit": {
        "micro": ("vit_tiny_patch16_224", _MICRO_TOKENS),
        "tiny": ("vit_tiny_patch16_224", {}),
        "small": ("vit_small_patch16_224", {}),
        "base": ("vit_base_patch16_224", {}),
    },
    "deit": {
        "micro": ("deit_tiny_patch16_224", _MICRO_TOKENS),
        "tiny": ("deit_tiny_patch16_224", {}),
        "small": ("deit_small_patch16_224", {}),
        "base": ("deit_base_patch16_224", {}),
    },
    "swin": {
        "micro": ("swin_tiny_patch4_window7_224", {"depths": (1, 1, 1, 1), "embed_dim": 32, "num_heads": (1, 2, 4, 8)}),
        "tiny": ("swin_tiny_patch4_window7_224", {}),
        "small": ("swin_small_patch4_window7_224", {}),
        "base": ("swin_base_patch4_window7_224", {}),
    },
    "beit": {
        "micro": ("beit_base_patch16_224", {"embed_dim": 96, "depth": 2, "num_heads": 3}),
        "tiny": ("beit_base_patch16_224", {"embed_dim": 192, "num_heads": 3}),
        "small": ("beit_base_patch16_224", {"embed_dim": 384, "num_heads": 6}),
        "base": ("beit_base_patch16_224", {}),
    },
    "dinov2": {
        "micro": ("vit_small_patch14_reg4_dinov2", {"embed_dim": 96, "depth": 2, "num_heads": 3}),
        "tiny": ("vit_small_patch14_dinov2", {"embed_dim": 192, "num_heads": 3}),
        "small": ("vit_small_patch14_dinov2", {}),
        "base": ("vit_base_patch14_dinov2", {}),
    },
}


def model_names() -> list[str]:
    """All 36 ``{arch}_{method}`` names."""
    return [f"{a}_{m}" for a in ARCHS for m in METHODS]


def parse_name(name: str) -> tuple[str, str]:
    arch, _, method = name.partition("_")
    if arch not in ARCHS or method not in METHODS:
        raise ConfigError(
            f"unknown model {name!r}: use {{arch}}_{{method}} with arch in {', '.join(ARCHS)} "
            f"and method in {', '.join(METHODS)} (`lsbench models` lists them)"
        )
    return arch, method


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored in every checkpoint (plain JSON types)."""

    name: str
    num_classes: int
    task: str = "cls"
    size: str = "tiny"
    img_size: int = 224
    in_chans: int = 3
    grid: int = 4
    latent_mode: str = "equivariant"
    layers: list[str] | None = None
    dec_backward: str = "implicit"
    dec_solver: str = "anderson"
    dec_max_iter: int = 20
    dec_tol: float = 1e-3
    canon_candidates: int = 64
    aug_strength: float = 0.25
    loss_weight: float = 1.0
    timm_name: str = ""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return parse_name(self.name)[0]

    @property
    def method(self) -> str:
        return parse_name(self.name)[1]


class LSModel(nn.Module):
    """A timm backbone (possibly with canonicalized layers) plus, for segmentation, a DPT head.

    ``forward(x)`` ``(B, C, H, W)`` → logits ``(B, K)`` (cls) or ``(B, K, H, W)`` (seg).
    """

    def __init__(self, backbone: nn.Module, config: ModelConfig, seg_head: DPTHead | None = None):
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.seg_head = seg_head

    def _seg_indices(self) -> list[int]:
        if not hasattr(self.backbone, "blocks"):
            # Hierarchical backbones: the last 4 levels (ResNet's level 0 is the stem).
            n = len(self.backbone.feature_info)
            return list(range(n - 4, n))
        n = len(self.backbone.blocks)
        if n <= 4:
            return [min(i, n - 1) for i in range(4)]
        return [round(n * (k + 1) / 4) - 1 for k in range(4)]  # e.g. 2, 5, 8, 11 for 12 blocks

    def features(self, x: Tensor) -> list[Tensor]:
        """Four intermediate maps ``(B, C_i, h_i, w_i)`` (DPT input; AugL's equivariance target)."""
        wanted = self._seg_indices()
        unique = sorted(set(wanted))  # shallow micro models repeat their last block's map
        maps = self.backbone.forward_intermediates(x, indices=unique, intermediates_only=True)
        return [maps[unique.index(i)] for i in wanted]

    def forward(self, x: Tensor) -> Tensor:
        if self.seg_head is None:
            return self.backbone(x)
        return self.seg_head(self.features(x), x.shape[-2:])

    def solver_stats(self) -> dict[str, float]:
        """Mean DEQ iterations and residual over the adapted layers' last calls (DEC models)."""
        its, res = [], []
        for layer in adapted_layers(self.backbone):
            stats = getattr(layer.canonicalizer, "last_stats", None)
            if hasattr(stats, "iterations"):
                its.append(stats.iterations.float().mean().item())
                res.append(stats.residual.float().mean().item())
        if not its:
            return {}
        return {"deq_iterations": sum(its) / len(its), "deq_residual": sum(res) / len(res)}


def _canonicalizer_factory(cfg: ModelConfig):
    method = cfg.method
    if method == "dec":
        return lambda ch: C.DEC(
            ch, grid=cfg.grid, backward=cfg.dec_backward, solver=cfg.dec_solver,
            max_iter=cfg.dec_max_iter, tol=cfg.dec_tol,
        )
    if method == "canon":
        return lambda ch: C.Canon(ch, grid=cfg.grid, num_candidates=cfg.canon_candidates)
    return None


def _timm_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    kwargs = dict(cfg.timm_kwargs)
    if cfg.arch != "resnet":
        kwargs.setdefault("img_size", cfg.img_size)
    if cfg.arch == "swin" and cfg.img_size != 224:
        kwargs.setdefault("window_size", max(1, min(7, cfg.img_size // 32)))
    return kwargs


def _hub_cache() -> Path:
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return Path(os.environ.get("HF_HUB_CACHE") or home / "hub")


def _cached_weights(timm_name: str) -> Path:
    """The weights file of ``timm_name``'s default pretrained tag in the local HF cache — looked up
    locally only, never downloaded."""
    from huggingface_hub import hf_hub_download
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg(timm_name).hf_hub_id
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return Path(hf_hub_download(repo, filename, local_files_only=True, cache_dir=_hub_cache()))
        except Exception:  # noqa: BLE001 - not in the cache under this name
            continue
    raise ConfigError(
        f"pretrained weights for {timm_name} are not in the local cache: put the Hugging Face repo {repo} "
        f"(model.safetensors) at {_hub_cache() / ('models--' + repo.replace('/', '--'))}, "
        "or pass --pretrained PATH to a checkpoint file, or --pretrained none"
    )


def read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ConfigError(f"pretrained checkpoint {path} not found; pass an existing file or --pretrained none")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means an unusable file
        raise ConfigError(f"cannot read pretrained checkpoint {path} ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"{path} does not hold a state dict")
    return state


def load_backbone_weights(backbone: nn.Module, state: dict[str, Tensor], source: str) -> int:
    """Copy matching tensors (classifier heads of another size are skipped); returns the count."""
    own = backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(usable) < len(own) // 2:
        raise ConfigError(
            f"{source} matches only {len(usable)} of {len(own)} tensors of this backbone; "
            "is it a checkpoint of the same timm architecture and size?"
        )
    backbone.load_state_dict(usable, strict=False)
    return len(usable)


def _apply_pretrained(backbone: nn.Module, cfg: ModelConfig, pretrained: str | Path | None) -> None:
    import timm

    if pretrained is None or str(pretrained).lower() == "none":
        return
    if str(pretrained).lower() == "timm":
        if cfg.timm_kwargs.get("embed_dim") or cfg.size == "micro":
            raise ConfigError(f"no published weights for {cfg.arch} size {cfg.size}; use --pretrained none")
        path = _cached_weights(cfg.timm_name)
        try:  # timm's own loader applies the model's checkpoint filter (e.g. position-embedding resize)
            ref = timm.create_model(cfg.timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                    num_classes=0, in_chans=cfg.in_chans, **_timm_kwargs(cfg))
        except Exception as e:  # noqa: BLE001 - corrupt or mismatched file
            raise ConfigError(f"cannot load the cached weights {path} ({type(e).__name__}: {e})") from e
        load_backbone_weights(backbone, ref.state_dict(), f"the cached {cfg.timm_name}")
        return
    load_backbone_weights(backbone, read_state_dict(Path(pretrained)), str(pretrained))


def create_model(
    name: str,
    num_classes: int,
    task: str = "cls",
    size: str = "tiny",
    pretrained: str | Path | None = None,
    **options: Any,
) -> LSModel:
    """Build ``{arch}_{method}`` for ``num_classes`` classes; ``options`` are :class:`ModelConfig` fields
    (``img_size``, ``in_chans``, ``grid``, ``latent_mode``, ``layers``, ``dec_backward``, ...)."""
    import timm

    arch, _ = parse_name(name)
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if size not in SIZES:
        raise ConfigError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    unknown = set(options) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown model options: {', '.join(sorted(unknown))}")
    timm_name, overrides = BACKBONES[arch][size]
    cfg = ModelConfig(name=name, num_classes=num_classes, task=task, size=size, timm_name=timm_name, **options)
    cfg.timm_kwargs = {**overrides, **cfg.timm_kwargs}
    backbone = timm.create_model(
        timm_name, pretrained=False, num_classes=num_classes if task == "cls" else 0,
        in_chans=cfg.in_chans, **_timm_kwargs(cfg),
    )
    _apply_pretrained(backbone, cfg, pretrained)
    factory = _canonicalizer_factory(cfg)
    if factory is not None:
        cfg.layers = canonicalize_layers(backbone, arch, factory, layers=cfg.layers, mode=cfg.latent_mode)
    head = None
    if task == "seg":
        model = LSModel(backbone, cfg)
        backbone.eval()  # the probe must not touch BatchNorm statistics (nor need a batch > 1)
        with torch.no_grad():
            probe = torch.zeros(1, cfg.in_chans, cfg.img_size, cfg.img_size)
            channels = [f.shape[1] for f in model.features(probe)]
        backbone.train()
        head = DPTHead(channels, num_classes)
    return LSModel(backbone, cfg, head)


def model_from_config(config: dict[str, Any]) -> LSModel:
    """Rebuild a model (random weights) from a stored :class:`ModelConfig` dict."""
    cfg = dict(config)
    name, num_classes = cfg.pop("name"), cfg.pop("num_classes")
    task, size = cfg.pop("task"), cfg.pop("size")
    cfg.pop("timm_name", None)
    return create_model(name, num_classes, task, size, pretrained=None, **cfg)


def config_dict(model: LSModel) -> dict[str, Any]:
    return asdict(model.config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
