"""Latent canonicalization (paper Sec. 4.3) for timm backbones.

For each adapted layer ``k`` with input ``F_k`` a canonicalizer predicts ``psi_k``
(:mod:`.canonicalizer`) and the layer becomes

- equivariant: ``M̃_k(F) = unwarp(M_k(warp(F, psi_k)), psi_k)`` (the paper's ``S(M(S⁻¹(F; Φ)); Φ)``),
- invariant:   ``M̃_k(F) = M_k(warp(F, psi_k))``.

Which layers are adapted, per family (defaults follow the paper's code, one ``psi`` per adapted
layer, at most 8 per model):

- ``resnet`` — the input of each of the 4 stages (``layer1``–``layer4``), ``(B, C, H, W)``;
- ``swin`` — the input of each of the 4 stages (``layers.0``–``layers.3``), timm's ``(B, H, W, C)``;
- ``vit``, ``deit``, ``beit``, ``dinov2`` — the input of the first 2 transformer blocks.  Tokens
  ``(B, N, C)`` are split into the prefix tokens (class, distillation, registers: they pass through
  untouched) and the patch tokens, reshaped to their ``(h, w)`` grid.  Positional embeddings are
  added by timm before the blocks, so they move with the content they are attached to, as in the
  paper's code; the token grid is read from the input size on every call, so timm's dynamic image
  sizes work.

``psi`` lives in normalised coordinates, so one element applies to a map of any resolution
(e.g. before and after a ResNet stage halves it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .. import monotone as M

FAMILY_LAYOUT = {
    "resnet": "nchw", "swin": "nhwc", "vit": "tokens", "deit": "tokens", "beit": "tokens", "dinov2": "tokens",
}
MODES = ("equivariant", "invariant")
MAX_ADAPTED = 8


def default_layers(family: str, model: nn.Module) -> list[str]:
    """Module paths adapted by default (the paper code's choice)."""
    if family == "resnet":
        return ["layer1", "layer2", "layer3", "layer4"]
    if family == "swin":
        return [f"layers.{i}" for i in range(len(model.layers))]
    return [f"blocks.{i}" for i in range(min(2, len(model.blocks)))]


class TokenGrid:
    """Shared, per-forward record of the patch grid ``(h, w)`` of a token model."""

    def __init__(self, patch_size: tuple[int, int], num_prefix_tokens: int):
        self.patch_size = patch_size
        self.num_prefix_tokens = num_prefix_tokens
        self.hw: tuple[int, int] | None = None

    def set_input(self, x: Tensor) -> None:
        ph, pw = self.patch_size
        self.hw = (x.shape[-2] // ph, x.shape[-1] // pw)


def _to_grid(x: Tensor, layout: str, tokens: TokenGrid | None) -> tuple[Tensor, Tensor | None]:
    """Layer input → ``(B, C, h, w)`` map, plus the prefix tokens to put back (token layout)."""
    if layout == "nchw":
        return x, None
    if layout == "nhwc":
        return x.permute(0, 3, 1, 2), None
    n = tokens.num_prefix_tokens
    h, w = tokens.hw
    patches = x[:, n:]
    if patches.shape[1] != h * w:
        raise RuntimeError(f"token grid {h}x{w} does not match {patches.shape[1]} patch tokens")
    return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w), x[:, :n]


def _from_grid(g: Tensor, layout: str, prefix: Tensor | None) -> Tensor:
    if layout == "nchw":
        return g
    if layout == "nhwc":
        return g.permute(0, 2, 3, 1)
    return torch.cat([prefix, g.flatten(2).transpose(1, 2)], dim=1)


class CanonicalizedLayer(nn.Module):
    """Wraps one layer ``M_k`` with its canonicalizer; see the module docstring."""

    def __init__(self, layer: nn.Module, canonicalizer: nn.Module, layout: str, mode: str, tokens: TokenGrid | None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.layer = layer
        self.canonicalizer = canonicalizer
        self.layout, self.mode = layout, mode
        self._tokens = tokens  # plain attribute: shared, not a submodule
        self.last_psi: Tensor | None = None

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        grid, prefix = _to_grid(x, self.layout, self._tokens)
        psi = self.canonicalizer(grid)
        self.last_psi = psi.detach()  # for inspection; detached so it does not keep the graph alive
        y = self.layer(_from_grid(M.warp(grid, psi, exact=False), self.layout, prefix), *args, **kwargs)
        if self.mode == "invariant":
            return y
        out_grid, out_prefix = _to_grid(y, self.layout, self._tokens)
        return _from_grid(M.unwarp(out_grid, psi, exact=False), self.layout, out_prefix)


def _channels(family: str, model: nn.Module, path: str) -> int:
    """Input channels of the layer at ``path``."""
    layer = model.get_submodule(path)
    if family == "resnet":
        first = layer[0]
        return first.conv1.in_channels
    if family == "swin":
        if isinstance(layer.downsample, nn.Identity):
            return layer.blocks[0].norm1.normalized_shape[0]
        return layer.downsample.norm.normalized_shape[0] // 4  # patch merging normalises 2x2 concatenated tokens
    return model.embed_dim


def canonicalize_layers(
    model: nn.Module,
    family: str,
    make_canonicalizer: Callable[[int], nn.Module],
    *,
    layers: list[str] | None = None,
    mode: str = "equivariant",
) -> list[str]:
    """Replace the chosen layers of a timm ``model`` in place by :class:`CanonicalizedLayer`.

    ``make_canonicalizer(in_channels)`` builds one canonicalizer per layer.  Returns the adapted
    module paths.  For token models it also installs a forward pre-hook on the patch embedding
    that records the patch grid of each input (every forward path of timm goes through it).
    """
    layout = FAMILY_LAYOUT[family]
    layers = default_layers(family, model) if layers is None else list(layers)
    if len(layers) > MAX_ADAPTED:
        raise ValueError(f"at most {MAX_ADAPTED} adapted layers, got {len(layers)}")
    tokens = None
    if layout == "tokens":
        patch = model.patch_embed.patch_size
        tokens = TokenGrid(tuple(patch), model.num_prefix_tokens)
        model.patch_embed.register_forward_pre_hook(lambda _m, args: tokens.set_input(args[0]))
    for path in layers:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        layer = parent.get_submodule(name)
        wrapped = CanonicalizedLayer(layer, make_canonicalizer(_channels(family, model, path)), layout, mode, tokens)
        if isinstance(parent, nn.Sequential | nn.ModuleList) and name.isdigit():
            parent[int(name)] = wrapped
        else:
            setattr(parent, name, wrapped)
    return layers


def adapted_layers(model: nn.Module) -> list[CanonicalizedLayer]:
    return [m for m in model.modules() if isinstance(m, CanonicalizedLayer)]
