"""Fixed-point solvers and DEQ backward passes for the Deep Equilibrium Canonicalizer (paper Sec. 4.2).

DEC finds ``Φ̂ = H(Φ̂; I)`` by Anderson acceleration and trains through the fixed point.  This module
is the small, dependency-free core of that:

- :func:`fixed_point_iter` — plain iteration ``z ← f(z)``, the reference solver;
- :func:`anderson` — batched Anderson acceleration (Walker & Ni 2011; the form of Bai et al.'s DEQ code)
  with per-sample mixing coefficients, per-sample stopping and a guarded least-squares solve;
- :func:`solve` — forward solve without a graph, then one differentiable call of ``f`` at the fixed
  point with the chosen backward: ``"implicit"`` (implicit function theorem, Bai et al. 2019),
  ``"phantom"`` (k-step damped phantom gradient, Geng et al. 2021; ``k=1`` is the paper code's
  ``torchdeq.get_deq(ift=False)`` one-step gradient) or ``"unrolled"`` (backprop through the iterations).

We do not depend on ``torchdeq`` (the paper code's solver): its only PyPI release (0.1.0, Oct 2023) stops
the whole batch on its worst sample, has no guard for a singular Anderson system and regularises with an
absolute ``lam`` that swamps small residuals, so a few hundred tested lines here are the sounder choice.

Shapes: ``f`` maps a batch ``z`` ``(B, ...)`` to the same shape; solvers flatten each sample to ``(B, D)``
internally.  Residuals are per sample: ``‖f(z) − z‖`` (``stop_mode="abs"``) or
``‖f(z) − z‖ / (‖f(z)‖ + 1e-9)`` (``"rel"``).  Solvers work in float64 if ``z0`` is float64 and in
float32 otherwise (also when ``f`` runs under ``torch.autocast``), and return ``z0``'s dtype.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lsbench.errors import ConfigError

__all__ = ["BACKWARDS", "SOLVERS", "SolverStats", "anderson", "fixed_point_iter", "solve"]

Fn = Callable[[Tensor], Tensor]

_EPS = 1e-9  # the denominator guard of the relative residual
_MAX_COEF = 1e4  # Anderson steps whose mixing coefficients exceed this in 1-norm count as ill-conditioned


@dataclass
class SolverStats:
    """What a solve did, per sample.

    ``residual`` ``(B,)``: residual of the returned iterate (the lowest seen); ``iterations`` ``(B,)``
    (int64): the number of ``f`` evaluations after which the sample converged, or ``max_iter``;
    ``converged`` ``(B,)`` bool; ``trace``: the batch's largest current residual after each step;
    ``fallbacks`` ``(B,)``: Anderson steps replaced by a plain step because the mixing system was
    singular or ill-conditioned (always 0 for plain iteration).  :func:`solve` fills ``backward``,
    ``backward_options`` and, once the implicit backward has run, ``backward_stats``.
    """

    solver: str
    stop_mode: str
    tol: float
    max_iter: int
    residual: Tensor
    iterations: Tensor
    converged: Tensor
    fallbacks: Tensor
    trace: list[float] = field(default_factory=list)
    backward: str | None = None
    backward_options: dict[str, Any] = field(default_factory=dict)
    backward_stats: SolverStats | None = None

    @property
    def steps(self) -> int:
        """Number of ``f`` evaluations the solver ran (the slowest sample's count)."""
        return len(self.trace)

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary (batch means and maxima) for logs and checkpoints."""
        out: dict[str, Any] = {
            "solver": self.solver,
            "stop_mode": self.stop_mode,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "steps": self.steps,
            "residual_max": float(self.residual.max()) if self.residual.numel() else 0.0,
            "iterations_mean": float(self.iterations.double().mean()) if self.iterations.numel() else 0.0,
            "converged_fraction": float(self.converged.double().mean()) if self.converged.numel() else 1.0,
            "fallbacks": int(self.fallbacks.sum()),
            "backward": self.backward,
            "backward_options": dict(self.backward_options),
        }
        if self.backward_stats is not None:
            out["backward_stats"] = self.backward_stats.summary()
        return out


# --------------------------------------------------------------------------- helpers


def _check(tol: float, max_iter: int, stop_mode: str) -> None:
    if not (isinstance(tol, int | float) and tol > 0 and math.isfinite(tol)):
        raise ConfigError(f"tol must be a positive number, got {tol!r}")
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise ConfigError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if stop_mode not in ("abs", "rel"):
        raise ConfigError(f"stop_mode must be 'abs' or 'rel', got {stop_mode!r}")


def _work_dtype(z0: Tensor) -> torch.dtype:
    return torch.float64 if z0.dtype == torch.float64 else torch.float32


def _flat(f: Fn, z0: Tensor) -> tuple[Fn, Tensor]:
    """``f`` on flattened samples ``(B, D)`` in the working dtype, and the flattened ``z0``."""
    if not isinstance(z0, Tensor) or z0.dim() < 1 or not z0.is_floating_point():
        raise ConfigError("z0 must be a floating-point tensor with a leading batch dimension (B, ...)")
    if z0.shape[0] == 0 or z0.numel() == 0:
        raise ConfigError(f"z0 must hold at least one non-empty sample, got shape {tuple(z0.shape)}")
    shape, dtype = z0.shape, _work_dtype(z0)

    def fn(x: Tensor) -> Tensor:
        y = f(x.reshape(shape).to(z0.dtype))
        if not isinstance(y, Tensor) or y.shape != shape:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"f must return a tensor of the input's shape {tuple(shape)}, got {got}")
        return y.reshape(shape[0], -1).to(dtype)

    return fn, z0.detach().reshape(shape[0], -1).to(dtype)


def _residual(fx: Tensor, x: Tensor, stop_mode: str) -> Tensor:
    """Per-sample residual ``(B,)`` of iterates ``x`` ``(B, D)`` with images ``fx``."""
    res = torch.linalg.vector_norm(fx - x, dim=1)
    return res / (torch.linalg.vector_norm(fx, dim=1) + _EPS) if stop_mode == "rel" else res


def _no_autocast(device: torch.device):
    """Disable autocast for the solver's own linear algebra (the user's ``f`` keeps its autocast)."""
    return torch.autocast(device.type, enabled=False) if device.type in ("cpu", "cuda") else contextlib.nullcontext()


class _Tracker:
    """Per-sample bookkeeping shared by the solvers: best iterate, convergence, freezing, trace."""

    def __init__(self, x0: Tensor, tol: float, max_iter: int):
        b = x0.shape[0]
        self.tol = tol
        self.best_x = x0.clone()
        self.best_res = torch.full((b,), math.inf, dtype=x0.dtype, device=x0.device)
        self.converged = torch.zeros(b, dtype=torch.bool, device=x0.device)
        self.iterations = torch.full((b,), max_iter, dtype=torch.long, device=x0.device)
        self.fallbacks = torch.zeros(b, dtype=torch.long, device=x0.device)
        self.trace: list[float] = []

    def update(self, step: int, x: Tensor, res: Tensor) -> bool:
        """Record residuals ``res`` ``(B,)`` of iterates ``x`` after ``step`` evaluations; True when all converged."""
        active = ~self.converged
        better = active & (res < self.best_res)  # NaN residuals never count as better
        self.best_res = torch.where(better, res, self.best_res)
        self.best_x = torch.where(better[:, None], x, self.best_x)
        newly = active & (res < self.tol)
        self.iterations = torch.where(newly, torch.full_like(self.iterations, step), self.iterations)
        self.converged = self.converged | newly
        current = torch.where(active, res, self.best_res)
        worst, done = torch.stack([current.max(), self.converged.all().to(current.dtype)]).tolist()
        self.trace.append(worst)
        return bool(done)

    def next(self, candidate: Tensor) -> Tensor:
        """The next iterates: ``candidate`` where active and finite, the frozen/best iterate elsewhere."""
        keep = self.converged | ~torch.isfinite(candidate).all(dim=1)
        return torch.where(keep[:, None], self.best_x, candidate)

    def finish(self, name: str, stop_mode: str, max_iter: int, z0: Tensor) -> tuple[Tensor, SolverStats]:
        stats = SolverStats(
            solver=name,
            stop_mode=stop_mode,
            tol=float(self.tol),
            max_iter=max_iter,
            residual=self.best_res,
            iterations=self.iterations,
            converged=self.converged,
            fallbacks=self.fallbacks,
            trace=self.trace,
        )
        return self.best_x.view(z0.shape).to(z0.dtype), stats


# --------------------------------------------------------------------------- solvers


@torch.no_grad()
def fixed_point_iter(
    f: Fn, z0: Tensor, *, tol: float = 1e-4, max_iter: int = 50, stop_mode: str = "rel"
) -> tuple[Tensor, SolverStats]:
    """Plain fixed-point iteration ``z ← f(z)``, per sample, without a graph.

    ``f``: ``(B, ...) → (B, ...)``; ``z0``: ``(B, ...)``.  Each step evaluates ``f`` once on the whole
    batch; a sample whose residual drops below ``tol`` is frozen (its iterate no longer changes) and
    the loop ends when every sample has converged or after ``max_iter`` evaluations.  Returns the
    iterate with the lowest residual seen per sample, shape and dtype of ``z0``, and its stats.
    """
    _check(tol, max_iter, stop_mode)
    fn, x = _flat(f, z0)
    tracker = _Tracker(x, tol, max_iter)
    for step in range(1, max_iter + 1):
        fx = fn(x)
        if tracker.update(step, x, _residual(fx, x, stop_mode)) or step == max_iter:
            break
        x = tracker.next(fx)
    return tracker.finish("fixed_point", stop_mode, max_iter, z0)


def _anderson_mix(x_hist: Tensor, f_hist: Tensor, lam: float, beta: float) -> tuple[Tensor, Tensor]:
    """One Anderson step from histories ``(B, n, D)``: the new iterates ``(B, D)`` and an ok mask ``(B,)``.

    Per sample, with residuals ``G = F − X`` ``(n, D)``, finds the ``α`` (summing to one) minimising
    ``‖Σ αᵢ gᵢ‖² + λ Σ αᵢ² ‖gᵢ‖²`` — Tikhonov regularisation relative to each history entry's own
    residual (diagonal loading ``GGᵀ + λ diag(GGᵀ)``), so ``lam`` is scale-free and never swamps the
    newest, smallest residuals.  It is solved as the bordered system of the column-equilibrated
    problem ``[[0, sᵀ], [s, C + λI]] [μ; β] = [1; 0]``, ``C = S GGᵀ S`` with ``S = diag(s)``,
    ``sᵢ ∝ 1/‖gᵢ‖`` (unit diagonal, so one small system per sample stays well scaled in float32),
    and ``α = s ⊙ β``.  Samples whose system is singular or gives non-finite ``α`` or ``‖α‖₁ > 1e4``
    are marked not ok (their output is meaningless and must be replaced).
    """
    b, n, _ = x_hist.shape
    with _no_autocast(x_hist.device):
        g = f_hist - x_hist
        gram = torch.bmm(g, g.transpose(1, 2))
        d = gram.diagonal(dim1=1, dim2=2).rsqrt()  # inf for an exactly zero residual → not ok below
        s = d / d.amax(dim=1, keepdim=True)  # the border only fixes the scale of β: keep it at most 1
        system = torch.zeros(b, n + 1, n + 1, dtype=g.dtype, device=g.device)
        system[:, 0, 1:] = s
        system[:, 1:, 0] = s
        system[:, 1:, 1:] = d[:, :, None] * gram * d[:, None, :] + lam * torch.eye(n, dtype=g.dtype, device=g.device)
        rhs = torch.zeros(b, n + 1, 1, dtype=g.dtype, device=g.device)
        rhs[:, 0] = 1
        sol, info = torch.linalg.solve_ex(system, rhs)
        alpha = s * sol[:, 1:, 0]
        ok = (info == 0) & torch.isfinite(alpha).all(dim=1) & (alpha.abs().sum(dim=1) <= _MAX_COEF)
        alpha = torch.where(ok[:, None], alpha, torch.zeros_like(alpha))
        mixed = torch.bmm(alpha[:, None], f_hist)[:, 0]
        if beta != 1.0:
            mixed = beta * mixed + (1 - beta) * torch.bmm(alpha[:, None], x_hist)[:, 0]
    return mixed, ok


@torch.no_grad()
def anderson(
    f: Fn,
    z0: Tensor,
    *,
    m: int = 5,
    lam: float = 1e-4,
    beta: float = 1.0,
    tol: float = 1e-4,
    max_iter: int = 50,
    stop_mode: str = "rel",
) -> tuple[Tensor, SolverStats]:
    """Batched Anderson acceleration of ``z ← f(z)``, per sample, without a graph.

    ``f``: ``(B, ...) → (B, ...)``; ``z0``: ``(B, ...)``.  Keeps the last ``m`` iterates ``xᵢ`` and images
    ``f(xᵢ)`` per sample and steps to ``β Σ αᵢ f(xᵢ) + (1 − β) Σ αᵢ xᵢ`` with each sample's own ``α``
    (see :func:`_anderson_mix`; ``lam`` is relative to each history entry's own residual).  The first
    step, and any step whose small system is singular or ill-conditioned, is a plain (``β``-damped)
    step instead, counted in ``stats.fallbacks``; a non-finite step restarts from the sample's best
    iterate.  Converged samples are frozen; the loop stops when all have converged or after
    ``max_iter`` evaluations of ``f``.  Returns the lowest-residual iterate per sample and the stats.
    """
    _check(tol, max_iter, stop_mode)
    if not isinstance(m, int) or m < 1:
        raise ConfigError(f"Anderson history m must be an integer >= 1, got {m!r}")
    if not (lam >= 0 and math.isfinite(lam)):
        raise ConfigError(f"Anderson regularisation lam must be >= 0, got {lam!r}")
    if not (0 < beta <= 1):
        raise ConfigError(f"Anderson mixing beta must be in (0, 1], got {beta!r}")
    fn, x = _flat(f, z0)
    b, d = x.shape
    x_hist = x.new_zeros(b, m, d)
    f_hist = x.new_zeros(b, m, d)
    tracker = _Tracker(x, tol, max_iter)
    for step in range(1, max_iter + 1):
        fx = fn(x)
        slot = (step - 1) % m
        x_hist[:, slot], f_hist[:, slot] = x, fx
        if tracker.update(step, x, _residual(fx, x, stop_mode)) or step == max_iter:
            break
        plain = fx if beta == 1.0 else beta * fx + (1 - beta) * x
        n = min(step, m)
        if n == 1:
            candidate = plain
        else:
            mixed, ok = _anderson_mix(x_hist[:, :n], f_hist[:, :n], lam, beta)
            candidate = torch.where(ok[:, None], mixed, plain)
            tracker.fallbacks += (~ok & ~tracker.converged).long()
        x = tracker.next(candidate)
    return tracker.finish("anderson", stop_mode, max_iter, z0)


SOLVERS: dict[str, Callable[..., tuple[Tensor, SolverStats]]] = {
    "anderson": anderson,
    "fixed_point": fixed_point_iter,
}
BACKWARDS = ("implicit", "phantom", "unrolled")


# --------------------------------------------------------------------------- DEQ layer


def solve(
    f: Fn,
    z0: Tensor,
    *,
    solver: str = "anderson",
    backward: str = "implicit",
    tol: float = 1e-4,
    max_iter: int = 50,
    stop_mode: str = "rel",
    solver_options: Mapping[str, Any] | None = None,
    b_solver: str | None = None,
    b_tol: float | None = None,
    b_max_iter: int | None = None,
    phantom_steps: int = 1,
    phantom_damping: float = 1.0,
) -> tuple[Tensor, SolverStats]:
    """Find ``z* = f(z*)`` and return a differentiable ``z`` ``(B, ...)`` (``z0``'s shape) with its stats.

    The forward solve (``solver``: ``"anderson"`` or ``"fixed_point"``, with ``tol``, ``max_iter``,
    ``stop_mode`` and ``solver_options`` such as ``{"m": 5, "lam": 1e-4, "beta": 1.0}``) runs without a
    graph; then ``f`` is called once more with gradients enabled, so ``z = f(z*)`` — one step past
    the solver's iterate, whose residual ``stats`` reports — and gradients reach ``f``'s parameters
    and every tensor ``f`` closes over.  With gradients disabled (inference) ``z*`` itself is
    returned, saving that extra call.  ``z0`` itself receives no gradient (except when unrolled).

    ``backward``:
      - ``"implicit"``: the gradient ``g`` arriving at ``z`` is replaced by the solution ``u`` of the
        adjoint fixed point ``u = g + (∂f/∂z)ᵀ u`` at ``z*`` (vector-Jacobian products of the one
        graph of ``f(z*)``), solved with ``b_solver`` / ``b_tol`` / ``b_max_iter`` (defaults: the
        forward's); its stats land in ``stats.backward_stats`` when backward runs.  First-order
        only (no ``create_graph`` double backward).
      - ``"phantom"``: ``phantom_steps`` damped steps ``z ← (1 − λ) z + λ f(z)`` from ``z*.detach()``
        with ``λ = phantom_damping``; the default ``k = 1, λ = 1`` is ``z = f(z*.detach())``, the
        one-step gradient of the paper's code.
      - ``"unrolled"``: backprop through exactly ``max_iter`` plain iterations from ``z0`` (reference
        and tests; ``solver`` is not used, the stats report ``"fixed_point"``).

    ``stats.backward`` and ``stats.backward_options`` record the choice (see :meth:`SolverStats.summary`).
    """
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
    if backward not in BACKWARDS:
        raise ConfigError(f"unknown backward {backward!r}; choose one of {list(BACKWARDS)}")
    b_solver = solver if b_solver is None else b_solver
    if b_solver not in SOLVERS:
        raise ConfigError(f"unknown backward solver {b_solver!r}; choose one of {sorted(SOLVERS)}")
    if not isinstance(phantom_steps, int) or phantom_steps < 1:
        raise ConfigError(f"phantom_steps must be an integer >= 1, got {phantom_steps!r}")
    if not (0 < phantom_damping <= 1):
        raise ConfigError(f"phantom_damping must be in (0, 1], got {phantom_damping!r}")
    options = dict(solver_options or {})

    if backward == "unrolled":
        return _unrolled(f, z0, tol=tol, max_iter=max_iter, stop_mode=stop_mode)

    z_star, stats = SOLVERS[solver](f, z0, tol=tol, max_iter=max_iter, stop_mode=stop_mode, **options)
    stats.backward = backward
    if not torch.is_grad_enabled():
        # Inference: the solver's iterate is the answer; one more f call would only cost time.
        return z_star.to(z0.dtype), stats
    if backward == "phantom":
        stats.backward_options = {"steps": phantom_steps, "damping": float(phantom_damping)}
        z = z_star
        for _ in range(phantom_steps):
            z = f(z) if phantom_damping == 1.0 else (1 - phantom_damping) * z + phantom_damping * f(z)
        return z.to(z0.dtype), stats  # under autocast f returns bf16/fp16: the iterate keeps z0's dtype

    b_tol = tol if b_tol is None else b_tol
    b_max_iter = max_iter if b_max_iter is None else b_max_iter
    _check(b_tol, b_max_iter, stop_mode)
    stats.backward_options = {"solver": b_solver, "tol": float(b_tol), "max_iter": b_max_iter}
    z_leaf = z_star.detach().requires_grad_(True)
    fz = f(z_leaf)
    if not fz.requires_grad:
        return fz.to(z0.dtype), stats
    b_options = options if b_solver == solver else {}

    def adjoint_hook(g: Tensor) -> Tensor:
        # Runs inside the outer backward.  The hook sits on an alias of ``fz``, so the vector-Jacobian
        # products below (through ``fz``'s retained graph) do not trigger it again, and the closure
        # holds ``fz`` without a reference cycle through its own ``grad_fn``.
        def adjoint(u: Tensor) -> Tensor:
            vjp = torch.autograd.grad(fz, z_leaf, u.to(fz.dtype), retain_graph=True)[0]
            return vjp + g

        u, b_stats = SOLVERS[b_solver](adjoint, g, tol=b_tol, max_iter=b_max_iter, stop_mode=stop_mode, **b_options)
        stats.backward_stats = b_stats
        return u.to(g.dtype)

    z = fz.view_as(fz)
    z.register_hook(adjoint_hook)
    return z.to(z0.dtype), stats  # under autocast f returns bf16/fp16: the iterate keeps z0's dtype


def _unrolled(f: Fn, z0: Tensor, *, tol: float, max_iter: int, stop_mode: str) -> tuple[Tensor, SolverStats]:
    """``max_iter`` plain iterations from ``z0`` with the graph kept; stats from the last step."""
    _check(tol, max_iter, stop_mode)
    b = z0.shape[0]
    z, trace = z0, []
    res = torch.zeros(b, dtype=_work_dtype(z0), device=z0.device)
    for _ in range(max_iter):
        fz = f(z)
        with torch.no_grad():
            res = _residual(fz.reshape(b, -1).to(res.dtype), z.reshape(b, -1).to(res.dtype), stop_mode)
            trace.append(float(res.max()))
        z = fz
    stats = SolverStats(
        solver="fixed_point",
        stop_mode=stop_mode,
        tol=float(tol),
        max_iter=max_iter,
        residual=res,
        iterations=torch.full((b,), max_iter, dtype=torch.long, device=z0.device),
        converged=res < tol,
        fallbacks=torch.zeros(b, dtype=torch.long, device=z0.device),
        trace=trace,
        backward="unrolled",
        backward_options={"steps": max_iter},
    )
    return z.to(z0.dtype), stats
