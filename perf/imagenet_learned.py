"""Throughput of the learned ImageNet backends (GroundingDINO, SAM, LaMa) at real model sizes.

Real-size models with random weights (they cost the same as trained ones) are saved in their released
formats to a temporary folder and loaded through :mod:`lsbench.generators.imagenet.learned` exactly as
``lsbench generate imagenet`` loads them:

- ``gdino``: transformers' ``GroundingDinoConfig()`` defaults = grounding-dino-tiny (Swin-T backbone,
  BERT-base text encoder, 6+6 layers, 900 queries); processor at its defaults (short side 800, long side
  at most 1333); a synthetic 30522-token BERT vocabulary with bert-base-uncased's special-token ids.
- ``sam``: segment_anything's ``Sam`` for ``vit_b`` and ``vit_h`` (1024² input).
- ``lama``: ``tests/tiny_lama.py``'s ``LamaLike`` at big-lama's layout (64 base channels, 3
  downsamplings, 18 FFC ResNet blocks, 75 % global channels; 51 M parameters like big-lama), scripted to
  TorchScript.  Not the released network's exact layers, so its time is an estimate of big-lama's.

Each stage runs on the same photos (ImageNet-like sizes) at batch size 1 (the paper code's
one-photo-at-a-time loop) and at batch size N, after one warm-up call; reported: seconds, photos/s and
the GDINO+SAM+LaMa pipeline rate ``1 / (sum of per-photo stage times)``.  The issue's goal is >= 10
photos/s through the three on one H100 (fp16 autocast for GDINO and SAM; LaMa float32).

Usage: ``python perf/imagenet_learned.py [--device cpu|cuda] [--photos N] [--batch N] [--sam-types vit_b
vit_h] [--no-fp16]``.  CPU defaults keep the run to about 5 minutes on 2 cores: 2 photos, batch 2, vit_h on 1
photo, no warm-up call for GDINO/SAM (eager CPU has little first-call overhead next to ~10-50 s a photo),
2 for LaMa (TorchScript optimises after its profiling runs).  CUDA defaults: 64 photos, batch 16, 1 warm-up.
``--tiny`` swaps in the tests' tiny configurations of the same three architectures (``tests/tiny_learned.py``,
``tests/tiny_lama.py``) on 64-px photos: a seconds-long run of the same loading and batching code, the dry
mode of ``perf/gpu_check.py``; its figures say nothing about the real models' speed.
Writes ``perf/results/imagenet_learned.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny_lama import lama_like  # noqa: E402
from tiny_learned import save_tiny_gdino, tiny_sam_state  # noqa: E402

from lsbench import __version__  # noqa: E402
from lsbench.generators.imagenet import learned  # noqa: E402

# (H, W) of typical ILSVRC photos: 500×375 landscape dominates, then portrait and 3:2 (the first two share a
# size so the 2-photo CPU run batches them in every stage).
SIZES = [(375, 500), (375, 500), (500, 375), (333, 500), (375, 500), (500, 333), (375, 500), (400, 500)]
CLASSES = ["goldfish", "tench", "great white shark", "tree frog", "golden retriever", "tabby cat", "sports car",
           "espresso"]


def photos(n: int, tiny: bool = False) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [(h // 8, w // 8) for h, w in SIZES] if tiny else SIZES
    return [rng.integers(0, 256, size=(*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(n)]


def centre_box(image: np.ndarray) -> tuple[float, float, float, float]:
    h, w = image.shape[:2]
    return (w * 0.2, h * 0.2, w * 0.8, h * 0.8)


def centre_mask(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    mask = np.zeros((h, w), dtype=bool)
    mask[h // 5 : 4 * h // 5, w // 4 : 3 * w // 4] = True
    return mask


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def save_gdino(folder: Path, tiny: bool = False) -> int:
    if tiny:
        from safetensors.torch import load_file

        save_tiny_gdino(folder, words=sorted({w for c in CLASSES for w in c.split()}))
        return sum(t.numel() for t in load_file(folder / "model.safetensors").values())
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    tokens = [f"[unused{i}]" for i in range(30522)]
    for i, t in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}.items():
        tokens[i] = t
    words = sorted({w for c in CLASSES for w in c.split()})
    for i, w in enumerate(words):
        tokens[2000 + i] = w
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    with learned.common._quiet_transformers():
        model.save_pretrained(folder)
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tokenizer).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def save_sam(path: Path, sam_type: str) -> int:
    if sam_type == "tiny":
        state = tiny_sam_state()
        torch.save(state, path)
        return sum(t.numel() for t in state.values())
    dim, depth, heads, global_idx = learned.SAM_TYPES[sam_type]
    config = dict(embed_dim=dim, depth=depth, num_heads=heads, global_attn_indexes=global_idx, window_size=14,
                  img_size=1024, patch_size=16, out_chans=256)
    torch.manual_seed(0)
    model = learned.build_sam(config)
    torch.save(model.state_dict(), path)
    return sum(p.numel() for p in model.parameters())


def save_lama(path: Path, tiny: bool = False) -> int:
    model = lama_like(ngf=8, n_down=3, n_blocks=1) if tiny else lama_like(ngf=64, n_down=3, n_blocks=18)
    model.save(str(path))
    return sum(p.numel() for p in model.parameters())


def time_stage(run, n: int, device: torch.device) -> dict[str, float]:
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "photos_per_s": round(n / seconds, 3), "s_per_photo": round(seconds / n, 3)}


def bench(name: str, load, call, images: list[np.ndarray], batches: list[int], device: torch.device,
          warmup: int) -> dict[str, Any]:
    start = time.perf_counter()
    backend = load()
    load_s = time.perf_counter() - start
    for _ in range(warmup):  # allocator, cuDNN autotuning, TorchScript's profiling runs
        call(backend, images[:1])
    out: dict[str, Any] = {"backend": backend.backend, "load_s": round(load_s, 2), "photos": len(images),
                           "warmup_calls": warmup}
    for b in batches:
        backend.batch_size = b
        out[f"batch_{b}"] = time_stage(lambda backend=backend: call(backend, images), len(images), device)
        out[f"batch_{b}"]["final_batch_size"] = backend.batch_size
    print(f"{name}: {json.dumps(out)}", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--photos", type=int, default=None, help="photos per stage (cpu 4, cuda 64)")
    parser.add_argument("--batch", type=int, default=None, help="the batched setting (cpu 4, cuda 16)")
    parser.add_argument("--sam-types", nargs="+", default=["vit_b", "vit_h"], choices=sorted(learned.SAM_TYPES))
    parser.add_argument("--vit-h-photos", type=int, default=None, help="photos for vit_h (cpu 1, else --photos)")
    parser.add_argument("--cpu-warmup", type=int, default=0, help="warm-up calls for GDINO/SAM on CPU (LaMa: 2)")
    parser.add_argument("--no-fp16", action="store_true", help="float32 on CUDA too")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="tiny configurations on 64-px photos (a dry run)")
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "results" / "imagenet_learned.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.photos or (64 if cuda else 2)
    batch = args.batch or (16 if cuda else 2)
    eager_warmup = 1 if cuda else args.cpu_warmup
    batches = sorted({1, batch})
    fp16 = cuda and not args.no_fp16
    images = photos(n, args.tiny)
    sam_types = ["tiny"] if args.tiny else args.sam_types
    gdino_name, lama_name = ("gdino_tiny", "lama_tiny") if args.tiny else ("gdino_swin_t", "lama_big_like")
    prompts = [CLASSES[i % len(CLASSES)] for i in range(n)]
    common = {"device": str(device), "fp16": fp16}
    result: dict[str, Any] = {
        "script": "perf/imagenet_learned.py",
        "lsbench": __version__,
        "argv": sys.argv[1:],
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if cuda else None,
        },
        "device": str(device),
        "fp16": fp16,
        "tiny": args.tiny,
        "photo_sizes_hw": [list(im.shape[:2]) for im in images],
        "batch_sizes": batches,
        "stages": {},
    }
    with tempfile.TemporaryDirectory(prefix="lsbench-perf-") as tmp:
        tmp = Path(tmp)
        params = save_gdino(tmp / "grounding-dino-tiny", args.tiny)
        result["stages"][gdino_name] = {"params": params, **bench(
            "gdino",
            lambda: learned.GroundingDinoDetector.load({"gdino_checkpoint": str(tmp / "grounding-dino-tiny"),
                                                        **common}),
            lambda b, ims: b.detect(ims, prompts[: len(ims)], [None] * len(ims)),
            images, batches, device, eager_warmup,
        )}
        for sam_type in sam_types:
            path = tmp / f"sam_{sam_type}.pth"
            params = save_sam(path, sam_type)
            k = n if sam_type != "vit_h" or cuda else (args.vit_h_photos or 1)
            result["stages"][f"sam_{sam_type}"] = {"params": params, **bench(
                f"sam {sam_type}",
                lambda path=path, sam_type=sam_type: learned.SamSegmenter.load(
                    {"sam_checkpoint": str(path), "sam_type": None if args.tiny else sam_type, **common}),
                lambda b, ims: b.segment(ims, [centre_box(im) for im in ims]),
                images[:k], sorted({1, min(batch, k)}), device, eager_warmup,
            )}
            path.unlink()
            learned.clear_model_cache()
        params = save_lama(tmp / "big-lama-like.pt", args.tiny)
        result["stages"][lama_name] = {"params": params, **bench(
            "lama",
            lambda: learned.LamaInpainter.load({"lama_checkpoint": str(tmp / "big-lama-like.pt"), **common}),
            lambda b, ims: b.inpaint(ims, [centre_mask(im) for im in ims]),
            images, batches, device, 2,
        )}
    stages = result["stages"]
    pipeline = {}
    for sam_type in sam_types:
        names = (gdino_name, f"sam_{sam_type}", lama_name)
        for label in ("batch_1", "batched"):
            per_photo = 0.0
            for name in names:
                runs = sorted((k for k in stages[name] if k.startswith("batch_")), key=lambda k: int(k.split("_")[1]))
                per_photo += stages[name][runs[0] if label == "batch_1" else runs[-1]]["s_per_photo"]
            pipeline[f"gdino+sam_{sam_type}+lama {label}"] = round(1 / per_photo, 3) if per_photo else None
    result["pipeline_photos_per_s"] = pipeline
    result["notes"] = [
        "Random weights at real sizes, loaded through lsbench.generators.imagenet.learned (the generate path).",
        "batch_1 = the paper code's one-photo-at-a-time loop; photos are batched only with same-input-size photos "
        "(GDINO: same resized size; LaMa: same size padded to 8; SAM: always, inputs are padded to 1024²).",
        "lama_big_like is tests/tiny_lama.py's FFC-ResNet at big-lama's layout (51 M parameters), not the released "
        "big-lama.pt; its time estimates big-lama's.",
        "Pipeline rate = 1 / sum of the three stages' seconds per photo (no overlap, no decoding/compositing).",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
