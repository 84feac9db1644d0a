"""Accuracy and cost of the monotone-scaling inverse: the paper's 1-D inverse vs Newton refinement.

For strengths 0.1–0.5 (Ω as in ``lsbench.monotone.sample``) it measures, on the pixel centres of a
224×224 image and a 4×4 grid:
- ``paper``: the paper's inverse (A2.2, each row/column function inverted on its own);
- ``newton``: lsbench's ``invert_points`` (paper inverse + damped Newton steps);
as the max error ``|l⁻¹(l(p)) - p|`` relative to the warp's own max displacement ``|l(p) - p|``,
plus the Newton residual and the round-trip error ``unwarp(warp(x)) - x`` on a smooth image, and
the wall time of ``warp``/``unwarp`` on a (64, 3, 224, 224) batch against ``grid_sample`` with
the same sampling grid (the naive reference).  Writes ``perf/results/monotone_inverse.json``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lsbench import __version__
from lsbench import monotone as M


def _timed(fn, repeat: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def accuracy(strength: float, b: int = 32, size: int = 224) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    phi = M.sample(b, 4, strength, gen, dtype=torch.float64)
    p = M.pixel_centers(size, size, dtype=torch.float64).expand(b, -1, -1, -1)
    lp = M.evaluate(phi, p)
    change = (lp - p).abs().amax().item()
    q_paper = M.evaluate(M.inverse(phi, method="paper"), lp)
    q_newton, residual = M.invert_points(phi, lp)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.stack([torch.sin(5 * xx + 3 * yy), torch.cos(4 * yy - 2 * xx)]).expand(b, -1, -1, -1)
    warped = M.warp(image, phi.float())
    back = M.unwarp(warped, phi.float())
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    return {
        "strength": strength,
        "max_displacement": change,
        "paper_inverse_rel_error": (q_paper - p).abs().amax().item() / change,
        "newton_rel_error": (q_newton - p).abs().amax().item() / change,
        "newton_residual_max": residual.max().item(),
        "roundtrip_rel_error_mean": ((back - image)[inner].abs().mean() / (warped - image)[inner].abs().mean()).item(),
    }


def timing(b: int = 64, size: int = 224) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(b, 3, size, size)
    phi = M.sample(b, 4, 0.25)
    p = M.pixel_centers(size, size).expand(b, -1, -1, -1)
    grid = M.evaluate(phi, p) * 2 - 1
    return {
        "batch": b,
        "size": size,
        "warp_s": _timed(lambda: M.warp(x, phi)),
        "unwarp_s": _timed(lambda: M.unwarp(x, phi)),
        "grid_sample_s": _timed(lambda: F.grid_sample(x, grid, align_corners=False, padding_mode="border")),
    }


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    result = {
        "benchmark": "monotone_inverse",
        "lsbench_version": __version__,
        "torch": torch.__version__,
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "accuracy": [accuracy(s) for s in (0.1, 0.2, 0.25, 0.3, 0.5)],
        "timing_cpu": timing(),
    }
    t = result["timing_cpu"]
    t["warp_vs_grid_sample"] = t["warp_s"] / t["grid_sample_s"]
    t["unwarp_vs_grid_sample"] = t["unwarp_s"] / t["grid_sample_s"]
    out = Path(__file__).parent / "results" / "monotone_inverse.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
