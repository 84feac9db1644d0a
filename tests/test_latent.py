"""Latent canonicalization and the canonicalizers (DEC, Canon, Optim, Fixed, Oracle).

- identity canonicalizers leave every timm family bit-exact; a fresh ``{arch}_dec`` model is its
  backbone exactly (zero-initialised DEC heads);
- prefix tokens (class, registers) pass through untouched; patch tokens move with their grid;
- with the true inverse scaling (Oracle), an invariant layer undoes a scaling of its input and an
  equivariant one commutes with it — for feature maps and for token sequences;
- DEC returns valid scalings, converges, and learns to canonicalize a toy pattern;
- Canon/Optim return valid scalings and train their energies.

Convention (lsbench.monotone): ``warp(x, phi)(p) = x(l_phi(p))``.  If ``I_s = warp(I, phi)`` then
``warp(I_s, psi)(p) = I(l_phi(l_psi(p)))``, so the canonicalizing element is ``psi = inverse(phi)``;
``unwarp(y, psi)(q) = y(l_psi⁻¹(q)) = y(l_phi(q)) = warp(y, phi)(q)``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lsbench import monotone as M
from lsbench.dec_models import canonicalizer as C
from lsbench.dec_models import registry
from lsbench.dec_models.latent import (
    CanonicalizedLayer,
    TokenGrid,
    adapted_layers,
    canonicalize_layers,
    default_layers,
)

ARCHS = registry.ARCHS


def img_size(arch: str) -> int:
    return 28 if arch == "dinov2" else 32


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def smooth_images(b: int, c: int, size: int, generator: torch.Generator, base: int = 6) -> torch.Tensor:
    """Low-frequency random images (bicubic upsampled noise): resampling them is nearly exact."""
    return F.interpolate(torch.randn(b, c, base, base, generator=generator), size=(size, size), mode="bicubic",
                         align_corners=False)


def refine(phi: torch.Tensor, n: int) -> torch.Tensor:
    """The same map on an ``n × n`` node grid (a bilinear cell split into sub-cells stays bilinear), so
    its projected inverse is much closer to the exact inverse than on the coarse grid."""
    t = torch.linspace(0, 1, n + 1, dtype=phi.dtype)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    pts = torch.stack([xx, yy], dim=-1).expand(phi.shape[0], -1, -1, -1)
    return M.evaluate(phi, pts).permute(0, 3, 1, 2).contiguous()


def unwrap(backbone: nn.Module) -> nn.Module:
    """Replace every CanonicalizedLayer by the layer it wraps (in place); returns the backbone."""
    for name, module in list(backbone.named_modules()):
        if isinstance(module, CanonicalizedLayer):
            parent_path, _, child = name.rpartition(".")
            parent = backbone.get_submodule(parent_path) if parent_path else backbone
            if isinstance(parent, nn.Sequential | nn.ModuleList) and child.isdigit():
                parent[int(child)] = module.layer
            else:
                setattr(parent, child, module.layer)
    assert not adapted_layers(backbone)
    return backbone


# --------------------------------------------------------------------------- identity: bit-exact


@pytest.mark.parametrize("mode", ["equivariant", "invariant"])
@pytest.mark.parametrize("arch", ARCHS)
def test_identity_canonicalizers_are_bit_exact(arch, mode):
    torch.manual_seed(0)
    s = img_size(arch)
    base = registry.create_model(f"{arch}_base", 5, size="micro", img_size=s).eval()
    adapted = copy.deepcopy(base.backbone)
    paths = canonicalize_layers(adapted, arch, lambda ch: C.Fixed(), mode=mode)
    assert paths == default_layers(arch, base.backbone)
    assert len(adapted_layers(adapted)) == len(paths) > 0
    adapted.eval()
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        assert torch.equal(adapted(x), base.backbone(x))
        # The intermediate-feature path (segmentation, AugL) goes through the same layers.
        indices = [0, 1]
        ref = base.backbone.forward_intermediates(x, indices=indices, intermediates_only=True)
        got = adapted.forward_intermediates(x, indices=indices, intermediates_only=True)
    assert len(ref) == len(got) == 2
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    for layer in adapted_layers(adapted):
        assert layer.mode == mode and torch.equal(layer.last_psi, M.identity(2, 4))


@pytest.mark.parametrize("arch", ARCHS)
def test_fresh_dec_model_equals_its_backbone(arch):
    torch.manual_seed(0)
    s = img_size(arch)
    dec = registry.create_model(f"{arch}_dec", 5, size="micro", img_size=s).eval()
    plain = unwrap(copy.deepcopy(dec.backbone)).eval()
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        out = dec(x)
        assert torch.equal(out, plain(x))
    for layer in adapted_layers(dec.backbone):
        assert torch.equal(layer.last_psi, M.identity(2, dec.config.grid))
        assert layer.canonicalizer.last_stats.converged.all()


def test_layer_selection_and_limits():
    model = registry.create_model("resnet_dec", 3, size="micro", img_size=32, layers=["layer2", "layer3"])
    assert model.config.layers == ["layer2", "layer3"]
    assert [type(model.backbone.get_submodule(p)).__name__ for p in ("layer1", "layer2", "layer3", "layer4")] == [
        "Sequential", "CanonicalizedLayer", "CanonicalizedLayer", "Sequential"]
    with pytest.raises(ValueError, match="at most 8"):
        canonicalize_layers(copy.deepcopy(model.backbone), "vit", lambda ch: C.Fixed(),
                            layers=[f"blocks.{i}" for i in range(9)])
    with pytest.raises(ValueError, match="mode"):
        CanonicalizedLayer(nn.Identity(), C.Fixed(), "nchw", "sideways", None)


# --------------------------------------------------------------------------- token layout


def test_prefix_tokens_pass_through_and_patch_tokens_move_with_their_grid():
    dino = registry.create_model("dinov2_base", 3, size="micro", img_size=28).backbone
    n_prefix = dino.num_prefix_tokens
    assert n_prefix == 5  # class token + 4 registers (vit_small_patch14_reg4_dinov2)
    patch = tuple(dino.patch_embed.patch_size)
    h, w = 3, 5  # not square: a transposed reshape would show
    tokens = TokenGrid(patch, n_prefix)
    tokens.set_input(torch.zeros(1, 3, h * patch[0], w * patch[1]))
    assert tokens.hw == (h, w)

    b, c = 2, 6
    # Patch token (i, j) carries its own column and row index in channels 0 and 1 (linear ramps, which
    # bilinear resampling reproduces exactly) and noise elsewhere.
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
    grid = torch.randn(b, c, h, w)
    grid[:, 0], grid[:, 1] = cols, rows
    prefix = torch.randn(b, n_prefix, c)
    x = torch.cat([prefix, grid.flatten(2).transpose(1, 2)], dim=1)

    psi = M.sample(b, 4, 0.3, torch.Generator().manual_seed(3))
    layer = CanonicalizedLayer(nn.Identity(), C.Fixed(psi), "tokens", "invariant", tokens)
    y = layer(x)
    assert y.shape == x.shape
    assert torch.equal(y[:, :n_prefix], prefix)
    assert not torch.allclose(y[:, n_prefix:], x[:, n_prefix:], atol=1e-3)
    # Output token at pixel centre p reads the input grid at l_psi(p).
    src = M.evaluate(psi, M.pixel_centers(h, w).expand(b, -1, -1, -1))  # (b, h, w, 2) in [0, 1]
    want_col = (src[..., 0] * w - 0.5).clamp(0, w - 1).flatten(1)
    want_row = (src[..., 1] * h - 0.5).clamp(0, h - 1).flatten(1)
    torch.testing.assert_close(y[:, n_prefix:, 0], want_col, atol=1e-4, rtol=0)
    torch.testing.assert_close(y[:, n_prefix:, 1], want_row, atol=1e-4, rtol=0)

    # Equivariant mode around an identity layer: unwarp(warp(·)) — prefix exact, patches moved back.
    eq = CanonicalizedLayer(nn.Identity(), C.Fixed(psi), "tokens", "equivariant", tokens)
    z = eq(x)
    assert torch.equal(z[:, :n_prefix], prefix)
    assert not torch.allclose(z[:, n_prefix:], y[:, n_prefix:], atol=1e-3)


def test_token_grid_mismatch_is_reported():
    tokens = TokenGrid((4, 4), 1)
    tokens.set_input(torch.zeros(1, 3, 16, 16))  # 4 x 4 = 16 patch tokens expected
    layer = CanonicalizedLayer(nn.Identity(), C.Fixed(), "tokens", "invariant", tokens)
    with pytest.raises(RuntimeError, match="does not match"):
        layer(torch.randn(1, 1 + 15, 8))


def test_token_models_follow_the_input_size():
    """The token grid is read from each input, so one canonicalized ViT runs at several sizes."""
    model = registry.create_model("vit_dec", 3, size="micro", img_size=32, timm_kwargs={"dynamic_img_size": True})
    model.eval()
    with torch.no_grad():
        for s in (32, 48):
            assert model(torch.randn(1, 3, s, s)).shape == (1, 3)
            assert adapted_layers(model.backbone)[0]._tokens.hw == (s // 16, s // 16)


# --------------------------------------------------------------------------- oracle canonicalization


class _TokenConv(nn.Module):
    """A token layer: the patch tokens are a grid to convolve; the class token is doubled."""

    def __init__(self, net: nn.Module, hw: tuple[int, int]):
        super().__init__()
        self.net, self.hw = net, hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, w = self.hw
        grid = x[:, 1:].transpose(1, 2).reshape(b, c, h, w)
        out = self.net(grid)
        return torch.cat([2 * x[:, :1], out.flatten(2).transpose(1, 2)], dim=1)


def _conv_net(c: int) -> nn.Sequential:
    torch.manual_seed(0)
    conv = dict(kernel_size=5, padding=4, dilation=2, padding_mode="replicate")
    return nn.Sequential(nn.Conv2d(c, 8, **conv), nn.Tanh(), nn.Conv2d(8, c, **conv))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layout", ["nchw", "tokens"])
def test_oracle_canonicalization_undoes_a_scaling(layout, seed):
    g = torch.Generator().manual_seed(seed)
    b, c, s = 2, 2, 64
    image = smooth_images(b, c, s, g)
    phi = M.sample(b, 4, 0.2, g)
    scaled = M.warp(image, phi)
    psi = M.inverse(refine(phi, 16))  # the true canonicalizing element, finely projected
    assert rel(M.warp(scaled, psi), image) < 0.03  # it does undo the scaling
    net = _conv_net(c)

    if layout == "nchw":
        wrap = lambda t: t  # noqa: E731
        unwrap_ = lambda t: t  # noqa: E731
        layer, tokens = net, None
    else:
        cls = torch.randn(b, 1, c, generator=g)
        wrap = lambda t: torch.cat([cls, t.flatten(2).transpose(1, 2)], dim=1)  # noqa: E731
        unwrap_ = lambda t: t[:, 1:].transpose(1, 2).reshape(b, c, s, s)  # noqa: E731
        layer = _TokenConv(net, (s, s))
        tokens = TokenGrid((1, 1), 1)
        tokens.set_input(image)

    oracle = C.Oracle()
    oracle.set(psi)
    invariant = CanonicalizedLayer(layer, oracle, layout, "invariant", tokens)
    equivariant = CanonicalizedLayer(layer, oracle, layout, "equivariant", tokens)
    with torch.no_grad():
        ref = net(image)  # M(I)
        plain = net(scaled)  # M(I_s): no canonicalization
        inv = invariant(wrap(scaled))
        eq = equivariant(wrap(scaled))
        # Invariant: M̃(I_s) ≈ M(I).
        err, base_err = rel(unwrap_(inv), ref), rel(plain, ref)
        assert base_err > 0.1, "the scaling must change the output for this test to mean anything"
        assert err < 0.3 * base_err, (err, base_err)
        # Equivariant: M̃(I_s) ≈ warp(M(I), phi).
        target = M.warp(ref, phi)
        err, base_err = rel(unwrap_(eq), target), rel(plain, target)
        assert base_err > 0.05
        assert err < 0.3 * base_err, (err, base_err)
        # The other convention (psi = phi) does not canonicalize.
        oracle.set(phi)
        wrong = rel(unwrap_(invariant(wrap(scaled))), ref)
        assert wrong > 0.5 * rel(plain, ref)
    if layout == "tokens":
        assert torch.equal(inv[:, :1], 2 * cls)  # the layer's own prefix output is kept
        assert torch.equal(eq[:, :1], 2 * cls)


# --------------------------------------------------------------------------- DEC


def test_dec_returns_valid_psi_and_finite_stats():
    torch.manual_seed(0)
    dec = C.DEC(3, grid=4)
    with torch.no_grad():  # a non-trivial H: random output heads
        for conv in (dec.head.x_head, dec.head.y_head):
            conv.weight.normal_(0, 0.5)
            conv.bias.normal_(0, 0.5)
    x = torch.randn(3, 3, 40, 40)
    dec.train()
    psi = dec(x)
    assert psi.shape == (3, 2, 5, 5)
    assert M.is_valid(psi).all()
    assert not torch.allclose(psi, M.identity(3, 4), atol=1e-3)
    stats = dec.last_stats
    assert stats.backward == "implicit"
    assert torch.isfinite(stats.residual).all() and (stats.iterations >= 1).all()
    assert (stats.iterations <= dec.max_iter).all()
    # Gradients flow to the CNN through the fixed point.
    psi.pow(2).sum().backward()
    grads = [p.grad for p in dec.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert dec.body[0].weight.grad.abs().sum() > 0


def test_dec_logits_are_the_pooled_maps_projected():
    """The head projects the channels before pooling; both are linear, so that is the pool then the 1x1 conv."""
    torch.manual_seed(0)
    head = C._LogitHead(16, (4, 3), max_logit=2.0)
    with torch.no_grad():
        for conv in (head.x_head, head.y_head):
            conv.weight.normal_(0, 0.3)
            conv.bias.normal_(0, 0.3)
    h = torch.randn(2, 16, 13, 11, dtype=torch.float64)
    head = head.double()
    lx, ly = head(h)
    ref_x = head.x_head(F.adaptive_avg_pool2d(h, (5, 3)))[:, 0]
    ref_y = head.y_head(F.adaptive_avg_pool2d(h, (4, 4)))[:, 0].transpose(1, 2)
    torch.testing.assert_close(lx, 2.0 * torch.tanh(ref_x / 2.0), atol=1e-12, rtol=0)
    torch.testing.assert_close(ly, 2.0 * torch.tanh(ref_y / 2.0), atol=1e-12, rtol=0)


@pytest.mark.parametrize("backward", ["implicit", "phantom"])
def test_dec_learns_to_canonicalize_a_toy_pattern(backward):
    """Train DEC so that warp(I_s, DEC(I_s)) ≈ I for random scalings I_s = warp(I, phi) of one pattern."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    s = 32
    pattern = smooth_images(1, 2, s, g, base=5)
    dec = C.DEC(2, grid=2, channels=(16, 32), resolution=None, backward=backward)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    held_out = M.sample(16, 2, 0.2, torch.Generator().manual_seed(123))

    def held_out_loss() -> tuple[float, object]:
        dec.eval()
        with torch.no_grad():
            scaled = M.warp(pattern.expand(16, -1, -1, -1), held_out)
            loss = F.mse_loss(M.warp(scaled, dec(scaled)), pattern.expand(16, -1, -1, -1)).item()
        dec.train()
        return loss, dec.last_stats

    before, _ = held_out_loss()
    for _ in range(80):
        phi = M.sample(8, 2, 0.2, g)
        scaled = M.warp(pattern.expand(8, -1, -1, -1), phi)
        psi = dec(scaled)
        loss = F.mse_loss(M.warp(scaled, psi), pattern.expand(8, -1, -1, -1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert dec.last_stats.backward == backward
    after, stats = held_out_loss()
    assert after < 0.5 * before, (before, after)
    assert stats.converged.float().mean() >= 0.75
    assert (stats.residual[stats.converged] <= dec.tol).all()
    assert (stats.iterations > 1).any()  # it did iterate: the map is no longer the constant identity


# --------------------------------------------------------------------------- Canon and Optim


def test_canon_picks_a_candidate_in_eval_and_mixes_them_in_training():
    torch.manual_seed(0)
    canon = C.Canon(3, num_candidates=16, resolution=None)
    cands = canon.candidates
    assert cands.shape == (16, 2, 5, 5) and torch.equal(cands[:1], M.identity(1, 4))
    assert M.is_valid(cands).all()
    x = torch.randn(4, 3, 24, 24)

    canon.eval()
    with torch.no_grad():
        psi = canon(x)
    assert psi.shape == (4, 2, 5, 5)
    for p in psi:
        assert any(torch.equal(p, cand) for cand in cands)

    canon.train()
    psi = canon(x)
    assert M.is_valid(psi).all()
    lo, hi = cands.amin(dim=0), cands.amax(dim=0)
    assert ((psi >= lo - 1e-6) & (psi <= hi + 1e-6)).all()  # inside the candidates' convex hull
    assert not any(torch.equal(psi[0], cand) for cand in cands)  # soft, not a pick
    (psi * torch.randn_like(psi)).sum().backward()
    grads = [p.grad for p in canon.energy.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert canon.energy.out.weight.grad.abs().sum() > 0


def test_canon_projects_channels_before_warping_as_if_after():
    """Resampling is linear per channel: projecting the map, then warping the candidates, scores them
    exactly as projecting each warped candidate would."""
    torch.manual_seed(0)
    canon = C.Canon(24, grid=4, num_candidates=8, width=6, resolution=None).double()
    x = torch.randn(3, 24, 12, 12, dtype=torch.float64)
    cands = canon.candidates.double()
    projected_first = M.warp(canon.project(x).repeat_interleave(8, 0), cands.repeat(3, 1, 1, 1), exact=False)
    warped_first = canon.project(M.warp(x.repeat_interleave(8, 0), cands.repeat(3, 1, 1, 1), exact=False))
    torch.testing.assert_close(projected_first, warped_first, atol=1e-12, rtol=0)


def test_fresh_canon_and_optim_are_the_identity():
    """Zero-initialised energy outputs: a new Canon (eval) or Optim does not warp, so a model fine-tuned
    from Aug starts as Aug (``--init-from``)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 24, 24)
    canon, opt = C.Canon(3, num_candidates=16, resolution=None).eval(), C.Optim(3, steps=4, lr=0.5, resolution=None)
    with torch.no_grad():
        assert torch.equal(canon(x), M.identity(2, 4))
    assert torch.equal(opt.eval()(x), M.identity(2, 4))


def test_optim_returns_valid_psi_and_trains_its_energy():
    torch.manual_seed(0)
    opt = C.Optim(3, steps=4, lr=0.5, resolution=None)
    with torch.no_grad():  # a non-trivial energy (a fresh one is flat: the identity, tested above)
        opt.energy.out.weight.normal_(0, 0.5)
    x = torch.randn(2, 3, 24, 24)
    opt.train()
    psi = opt(x)
    assert psi.shape == (2, 2, 5, 5)
    assert M.is_valid(psi).all()
    assert not torch.allclose(psi, M.identity(2, 4))  # it moved
    (psi * torch.randn_like(psi)).sum().backward()
    # ψ depends on the energy only through ∇_z E, so the energy's constant offset gets no gradient.
    grads = {n: p.grad for n, p in opt.energy.named_parameters() if n != "out.bias"}
    assert opt.energy.out.bias.grad is None or not opt.energy.out.bias.grad.any()
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads.values()), [
        n for n, gr in grads.items() if gr is None]
    assert sum(gr.abs().sum() for gr in grads.values()) > 0

    opt.eval()
    with torch.no_grad():
        psi_eval = opt(x)
    assert M.is_valid(psi_eval).all()
    torch.testing.assert_close(psi_eval, psi.detach())


def test_fixed_and_oracle_broadcast_over_the_batch():
    x = torch.randn(3, 4, 8, 8)
    assert torch.equal(C.Fixed()(x), M.identity(3, 4))
    one = M.sample(1, 2, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(C.Fixed(one, grid=2)(x), one.expand(3, -1, -1, -1))
    oracle = C.Oracle()
    per_sample = M.sample(3, 4, 0.2, torch.Generator().manual_seed(1))
    oracle.set(per_sample)
    assert torch.equal(oracle(x), per_sample)
