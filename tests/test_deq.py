"""The DEQ solvers and backward passes (``lsbench.dec_models.deq``): tiny CPU problems, well under a second each."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch

from lsbench.dec_models import deq
from lsbench.dec_models.deq import anderson, fixed_point_iter, solve
from lsbench.errors import ConfigError

SOLVER_FNS = {"anderson": anderson, "fixed_point": fixed_point_iter}


def symmetric_contraction(d: int, rho: float, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """``W = Q diag(λ) Qᵀ`` with ``λ`` spread evenly over ``[-rho, rho]``: spectral norm and radius ``rho``."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return (q @ torch.diag(torch.linspace(-rho, rho, d, dtype=torch.float64)) @ q.T).to(dtype)


def tanh_problem(b=4, d=16, rho=0.9, x_scale=0.1, seed=0, dtype=torch.float64):
    """``f(z) = tanh(z Wᵀ + x Uᵀ)`` with ``‖W‖₂ = rho`` (a contraction); W, U, x require grad."""
    gen = torch.Generator().manual_seed(seed)
    w = symmetric_contraction(d, rho, gen, dtype).requires_grad_()
    u = (torch.randn(d, d, generator=gen, dtype=dtype) / d**0.5).requires_grad_()
    x = (x_scale * torch.randn(b, d, generator=gen, dtype=dtype)).requires_grad_()

    def f(z):
        return torch.tanh(z @ w.T + x @ u.T)

    return f, (w, u, x), torch.zeros(b, d, dtype=dtype)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def unrolled_grads(f, z0, params, weight, steps=200):
    z = z0
    for _ in range(steps):
        z = f(z)
    return torch.autograd.grad((z * weight).sum(), params)


# --------------------------------------------------------------------------- forward solvers


def test_both_solvers_reach_the_same_fixed_point_and_anderson_is_faster(record_property):
    f, _, z0 = tanh_problem(rho=0.9, x_scale=0.05)
    z_fp, s_fp = fixed_point_iter(f, z0, tol=1e-10, max_iter=2000, stop_mode="abs")
    z_aa, s_aa = anderson(f, z0, tol=1e-10, max_iter=2000, stop_mode="abs")
    for z, s in ((z_fp, s_fp), (z_aa, s_aa)):
        assert s.converged.all()
        with torch.no_grad():
            assert float((f(z) - z).norm(dim=1).max()) < 1e-8
    assert torch.allclose(z_fp, z_aa, atol=1e-8, rtol=0)
    plain, acc = int(s_fp.iterations.max()), int(s_aa.iterations.max())
    record_property("plain_iterations", plain)
    record_property("anderson_iterations", acc)
    assert acc <= plain
    assert (s_aa.iterations <= s_fp.iterations).all()
    assert s_aa.fallbacks.sum() == 0  # a well-posed problem never needs the guard


@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
@pytest.mark.parametrize("name", ["anderson", "fixed_point"])
def test_residual_is_reported_for_the_returned_iterate(name, stop_mode):
    f, _, z0 = tanh_problem(rho=0.9)
    z, s = SOLVER_FNS[name](f, z0, tol=1e-6, max_iter=200, stop_mode=stop_mode)
    with torch.no_grad():
        fz = f(z)
    res = (fz - z).norm(dim=1)
    if stop_mode == "rel":
        res = res / (fz.norm(dim=1) + 1e-9)
    assert torch.allclose(s.residual, res, rtol=1e-9, atol=0)
    assert (s.residual < 1e-6).all() and s.converged.all()
    assert s.residual.shape == s.iterations.shape == s.converged.shape == (4,)
    assert s.iterations.dtype == torch.long and s.converged.dtype == torch.bool
    assert len(s.trace) == s.steps == int(s.iterations.max())
    assert s.trace[-1] == pytest.approx(float(s.residual.max()))


@pytest.mark.parametrize("name", ["anderson", "fixed_point"])
def test_each_sample_converges_on_its_own_and_is_frozen(name):
    """An easy and a hard sample in one batch: own iteration counts, the easy one's iterate stops changing."""
    gen = torch.Generator().manual_seed(1)
    d = 12
    w = symmetric_contraction(d, 0.95, gen)
    x = 0.05 * torch.randn(2, d, generator=gen, dtype=torch.float64)
    strength = torch.tensor([[0.1], [1.0]], dtype=torch.float64)  # sample 0 easy, sample 1 hard
    calls: list[torch.Tensor] = []

    def f(z):
        calls.append(z.clone())
        return torch.tanh(strength * (z @ w.T) + x)

    z, s = SOLVER_FNS[name](f, torch.zeros(2, d, dtype=torch.float64), tol=1e-9, max_iter=1000, stop_mode="abs")
    easy, hard = (int(i) for i in s.iterations)
    assert s.converged.all() and (s.residual < 1e-9).all()
    assert easy < hard
    assert len(calls) == hard == s.steps
    # From the evaluation at which the easy sample converged on, f only ever sees its frozen iterate.
    frozen = calls[easy - 1][0]
    assert all(torch.equal(c[0], frozen) for c in calls[easy - 1 :])
    assert torch.equal(z[0], frozen)
    assert not torch.equal(calls[easy - 1][1], calls[-1][1])  # the hard one kept moving


def test_max_iter_reached_returns_best_iterate_unconverged():
    # f(z) = 1 - 1.5 z: plain iteration diverges (|f'| > 1); the residual |1 - 2.5 z| is lowest at z0 = 0.
    def f(z):
        return 1 - 1.5 * z

    z0 = torch.zeros(1, 1, dtype=torch.float64)
    z, s = fixed_point_iter(f, z0, tol=1e-6, max_iter=6, stop_mode="abs")
    assert not s.converged.any()
    assert s.iterations.tolist() == [6] and s.steps == 6
    assert torch.equal(z, z0) and float(s.residual) == 1.0
    assert s.trace == pytest.approx([1.0, 1.5, 2.25, 3.375, 5.0625, 7.59375])


@pytest.mark.parametrize("name", ["anderson", "fixed_point"])
def test_max_iter_reached_on_a_hard_problem(name):
    f, _, z0 = tanh_problem(b=1, rho=0.99, x_scale=0.05)
    z, s = SOLVER_FNS[name](f, z0, tol=1e-12, max_iter=4, stop_mode="abs")
    assert s.converged.tolist() == [False] and s.iterations.tolist() == [4]
    assert float(s.residual) == pytest.approx(min(s.trace))
    with torch.no_grad():
        assert float((f(z) - z).norm()) == pytest.approx(float(s.residual), rel=1e-9)


def test_anderson_regularisation_is_scale_free():
    """``lam`` is relative to the residuals: the same problem at scale 1e-4 takes the same steps."""
    f, _, z0 = tanh_problem(rho=0.97, x_scale=0.05)
    _, s1 = anderson(f, z0, tol=1e-8, max_iter=500)
    _, s2 = anderson(lambda z: 1e-4 * f(z / 1e-4), z0, tol=1e-8, max_iter=500)
    _, plain = fixed_point_iter(f, z0, tol=1e-8, max_iter=5000)
    assert s1.converged.all() and s2.converged.all()
    assert torch.equal(s1.iterations, s2.iterations)
    assert int(s1.iterations.max()) < 0.5 * int(plain.iterations.max())


# --------------------------------------------------------------------------- Anderson guards


def test_singular_gram_falls_back_to_plain_steps():
    """f(z) = z + c has identical residuals every step: with lam=0 the mixing system is exactly singular."""
    c = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    calls: list[torch.Tensor] = []

    def f(z):
        calls.append(z.clone())
        return z + c

    z0 = torch.zeros(2, 3, dtype=torch.float64)
    z, s = anderson(f, z0, lam=0.0, tol=1e-6, max_iter=8, stop_mode="abs")
    assert torch.isfinite(z).all() and torch.isfinite(s.residual).all()
    assert not s.converged.any()
    assert s.fallbacks.tolist() == [6, 6]  # every step but the first (plain anyway) and the last (none taken)
    for k, zk in enumerate(calls):
        assert torch.allclose(zk, z0 + k * c)  # exactly the plain iteration
    assert torch.equal(z, z0)  # all residuals tie; the first iterate is kept


def test_singular_gram_with_default_regularisation_stays_finite():
    c = torch.tensor([[0.5, -1.0, 2.0]])
    z, s = anderson(lambda z: z + c, torch.zeros(1, 3), tol=1e-6, max_iter=10)
    assert torch.isfinite(z).all() and torch.isfinite(s.residual).all() and not s.converged.any()


def test_duplicate_history_of_a_converged_sample_does_not_disturb_the_others():
    """Sample 0 is already a fixed point: its history is all duplicates (zero Gram) while the others solve."""
    f, _, z0 = tanh_problem(b=3, rho=0.9)
    with torch.no_grad():
        z_ref, _ = fixed_point_iter(f, z0, tol=1e-12, max_iter=2000, stop_mode="abs")
    start = z0.clone()
    start[0] = z_ref[0]
    z, s = anderson(f, start, lam=0.0, tol=1e-10, max_iter=500, stop_mode="abs")
    assert torch.isfinite(z).all()
    assert s.converged.all() and int(s.iterations[0]) <= 2
    assert torch.allclose(z, z_ref, atol=1e-9, rtol=0)


def test_non_finite_outputs_never_reach_the_result():
    f0, _, z0 = tanh_problem(b=2, rho=0.9)
    count = {"n": 0}

    def f(z):
        count["n"] += 1
        out = f0(z)
        if count["n"] >= 4:  # sample 1 blows up from the 4th evaluation on
            out = out.clone()
            out[1] = float("nan")
        return out

    for solver in (anderson, fixed_point_iter):
        count["n"] = 0
        z, s = solver(f, z0, tol=1e-10, max_iter=400, stop_mode="abs")
        assert torch.isfinite(z).all() and torch.isfinite(s.residual).all()
        assert s.converged.tolist() == [True, False]


# --------------------------------------------------------------------------- backward passes


@pytest.mark.parametrize("name", ["anderson", "fixed_point"])
def test_implicit_gradients_match_a_long_unrolled_solve(name):
    f, params, z0 = tanh_problem(rho=0.9, x_scale=0.3)
    weight = torch.randn(z0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z, stats = solve(f, z0, solver=name, backward="implicit", tol=1e-11, max_iter=500, stop_mode="abs")
    grads = torch.autograd.grad((z * weight).sum(), params)
    reference = unrolled_grads(f, z0, params, weight, steps=200)
    for g, r in zip(grads, reference):
        assert rel_err(g, r) < 1e-3
        assert rel_err(g, r) < 1e-8  # in float64 it is in fact exact to solver precision
    assert stats.backward == "implicit"
    assert stats.backward_stats is not None and stats.backward_stats.converged.all()
    assert stats.backward_options == {"solver": name, "tol": 1e-11, "max_iter": 500}


def test_unrolled_backward_matches_manual_unrolling():
    f, params, z0 = tanh_problem(rho=0.9, x_scale=0.3)
    weight = torch.randn(z0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z, stats = solve(f, z0, backward="unrolled", max_iter=200)
    grads = torch.autograd.grad((z * weight).sum(), params)
    for g, r in zip(grads, unrolled_grads(f, z0, params, weight, steps=200)):
        assert torch.allclose(g, r, rtol=1e-12, atol=1e-14)
    assert stats.backward == "unrolled" and stats.steps == 200 and stats.converged.all()


def test_phantom_one_step_is_autograd_of_f_at_the_detached_fixed_point():
    f, params, z0 = tanh_problem(rho=0.9, x_scale=0.3)
    weight = torch.randn(z0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z, stats = solve(f, z0, backward="phantom", tol=1e-8, max_iter=100)
    grads = torch.autograd.grad((z * weight).sum(), params)
    z_star, _ = anderson(f, z0, tol=1e-8, max_iter=100)  # deterministic: the same iterate
    expected = torch.autograd.grad((f(z_star.detach()) * weight).sum(), params)
    for g, e in zip(grads, expected):
        assert torch.equal(g, e)
    assert stats.backward == "phantom" and stats.backward_options == {"steps": 1, "damping": 1.0}


def test_phantom_with_damping_is_the_damped_unrolled_map():
    f, params, z0 = tanh_problem(rho=0.9, x_scale=0.3)
    z, _ = solve(f, z0, backward="phantom", phantom_steps=3, phantom_damping=0.5, tol=1e-8, max_iter=100)
    zs, _ = anderson(f, z0, tol=1e-8, max_iter=100)
    manual = zs
    for _ in range(3):
        manual = 0.5 * manual + 0.5 * f(manual)
    assert torch.equal(z, manual)
    for g, e in zip(torch.autograd.grad(z.sum(), params), torch.autograd.grad(manual.sum(), params)):
        assert torch.equal(g, e)


def test_phantom_approaches_implicit_as_steps_grow():
    f, params, z0 = tanh_problem(rho=0.5, x_scale=0.3)
    weight = torch.randn(z0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z, _ = solve(f, z0, backward="implicit", tol=1e-12, max_iter=200, stop_mode="abs")
    implicit = torch.autograd.grad((z * weight).sum(), params)
    errors = []
    for k in (1, 2, 4, 8, 16):
        z, _ = solve(f, z0, backward="phantom", phantom_steps=k, tol=1e-12, max_iter=200, stop_mode="abs")
        grads = torch.autograd.grad((z * weight).sum(), params)
        errors.append(max(rel_err(g, r) for g, r in zip(grads, implicit)))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 1e-2 and errors[-1] < 1e-3, errors


def test_implicit_backward_can_run_twice_and_does_not_leak():
    f, (w, _, _), z0 = tanh_problem()
    z, stats = solve(f, z0, tol=1e-10, max_iter=200)
    loss = z.square().sum()
    (g1,) = torch.autograd.grad(loss, [w], retain_graph=True)
    (g2,) = torch.autograd.grad(loss, [w])
    assert torch.equal(g1, g2)
    assert stats.backward_stats is not None
    ref = weakref.ref(z._base)
    del z, loss
    gc.collect()
    assert ref() is None


def test_no_grad_mode_returns_a_plain_tensor():
    f, _, z0 = tanh_problem()
    with torch.no_grad():
        z, stats = solve(f, z0, tol=1e-8)
    assert not z.requires_grad and stats.backward == "implicit"
    with torch.no_grad():
        assert float((f(z) - z).norm(dim=1).max()) < 1e-6


def test_gradients_reach_only_through_f_not_z0():
    f, (w, _, _), z0 = tanh_problem()
    z0 = z0.clone().requires_grad_()
    z, _ = solve(f, z0, tol=1e-10, max_iter=200)
    gw, gz0 = torch.autograd.grad(z.sum(), [w, z0], allow_unused=True)
    assert gw is not None and gz0 is None


# --------------------------------------------------------------------------- shapes, dtypes, devices


class TinyH(torch.nn.Module):
    """A stand-in for DEC's H: Φ logits ``(B, 2, 5, 5)`` and an image → new logits, a contraction."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 2, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(5)

    def forward(self, z, image):
        feat = torch.cat([image, torch.nn.functional.interpolate(z, size=image.shape[-2:])], dim=1)
        return 0.5 * torch.tanh(self.pool(self.conv2(torch.relu(self.conv1(feat)))))


@pytest.mark.parametrize("backward", ["implicit", "phantom"])
def test_phi_shaped_float32_state(backward):
    h = TinyH()
    image = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2), requires_grad=True)
    z0 = torch.zeros(3, 2, 5, 5)
    z, stats = solve(lambda z: h(z, image), z0, backward=backward, tol=1e-5, max_iter=50)
    assert z.shape == (3, 2, 5, 5) and z.dtype == torch.float32
    assert stats.converged.all() and stats.residual.dtype == torch.float32
    z.square().sum().backward()
    assert torch.isfinite(image.grad).all() and all(torch.isfinite(p.grad).all() for p in h.parameters())
    if backward == "implicit":
        implicit = [p.grad.clone() for p in h.parameters()]
        h.zero_grad()
        zu, _ = solve(lambda z: h(z, image), z0, backward="unrolled", max_iter=60)
        zu.square().sum().backward()
        for g, r in zip(implicit, [p.grad for p in h.parameters()]):
            assert rel_err(g, r) < 1e-3


def test_autocast_bfloat16_on_cpu():
    h = TinyH()
    image = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    z0 = torch.zeros(2, 2, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, stats = solve(lambda z: h(z, image), z0, tol=1e-2, max_iter=30)
        loss = z.float().square().sum()
    loss.backward()
    assert stats.residual.dtype == torch.float32 and torch.isfinite(stats.residual).all()
    assert torch.isfinite(z).all() and all(torch.isfinite(p.grad).all() for p in h.parameters())
    assert stats.backward_stats is not None and torch.isfinite(stats.backward_stats.residual).all()


@pytest.mark.parametrize("backward", ["implicit", "phantom", "unrolled"])
def test_autocast_keeps_the_iterate_dtype(backward):
    """Under autocast ``f`` returns bfloat16; the returned iterate keeps ``z0``'s float32 with the graph
    (DEC maps it through ``linalg.det``, which has no bfloat16 kernel, found by perf/gpu_check.py's dry run)."""
    h = TinyH()
    image = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert h(torch.zeros(2, 2, 5, 5), image).dtype == torch.bfloat16  # the case this test is about
        z, _ = solve(lambda z: h(z, image), torch.zeros(2, 2, 5, 5), tol=1e-2, max_iter=5, backward=backward)
    assert z.dtype == torch.float32 and z.requires_grad
    z.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in h.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    f, params, z0 = tanh_problem(rho=0.9, x_scale=0.3)
    z, _ = solve(f, z0, tol=1e-11, max_iter=300, stop_mode="abs")
    cpu = torch.autograd.grad(z.sum(), params)
    cuda_params = [p.detach().cuda().requires_grad_() for p in params]
    w, u, x = cuda_params

    def fc(z):
        return torch.tanh(z @ w.T + x @ u.T)

    zc, stats = solve(fc, z0.cuda(), tol=1e-11, max_iter=300, stop_mode="abs")
    assert zc.is_cuda and stats.residual.is_cuda and stats.converged.all()
    assert torch.allclose(zc.cpu(), z.detach(), atol=1e-9)
    for g, r in zip(torch.autograd.grad(zc.sum(), cuda_params), cpu):
        assert rel_err(g.cpu(), r) < 1e-6
    with torch.autocast("cuda", dtype=torch.float16):
        zh, sh = solve(fc, z0.float().cuda(), tol=1e-3, max_iter=30)
    assert torch.isfinite(zh).all() and sh.converged.all()


# --------------------------------------------------------------------------- options and records


def test_bad_options_raise_clear_errors():
    f, _, z0 = tanh_problem()
    with pytest.raises(ConfigError, match="unknown solver"):
        solve(f, z0, solver="broyden")
    with pytest.raises(ConfigError, match="unknown backward"):
        solve(f, z0, backward="ift")
    with pytest.raises(ConfigError, match="tol"):
        fixed_point_iter(f, z0, tol=0.0)
    with pytest.raises(ConfigError, match="max_iter"):
        anderson(f, z0, max_iter=0)
    with pytest.raises(ConfigError, match="stop_mode"):
        anderson(f, z0, stop_mode="max")
    with pytest.raises(ConfigError, match="beta"):
        anderson(f, z0, beta=1.5)
    with pytest.raises(ConfigError, match="phantom_steps"):
        solve(f, z0, backward="phantom", phantom_steps=0)
    with pytest.raises(ValueError, match="shape"):
        anderson(lambda z: z[:, :3], z0)
    with pytest.raises(TypeError):
        solve(f, z0, solver_options={"history": 3})


def test_stats_summary_is_json_for_checkpoints():
    f, _, z0 = tanh_problem()
    z, stats = solve(f, z0, solver_options={"m": 3, "lam": 1e-3}, tol=1e-8, max_iter=100)
    z.sum().backward()
    summary = json.loads(json.dumps(stats.summary()))
    assert summary["solver"] == "anderson" and summary["backward"] == "implicit"
    assert summary["converged_fraction"] == 1.0 and summary["backward_stats"]["solver"] == "anderson"
    assert set(deq.BACKWARDS) == {"implicit", "phantom", "unrolled"}
