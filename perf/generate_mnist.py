"""Throughput of ``lsbench generate mnist`` against a naive reference, written to JSON.

Measures, in one run on this machine:
- lsbench: the paper-size MNIST-LS (6,000 train + 50,000 test images by default) with
  ``--workers`` processes, wall time and images/s;
- naive: the straightforward script — one process, PIL per image (new canvas, resize, paste),
  PNG at PIL's default compression, ``tarfile`` writing loose members — on a slice;
- where lsbench's time goes per image (digit resize, composition, PNG encoding, tar writing).

Usage: ``python perf/generate_mnist.py [--train 6000 --test 50000 --workers 2 --naive 2000]``
(``--mnist-dir`` for full MNIST; default the embedded digits).  Writes
``perf/results/generate_mnist.json`` and prints it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lsbench import __version__
from lsbench.generators import mnist
from lsbench.generators.mnist import idx as mnist_idx
from lsbench.generators.runner import RunOptions
from lsbench.shards import encode_png, write_shard


def naive_reference(n: int, mnist_dir: Path | None, out: Path, seed: int = 0) -> float:
    """The per-image script a researcher writes first; returns seconds for ``n`` images."""
    src = mnist_idx.load("test", mnist_dir)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with tarfile.open(out, "w") as tar:
        for i in range(n):
            idx = rng.integers(0, len(src.labels), 3)
            scales = rng.uniform(0.4, 2.0, 3)
            canvas = Image.new("L", (224, 224))
            x = 0
            for j, s in zip(idx, scales):
                n_px = round(28 * s)
                digit = Image.fromarray(src.images[j]).resize((n_px, n_px), Image.Resampling.LANCZOS)
                canvas.paste(digit, (x, (224 - n_px) // 2))
                x += n_px + 2
            buf = io.BytesIO()
            canvas.save(buf, format="PNG")
            label = "".join(str(int(d)) for d in src.labels[idx])
            for name, data in ((f"{i:07d}.png", buf.getvalue()), (f"{i:07d}.cls", label.encode()),
                               (f"{i:07d}.json", json.dumps({"scales": scales.tolist()}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return time.perf_counter() - start


def stage_breakdown(n_groups: int, cfg: mnist.MnistConfig, out: Path) -> dict[str, float]:
    """Milliseconds per image spent in each stage of lsbench's own path (single process)."""
    src = mnist.pipeline._source("test", cfg.mnist_dir)
    rng = np.random.default_rng(0)
    t_resize = t_compose = t_png = 0.0
    samples = []
    for g in range(n_groups):
        idx = rng.integers(0, len(src.labels), cfg.digits)
        scales = rng.uniform(cfg.scale_min, cfg.scale_max, cfg.digits)
        t0 = time.perf_counter()
        px = [round(28 * s) for s in scales]
        resized = [np.asarray(Image.fromarray(src.images[i]).resize((p, p), Image.Resampling.LANCZOS))
                   for i, p in zip(idx, px)]
        t1 = time.perf_counter()
        canvas, *_ = mnist.render([src.images[i] for i in idx], list(scales), cfg,
                                  {"hfrac": rng.random(4), "vfrac": rng.random(4), "jitter": rng.random(3)})
        t2 = time.perf_counter()
        png = encode_png(canvas)
        t3 = time.perf_counter()
        del resized
        t_resize += t1 - t0
        t_compose += (t2 - t1) - (t1 - t0)  # render() resizes again; count only its composition
        t_png += t3 - t2
        samples.append({"__key__": f"{g:07d}", "png": png, "cls": 1, "json": {"group": g, "variant": 0,
                                                                            "reference": False}})
    t4 = time.perf_counter()
    write_shard(out / "stage-000000.tar", samples)
    t_tar = time.perf_counter() - t4
    return {k: 1e3 * v / n_groups for k, v in
            (("resize", t_resize), ("compose", max(t_compose, 0.0)), ("png_encode", t_png), ("tar_write", t_tar))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--test", type=int, default=50000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--naive", type=int, default=2000, help="images for the naive reference slice")
    ap.add_argument("--mnist-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "generate_mnist.json")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lsbench-perf-"))
    try:
        start = time.perf_counter()
        cfg = mnist.MnistConfig(mnist_dir=args.mnist_dir, train=args.train, test=args.test)
        mnist.generate(cfg, tmp / "ds", RunOptions(workers=args.workers))
        lsbench_s = time.perf_counter() - start
        n = args.train + args.test
        size = sum(p.stat().st_size for p in (tmp / "ds").glob("*.tar"))
        naive_s = naive_reference(args.naive, args.mnist_dir, tmp / "naive.tar")
        stages = stage_breakdown(1000, cfg, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lsbench_rate = n / lsbench_s
    naive_rate = args.naive / naive_s
    result = {
        "benchmark": "generate_mnist",
        "lsbench_version": __version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "source": "mnist" if args.mnist_dir else "lsbench-embedded-mnist",
        "lsbench": {"images": n, "workers": args.workers, "seconds": round(lsbench_s, 3),
                    "images_per_s": round(lsbench_rate, 1), "dataset_bytes": size},
        "naive": {"images": args.naive, "workers": 1, "seconds": round(naive_s, 3),
                  "images_per_s": round(naive_rate, 1)},
        "speedup_vs_naive": round(lsbench_rate / naive_rate, 2),
        "single_process_ms_per_image": {k: round(v, 4) for k, v in stages.items()},
        "targets": {"paper_size_seconds": 60, "speedup_vs_naive": 5},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
