"""The monotone scaling group (paper Sec. 4.1 and A2.2), batched and differentiable.

A monotone scaling is a map ``l : [0, 1]² → [0, 1]²`` built from one increasing piecewise-linear
function per grid row (for x) and one per grid column (for y), joined by linear interpolation
(A27–A29).  Inside each grid cell ``l`` is therefore bilinear, and ``l`` is fully described by the
positions of the grid's nodes.  That is the representation used here:

    ``phi``: tensor ``(B, 2, gy + 1, gx + 1)``; ``phi[:, 0, j, n]`` is the x-knot ``ϕ^{y_j}_{x_n}`` of
    row ``j`` and ``phi[:, 1, j, n]`` the y-knot ``ϕ^{x_n}_{y_j}`` of column ``n``.  Valid ``phi``
    have ``phi[:, 0]`` increasing along ``n`` from 0 to 1 and ``phi[:, 1]`` increasing along ``j``
    from 0 to 1.  This is the layout of the paper's own code (its ``get_coarse_adaptive_grid``).

Convention (the paper's code and ``DESIGN.md``): ``warp(x, phi)(p) = x(l(p))`` — output pixel
``p`` reads the input at ``l(p)``; ``unwarp(x, phi)(q) = x(l⁻¹(q))`` undoes it.  (The paper's
Eq. 8 writes S with ``l⁻¹``; its ``l`` is our ``inverse(phi)``.)  Where the nodes of ``phi`` are
squeezed together the warp magnifies content: the local scale factor of ``warp`` in an output
region is ``1 / sqrt(det J_l)`` (see :func:`cell_scale`).

The family of node grids is not closed under composition or inversion: :func:`compose` and
:func:`inverse` compute the exact map and project it onto the family by least squares.  ``unwarp``
does *not* go through that approximation: it inverts ``l`` point by point, starting from the
paper's per-row/per-column inverse (A2.2, exact only when all rows share one function) and
refining with Newton steps on ``l(q) = p``, so ``unwarp(warp(x))`` equals ``x`` up to resampling.

All coordinates are in ``[0, 1]`` with ``(0, 0)`` the top-left corner of the image and pixel
``(i, j)`` centred at ``((j + 0.5) / W, (i + 0.5) / H)``; points are ``(..., 2)`` tensors in
``(x, y)`` order.  Images/feature maps are ``(B, C, H, W)`` with any ``C``, ``H``, ``W``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = [
    "cell_jacobian",
    "cell_scale",
    "compose",
    "displacement_field",
    "evaluate",
    "from_logits",
    "grid_shape",
    "identity",
    "inverse",
    "invert_points",
    "is_valid",
    "jacobian",
    "pixel_centers",
    "sample",
    "to_logits",
    "unfold",
    "unwarp",
    "warp",
]

Grid = int | tuple[int, int]


def _full_precision(fn):
    """Run ``fn`` (first argument a map or points) with autocast off on its device.

    Under AMP, autocast would compute the coordinates' einsum/matmul in bfloat16 (8 mantissa bits:
    about a pixel of error at 224 px) and ``linalg.det`` has no bfloat16 kernel; the maps themselves
    are float32 (the DEC iterate stays float32), so turning autocast off is all it takes.
    """

    @functools.wraps(fn)
    def wrapped(first: Tensor, *args, **kwargs):
        kind = first.device.type
        if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
            with torch.autocast(kind, enabled=False):
                return fn(first, *args, **kwargs)
        return fn(first, *args, **kwargs)

    return wrapped

def _grid(grid: Grid) -> tuple[int, int]:
    gy, gx = (grid, grid) if isinstance(grid, int) else grid
    if gy < 1 or gx < 1:
        raise ValueError(f"grid must have at least one cell per axis, got {grid!r}")
    return int(gy), int(gx)


def grid_shape(phi: Tensor) -> tuple[int, int]:
    """Number of grid cells ``(gy, gx)`` of ``phi`` ``(B, 2, gy + 1, gx + 1)``."""
    if phi.dim() != 4 or phi.shape[1] != 2 or phi.shape[2] < 2 or phi.shape[3] < 2:
        raise ValueError(f"phi must have shape (B, 2, gy + 1, gx + 1), got {tuple(phi.shape)}")
    return phi.shape[2] - 1, phi.shape[3] - 1


def _nodes(gy: int, gx: int, *, device=None, dtype=None) -> Tensor:
    """Identity node positions ``(2, gy + 1, gx + 1)``."""
    ys = torch.linspace(0, 1, gy + 1, device=device, dtype=dtype)
    xs = torch.linspace(0, 1, gx + 1, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy])


def _displacement(phi: Tensor) -> Tensor:
    """``phi`` minus the identity nodes: exactly zero for the identity, which keeps it exact."""
    gy, gx = grid_shape(phi)
    return phi - _nodes(gy, gx, device=phi.device, dtype=phi.dtype)


def identity(b: int, grid: Grid = 4, *, device=None, dtype=None) -> Tensor:
    """The identity element, ``(b, 2, gy + 1, gx + 1)``."""
    gy, gx = _grid(grid)
    return _nodes(gy, gx, device=device, dtype=dtype).expand(b, -1, -1, -1).clone()


def from_logits(logits_x: Tensor, logits_y: Tensor) -> Tensor:
    """Unconstrained parametrisation → valid ``phi`` (for networks that predict ``phi``).

    ``logits_x``: ``(B, gy + 1, gx)``, one logit per interval of each row function;
    ``logits_y``: ``(B, gx + 1, gy)``, one per interval of each column function.  Increments are
    ``softmax(logits)`` (positive, summing to 1), knots their cumulative sum with the ends pinned
    at exactly 0 and 1.  Zero logits give the identity.
    """
    def knots(logits: Tensor) -> Tensor:
        inc = torch.softmax(logits, dim=-1)
        inner = torch.cumsum(inc[..., :-1], dim=-1)
        zeros = torch.zeros_like(inc[..., :1])
        return torch.cat([zeros, inner, torch.ones_like(zeros)], dim=-1)

    if logits_x.dim() != 3 or logits_y.dim() != 3:
        raise ValueError("logits must be (B, gy + 1, gx) and (B, gx + 1, gy)")
    b, ry, gx = logits_x.shape
    if logits_y.shape != (b, gx + 1, ry - 1):
        raise ValueError(
            f"logits_y must have shape {(b, gx + 1, ry - 1)} to match logits_x {tuple(logits_x.shape)}"
        )
    return torch.stack([knots(logits_x), knots(logits_y).transpose(1, 2)], dim=1)


def to_logits(phi: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`from_logits` (logits up to a per-row constant; ``phi`` must be valid)."""
    grid_shape(phi)
    inc_x = phi[:, 0].diff(dim=-1)
    inc_y = phi[:, 1].transpose(1, 2).diff(dim=-1)
    tiny = torch.finfo(phi.dtype).tiny
    return inc_x.clamp_min(tiny).log(), inc_y.clamp_min(tiny).log()


def sample(
    b: int,
    grid: Grid = 4,
    strength: float = 0.25,
    generator: torch.Generator | None = None,
    *,
    device=None,
    dtype=None,
) -> Tensor:
    """Draw ``b`` scalings from Ω, the uniform distribution the metrics and Aug use.

    Each interval logit is drawn uniformly from ``[0, 3 * strength]`` and mapped through
    :func:`from_logits`; this is the distribution of the paper's code with
    ``warping_strength = strength``.  Every per-axis slope of ``l`` then lies in
    ``[exp(-3 * strength), exp(3 * strength)]``, so ``strength`` bounds the local scale range
    (``strength = 0`` is the identity).  Draws whose map would fold (non-positive Jacobian
    determinant somewhere) are redrawn; a strength so large that this keeps happening raises.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    gy, gx = _grid(grid)
    dtype = dtype or torch.get_default_dtype()

    def draw(n: int) -> Tensor:
        lx = torch.rand(n, gy + 1, gx, generator=generator, device=device, dtype=dtype)
        ly = torch.rand(n, gx + 1, gy, generator=generator, device=device, dtype=dtype)
        return from_logits(lx * (3 * strength), ly * (3 * strength))

    phi = draw(b)
    for _ in range(100):
        bad = ~is_valid(phi)
        if not bad.any():
            return phi
        phi[bad] = draw(int(bad.sum()))
    raise ValueError(f"strength {strength} is too large: sampled scalings keep folding over")


def _locate(q: Tensor, gy: int, gx: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cell indices ``(cx, cy)`` (long) and in-cell coordinates ``(u, v)`` of points ``q`` (..., 2)."""
    sx = q[..., 0] * gx
    sy = q[..., 1] * gy
    cx = sx.detach().floor().clamp(0, gx - 1)
    cy = sy.detach().floor().clamp(0, gy - 1)
    return cx.long(), cy.long(), sx - cx, sy - cy


def _bilerp(c00, c01, c10, c11, u, v, gy: int, gx: int, with_jacobian: bool):
    """Bilinear value (and d/dx, d/dy in [0, 1] units) from the four corner values of each cell."""
    top = c00 + u * (c01 - c00)
    bottom = c10 + u * (c11 - c10)
    value = top + v * (bottom - top)
    if not with_jacobian:
        return value
    ddx = gx * ((c01 - c00) + v * ((c11 - c10) - (c01 - c00)))
    ddy = gy * (bottom - top)
    return value, ddx, ddy


def _cells(d: Tensor, q: Tensor, with_jacobian: bool = False):
    """Bilinear interpolation of node values ``d`` ``(B, 2, ny, nx)`` at points ``q`` ``(B, N, 2)``.

    Returns ``value`` ``(B, N, 2)`` and, if asked, the partial derivatives ``d/dx`` and ``d/dy``
    (each ``(B, N, 2)``) of the interpolant, in units of ``[0, 1]`` coordinates.
    """
    b, _, ny, nx = d.shape
    cx, cy, u, v = _locate(q, ny - 1, nx - 1)
    i00 = (cy * nx + cx).unsqueeze(1).expand(b, 2, -1)
    flat = d.reshape(b, 2, ny * nx)
    corners = [flat.gather(2, i00 + k) for k in (0, 1, nx, nx + 1)]
    out = _bilerp(*corners, u.unsqueeze(1), v.unsqueeze(1), ny - 1, nx - 1, with_jacobian)
    return out.transpose(1, 2) if not with_jacobian else tuple(t.transpose(1, 2) for t in out)


def _cells_at(d: Tensor, bidx: Tensor, q: Tensor, with_jacobian: bool = False):
    """:func:`_cells` for a flat list of points ``q`` ``(P, 2)`` of batch elements ``bidx`` ``(P,)``;
    outputs ``(P, 2)``.  Lets iterative solvers work on the unconverged points only."""
    b, _, ny, nx = d.shape
    cx, cy, u, v = _locate(q, ny - 1, nx - 1)
    table = d.permute(0, 2, 3, 1).reshape(b * ny * nx, 2)
    i00 = bidx * (ny * nx) + cy * nx + cx
    corners = [table[i00 + k] for k in (0, 1, nx, nx + 1)]
    return _bilerp(*corners, u.unsqueeze(1), v.unsqueeze(1), ny - 1, nx - 1, with_jacobian)


def _batch_index(b: int, n: int, device) -> Tensor:
    return torch.arange(b, device=device).repeat_interleave(n)


def _flatten_points(phi: Tensor, q: Tensor) -> tuple[Tensor, torch.Size]:
    if q.shape[-1] != 2:
        raise ValueError(f"points must be (..., 2), got {tuple(q.shape)}")
    shape = q.shape
    q = q.expand(phi.shape[0], *shape[1:]) if shape[0] == 1 and phi.shape[0] != 1 else q
    return q.reshape(q.shape[0], -1, 2), q.shape


def evaluate(phi: Tensor, q: Tensor) -> Tensor:
    """``l(q)`` for points ``q`` ``(B, ..., 2)`` in ``[0, 1]²``; same shape as ``q``."""
    flat, shape = _flatten_points(phi, q)
    return (flat + _cells(_displacement(phi), flat)).reshape(shape)


def jacobian(phi: Tensor, q: Tensor) -> Tensor:
    """Jacobian ``dl/dq`` ``(B, ..., 2, 2)`` at points ``q`` ``(B, ..., 2)``; rows are (x, y) outputs."""
    flat, shape = _flatten_points(phi, q)
    _, ddx, ddy = _cells(_displacement(phi), flat, with_jacobian=True)
    return _jacobian_matrix(ddx, ddy).reshape(*shape, 2)


def _jacobian_matrix(ddx: Tensor, ddy: Tensor) -> Tensor:
    """``(..., 2, 2)`` Jacobian of ``q + D(q)`` from the displacement derivatives ``(..., 2)``."""
    jac = torch.stack([ddx, ddy], dim=-1)  # (..., 2 outputs, 2 inputs)
    return jac + torch.eye(2, dtype=jac.dtype, device=jac.device)


def _solve2(jac: Tensor, rhs: Tensor) -> Tensor:
    """Solve ``jac @ s = rhs`` for ``(B, N, 2, 2)`` and ``(B, N, 2)``, guarding tiny determinants."""
    a, b_ = jac[..., 0, 0], jac[..., 0, 1]
    c, d = jac[..., 1, 0], jac[..., 1, 1]
    det = a * d - b_ * c
    eps = torch.finfo(jac.dtype).eps
    det = torch.where(det.abs() < eps, torch.full_like(det, eps), det)
    r0, r1 = rhs[..., 0], rhs[..., 1]
    return torch.stack([(d * r0 - b_ * r1) / det, (a * r1 - c * r0) / det], dim=-1)


def _invert_rows(knots: Tensor) -> Tensor:
    """Exact inverse of each 1-D piecewise-linear function, resampled at its own uniform knots.

    ``knots`` ``(B, R, K)``: increasing from 0 to 1 along the last dim.  Returns the knots of the
    inverse functions on the same uniform grid, ``(B, R, K)``.
    """
    k = knots.shape[-1]
    t = torch.linspace(0, 1, k, device=knots.device, dtype=knots.dtype)
    idx = torch.searchsorted(knots.detach().contiguous(), t.expand(*knots.shape[:-1], k).contiguous(), right=True)
    idx = (idx - 1).clamp(0, k - 2)
    lo = knots.gather(-1, idx)
    hi = knots.gather(-1, idx + 1)
    span = (hi - lo).clamp_min(torch.finfo(knots.dtype).tiny)
    inv = t[idx] + (t - lo) / span * (1.0 / (k - 1))
    # Pin the ends: the inverse fixes 0 and 1 exactly.
    inv = torch.cat([torch.zeros_like(inv[..., :1]), inv[..., 1:-1], torch.ones_like(inv[..., :1])], dim=-1)
    return inv


def _paper_inverse(phi: Tensor) -> Tensor:
    """The paper's inverse (A2.2): invert every row and column function on its own."""
    x_inv = _invert_rows(phi[:, 0])
    y_inv = _invert_rows(phi[:, 1].transpose(1, 2)).transpose(1, 2)
    return torch.stack([x_inv, y_inv], dim=1)


def invert_points(
    phi: Tensor, p: Tensor, *, max_steps: int = 12, tol: float | None = None, init: Tensor | None = None,
    dense_steps: int = 0,
) -> tuple[Tensor, Tensor]:
    """Solve ``l(q) = p`` for every point: returns ``q`` (shape of ``p``) and the residual.

    Starts from ``init`` (a guess shaped like ``p``) or the paper's per-row/per-column inverse,
    and takes Newton steps (``l`` is bilinear
    per cell, its Jacobian positive definite for valid ``phi``) until ``max |l(q) - p| <= tol``
    (default: 1e-6 in float32, 1e-12 in float64) or ``max_steps``.  Gradients w.r.t. ``phi`` use
    the implicit function theorem (one Newton step with a detached Jacobian at the solution), not
    backpropagation through the iterations.  The residual ``(B,)`` is the max over points of
    ``|l(q) - p|`` at the last iterate, in ``[0, 1]`` units.  ``dense_steps`` Newton steps are first
    taken on all points at once (see the code), then the robust per-point iteration finishes the rest.
    """
    flat, shape = _flatten_points(phi, p)
    if tol is None:
        tol = 1e-12 if phi.dtype == torch.float64 else 1e-6
    disp = _displacement(phi)
    b, n, _ = flat.shape
    with torch.no_grad():
        d_nodes = disp.detach()
        bidx = _batch_index(b, n, flat.device)
        pts = flat.reshape(b * n, 2)
        if init is None:
            start = _displacement(_paper_inverse(phi.detach()))
            q = (pts + _cells_at(start, bidx, pts)).clamp(0, 1)
        else:
            q = init.detach().expand(b, *init.shape[1:]).reshape(b * n, 2).clamp(0, 1).to(pts.dtype)
        res = q - pts + _cells_at(d_nodes, bidx, q)  # l(q) - p
        norm = res.norm(dim=-1)
        # Dense Newton steps on every point first, each kept only where it lowers the residual: no
        # indexing of the active points and no host sync, which on feature maps of a few hundred pixels
        # cost more than the arithmetic (from a good start two steps leave almost nothing to do).
        for _ in range(min(dense_steps, max_steps)):
            _, ddx, ddy = _cells_at(d_nodes, bidx, q, with_jacobian=True)
            cand = (q - _solve2(_jacobian_matrix(ddx, ddy), res)).clamp(0, 1)
            cand_res = cand - pts + _cells_at(d_nodes, bidx, cand)
            cand_norm = cand_res.norm(dim=-1)
            better = (cand_norm < norm)[:, None]
            q, res = torch.where(better, cand, q), torch.where(better, cand_res, res)
            norm = torch.minimum(cand_norm, norm)
        active = (norm > tol).nonzero().squeeze(1)
        for _ in range(max_steps):
            if active.numel() == 0:
                break
            # Work on the unconverged points only.
            qa, ra, na, ba, pa = q[active], res[active], norm[active], bidx[active], pts[active]
            _, ddx, ddy = _cells_at(d_nodes, ba, qa, with_jacobian=True)
            step = _solve2(_jacobian_matrix(ddx, ddy), ra)
            # Backtracking: a full Newton step can overshoot across cell borders; halve it for
            # the points whose residual did not drop, so the iteration never diverges.  Points
            # that cannot improve any more (float precision) stop.
            pending = torch.arange(len(active), device=active.device)
            t = 1.0
            for _ in range(12):
                cand = (qa[pending] - t * step[pending]).clamp(0, 1)
                cand_res = cand - pa[pending] + _cells_at(d_nodes, ba[pending], cand)
                cand_norm = cand_res.norm(dim=-1)
                ok = cand_norm < na[pending]
                took = pending[ok]
                qa[took], ra[took], na[took] = cand[ok], cand_res[ok], cand_norm[ok]
                pending = pending[~ok]
                if pending.numel() == 0:
                    break
                t *= 0.5
            improved = torch.ones_like(na, dtype=torch.bool)
            improved[pending] = False
            q[active], res[active], norm[active] = qa, ra, na
            active = active[improved & (na > tol)]
        err = norm.reshape(b, n).amax(dim=1)
        delta = (q - pts).reshape(b, n, 2)
    # Implicit-function step: value unchanged at convergence, gradient -J⁻¹ ∂l/∂phi.
    q = (flat + delta).clamp(0, 1)
    delta = q - flat
    d, ddx, ddy = _cells(disp, q, with_jacobian=True)
    residual = delta + d
    delta = delta - _solve2(_jacobian_matrix(ddx, ddy).detach(), residual)
    return (flat + delta).reshape(shape), err


def pixel_centers(h: int, w: int, *, device=None, dtype=None) -> Tensor:
    """Pixel centres ``(1, h, w, 2)`` in ``[0, 1]`` coordinates, (x, y) order."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=-1).unsqueeze(0)


def _resample(x: Tensor, delta: Tensor, mode: str) -> Tensor:
    """Read ``x`` ``(B, C, H, W)`` at pixel centre + ``delta`` ``(B, H, W, 2)`` ([0, 1] units).

    Bilinear (or nearest) with border replication.  Coordinates are formed as integer pixel index
    plus offset, so a zero offset reads the pixel exactly (``grid_sample`` does not: its
    normalised coordinates round).
    """
    b, c, h, w = x.shape
    sx = torch.arange(w, device=x.device, dtype=delta.dtype) + delta[..., 0] * w
    sy = torch.arange(h, device=x.device, dtype=delta.dtype).unsqueeze(1) + delta[..., 1] * h
    if mode == "nearest":
        sx, sy = sx.round(), sy.round()
    elif mode != "bilinear":
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    x0 = sx.detach().floor()
    y0 = sy.detach().floor()
    wx = (sx - x0).unsqueeze(1).to(x.dtype)
    wy = (sy - y0).unsqueeze(1).to(x.dtype)
    x0, y0 = x0.long(), y0.long()
    xa, xb = x0.clamp(0, w - 1), (x0 + 1).clamp(0, w - 1)
    ya, yb = y0.clamp(0, h - 1), (y0 + 1).clamp(0, h - 1)
    flat = x.reshape(b, c, h * w)

    def read(yy: Tensor, xx: Tensor) -> Tensor:
        idx = (yy * w + xx).reshape(b, 1, h * w).expand(b, c, h * w)
        return flat.gather(2, idx).reshape(b, c, h, w)

    top = read(ya, xa)
    top = top + wx * (read(ya, xb) - top)
    bottom = read(yb, xa)
    bottom = bottom + wx * (read(yb, xb) - bottom)
    return top + wy * (bottom - top)


def _check_pair(x: Tensor, phi: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got {tuple(x.shape)}")
    grid_shape(phi)
    if phi.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"batch sizes differ: x has {x.shape[0]}, phi has {phi.shape[0]}")


def _hat_weights(n: int, g: int, *, device, dtype) -> Tensor:
    """``(n, g + 1)``: the piecewise-linear node basis of a ``g``-cell grid at ``n`` pixel centres."""
    centres = (torch.arange(n, device=device, dtype=dtype) + 0.5) * (g / n)
    return (1 - (centres[:, None] - torch.arange(g + 1, device=device, dtype=dtype)).abs()).clamp_min(0)


@_full_precision
def displacement_field(phi: Tensor, h: int, w: int) -> Tensor:
    """``l(p) - p`` at the ``h × w`` pixel centres, ``(B, h, w, 2)``.

    ``l`` is bilinear in each cell of a tensor-product grid, so its displacement at the pixel
    centres is separable: ``Wy · D · Wxᵀ`` with the node basis ``W`` of each axis — two small
    matrix products instead of a gather per pixel.  Equal to :func:`evaluate` minus the points up
    to float rounding, and exactly zero for the identity.
    """
    gy, gx = grid_shape(phi)
    wy = _hat_weights(h, gy, device=phi.device, dtype=phi.dtype)
    wx = _hat_weights(w, gx, device=phi.device, dtype=phi.dtype)
    return torch.einsum("hi,bcij,wj->bhwc", wy, _displacement(phi), wx)


def _is_identity(phi: Tensor) -> Tensor:
    """``(B,)``: whether each ``phi`` is exactly the identity."""
    return (_displacement(phi) == 0).flatten(1).all(dim=1)


def _sample_fast(x: Tensor, points: Tensor, mode: str, identity: Tensor) -> Tensor:
    """``x`` ``(B, C, H, W)`` read at ``points`` ``(B or 1, H, W, 2)`` ([0, 1] units) by ``grid_sample``;
    samples flagged in ``identity`` ``(B or 1,)`` keep ``x``'s values exactly (see :func:`warp`)."""
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    dtype = torch.promote_types(x.dtype, torch.float32)  # no bf16/fp16 coordinates
    grid = (2 * points - 1).to(dtype).expand(x.shape[0], -1, -1, -1)
    out = torch.nn.functional.grid_sample(x.to(dtype), grid, mode=mode, padding_mode="border",
                                          align_corners=False).to(x.dtype)
    passed = x + (out - out.detach())  # x's values, the sampler's gradient
    return torch.where(identity.expand(x.shape[0])[:, None, None, None], passed, out)


def warp(x: Tensor, phi: Tensor, *, mode: str = "bilinear", exact: bool = True) -> Tensor:
    """``S(x; phi)``: output pixel ``p`` reads ``x`` at ``l(p)``.  ``(B, C, H, W)`` → same shape.

    ``exact=False`` is the fast path (the adapted layers and the DEC solver): the displacement by
    :func:`displacement_field` and one ``grid_sample`` (bilinear, border replication) read the same
    points as the exact sampler up to float rounding, with a handful of fused operations instead of
    about forty small ones.  ``grid_sample``'s normalised coordinates round, so samples whose ``phi``
    is exactly the identity are passed through instead: their values are ``x`` bit for bit, their
    gradients the sampler's (a canonicalizer at the identity still learns to move).
    """
    _check_pair(x, phi)
    if not exact:
        h, w = x.shape[-2:]
        return _sample_fast(x, pixel_centers(h, w, device=x.device, dtype=phi.dtype) + displacement_field(phi, h, w),
                            mode, _is_identity(phi))
    p = pixel_centers(*x.shape[-2:], device=x.device, dtype=phi.dtype)
    flat, _ = _flatten_points(phi, p.expand(phi.shape[0], -1, -1, -1))
    delta = _cells(_displacement(phi), flat).reshape(phi.shape[0], *x.shape[-2:], 2)
    return _resample(x, delta.expand(x.shape[0], -1, -1, -1), mode)


def _inverse_grid(phi: Tensor, h: int, w: int, max_steps: int) -> tuple[Tensor, Tensor]:
    """``l⁻¹`` at the pixel centres ``(B, h, w, 2)``, and those centres.

    Coarse to fine: solve exactly on a grid 8× coarser, upsample that as the starting guess, then
    polish every pixel with Newton — most pixels then need one step instead of five.
    """
    p = pixel_centers(h, w, device=phi.device, dtype=phi.dtype).expand(phi.shape[0], -1, -1, -1)
    init = None
    ch, cw = max(2, h // 8), max(2, w // 8)
    if h * w >= 4 * ch * cw:
        pc = pixel_centers(ch, cw, device=phi.device, dtype=phi.dtype).expand(phi.shape[0], -1, -1, -1)
        with torch.no_grad():
            qc, _ = invert_points(phi.detach(), pc, max_steps=max_steps)
            shift = torch.nn.functional.interpolate(
                (qc - pc).permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False
            )
            init = p + shift.permute(0, 2, 3, 1)
    q, _ = invert_points(phi, p, max_steps=max_steps, init=init, dense_steps=2)
    return q, p


def unwarp(x: Tensor, phi: Tensor, *, mode: str = "bilinear", max_steps: int = 12, exact: bool = True) -> Tensor:
    """``S⁻¹(x; phi)``: output pixel ``q`` reads ``x`` at ``l⁻¹(q)`` (Newton-refined inverse).
    ``exact=False``: read by ``grid_sample``, as in :func:`warp`."""
    _check_pair(x, phi)
    q, p = _inverse_grid(phi, *x.shape[-2:], max_steps)
    if not exact:
        return _sample_fast(x, q, mode, _is_identity(phi))
    return _resample(x, (q - p).expand(x.shape[0], -1, -1, -1), mode)


def _project(nodes: Tensor) -> Tensor:
    """Clamp node grids to valid ``phi``: ends pinned, x increasing along rows, y along columns."""
    x = nodes[:, 0].clamp(0, 1).cummax(dim=-1).values
    y = nodes[:, 1].clamp(0, 1).cummax(dim=-2).values
    x = torch.cat([torch.zeros_like(x[..., :1]), x[..., 1:-1], torch.ones_like(x[..., :1])], dim=-1)
    y = torch.cat([torch.zeros_like(y[..., :1, :]), y[..., 1:-1, :], torch.ones_like(y[..., :1, :])], dim=-2)
    return torch.stack([x, y], dim=1)


def _basis(pts: Tensor, gy: int, gx: int) -> Tensor:
    """Bilinear weights ``(N, gy + 1, gx + 1)`` of every node at points ``pts`` ``(N, 2)``."""
    n, nx = pts.shape[0], gx + 1
    sx, sy = pts[:, 0] * gx, pts[:, 1] * gy
    cx, cy = sx.floor().clamp(0, gx - 1), sy.floor().clamp(0, gy - 1)
    u, v = sx - cx, sy - cy
    i00 = cy.long() * nx + cx.long()
    idx = torch.stack([i00, i00 + 1, i00 + nx, i00 + nx + 1], dim=1)
    wts = torch.stack([(1 - u) * (1 - v), u * (1 - v), (1 - u) * v, u * v], dim=1)
    out = torch.zeros(n, (gy + 1) * nx, dtype=pts.dtype, device=pts.device)
    return out.scatter_add_(1, idx, wts).reshape(n, gy + 1, nx)


def _fit_points(phi: Tensor) -> Tensor:
    """Dense points ``(N, 2)`` (8 per cell and axis) on which :func:`_fit` projects a map."""
    gy, gx = grid_shape(phi)
    return pixel_centers(8 * gy, 8 * gx, device=phi.device, dtype=phi.dtype).reshape(-1, 2)


@_full_precision
def _fit(pts: Tensor, targets: Tensor, gy: int, gx: int) -> Tensor:
    """Least-squares projection onto the family of a map sampled as ``targets`` ``(B, N, 2)``.

    Solves for the free node displacements (the boundary knots stay pinned at 0 and 1) that
    minimise ``sum |l_fit(pts) - targets|²``; linear in the nodes, so one pseudo-inverse serves
    the batch and gradients flow to ``targets``.
    """
    basis = _basis(pts, gy, gx)
    disp = targets - pts
    nodes = _nodes(gy, gx, device=pts.device, dtype=pts.dtype).expand(targets.shape[0], -1, -1, -1).clone()
    free_x = basis[:, :, 1:-1].reshape(len(pts), -1)
    free_y = basis[:, 1:-1, :].reshape(len(pts), -1)
    if gx > 1:
        nodes[:, 0, :, 1:-1] += (torch.linalg.pinv(free_x) @ disp[..., 0:1]).reshape(-1, gy + 1, gx - 1)
    if gy > 1:
        nodes[:, 1, 1:-1, :] += (torch.linalg.pinv(free_y) @ disp[..., 1:2]).reshape(-1, gy - 1, gx + 1)
    return _project(nodes)


def _node_points(phi: Tensor) -> Tensor:
    gy, gx = grid_shape(phi)
    return _nodes(gy, gx, device=phi.device, dtype=phi.dtype).permute(1, 2, 0).expand(phi.shape[0], -1, -1, -1)


def _project_map(phi: Tensor, exact) -> Tensor:
    """Project the exact map ``exact`` (points ``(B, N, 2)`` → ``(B, N, 2)``) onto ``phi``'s grid.

    Least squares over dense points (:func:`_fit`).  Where that fit folds (strong warps), fall
    back to the map sampled at the nodes, which folds less often; a map that folds even there
    is returned as is (check with :func:`is_valid`).
    """
    gy, gx = grid_shape(phi)
    pts = _fit_points(phi)
    fit = _fit(pts, exact(pts.expand(phi.shape[0], -1, -1)), gy, gx)
    bad = ~is_valid(fit)
    if bad.any():
        nodal = _project(exact(_node_points(phi).flatten(1, 2)).reshape(*_node_points(phi).shape).permute(0, 3, 1, 2))
        fit = torch.where(bad[:, None, None, None], nodal, fit)
    return fit


def compose(a: Tensor, b: Tensor) -> Tensor:
    """``a · b = l_a ∘ l_b`` on ``a``'s grid; ``warp(x, compose(a, b))`` ≈ ``warp(warp(x, a), b)``.

    The node-grid family is not closed under composition: the exact composite is projected
    onto it (:func:`_project_map`).  Knots are always increasing and pinned; the result is
    fold-free for the strengths the benchmark draws (≤ 0.2), and may fold for strong pairs.
    """
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ValueError(f"batch sizes differ: {a.shape[0]} and {b.shape[0]}")
    if a.shape[0] == 1 and b.shape[0] != 1:
        a = a.expand(b.shape[0], -1, -1, -1)
    return _project_map(a, lambda q: evaluate(a, evaluate(b, q)))


def inverse(phi: Tensor, *, method: str = "newton") -> Tensor:
    """Group inverse on the same grid.

    ``method="newton"``: the exact ``l⁻¹`` (:func:`invert_points`) projected onto the family
    (:func:`_project_map`); ``"paper"``: the paper's per-row/per-column 1-D inverse
    (A2.2), exact only when all rows share one function and all columns share one.
    """
    if method == "paper":
        return _paper_inverse(phi)
    if method != "newton":
        raise ValueError(f"method must be 'newton' or 'paper', got {method!r}")
    return _project_map(phi, lambda q: invert_points(phi, q)[0])


@_full_precision
def is_valid(phi: Tensor, *, atol: float = 1e-6) -> Tensor:
    """``(B,)`` bool: ends pinned at 0 and 1, strictly increasing knots, no fold (det J > 0).

    ``l`` is bilinear per cell, so its Jacobian determinant is affine in each cell and positive
    everywhere iff it is positive at the four corners of every cell.
    """
    gy, gx = grid_shape(phi)
    x, y = phi[:, 0], phi[:, 1]
    ends = (
        (x[..., 0].abs() <= atol).all(-1)
        & ((x[..., -1] - 1).abs() <= atol).all(-1)
        & (y[:, 0, :].abs() <= atol).all(-1)
        & ((y[:, -1, :] - 1).abs() <= atol).all(-1)
    )
    increasing = (x.diff(dim=-1) > 0).flatten(1).all(-1) & (y.diff(dim=-2) > 0).flatten(1).all(-1)
    ys = torch.linspace(0, 1, gy + 1, device=phi.device, dtype=phi.dtype)
    xs = torch.linspace(0, 1, gx + 1, device=phi.device, dtype=phi.dtype)
    # Evaluate each cell's Jacobian at its own corners (nudged inside to pick the cell).
    nudge = 1e-3 / max(gx, gy)
    cx = torch.cat([xs[:-1] + nudge, xs[1:] - nudge])
    cy = torch.cat([ys[:-1] + nudge, ys[1:] - nudge])
    yy, xx = torch.meshgrid(cy, cx, indexing="ij")
    pts = torch.stack([xx, yy], dim=-1).expand(phi.shape[0], -1, -1, -1)
    det = torch.linalg.det(jacobian(phi, pts))
    return ends & increasing & (det > 0).flatten(1).all(-1)


def unfold(phi: Tensor, *, max_halvings: int = 20) -> Tensor:
    """Make every ``phi`` fold-free: shrink the ones that fold toward the identity, halving the
    displacement until :func:`is_valid` holds.  Valid ``phi`` are returned unchanged; the shrink
    factor is a constant per sample, so gradients flow through (scaled)."""
    ident = identity(phi.shape[0], grid_shape(phi), device=phi.device, dtype=phi.dtype)
    scale = torch.ones(phi.shape[0], 1, 1, 1, device=phi.device, dtype=phi.dtype)
    with torch.no_grad():
        for _ in range(max_halvings):
            bad = ~is_valid(ident + scale * (phi.detach() - ident))
            if not bad.any():
                break
            scale[bad] *= 0.5
    return ident + scale * (phi - ident)


def cell_jacobian(phi: Tensor) -> Tensor:
    """Mean Jacobian of ``l`` over each grid cell, ``(B, gy, gx, 2, 2)`` (its value at the centre)."""
    gy, gx = grid_shape(phi)
    ys = (torch.arange(gy, device=phi.device, dtype=phi.dtype) + 0.5) / gy
    xs = (torch.arange(gx, device=phi.device, dtype=phi.dtype) + 0.5) / gx
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([xx, yy], dim=-1).expand(phi.shape[0], -1, -1, -1)
    return jacobian(phi, centres)


@_full_precision
def cell_scale(phi: Tensor) -> Tensor:
    """Local scale factor of ``warp(·, phi)`` per grid cell of the output, ``(B, gy, gx)``.

    ``s = 1 / sqrt(det J_l)``: content in that region appears ``s`` times larger (linear size)
    than in the input; 1 for the identity.  Use it to bin data and metrics by local scale.
    """
    det = torch.linalg.det(cell_jacobian(phi))
    return det.clamp_min(torch.finfo(phi.dtype).tiny).rsqrt()

