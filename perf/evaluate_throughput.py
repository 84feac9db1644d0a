"""Throughput of ``lsbench evaluate`` against a raw timm forward loop, written to JSON.

In one run, same model, same batch size, same device:
- ``harness``: :func:`lsbench.benchmark.evaluate.evaluate` end to end (shard streaming, decoding,
  transfer, forward, softmax, every metric), images/s as it reports them;
- ``raw``: the decoded tensors of the same samples held in memory, then a bare
  ``model(x)`` loop under ``inference_mode`` — the ceiling of any harness;
- where the harness's time goes: decoding alone (iterating the DataLoader), transfer, forward,
  metric updates (timed on the same batches).

Usage: ``python perf/evaluate_throughput.py [--model resnet_base --size tiny --batch 64 --n 1024
--workers 2 --device cpu|cuda]``.  The dataset is a fresh MNIST-LS test split (3 digits, 224²)
made from the embedded digits.  Writes ``perf/results/evaluate_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from lsbench import __version__
from lsbench.benchmark.configs import EvaluateConfig
from lsbench.benchmark.data import loader
from lsbench.benchmark.evaluate import evaluate
from lsbench.benchmark.metrics import Metrics
from lsbench.dataset import open_dataset
from lsbench.dec_models import checkpoint
from lsbench.dec_models.registry import create_model
from lsbench.generators import mnist
from lsbench.generators.runner import RunOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet_base")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n", type=int, default=1000, help="test images (a multiple of 5)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for both sides (2 competes with "
                    "the model for a 2-core CPU: see evaluate_throughput_workers2.json)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "evaluate_throughput.json")
    args = ap.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory(prefix="lsbench-perf-") as tmp:
        data = Path(tmp) / "mnist-ls"
        mnist.generate(mnist.MnistConfig(train=5, test=args.n), data, RunOptions(shard_size=250, workers=2))
        info = open_dataset(data)
        model = create_model(args.model, info.num_classes, size=args.size, img_size=224)
        ckpt = checkpoint.save(Path(tmp) / "model.pt", model)
        model = model.to(device).eval()

        # Harness, end to end (first a short warm-up so both sides run warm).
        cfg = EvaluateConfig(args.model, data, checkpoint=ckpt, batch_size=args.batch, workers=args.workers)
        evaluate(replace(cfg, limit=args.batch))
        result, _ = evaluate(cfg)
        harness_rate = result["efficiency"]["images_per_s"]

        # Decoding alone, and the decoded batches kept for the raw loop.
        t0 = time.perf_counter()
        batches = [(x, y, m) for x, y, m in loader(info, "test", size=224, batch_size=args.batch,
                                                   train=False, workers=args.workers)]
        decode_s = time.perf_counter() - t0
        n = sum(len(x) for x, _, _ in batches)

        t0 = time.perf_counter()
        on_device = [(x.to(device), y.to(device), m) for x, y, m in batches]
        if device.type == "cuda":
            torch.cuda.synchronize()
        transfer_s = time.perf_counter() - t0

        with torch.inference_mode():
            model(on_device[0][0])  # warm-up
            t0 = time.perf_counter()
            outputs = [model(x) for x, _, _ in on_device]
            if device.type == "cuda":
                torch.cuda.synchronize()
            forward_s = time.perf_counter() - t0

            metrics = Metrics("cls", info.num_classes, "auto")
            t0 = time.perf_counter()
            for logits, (_, y, metas) in zip(outputs, on_device):
                metrics.update(torch.softmax(logits.float(), dim=1), y, metas)
            metrics.finalize()
            metrics_s = time.perf_counter() - t0

    raw_rate = n / forward_s
    out = {
        "benchmark": "evaluate_throughput",
        "lsbench_version": __version__,
        "torch": torch.__version__,
        "machine": {"platform": platform.platform(), "device": str(device), "threads": torch.get_num_threads()},
        "settings": {"model": args.model, "size": args.size, "batch": args.batch, "images": n, "img_size": 224,
                     "workers": args.workers},
        "harness_images_per_s": round(harness_rate, 2),
        "raw_forward_images_per_s": round(raw_rate, 2),
        "harness_over_raw": round(harness_rate / raw_rate, 4),
        "goal_harness_over_raw": 0.9,
        "seconds": {"decode_alone": round(decode_s, 4), "transfer": round(transfer_s, 4),
                    "forward": round(forward_s, 4), "metrics": round(metrics_s, 4)},
        "ms_per_image": {k: round(1e3 * v / n, 4) for k, v in
                         (("decode", decode_s), ("transfer", transfer_s), ("forward", forward_s),
                          ("metrics", metrics_s))},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
