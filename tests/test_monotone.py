"""Numerical tests for the monotone scaling group (:mod:`lsbench.monotone`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lsbench import monotone as m

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_image(b: int, c: int, h: int, w: int, *, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Sums of low-frequency sines (at most ~2 cycles per image side), amplitude O(1)."""
    g = gen(seed)
    yy, xx = torch.meshgrid(
        (torch.arange(h, dtype=F64) + 0.5) / h, (torch.arange(w, dtype=F64) + 0.5) / w, indexing="ij"
    )
    out = torch.zeros(b, c, h, w, dtype=F64)
    for _ in range(4):
        fx, fy, ph = torch.rand(3, b, c, 1, 1, generator=g, dtype=F64)
        out += torch.sin(2 * math.pi * (2 * fx * xx + 2 * fy * yy) + 6 * ph)
    return out.to(dtype)


def interior(t: torch.Tensor, border: int) -> torch.Tensor:
    return t[..., border:-border, border:-border]


def rel_dev(a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-batch ``|a - b| / |ref - identity|`` (Frobenius norms over the node grid)."""
    idn = m.identity(ref.shape[0], m.grid_shape(ref), dtype=ref.dtype)
    return (a - b).flatten(1).norm(dim=1) / (ref - idn).flatten(1).norm(dim=1)


def separable(phi: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """All rows share row ``row``'s x-function, all columns share column ``col``'s y-function."""
    sep = phi.clone()
    sep[:, 0] = phi[:, 0, row : row + 1, :].expand_as(phi[:, 0])
    sep[:, 1] = phi[:, 1, :, col : col + 1].expand_as(phi[:, 1])
    return sep


# --------------------------------------------------------------------------------------------
# 1. identity is exact
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, grid, dtype",
    [
        ((2, 3, 17, 23), 4, torch.float32),
        ((1, 1, 8, 5), (2, 3), torch.float32),
        ((3, 5, 14, 9), (3, 1), torch.float32),
        ((2, 2, 31, 12), (5, 2), F64),
        ((1, 4, 1, 7), 1, torch.float32),
    ],
)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_identity_warp_unwarp_exact(shape, grid, dtype, mode):
    x = torch.randn(*shape, generator=gen(0), dtype=dtype)
    idn = m.identity(shape[0], grid, dtype=dtype)
    assert torch.equal(m.warp(x, idn, mode=mode), x)
    assert torch.equal(m.unwarp(x, idn, mode=mode), x)
    # A batch-1 identity broadcasts over the images.
    idn1 = m.identity(1, grid, dtype=dtype)
    assert torch.equal(m.warp(x, idn1, mode=mode), x)
    assert torch.equal(m.unwarp(x, idn1, mode=mode), x)


@pytest.mark.parametrize("grid", [4, (2, 3), (3, 1), 1, (7, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_identity_group_ops_exact(grid, dtype):
    idn = m.identity(3, grid, dtype=dtype)
    gy, gx = (grid, grid) if isinstance(grid, int) else grid
    assert idn.shape == (3, 2, gy + 1, gx + 1)
    assert m.grid_shape(idn) == (gy, gx)
    assert m.is_valid(idn).all()
    assert torch.equal(m.inverse(idn), idn)
    assert torch.equal(m.inverse(idn, method="paper"), idn)
    assert torch.equal(m.compose(idn, idn), idn)
    # The identity's nodes are the uniform grid, and evaluating it is exact.
    p = torch.rand(3, 50, 2, generator=gen(1), dtype=dtype)
    assert torch.equal(m.evaluate(idn, p), p)
    q, res = m.invert_points(idn, p)
    assert torch.equal(q, p)
    assert (res == 0).all()


def test_evaluate_at_nodes_returns_phi():
    """Layout check: ``phi[:, 0, j, n]`` / ``phi[:, 1, j, n]`` are ``l``'s x / y at node ``(x_n, y_j)``."""
    phi = m.sample(3, (3, 5), 0.4, gen(2), dtype=F64)
    nodes = m.identity(3, (3, 5), dtype=F64).permute(0, 2, 3, 1)  # (B, gy+1, gx+1, 2) in (x, y)
    out = m.evaluate(phi, nodes)
    torch.testing.assert_close(out.permute(0, 3, 1, 2), phi, atol=1e-15, rtol=0)


# --------------------------------------------------------------------------------------------
# 2. warp / unwarp round trips on smooth images
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strength", [0.1, 0.2, 0.3, 0.5])
def test_unwarp_undoes_warp_on_smooth_images(strength):
    x = smooth_image(4, 3, 96, 96, seed=0)
    phi = m.sample(4, 4, strength, gen(1))
    w = m.warp(x, phi)
    assert w.shape == x.shape
    change = interior((w - x).abs(), 4)
    assert change.mean() > 0.05  # the warp does something
    for rt in (m.unwarp(w, phi), m.warp(m.unwarp(x, phi), phi)):
        assert rt.shape == x.shape
        err = interior((rt - x).abs(), 4)
        ratio = err.flatten(1).mean(1) / change.flatten(1).mean(1)
        assert (ratio < 0.05).all(), ratio
        assert err.max() < 0.1 * change.max()


def test_warp_composition_order_matters():
    """``unwarp`` with the *wrong* element does not undo the warp (sanity check of the test above)."""
    x = smooth_image(2, 1, 64, 64, seed=3)
    a, b = m.sample(2, 4, 0.3, gen(4)), m.sample(2, 4, 0.3, gen(5))
    w = m.warp(x, a)
    good = interior((m.unwarp(w, a) - x).abs(), 4).mean()
    bad = interior((m.unwarp(w, b) - x).abs(), 4).mean()
    assert bad > 10 * good


# --------------------------------------------------------------------------------------------
# 3. point inversion
# --------------------------------------------------------------------------------------------


def _test_points(b: int, dtype) -> torch.Tensor:
    rnd = torch.rand(b, 400, 2, generator=gen(3), dtype=dtype)
    edges = torch.tensor(
        [[0, 0], [1, 1], [0, 1], [1, 0], [0.5, 0], [0, 0.5], [1, 0.3], [0.7, 1], [0.25, 0.75]], dtype=dtype
    )
    centres = m.pixel_centers(13, 11, dtype=dtype).reshape(1, -1, 2)
    return torch.cat([rnd, edges.expand(b, -1, -1), centres.expand(b, -1, -1)], dim=1)


@pytest.mark.parametrize("strength", [0.05, 0.1, 0.3, 0.5])
@pytest.mark.parametrize("grid", [4, (3, 5)])
def test_invert_points_solves_l_of_q_equals_p(strength, grid):
    phi = m.sample(8, grid, strength, gen(2))
    p = _test_points(8, torch.float32)
    q, res = m.invert_points(phi, p)
    assert q.shape == p.shape and res.shape == (8,)
    assert ((q >= 0) & (q <= 1)).all()
    err = (m.evaluate(phi, q) - p).abs().max()
    assert err < 1e-5, err
    assert (res < 1e-5).all(), res
    # float64: much tighter.
    q64, res64 = m.invert_points(phi.double(), p.double())
    assert (m.evaluate(phi.double(), q64) - p.double()).abs().max() < 1e-10
    assert (res64 < 1e-10).all()


def test_invert_points_broadcasts_batch_one_points():
    phi = m.sample(3, 4, 0.3, gen(7), dtype=F64)
    p = torch.rand(1, 5, 7, 2, generator=gen(8), dtype=F64)
    q, _ = m.invert_points(phi, p)
    assert q.shape == (3, 5, 7, 2)
    torch.testing.assert_close(m.evaluate(phi, q), p.expand(3, -1, -1, -1), atol=1e-10, rtol=0)


@pytest.mark.parametrize("strength, paper_min", [(0.1, 1e-3), (0.3, 1e-2), (0.5, 3e-2)])
def test_paper_inverse_is_worse_than_newton_for_differing_rows(strength, paper_min):
    phi = m.sample(8, 4, strength, gen(2))
    p = _test_points(8, torch.float32)
    q, _ = m.invert_points(phi, p)
    newton_err = (m.evaluate(phi, q) - p).abs().max()
    paper = m.inverse(phi, method="paper")
    assert (paper[:, 0].diff(dim=-1) > 0).all() and (paper[:, 1].diff(dim=-2) > 0).all()
    paper_err = (m.evaluate(phi, m.evaluate(paper, p)) - p).abs().max()
    assert newton_err < 1e-5
    assert paper_err > paper_min, paper_err
    assert paper_err > 1000 * newton_err
    # Even at the nodes (where the paper's 1-D inverses are exact per row) the 2-D map is off.
    nodes = m.identity(8, 4).permute(0, 2, 3, 1)
    assert (m.evaluate(phi, m.evaluate(paper, nodes)) - nodes).abs().max() > paper_min / 2


@pytest.mark.parametrize("strength", [0.3, 0.5])
def test_paper_inverse_exact_for_separable_phi(strength):
    base = m.sample(4, (3, 4), strength, gen(5), dtype=F64)
    sep = separable(base, row=1, col=2)
    assert m.is_valid(sep).all()
    paper = m.inverse(sep, method="paper")
    # At the nodes, l(paper(t)) = t exactly: the 1-D inverses are exact there and do not mix.
    nodes = m.identity(4, (3, 4), dtype=F64).permute(0, 2, 3, 1)
    assert (m.evaluate(sep, m.evaluate(paper, nodes)) - nodes).abs().max() < 1e-12
    # ... whereas the same construction for the non-separable base is far off.
    base_paper = m.inverse(base, method="paper")
    assert (m.evaluate(base, m.evaluate(base_paper, nodes)) - nodes).abs().max() > 1e-2
    # The paper inverse keeps the separable structure: x-knots identical across rows, y across columns.
    assert torch.equal(paper[:, 0], paper[:, 0, :1].expand_as(paper[:, 0]))
    assert torch.equal(paper[:, 1], paper[:, 1, :, :1].expand_as(paper[:, 1]))
    # invert_points agrees with the exact 1-D inverses (np.interp of the knots).
    p = torch.rand(4, 300, 2, generator=gen(6), dtype=F64)
    q, _ = m.invert_points(sep, p)
    for i in range(4):
        fx = sep[i, 0, 0].numpy()
        fy = sep[i, 1, :, 0].numpy()
        ex = np.interp(p[i, :, 0].numpy(), fx, np.linspace(0, 1, len(fx)))
        ey = np.interp(p[i, :, 1].numpy(), fy, np.linspace(0, 1, len(fy)))
        np.testing.assert_allclose(q[i, :, 0].numpy(), ex, atol=1e-10)
        np.testing.assert_allclose(q[i, :, 1].numpy(), ey, atol=1e-10)


# --------------------------------------------------------------------------------------------
# 4. / 5. group operations (least-squares projections)
# --------------------------------------------------------------------------------------------


def test_inverse_of_inverse_and_compose_with_inverse():
    phi = m.sample(6, 4, 0.1, gen(6), dtype=F64)
    idn = m.identity(6, 4, dtype=F64)
    inv = m.inverse(phi)
    assert m.is_valid(inv).all()
    assert (rel_dev(m.inverse(inv), phi, phi) < 0.1).all()
    assert (rel_dev(m.compose(phi, inv), idn, phi) < 0.1).all()
    assert (rel_dev(m.compose(inv, phi), idn, phi) < 0.1).all()
    # The inverse is a genuine improvement over doing nothing / over the paper's inverse.
    assert (rel_dev(m.compose(phi, inv), idn, phi) < rel_dev(m.compose(phi, phi), idn, phi)).all()


def test_inverse_matches_pointwise_inverse():
    """``evaluate(inverse(phi), p)`` approximates ``l⁻¹(p)`` better than the paper's inverse does."""
    phi = m.sample(6, 4, 0.1, gen(9), dtype=F64)
    p = torch.rand(6, 500, 2, generator=gen(10), dtype=F64)
    exact, _ = m.invert_points(phi, p)
    newton = (m.evaluate(m.inverse(phi), p) - exact).norm(dim=-1).mean(1)
    paper = (m.evaluate(m.inverse(phi, method="paper"), p) - exact).norm(dim=-1).mean(1)
    disp = (exact - p).norm(dim=-1).mean(1)
    assert (newton < 0.15 * disp).all(), newton / disp
    assert (newton < paper).all()


def test_compose_is_associative():
    a, b, c = (m.sample(6, 4, 0.1, gen(k), dtype=F64) for k in (10, 11, 12))
    left = m.compose(m.compose(a, b), c)
    right = m.compose(a, m.compose(b, c))
    assert (rel_dev(left, right, left) < 0.1).all()
    assert m.is_valid(left).all() and m.is_valid(right).all()


def test_compose_approximates_exact_composite():
    a, b = m.sample(6, 4, 0.2, gen(13), dtype=F64), m.sample(6, 4, 0.2, gen(14), dtype=F64)
    p = torch.rand(6, 500, 2, generator=gen(15), dtype=F64)
    exact = m.evaluate(a, m.evaluate(b, p))
    disp = (exact - p).norm(dim=-1).mean(1)
    err = (m.evaluate(m.compose(a, b), p) - exact).norm(dim=-1).mean(1)
    swapped = (m.evaluate(m.compose(b, a), p) - exact).norm(dim=-1).mean(1)
    assert (err < 0.2 * disp).all(), err / disp
    assert (err < swapped).all()


def test_warp_of_compose_equals_successive_warps():
    a, b = m.sample(4, 4, 0.1, gen(10), dtype=F64), m.sample(4, 4, 0.1, gen(11), dtype=F64)
    x = smooth_image(4, 2, 96, 96, seed=4, dtype=F64)
    one = m.warp(x, m.compose(a, b))
    two = m.warp(m.warp(x, a), b)
    change = interior((two - x).abs(), 4).flatten(1).mean(1)
    err = interior((one - two).abs(), 4).flatten(1).mean(1)
    assert (err < 0.15 * change).all(), err / change
    # The other order is a different map.
    other = m.warp(m.warp(x, b), a)
    assert (interior((one - other).abs(), 4).flatten(1).mean(1) > err).all()


@pytest.mark.parametrize("strength", [0.1, 0.3, 0.5])
def test_compose_and_inverse_knots_monotone_and_pinned(strength):
    a = m.sample(32, 4, strength, gen(20), dtype=F64)
    b = m.sample(32, 4, strength, gen(21), dtype=F64)
    for out in (m.compose(a, b), m.inverse(a), m.compose(m.compose(a, b), a)):
        x, y = out[:, 0], out[:, 1]
        assert (x[..., 0] == 0).all() and (x[..., -1] == 1).all()
        assert (y[:, 0, :] == 0).all() and (y[:, -1, :] == 1).all()
        assert (x.diff(dim=-1) >= 0).all() and (y.diff(dim=-2) >= 0).all()


@pytest.mark.parametrize("strength", [0.1, 0.2])
def test_compose_of_valid_elements_is_valid(strength):
    """``compose``'s contract: fold-free (``is_valid``) at the strengths the benchmark draws."""
    a = m.sample(64, 4, strength, gen(30), dtype=F64)
    b = m.sample(64, 4, strength, gen(31), dtype=F64)
    assert m.is_valid(a).all() and m.is_valid(b).all()
    ok = m.is_valid(m.compose(a, b))
    assert ok.all(), f"{int((~ok).sum())} of {len(ok)} composites fold"


def test_compose_strong_pairs_mostly_fold_free():
    """Beyond the benchmark's strengths the family cannot hold every composite (even sampled at
    the nodes it folds); the node fallback keeps folds rare: measured 5 of 64 at strength 0.3."""
    a = m.sample(64, 4, 0.3, gen(30), dtype=F64)
    b = m.sample(64, 4, 0.3, gen(31), dtype=F64)
    ok = m.is_valid(m.compose(a, b))
    assert ok.float().mean() >= 0.85, f"{int((~ok).sum())} of {len(ok)} composites fold"


# --------------------------------------------------------------------------------------------
# 6. sampling from Omega
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strength", [0.0, 0.05, 0.1, 0.25, 0.5])
@pytest.mark.parametrize("grid", [4, (3, 5), 1])
def test_sample_valid_pinned_increasing_bounded(strength, grid):
    phi = m.sample(64, grid, strength, gen(1))
    gy, gx = (grid, grid) if isinstance(grid, int) else grid
    assert phi.shape == (64, 2, gy + 1, gx + 1)
    assert phi.dtype == torch.get_default_dtype()
    assert m.is_valid(phi).all()
    x, y = phi[:, 0], phi[:, 1]
    assert (x[..., 0] == 0).all() and (x[..., -1] == 1).all()
    assert (y[:, 0, :] == 0).all() and (y[:, -1, :] == 1).all()
    sx = x.diff(dim=-1) * gx
    sy = y.diff(dim=-2) * gy
    assert (sx > 0).all() and (sy > 0).all()
    lo, hi = math.exp(-3 * strength) * (1 - 1e-5), math.exp(3 * strength) * (1 + 1e-5)
    for s in (sx, sy):
        assert s.min() >= lo and s.max() <= hi, (s.min(), s.max(), lo, hi)


def test_sample_spread_grows_with_strength():
    spreads, ranges = [], []
    for strength in (0.05, 0.1, 0.2, 0.4):
        phi = m.sample(128, 4, strength, gen(3), dtype=F64)
        logs = torch.cat([(phi[:, 0].diff(dim=-1) * 4).log().flatten(), (phi[:, 1].diff(dim=-2) * 4).log().flatten()])
        spreads.append(logs.std().item())
        ranges.append((logs.max() - logs.min()).item())
        # The observed log-slope range uses a good part of the allowed [-3s, 3s].
        assert ranges[-1] > 3 * strength
        assert ranges[-1] <= 6 * strength + 1e-9
    assert all(a < b for a, b in zip(spreads, spreads[1:], strict=False)), spreads
    assert all(a < b for a, b in zip(ranges, ranges[1:], strict=False)), ranges


@pytest.mark.parametrize("grid", [4, (3, 5), (2, 7)])
def test_sample_strength_zero_is_identity(grid):
    phi = m.sample(5, grid, 0.0, gen(0), dtype=F64)
    torch.testing.assert_close(phi, m.identity(5, grid, dtype=F64), atol=1e-15, rtol=0)
    phi32 = m.sample(5, grid, 0.0, gen(0))
    torch.testing.assert_close(phi32, m.identity(5, grid), atol=1e-7, rtol=0)


def test_sample_reproducible_with_seed():
    a = m.sample(16, (3, 4), 0.3, gen(42))
    b = m.sample(16, (3, 4), 0.3, gen(42))
    c = m.sample(16, (3, 4), 0.3, gen(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # A shared generator advances: consecutive draws differ, replaying the seed replays them.
    g1, g2 = gen(7), gen(7)
    first, second = m.sample(4, 4, 0.3, g1), m.sample(4, 4, 0.3, g1)
    assert not torch.equal(first, second)
    assert torch.equal(m.sample(4, 4, 0.3, g2), first) and torch.equal(m.sample(4, 4, 0.3, g2), second)


@pytest.mark.parametrize("strength", [5.0, 3.0])
def test_sample_absurd_strength_raises(strength):
    with pytest.raises(ValueError):
        m.sample(16, 4, strength, gen(0))


def test_sample_negative_strength_raises():
    with pytest.raises(ValueError):
        m.sample(2, 4, -0.1, gen(0))


# --------------------------------------------------------------------------------------------
# 7. logits parametrisation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [4, (3, 5), (1, 2)])
def test_from_logits_round_trip(grid):
    gy, gx = (grid, grid) if isinstance(grid, int) else grid
    g = gen(4)
    lx = torch.rand(6, gy + 1, gx, generator=g, dtype=F64) * 0.6
    ly = torch.rand(6, gx + 1, gy, generator=g, dtype=F64) * 0.6
    phi = m.from_logits(lx, ly)
    assert phi.shape == (6, 2, gy + 1, gx + 1)
    assert m.is_valid(phi).all()
    # phi -> logits -> phi is exact (up to rounding).
    torch.testing.assert_close(m.from_logits(*m.to_logits(phi)), phi, atol=1e-14, rtol=0)
    # logits -> phi -> logits recovers the logits up to a per-row constant.
    rx, ry = m.to_logits(phi)
    assert rx.shape == lx.shape and ry.shape == ly.shape
    torch.testing.assert_close(rx - rx.mean(-1, keepdim=True), lx - lx.mean(-1, keepdim=True), atol=1e-12, rtol=0)
    torch.testing.assert_close(ry - ry.mean(-1, keepdim=True), ly - ly.mean(-1, keepdim=True), atol=1e-12, rtol=0)
    # Adding a per-row constant does not change phi.
    torch.testing.assert_close(m.from_logits(lx + 3.0, ly - 1.5), phi, atol=1e-14, rtol=0)
    # Sampled phi round-trip too.
    s = m.sample(6, grid, 0.4, gen(5), dtype=F64)
    torch.testing.assert_close(m.from_logits(*m.to_logits(s)), s, atol=1e-14, rtol=0)


@pytest.mark.parametrize("grid", [4, (3, 5), (2, 1)])
def test_zero_logits_give_identity(grid):
    gy, gx = (grid, grid) if isinstance(grid, int) else grid
    for dtype, atol in ((torch.float32, 1e-7), (F64, 1e-15)):
        phi = m.from_logits(torch.zeros(3, gy + 1, gx, dtype=dtype), torch.zeros(3, gx + 1, gy, dtype=dtype))
        torch.testing.assert_close(phi, m.identity(3, grid, dtype=dtype), atol=atol, rtol=0)
        lx, ly = m.to_logits(m.identity(3, grid, dtype=dtype))
        torch.testing.assert_close(lx - lx.mean(-1, keepdim=True), torch.zeros_like(lx), atol=10 * atol, rtol=0)
        torch.testing.assert_close(ly - ly.mean(-1, keepdim=True), torch.zeros_like(ly), atol=10 * atol, rtol=0)


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid, shape", [(4, (16, 20)), ((3, 5), (7, 9)), (2, (1, 6))])
def test_displacement_field_is_evaluate_at_the_pixel_centres(grid, shape):
    phi = m.sample(3, grid, 0.4, gen(3), dtype=F64)
    p = m.pixel_centers(*shape, dtype=F64).expand(3, -1, -1, -1)
    torch.testing.assert_close(m.displacement_field(phi, *shape), m.evaluate(phi, p) - p, atol=1e-14, rtol=0)
    assert m.displacement_field(m.identity(2, grid, dtype=F64), *shape).abs().max() == 0


@pytest.mark.parametrize("dtype, atol", [(F64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_fast_warp_reads_the_points_of_the_exact_warp(dtype, atol, mode):
    x = smooth_image(3, 4, 24, 32, seed=5).to(dtype)
    phi = m.sample(3, 4, 0.4, gen(6), dtype=dtype)
    if mode == "nearest":  # a point on a pixel border may round either way: compare where it cannot
        x = x.round(decimals=1)
    fast, exact = m.warp(x, phi, mode=mode, exact=False), m.warp(x, phi, mode=mode)
    if mode == "bilinear":
        torch.testing.assert_close(fast, exact, atol=atol, rtol=0)
    else:
        assert (fast == exact).double().mean() > 0.99
    torch.testing.assert_close(m.warp(x, m.identity(3, 4, dtype=dtype), exact=False), x, atol=atol, rtol=0)


@pytest.mark.parametrize("fn", [m.warp, m.unwarp], ids=["warp", "unwarp"])
def test_fast_path_keeps_identity_samples_bit_exact_and_their_gradient(fn):
    x = smooth_image(2, 3, 12, 14, seed=10).requires_grad_()
    phi = torch.cat([m.identity(1, 4), m.sample(1, 4, 0.3, gen(11))]).requires_grad_()
    out = fn(x, phi, exact=False)
    assert torch.equal(out[0], x[0]) and not torch.equal(out[1], x[1])
    torch.testing.assert_close(out[1], fn(x, phi)[1], atol=2e-5, rtol=0)
    weights = torch.rand(2, 3, 12, 14, generator=gen(12))
    (out * weights).sum().backward()
    fast_grad = phi.grad.clone()
    phi.grad = None
    (fn(x, phi) * weights).sum().backward()
    # At the identity every point sits on a pixel centre, a kink of bilinear sampling: the two
    # samplers take one-sided derivatives from either side there, but the gradient still moves phi.
    assert fast_grad[0].abs().max() > 1e-3
    torch.testing.assert_close(fast_grad[1], phi.grad[1], atol=1e-3, rtol=1e-3)


def test_fast_warp_gradients_match_the_exact_warp():
    x = smooth_image(2, 3, 12, 14, seed=7).double().requires_grad_()
    phi = m.sample(2, 3, 0.3, gen(8), dtype=F64).requires_grad_()
    weights = torch.rand(2, 3, 12, 14, generator=gen(9), dtype=F64)
    grads = [torch.autograd.grad((m.warp(x, phi, exact=e) * weights).sum(), (x, phi)) for e in (True, False)]
    for exact, fast in zip(*grads, strict=True):
        torch.testing.assert_close(fast, exact, atol=1e-10, rtol=0)


# 8. gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [m.warp, m.unwarp], ids=["warp", "unwarp"])
@pytest.mark.parametrize("grid, strength, seed", [(2, 0.3, 0), ((2, 3), 0.5, 1), ((3, 2), 0.4, 2)])
def test_gradcheck_image_and_phi(fn, grid, strength, seed):
    # (Not at the identity: there every sample lands exactly on a pixel centre, a kink of bilinear
    # interpolation, so one-sided analytic and central numerical derivatives legitimately differ.)
    phi = m.sample(1, grid, strength, gen(seed), dtype=F64).clone().requires_grad_()
    x = torch.rand(1, 1, 5, 6, generator=gen(seed + 100), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b), (x, phi), eps=1e-6, atol=1e-5)
    # The phi gradient is not trivially zero.
    fn(x, phi).pow(2).sum().backward()
    assert phi.grad.abs().max() > 1e-3


def test_gradcheck_batched_channels():
    phi = m.sample(2, 2, 0.3, gen(3), dtype=F64).requires_grad_()
    x = torch.rand(2, 2, 4, 5, generator=gen(4), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: m.unwarp(a, b), (x, phi), eps=1e-6, atol=1e-5)


def test_gradcheck_invert_points_implicit_gradient():
    phi = m.sample(1, 2, 0.4, gen(5), dtype=F64).requires_grad_()
    p = torch.rand(1, 7, 2, generator=gen(6), dtype=F64) * 0.9 + 0.05
    assert torch.autograd.gradcheck(lambda b: m.invert_points(b, p)[0], (phi,), eps=1e-6, atol=1e-6)


def test_gradients_flow_through_from_logits():
    g = gen(7)
    lx = (torch.rand(1, 3, 2, generator=g, dtype=F64) * 0.6).requires_grad_()
    ly = (torch.rand(1, 3, 2, generator=g, dtype=F64) * 0.6).requires_grad_()
    x = torch.rand(1, 1, 5, 6, generator=g, dtype=F64)
    assert torch.autograd.gradcheck(lambda a, b: m.warp(x, m.from_logits(a, b)), (lx, ly), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda a, b: m.unwarp(x, m.from_logits(a, b)), (lx, ly), eps=1e-6, atol=1e-5)
    m.unwarp(x, m.from_logits(lx, ly)).pow(2).sum().backward()
    assert lx.grad is not None and ly.grad is not None
    assert torch.isfinite(lx.grad).all() and torch.isfinite(ly.grad).all()
    assert lx.grad.abs().max() > 1e-4 and ly.grad.abs().max() > 1e-4


# --------------------------------------------------------------------------------------------
# 9. transformer token grids
# --------------------------------------------------------------------------------------------


def test_token_grid_round_trip():
    b, c, h, w = 2, 768, 14, 9
    g = gen(8)
    yy, xx = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    coef = torch.randn(b, c, 5, generator=g)
    # Smooth per-channel features: affine plus a gentle curvature.
    feat = (
        coef[..., 0, None, None] * xx
        + coef[..., 1, None, None] * yy
        + coef[..., 2, None, None]
        + 0.2 * coef[..., 3, None, None] * torch.sin(math.pi * xx + coef[..., 4, None, None])
    )
    phi = m.sample(b, 4, 0.2, gen(9))
    warped = m.warp(feat, phi)
    back = m.unwarp(warped, phi)
    assert warped.shape == back.shape == (b, c, h, w)
    change = interior((warped - feat).abs(), 1).mean()
    err = interior((back - feat).abs(), 1).mean()
    assert change > 0.01
    # At 14 x 9 tokens the warp moves content by well under a pixel, so bilinear resampling blur is
    # a sizeable fraction of the change; the round trip must still remove most of it.
    assert err < 0.15 * change, (err, change)
    err2 = interior((m.warp(m.unwarp(feat, phi), phi) - feat).abs(), 1).mean()
    assert err2 < 0.15 * change, (err2, change)
    wrong = interior((m.unwarp(warped, m.sample(b, 4, 0.2, gen(50))) - feat).abs(), 1).mean()
    assert wrong > 5 * err
    # A batch-1 phi serves the whole batch.
    assert m.warp(feat, phi[:1]).shape == feat.shape


# --------------------------------------------------------------------------------------------
# 10. local scale
# --------------------------------------------------------------------------------------------


def test_cell_scale_identity_is_one():
    for grid in (4, (3, 5)):
        idn = m.identity(2, grid, dtype=F64)
        gy, gx = (grid, grid) if isinstance(grid, int) else grid
        s = m.cell_scale(idn)
        assert s.shape == (2, gy, gx)
        assert torch.equal(s, torch.ones_like(s))
        jac = m.cell_jacobian(idn)
        assert jac.shape == (2, gy, gx, 2, 2)
        assert torch.equal(jac, torch.eye(2, dtype=F64).expand_as(jac))


def test_cell_scale_squeezed_left_half_magnifies():
    # Every row maps x = 0.5 to 0.25: the left half of the output reads the input's left quarter
    # (nodes squeezed, content magnified 2x horizontally), the right half reads the rest (shrunk).
    phi = m.identity(1, 4, dtype=F64)
    phi[:, 0] = torch.tensor([0.0, 0.125, 0.25, 0.625, 1.0], dtype=F64)
    assert m.is_valid(phi).all()
    s = m.cell_scale(phi)[0]
    torch.testing.assert_close(s[:, :2], torch.full((4, 2), math.sqrt(2), dtype=F64))
    torch.testing.assert_close(s[:, 2:], torch.full((4, 2), math.sqrt(2 / 3), dtype=F64))
    assert (s[:, :2] > 1).all() and (s[:, 2:] < 1).all()
    # The warp itself: a ramp x(i, j) = j comes out with slope 1/2 on the left, 3/2 on the right.
    w = 64
    ramp = torch.arange(w, dtype=F64).expand(1, 1, 8, w)
    out = m.warp(ramp, phi)
    d = out.diff(dim=-1)[0, 0]
    torch.testing.assert_close(d[:, 2:30], torch.full((8, 28), 0.5, dtype=F64))
    torch.testing.assert_close(d[:, 33:62], torch.full((8, 29), 1.5, dtype=F64))
    # unwarp does the opposite: cell_scale of the inverse swaps the roles.
    s_inv = m.cell_scale(m.inverse(phi))[0]
    torch.testing.assert_close(s_inv[:, :1], torch.full((4, 1), math.sqrt(0.5), dtype=F64), atol=1e-3, rtol=0)
    assert (s_inv[:, -1] > 1).all()


def test_cell_jacobian_of_separable_phi():
    f = torch.tensor([0.0, 0.1, 0.35, 0.7, 1.0], dtype=F64)  # gx = 4
    gfun = torch.tensor([0.0, 0.5, 0.8, 1.0], dtype=F64)  # gy = 3
    phi = torch.empty(1, 2, 4, 5, dtype=F64)
    phi[0, 0] = f.expand(4, 5)
    phi[0, 1] = gfun[:, None].expand(4, 5)
    assert m.is_valid(phi).all()
    jac = m.cell_jacobian(phi)[0]
    slope_x = f.diff() * 4  # per column of cells
    slope_y = gfun.diff() * 3  # per row of cells
    expected = torch.zeros(3, 4, 2, 2, dtype=F64)
    expected[..., 0, 0] = slope_x[None, :]
    expected[..., 1, 1] = slope_y[:, None]
    torch.testing.assert_close(jac, expected, atol=1e-14, rtol=0)
    torch.testing.assert_close(m.cell_scale(phi)[0], (slope_y[:, None] * slope_x[None, :]).rsqrt(), atol=1e-14, rtol=0)


def test_jacobian_matches_finite_differences():
    phi = m.sample(3, (3, 4), 0.4, gen(11), dtype=F64)
    # Points strictly inside cells, so the finite difference stays in one bilinear patch.
    g = gen(12)
    cell = torch.stack([torch.randint(0, 4, (3, 50), generator=g), torch.randint(0, 3, (3, 50), generator=g)], -1)
    frac = 0.1 + 0.8 * torch.rand(3, 50, 2, generator=g, dtype=F64)
    q = (cell + frac) / torch.tensor([4.0, 3.0], dtype=F64)
    jac = m.jacobian(phi, q)
    h = 1e-6
    for k in range(2):
        e = torch.zeros(2, dtype=F64)
        e[k] = h
        fd = (m.evaluate(phi, q + e) - m.evaluate(phi, q - e)) / (2 * h)
        torch.testing.assert_close(jac[..., :, k], fd, atol=1e-7, rtol=0)
    # cell_jacobian is the Jacobian at the cell centres.
    rows, cols = torch.meshgrid(torch.arange(3, dtype=F64), torch.arange(4, dtype=F64), indexing="ij")
    centres = torch.stack([(cols + 0.5) / 4, (rows + 0.5) / 3], -1).expand(3, -1, -1, -1)
    torch.testing.assert_close(m.cell_jacobian(phi), m.jacobian(phi, centres), atol=1e-14, rtol=0)


# --------------------------------------------------------------------------------------------
# 11. bad input
# --------------------------------------------------------------------------------------------


def test_bad_input_raises():
    x = torch.rand(2, 3, 8, 8)
    phi = m.identity(2, 4)
    for bad_phi in (torch.rand(2, 3, 5, 5), torch.rand(2, 2, 1, 5), torch.rand(2, 2, 5, 1), torch.rand(2, 5, 5)):
        for fn in (m.warp, m.unwarp):
            with pytest.raises(ValueError):
                fn(x, bad_phi)
        with pytest.raises(ValueError):
            m.grid_shape(bad_phi)
    for fn in (m.warp, m.unwarp):
        with pytest.raises(ValueError):  # batch mismatch
            fn(torch.rand(3, 3, 8, 8), phi)
        with pytest.raises(ValueError):  # phi batch > x batch
            fn(torch.rand(1, 3, 8, 8), phi)
        with pytest.raises(ValueError):
            fn(x, phi, mode="bicubic")
        with pytest.raises(ValueError):
            fn(torch.rand(3, 8, 8), phi[:1])
    for grid in (0, (0, 3), (3, 0), -1):
        with pytest.raises(ValueError):
            m.identity(1, grid)
        with pytest.raises(ValueError):
            m.sample(1, grid, 0.1, gen(0))
    with pytest.raises(ValueError):
        m.inverse(phi, method="exact")
    with pytest.raises(ValueError):
        m.evaluate(phi, torch.rand(2, 10, 3))
    with pytest.raises(ValueError):
        m.invert_points(phi, torch.rand(2, 10, 1))
    with pytest.raises(ValueError):  # logits shapes that do not fit together
        m.from_logits(torch.zeros(2, 5, 4), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError):
        m.from_logits(torch.zeros(2, 5), torch.zeros(2, 5, 4))


def test_unfold_keeps_valid_phi_and_repairs_folding_ones():
    g = torch.Generator().manual_seed(5)
    good = m.sample(4, 4, 0.2, g)
    assert torch.equal(m.unfold(good), good)
    # Rows with very different functions fold: a strong independent draw per row.
    lx = torch.randn(8, 5, 4, generator=g) * 3
    ly = torch.randn(8, 5, 4, generator=g) * 3
    folding = m.from_logits(lx, ly)
    assert not m.is_valid(folding).all()
    logits = lx.clone().requires_grad_(True)
    fixed = m.unfold(m.from_logits(logits, ly))
    assert m.is_valid(fixed).all()
    keep = m.is_valid(folding)
    assert torch.equal(fixed[keep].detach(), folding[keep])
    fixed.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_geometry_stays_float32_under_autocast():
    """Under AMP the coordinates are not rounded to bfloat16 (einsum would be) and ``is_valid``'s
    determinant runs (no bfloat16 kernel): the same values as outside autocast."""
    phi = m.sample(3, 4, 0.3, generator=torch.Generator().manual_seed(0))
    plain = m.displacement_field(phi, 40, 56), m.is_valid(phi), m.cell_scale(phi), m.unfold(phi)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = m.displacement_field(phi, 40, 56), m.is_valid(phi), m.cell_scale(phi), m.unfold(phi)
    for a, b in zip(plain, amp):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert plain[0].dtype == torch.float32
