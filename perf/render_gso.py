"""Seconds per image of ``lsbench generate gso`` (Blender renders), written to JSON.

Measures, in one run on this machine, end to end through ``gso.generate`` (scene sampling,
image render, object-index mask render, PNG encoding, shard writing, worker start-up):
- Cycles at ``--samples`` (default 16 and 64) with OpenImageDenoise, one worker process;
- Cycles at the first sample count without denoising;
- scaling with worker processes: ``--workers`` 1 vs 2 (each Blender gets cores / workers threads);
- EEVEE (``--eevee``), which renders headless here through software OpenGL;
and, in process, where a render's time goes (image vs mask pass, at each sample count).

It compares against the issue's anchors: ~7 s/image with BlenderProc on an RTX 3080; ~4 s for Cycles
on 2 CPU cores at 256², 16 samples; goal ≥ 2 images/s at 256² on one H100 with denoising.

Usage: ``python perf/render_gso.py [--device cpu|cuda|optix] [--size 256] [--samples 16 64]
[--images 12] [--workers 1 2] [--eevee] [--out perf/results/render_gso.json]``.  No GPU was lent to
this task; on a GPU machine run it with ``--device optix`` (or ``cuda``) and a larger ``--images``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from lsbench import __version__
from lsbench.generators import gso
from lsbench.generators.gso import assets, render, scene
from lsbench.generators.runner import RunOptions

ANCHORS = {
    "blenderproc_rtx3080_s_per_image": 7.0,
    "issue_cycles_cpu_2core_256px_16spp_s_per_image": 4.0,
    "goal_h100_256px_denoised_images_per_s": 2.0,
}


def run_generate(images: int, workers: int, **kw) -> dict:
    """Wall time of one ``generate`` of ``images`` train images split into ``2 * workers`` shards."""
    shard = max(2, images // (2 * workers))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        gso.generate(gso.GsoConfig(train=images, test=2, variants=1, **kw), Path(tmp) / "ds",
                     RunOptions(workers=workers, shard_size=shard))
        wall = time.perf_counter() - start
    total = images + 2
    return {"images": total, "workers": workers, "wall_s": round(wall, 2), "s_per_image": round(wall / total, 3),
            "images_per_s": round(total / wall, 3), **{k: v for k, v in kw.items() if k != "scale_range"}}


def breakdown(size: int, samples: list[int], device: str, repeats: int = 4) -> dict:
    """In process: seconds per image render and per mask render of demo scenes (after a warm-up)."""
    objs, hdris = assets.demo_objects(), assets.demo_hdris()
    out = {}
    K = scene.intrinsics(size)
    for spp in samples:
        r = render.renderer(render.RenderSettings(size, "cycles", spp, True, device, 0))  # the process's one
        times = {"image": [], "mask": []}
        for g in range(repeats + 1):
            s = scene.sample_group(np.random.default_rng(g), num_objects=len(objs), num_hdris=len(hdris), size=size,
                                   scale_range=(0.5, 2.0), variants=1, grouped=False)
            r.place([objs[i] for i in s.objects], [i + 1 for i in s.objects], hdris[s.hdri], s.hdri_rotation,
                    s.rotations)
            r.move(s.positions(K)[0])
            t0 = time.perf_counter()
            r.render_mask()
            t1 = time.perf_counter()
            r.render_image(s.render_seed)
            t2 = time.perf_counter()
            if g:  # the first render of a renderer loads kernels and textures
                times["mask"].append(t1 - t0)
                times["image"].append(t2 - t1)
        out[f"cycles_{spp}spp_denoised"] = {k: round(float(np.mean(v)), 3) for k, v in times.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=render.DEVICES)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--samples", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--images", type=int, default=12, help="train images per configuration (plus one 2-image group)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--eevee", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "render_gso.json")
    args = ap.parse_args()

    load_before = [round(x, 2) for x in os.getloadavg()]  # other work on the machine slows every number here
    common = dict(size=args.size, device=args.device, scale_range=(0.5, 2.0))
    runs = []
    first = args.samples[0]
    for spp in args.samples:
        runs.append(run_generate(args.images, args.workers[0], samples=spp, denoise=True, **common))
        print(json.dumps(runs[-1]), flush=True)
    runs.append(run_generate(args.images, args.workers[0], samples=first, denoise=False, **common))
    print(json.dumps(runs[-1]), flush=True)
    for w in args.workers[1:]:
        runs.append(run_generate(args.images, w, samples=first, denoise=True, **common))
        print(json.dumps(runs[-1]), flush=True)
    if args.eevee:
        try:
            runs.append(run_generate(args.images, args.workers[0], samples=first, denoise=True, engine="eevee",
                                     **common))
        except Exception as e:  # noqa: BLE001 - report that EEVEE does not run here instead of failing
            runs.append({"engine": "eevee", "error": str(e)})
        print(json.dumps(runs[-1]), flush=True)

    base = next(r for r in runs if r.get("samples") == first and r.get("denoise") and r["workers"] == args.workers[0]
                and r.get("engine", "cycles") == "cycles")
    scaling = {
        f"workers_{r['workers']}_speedup": round(base["s_per_image"] / r["s_per_image"], 3)
        for r in runs if r.get("samples") == first and r.get("denoise") and r.get("engine", "cycles") == "cycles"
    }
    result = {
        "benchmark": "render_gso",
        "lsbench_version": __version__,
        "machine": {"platform": platform.platform(), "cpus": len(os.sched_getaffinity(0)),
                    "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
                    "processor": platform.processor() or platform.machine(), "device": args.device},
        "bpy_version": _bpy_version(),
        "size": args.size,
        "runs": runs,
        "scaling_vs_one_worker": scaling,
        "breakdown_s": breakdown(args.size, args.samples, args.device),
        "anchors": ANCHORS,
        "vs_anchor_cycles_cpu_16spp": round(ANCHORS["issue_cycles_cpu_2core_256px_16spp_s_per_image"]
                                            / base["s_per_image"], 2) if first == 16 else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _bpy_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("bpy")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
