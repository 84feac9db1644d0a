"""Canonicalizers: predict, per sample, the monotone scaling that undoes the local scale of a map.

Every canonicalizer maps a feature map ``F`` ``(B, C, H, W)`` to a *canonicalizing element*
``psi`` ``(B, 2, gy + 1, gx + 1)`` (see :mod:`lsbench.monotone`): ``warp(F, psi)`` is the
canonical form of ``F`` and ``unwarp(·, psi)`` maps results back.  In the paper's notation
``psi`` is ``Φ̂⁻¹``: predicting the inverse directly means the fixed-point iteration only needs the
cheap, exact ``warp``, and the (Newton) inverse runs once per forward, in ``unwarp``.

- :class:`DEC` — the Deep Equilibrium Canonicalizer (Sec. 4.2): ``H(z; F)`` is a 2-layer CNN
  (the paper's 64, 128 channels; lsbench's default 32, 64 on the map area-downsampled to 8 px, see
  :mod:`.methods`) with adaptive pooling to the interval logits of ``psi``, applied to
  ``warp(F, from_logits(z))``; ``z* = H(z*; F)`` is found by Anderson acceleration and trained
  through with implicit differentiation (or the paper code's one-step phantom gradient).
- :class:`Canon` — discretised search: a fixed set of 64 (or 25) candidate scalings including the
  identity, scored by a 3-layer CNN energy on the map projected to a few channels; argmin at eval,
  soft-min weights while training.
- :class:`Optim` — canonicalization by gradient descent on the same energy (Eq. 7), unrolled:
  the memory reference DEC is compared against.
- :class:`Oracle` / :class:`Fixed` — return a given ``psi`` (tests, ablations, identity).

All start at the identity (zero-initialised output layers), so an adapted model initially
computes exactly what its backbone does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import monotone as M
from . import deq


def _downsample(x: Tensor, resolution: int | None) -> Tensor:
    """Area-downsample ``x`` so its longer side is at most ``resolution`` (canonicalizers see
    coarse maps; the warp commutes with downsampling up to resampling error)."""
    h, w = x.shape[-2:]
    if resolution is None or max(h, w) <= resolution:
        return x
    scale = resolution / max(h, w)
    return F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")


class _LogitHead(nn.Module):
    """128-channel map → interval logits ``(B, gy + 1, gx)`` and ``(B, gx + 1, gy)`` of ``psi``."""

    def __init__(self, channels: int, grid: tuple[int, int], max_logit: float):
        super().__init__()
        self.gy, self.gx = grid
        self.max_logit = max_logit
        self.x_head = nn.Conv2d(channels, 1, 1)
        self.y_head = nn.Conv2d(channels, 1, 1)
        for conv in (self.x_head, self.y_head):  # start at the identity
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        # A 1x1 conv and an average pool are both linear and the pool's weights sum to one, so they
        # commute: projecting the 128 channels to one before pooling computes the same logits, and
        # pools one channel instead of 128 (adaptive pooling to 5x4 was 10 % of a trained
        # resnet_dec forward on CPU).
        lx = F.adaptive_avg_pool2d(self.x_head(h), (self.gy + 1, self.gx))[:, 0]
        ly = F.adaptive_avg_pool2d(self.y_head(h), (self.gy, self.gx + 1))[:, 0].transpose(1, 2)
        # Bounded logits keep every slope within exp(±max_logit): no fold, no vanishing interval.
        return self.max_logit * torch.tanh(lx / self.max_logit), self.max_logit * torch.tanh(ly / self.max_logit)


def _cnn(in_channels: int, channels: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = in_channels
    for out in channels:
        groups = min(8, out)
        while out % groups:  # any width: the largest group count up to 8 that divides it
            groups -= 1
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.GroupNorm(groups, out), nn.GELU()]
        c = out
    return nn.Sequential(*layers)


class DEC(nn.Module):
    """Deep Equilibrium Canonicalizer for maps with ``in_channels`` channels.

    ``forward(F)`` ``(B, C, H, W)`` → ``psi`` ``(B, 2, gy + 1, gx + 1)``.  Solver statistics of
    the last call (iterations, residual, backward used) are in ``self.last_stats``.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        grid: int | tuple[int, int] = 4,
        channels: tuple[int, int] = (64, 128),
        resolution: int | None = 32,
        solver: str = "anderson",
        backward: str = "implicit",
        tol: float = 1e-3,
        max_iter: int = 20,
        max_logit: float = 2.0,
    ):
        super().__init__()
        self.grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
        self.resolution = resolution
        self.solver, self.backward, self.tol, self.max_iter = solver, backward, tol, max_iter
        self.body = _cnn(in_channels, channels)
        self.head = _LogitHead(channels[-1], self.grid, max_logit)
        self.last_stats: deq.SolverStats | None = None

    def _split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        gy, gx = self.grid
        nx = (gy + 1) * gx
        return z[:, :nx].reshape(-1, gy + 1, gx), z[:, nx:].reshape(-1, gx + 1, gy)

    def energy_map(self, canonical: Tensor) -> tuple[Tensor, Tensor]:
        """``H`` applied to an already canonicalized map: the next logits."""
        return self.head(self.body(canonical))

    def forward(self, x: Tensor) -> Tensor:
        small = _downsample(x, self.resolution)

        def h(z: Tensor) -> Tensor:
            lx, ly = self.energy_map(M.warp(small, M.from_logits(*self._split(z)), exact=False))
            return torch.cat([lx.flatten(1), ly.flatten(1)], dim=1)

        gy, gx = self.grid
        # The iterate stays at least float32 (under AMP the maps may be bf16/fp16).
        dtype = torch.promote_types(x.dtype, torch.float32)
        z0 = torch.zeros(x.shape[0], (gy + 1) * gx + (gx + 1) * gy, device=x.device, dtype=dtype)
        # Absolute residual: logits near zero (near-identity scalings) make a relative one unreachable.
        z, self.last_stats = deq.solve(
            h, z0, solver=self.solver, backward=self.backward, tol=self.tol, max_iter=self.max_iter, stop_mode="abs"
        )
        # Rows and columns are predicted independently, so a strong H could fold the map; keep
        # the output a valid (fold-free) monotone scaling.
        return M.unfold(M.from_logits(*self._split(z)))


def candidate_set(n: int, grid: int | tuple[int, int] = 4, strength: float = 0.25, seed: int = 0) -> Tensor:
    """``n`` fixed scalings ``(n, 2, gy + 1, gx + 1)`` from Ω, the first being the identity."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([M.identity(1, grid), M.sample(n - 1, grid, strength, gen)])


class _Energy(nn.Module):
    """3-layer CNN energy ``E(F) ∈ R`` per sample (Canon and Optim baselines)."""

    def __init__(self, in_channels: int, channels: tuple[int, ...] = (32, 64, 64)):
        super().__init__()
        self.body = _cnn(in_channels, channels)
        self.out = nn.Linear(channels[-1], 1)
        # Zero-initialised: all candidates score alike, so Canon's argmin (eval) picks the identity (the
        # first candidate) and Optim's descent does not move: a fresh model is its backbone.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x).mean(dim=(2, 3)))[:, 0]


class Canon(nn.Module):
    """Discretised canonicalization: pick the candidate scaling of lowest energy.

    ``num_candidates`` 64 (MNIST, segmentation) or 25 (ImageNet) as in the paper.  Training uses
    the soft-min weighted mean of the candidates (a convex combination of monotone grids is
    monotone), so the energy gets gradients; eval takes the argmin.

    ``width``: a 1x1 convolution first projects the map to ``width`` channels and the energy CNN has
    ``width, 2 width, 2 width`` channels (0: no projection, a (32, 64, 64) CNN: the first design).
    Resampling is linear per channel, so projecting before warping the candidates is the same as
    projecting after, while the 64 warped copies hold ``width`` channels instead of all of them —
    the paper does not fix Canon's energy, and this is what makes its training affordable (see
    ``perf/dec_overhead.py``).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        grid: int | tuple[int, int] = 4,
        num_candidates: int = 64,
        strength: float = 0.25,
        resolution: int | None = 32,
        temperature: float = 1.0,
        width: int = 16,
    ):
        super().__init__()
        self.project = nn.Conv2d(in_channels, width, 1) if width else None
        # The energy follows the projection's width (w, 2w, 2w); the first design was (32, 64, 64) on all channels.
        self.energy = _Energy(width, (width, 2 * width, 2 * width)) if width else _Energy(in_channels)
        self.resolution = resolution
        self.temperature = temperature
        self.register_buffer("candidates", candidate_set(num_candidates, grid, strength), persistent=False)
        self.last_stats: dict[str, float] | None = None

    def forward(self, x: Tensor) -> Tensor:
        small = _downsample(x, self.resolution)
        if self.project is not None:
            small = self.project(small)
        b, n = x.shape[0], self.candidates.shape[0]
        cands = self.candidates  # float32 even under AMP: low-precision node grids warp badly
        warped = M.warp(small.repeat_interleave(n, 0), cands.repeat(b, 1, 1, 1), exact=False)
        energy = self.energy(warped).reshape(b, n)
        if self.training:
            weights = torch.softmax(-energy / self.temperature, dim=1)
            # An elementwise product (not einsum) stays float32 under autocast.
            psi = M.unfold((weights.float()[:, :, None, None, None] * cands).sum(dim=1))
        else:
            psi = cands[energy.argmin(dim=1)]
        self.last_stats = {"candidates": n}
        return psi


class Optim(nn.Module):
    """Canonicalization by unrolled gradient descent on a learned energy (paper Eq. 7).

    ``steps`` steps ``z ← z − lr ∇_z E(warp(F, from_logits(z)))`` with the graph kept
    (``create_graph``) so the energy trains through them: memory grows with ``steps``.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        grid: int | tuple[int, int] = 4,
        steps: int = 10,
        lr: float = 0.5,
        resolution: int | None = 32,
    ):
        super().__init__()
        self.grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
        self.energy = _Energy(in_channels)
        self.steps, self.lr, self.resolution = steps, lr, resolution
        self.last_stats: dict[str, float] | None = None

    def forward(self, x: Tensor) -> Tensor:
        small = _downsample(x, self.resolution)
        gy, gx = self.grid
        dtype = torch.promote_types(x.dtype, torch.float32)
        lx = torch.zeros(x.shape[0], gy + 1, gx, device=x.device, dtype=dtype, requires_grad=True)
        ly = torch.zeros(x.shape[0], gx + 1, gy, device=x.device, dtype=dtype, requires_grad=True)
        with torch.enable_grad():
            for _ in range(self.steps):
                e = self.energy(M.warp(small, M.from_logits(lx, ly), exact=False)).sum()
                gx_, gy_ = torch.autograd.grad(e, (lx, ly), create_graph=self.training)
                lx, ly = lx - self.lr * gx_, ly - self.lr * gy_
        self.last_stats = {"steps": self.steps}
        return M.unfold(M.from_logits(lx, ly))


class Fixed(nn.Module):
    """Returns a fixed ``psi`` (the identity by default), broadcast over the batch."""

    def __init__(self, psi: Tensor | None = None, grid: int | tuple[int, int] = 4):
        super().__init__()
        self.register_buffer("psi", M.identity(1, grid) if psi is None else psi, persistent=False)
        self.last_stats = None

    def forward(self, x: Tensor) -> Tensor:
        psi = self.psi.to(device=x.device)
        return psi.expand(x.shape[0], -1, -1, -1) if psi.shape[0] == 1 else psi


class Oracle(Fixed):
    """Returns the ``psi`` set with :meth:`set` for the next call (true inverse scalings in tests)."""

    def set(self, psi: Tensor) -> None:
        self.psi = psi
