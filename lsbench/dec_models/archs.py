"""The backbone architectures, registered by name: the ``arch`` of a ``{arch}_{method}`` model.

One :class:`Arch` per timm family holds the timm model and constructor overrides of each size and
the constructor arguments that follow the input size, so adding a family is one
:func:`register_arch` call here (plus its layer layout in :mod:`.latent`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..util import Registry

SIZES = ("micro", "tiny", "small", "base")


def _fixed_input(img_size: int) -> dict[str, Any]:
    """Position embeddings are built for one input size."""
    return {"img_size": img_size}


def _any_input(img_size: int) -> dict[str, Any]:
    """Convolutions only: the same weights run at any input size."""
    return {}


def _swin_input(img_size: int) -> dict[str, Any]:
    """Swin's windows (7 at 224 px) are at most the last stage's map (``img_size / 32``) at other sizes."""
    kwargs: dict[str, Any] = {"img_size": img_size}
    if img_size != 224:
        kwargs["window_size"] = max(1, min(7, img_size // 32))
    return kwargs


@dataclass(frozen=True)
class Arch:
    """A timm backbone family: ``sizes[size] = (timm name, constructor overrides)``, and
    ``input_kwargs(img_size)``, the constructor arguments that depend on the input size."""

    name: str
    sizes: Mapping[str, tuple[str, Mapping[str, Any]]]
    input_kwargs: Callable[[int], dict[str, Any]] = _fixed_input

    @property
    def any_input_size(self) -> bool:
        """Whether a built model runs at other input sizes than the one it was built for."""
        return not self.input_kwargs(224)


_ARCHS = Registry("architecture")


def register_arch(arch: Arch) -> Arch:
    """Add ``arch`` under its name (every size of :data:`SIZES`, each name once)."""
    if tuple(arch.sizes) != SIZES:
        raise ValueError(f"architecture {arch.name} must define the sizes {', '.join(SIZES)}")
    return _ARCHS.add(arch.name, arch)


def get_arch(name: str) -> Arch:
    return _ARCHS.lookup(name)


def list_archs() -> list[str]:
    """Registered architecture names, in registration order."""
    return list(_ARCHS)


_MICRO_TOKENS = {"depth": 2}
# ``micro`` is a 2-block (1 block per stage) version for CPU tests and demos.  Sizes without a timm
# model of their own (BEiT tiny/small, DINOv2 tiny) use the family's architecture at that width:
# random init only.
register_arch(Arch("resnet", {
    "micro": ("resnet10t", {}),
    "tiny": ("resnet18", {}),
    "small": ("resnet34", {}),
    "base": ("resnet50", {}),
}, input_kwargs=_any_input))
register_arch(Arch("vit", {
    "micro": ("vit_tiny_patch16_224", _MICRO_TOKENS),
    "tiny": ("vit_tiny_patch16_224", {}),
    "small": ("vit_small_patch16_224", {}),
    "base": ("vit_base_patch16_224", {}),
}))
register_arch(Arch("deit", {
    "micro": ("deit_tiny_patch16_224", _MICRO_TOKENS),
    "tiny": ("deit_tiny_patch16_224", {}),
    "small": ("deit_small_patch16_224", {}),
    "base": ("deit_base_patch16_224", {}),
}))
register_arch(Arch("swin", {
    "micro": ("swin_tiny_patch4_window7_224", {"depths": (1, 1, 1, 1), "embed_dim": 32, "num_heads": (1, 2, 4, 8)}),
    "tiny": ("swin_tiny_patch4_window7_224", {}),
    "small": ("swin_small_patch4_window7_224", {}),
    "base": ("swin_base_patch4_window7_224", {}),
}, input_kwargs=_swin_input))
register_arch(Arch("beit", {
    "micro": ("beit_base_patch16_224", {"embed_dim": 96, "depth": 2, "num_heads": 3}),
    "tiny": ("beit_base_patch16_224", {"embed_dim": 192, "num_heads": 3}),
    "small": ("beit_base_patch16_224", {"embed_dim": 384, "num_heads": 6}),
    "base": ("beit_base_patch16_224", {}),
}))
register_arch(Arch("dinov2", {
    "micro": ("vit_small_patch14_reg4_dinov2", {"embed_dim": 96, "depth": 2, "num_heads": 3}),
    "tiny": ("vit_small_patch14_dinov2", {"embed_dim": 192, "num_heads": 3}),
    "small": ("vit_small_patch14_dinov2", {}),
    "base": ("vit_base_patch14_dinov2", {}),
}))
