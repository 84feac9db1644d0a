"""One registry for every model name: ``create_model(name, num_classes, ...)``.

A name is ``{arch}_{method}`` — an architecture of :mod:`.archs` (resnet, vit, deit, swin, beit,
dinov2: timm backbones; ``size`` micro/tiny/small/base) adapted by a method of :mod:`.methods`
(base, aug, canon, invl, augl, dec) — or ``PREFIX:NAME`` of a registered family (``timm:NAME``,
:mod:`.timm_plain`).  :func:`parse_name` is the one place a name is checked (with the closest
names as a hint), :func:`create_model` the one place a model is built, in the spirit of timm's
``create_model``/``list_models``: callers (training, evaluation, ``lsbench models``, the
leaderboard) read names and defaults from here instead of keeping their own lists.

Canon and DEC adapt the backbone's layers with latent canonicalization (:mod:`.latent`); the
others keep it plain.  Pretrained weights never come from the network (:mod:`.weights`):
``pretrained`` is ``None``/``"none"`` (random init), a local checkpoint file (timm/torch state dict,
``.pth``/``.bin``/``.safetensors``), or ``"timm"`` for the local timm/Hugging Face cache
(``~/.cache/huggingface/hub``).  A missing file is one :class:`~lsbench.errors.ConfigError` line
saying which file to put where.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..util import Registry
from . import timm_plain
from .archs import SIZES, Arch, get_arch, list_archs
from .dpt import DPTHead
from .latent import adapted_layers, canonicalize_layers
from .methods import get_method, list_methods, paper_defaults
from .weights import apply_pretrained

ARCHS = tuple(list_archs())  # the registered names, for callers that group by them (the leaderboard)
METHODS = tuple(list_methods())
TASKS = ("cls", "seg")


@dataclass(frozen=True)
class Family:
    """Models named ``PREFIX:NAME`` rather than ``{arch}_{method}``: ``check(NAME)`` refuses an unknown
    ``NAME`` (with a hint), ``create(NAME, num_classes, task=, pretrained=, **options)`` builds one;
    ``options`` are the keyword options it takes."""

    prefix: str
    usage: str
    summary: str
    check: Callable[[str], None]
    create: Callable[..., nn.Module]
    options: tuple[str, ...] = ()


_FAMILIES = Registry("model family", reserved="_")


def register_family(family: Family) -> Family:
    return _FAMILIES.add(family.prefix, family)


def get_family(prefix: str) -> Family:
    return _FAMILIES.lookup(prefix)


def list_families() -> list[str]:
    return list(_FAMILIES)


register_family(Family(timm_plain.PREFIX, timm_plain.USAGE, timm_plain.SUMMARY, timm_plain.check_name,
                       timm_plain.create, options=("img_size",)))


def list_models() -> list[str]:
    """Every ``{arch}_{method}`` name (families such as ``timm:`` are open-ended: not listed)."""
    return [f"{a}_{m}" for a in list_archs() for m in list_methods()]


def parse_name(name: str) -> tuple[str, str]:
    """Check a model name: ``{arch}_{method}`` → ``(arch, method)``; ``PREFIX:NAME`` of a registered
    family → ``(PREFIX, NAME)``.  Anything else is one :class:`ConfigError` naming the closest names."""
    prefix, colon, rest = name.partition(":")
    if colon and prefix in _FAMILIES:
        _FAMILIES[prefix].check(rest)
        return prefix, rest
    arch, _, method = name.partition("_")
    if arch in list_archs() and method in list_methods():
        return arch, method
    close = difflib.get_close_matches(name, list_models(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    families = "".join(f", or {_FAMILIES[p].usage}" for p in _FAMILIES)
    raise ConfigError(
        f"unknown model {name!r}{hint}: use {{arch}}_{{method}} with arch in {', '.join(list_archs())} "
        f"and method in {', '.join(list_methods())}{families} (`lsbench models` lists them)"
    )


# A model records every field, also those its method does not read; those keep the paper's values.
_PAPER = paper_defaults()


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
    dec_backward: str = _PAPER["dec_backward"]
    dec_solver: str = _PAPER["dec_solver"]
    dec_max_iter: int = _PAPER["dec_max_iter"]
    dec_tol: float = _PAPER["dec_tol"]
    dec_width: int = _PAPER["dec_width"]
    dec_resolution: int = _PAPER["dec_resolution"]
    canon_candidates: int = _PAPER["canon_candidates"]
    canon_width: int = _PAPER["canon_width"]
    canon_resolution: int = _PAPER["canon_resolution"]
    aug_strength: float = _PAPER["aug_strength"]
    loss_weight: float = _PAPER["loss_weight"]
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


def _timm_kwargs(arch: Arch, cfg: ModelConfig) -> dict[str, Any]:
    kwargs = dict(cfg.timm_kwargs)
    for key, value in arch.input_kwargs(cfg.img_size).items():
        kwargs.setdefault(key, value)
    return kwargs


def create_model(
    name: str,
    num_classes: int,
    task: str = "cls",
    size: str = "tiny",
    pretrained: str | Path | None = None,
    **options: Any,
) -> LSModel | timm_plain.TimmModel:
    """Build ``name`` for ``num_classes`` classes: an :class:`LSModel` for ``{arch}_{method}``, whose
    ``options`` are :class:`ModelConfig` fields (``img_size``, ``in_chans``, ``grid``, ``latent_mode``,
    ``layers``, ``dec_backward``, ...; unset ones take the method's defaults), or the family's model
    for ``PREFIX:NAME`` (``size`` is for ``{arch}_{method}`` models only)."""
    import timm

    head, tail = parse_name(name)
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if size not in SIZES:
        raise ConfigError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    if head in _FAMILIES:
        family = _FAMILIES[head]
        unknown = set(options) - set(family.options)
        if unknown:
            raise ConfigError(f"{name} takes no {', '.join(sorted(unknown))}: it is {family.summary}")
        return family.create(tail, num_classes, task=task, pretrained=pretrained, **options)
    arch, method = get_arch(head), get_method(tail)
    unknown = set(options) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown model options: {', '.join(sorted(unknown))}")
    timm_name, overrides = arch.sizes[size]
    cfg = ModelConfig(name=name, num_classes=num_classes, task=task, size=size, timm_name=timm_name,
                      **{**method.defaults, **options})
    cfg.timm_kwargs = {**overrides, **cfg.timm_kwargs}
    kwargs = _timm_kwargs(arch, cfg)
    backbone = timm.create_model(
        timm_name, pretrained=False, num_classes=num_classes if task == "cls" else 0, in_chans=cfg.in_chans, **kwargs,
    )
    unpublished = cfg.timm_kwargs.get("embed_dim") or size == "micro"
    apply_pretrained(backbone, pretrained, timm_name=timm_name, timm_kwargs={"in_chans": cfg.in_chans, **kwargs},
                     unpublished=f"{arch.name} size {size}" if unpublished else None)
    if method.canonicalizer is not None:
        cfg.layers = canonicalize_layers(backbone, arch.name, method.canonicalizer(cfg), layers=cfg.layers,
                                         mode=cfg.latent_mode)
    head_module = None
    if task == "seg":
        model = LSModel(backbone, cfg)
        backbone.eval()  # the probe must not touch BatchNorm statistics (nor need a batch > 1)
        with torch.no_grad():
            probe = torch.zeros(1, cfg.in_chans, cfg.img_size, cfg.img_size)
            channels = [f.shape[1] for f in model.features(probe)]
        backbone.train()
        head_module = DPTHead(channels, num_classes)
    return LSModel(backbone, cfg, head_module)


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
