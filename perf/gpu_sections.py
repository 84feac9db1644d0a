"""The sections of ``perf/gpu_check.py``: each one function ``(ctx) -> {"checks": [...], "figures": {...}}``.

Each runs in its own process (started by ``gpu_check.py``, killed with its children when its time box
ends), so a CUDA fault or a hang in one section cannot take the others down.  ``ctx.device`` is the
device under test (``cuda`` on a GPU machine; ``cpu`` in the dry mode, where "device vs CPU" compares
the CPU with itself and only proves that the code runs), ``ctx.dry`` selects the tiny sizes.

Correctness sections compare the device against the CPU on the same inputs and the same weights
(``check`` rows: a measured value against a limit); throughput sections run the ``perf/`` script that
owns the measurement at the paper's settings and keep its headline figures (its whole JSON is kept
beside the check's).  The limits come from float32 rounding (1e-4 for the samplers) and the DEC
solver's tolerance (1e-3, so the devices may stop one solver step apart), not from a GPU run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
PERF = ROOT / "perf"


@dataclass(frozen=True)
class Context:
    device: str  # "cuda" or "cpu"
    dry: bool
    work: Path  # a scratch folder of this section (removed by the runner)
    results: Path  # where the perf scripts' own JSONs are kept


def check(name: str, value: float, limit: float, op: str = "<=") -> dict[str, Any]:
    """One correctness row: ``value op limit`` (``<=`` or ``>=``); NaN never passes."""
    value = float(value)
    passed = value <= limit if op == "<=" else value >= limit
    return {"name": name, "value": value, "op": op, "limit": limit, "passed": bool(passed)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` in float64 (0 when both are 0)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    den = b.norm().item()
    return (a - b).norm().item() / den if den else (a - b).norm().item()


def _amp_dtype(device: torch.device) -> torch.dtype:
    from lsbench.benchmark import distributed

    return distributed.amp_dtype(device) if device.type == "cuda" else torch.bfloat16


# --------------------------------------------------------------------------- correctness


def warp(ctx: Context) -> dict[str, Any]:
    """Monotone warp/unwarp, exact and fast samplers: the device's output against the CPU's."""
    from lsbench import monotone as M

    dev = torch.device(ctx.device)
    g = torch.Generator().manual_seed(0)
    size = 32 if ctx.dry else 224
    # Smooth images (bicubic upsampling of 8×8 noise), so the round trip is a resampling question only.
    x = F.interpolate(torch.rand(4, 3, 8, 8, generator=g), size=size, mode="bicubic", align_corners=True)
    phi = M.sample(4, 4, 0.25, generator=g)
    checks, figures = [], {"size": size}
    for exact in (True, False):
        tag = "exact" if exact else "fast"
        w_cpu = M.warp(x, phi, exact=exact)
        w_dev = M.warp(x.to(dev), phi.to(dev), exact=exact)
        u_cpu = M.unwarp(w_cpu, phi, exact=exact)
        u_dev = M.unwarp(w_dev, phi.to(dev), exact=exact)
        checks.append(check(f"warp {tag}: max |device - cpu|", (w_dev.cpu() - w_cpu).abs().max(), 1e-4))
        checks.append(check(f"unwarp {tag}: max |device - cpu|", (u_dev.cpu() - u_cpu).abs().max(), 1e-4))
        res_cpu = (u_cpu - x).abs().mean().item()
        res_dev = (u_dev.cpu() - x).abs().mean().item()
        figures[f"round_trip_mean_abs_{tag}"] = {"cpu": res_cpu, "device": res_dev}
        checks.append(check(f"round trip {tag}: |residual(device) - residual(cpu)|", abs(res_dev - res_cpu), 1e-5))
    ident = M.identity(4, 4, device=dev)
    checks.append(check("identity warp: max |S(x; id) - x| on device",
                        (M.warp(x.to(dev), ident, exact=False) - x.to(dev)).abs().max(), 0.0))
    return {"checks": checks, "figures": figures}


def dec(ctx: Context) -> dict[str, Any]:
    """DEC forward and implicit backward, float32 and under autocast: device against CPU, same weights."""
    from lsbench.dec_models.latent import adapted_layers
    from lsbench.dec_models.registry import create_model

    dev = torch.device(ctx.device)
    size = 32 if ctx.dry else 64
    checks, figures = [], {"img_size": size, "amp_dtype": str(_amp_dtype(dev)).replace("torch.", "")}
    for arch in ("resnet", "dinov2"):
        def build(arch=arch):  # built twice (a deepcopy would share the token-grid hooks' state)
            torch.manual_seed(0)
            model = create_model(f"{arch}_dec", 10, size="micro", img_size=size).eval()
            with torch.no_grad():  # logit heads away from zero, so the solver iterates as a trained DEC does
                for layer in adapted_layers(model.backbone):
                    for conv in (layer.canonicalizer.head.x_head, layer.canonicalizer.head.y_head):
                        conv.weight.normal_(0, 0.03)
            return model

        model, on_dev = build(), build().to(dev)
        g = torch.Generator().manual_seed(1)
        x, y = torch.rand(4, 3, size, size, generator=g), torch.randint(0, 10, (4,), generator=g)
        with torch.no_grad():
            out_cpu, out_dev = model(x), on_dev(x.to(dev))
        # The solver stops at tol 1e-3 (relative residual); the two devices may stop one step apart.
        checks.append(check(f"{arch}_dec forward: ‖device - cpu‖ / ‖cpu‖", _rel(out_dev, out_cpu), 1e-2))
        grads = {}
        for name, m, xx, yy in (("cpu", model, x, y), ("device", on_dev, x.to(dev), y.to(dev))):
            m.zero_grad(set_to_none=True)
            F.cross_entropy(m(xx), yy).backward()
            grads[name] = torch.cat([p.grad.detach().double().cpu().reshape(-1)
                                     for p in m.parameters() if p.grad is not None])
        canon = [p.grad for n, p in on_dev.named_parameters() if "canonicalizer" in n and p.grad is not None]
        checks.append(check(f"{arch}_dec implicit backward: ‖∇device - ∇cpu‖ / ‖∇cpu‖",
                            _rel(grads["device"], grads["cpu"]), 2e-2))
        checks.append(check(f"{arch}_dec implicit backward reaches the canonicalizer (‖∇‖)",
                            sum(g.double().norm().item() for g in canon), 1e-12, ">="))
        on_dev.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=_amp_dtype(dev)):
            out_amp = on_dev(x.to(dev))
            loss = F.cross_entropy(out_amp, y.to(dev))
        loss.backward()
        amp_grads = [p.grad for p in on_dev.parameters() if p.grad is not None]
        finite = all(torch.isfinite(g).all().item() for g in amp_grads) and torch.isfinite(out_amp).all().item()
        checks.append(check(f"{arch}_dec autocast forward+backward finite", float(finite), 1.0, ">="))
        figures[f"{arch}_amp_forward_rel_err"] = _rel(out_amp.float(), out_cpu)
        checks.append(check(f"{arch}_dec autocast forward: ‖amp - fp32 cpu‖ / ‖cpu‖",
                            figures[f"{arch}_amp_forward_rel_err"], 0.1))
    return {"checks": checks, "figures": figures}


def _tiny_mnist(out: Path, *, train: int, test: int, size: int = 32, shard_size: int | None = None) -> Path:
    from lsbench.generators import mnist
    from lsbench.generators.runner import RunOptions

    cfg = mnist.MnistConfig(digits=1, size=size, scale_range=(0.6, 1.1), train=train, test=test, variants=3)
    mnist.generate(cfg, out, RunOptions(workers=1, shard_size=shard_size or max(train, test)))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eval_config(data: Path, ckpt: Path, out: Path | None):
    from lsbench.benchmark.configs import EvaluateConfig

    return EvaluateConfig(model="resnet_dec", data=data, checkpoint=ckpt, out=out, batch_size=8, workers=0)


def ddp_worker(data: Path, ckpt: Path, out: Path) -> None:
    """Under torchrun: join the group explicitly (NCCL on CUDA, gloo on CPU; even one rank goes through
    the collectives), check one raw all-reduce and run the real evaluation, whose metric sums are reduced."""
    import torch.distributed as dist

    from lsbench.benchmark.evaluate import evaluate

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    t = torch.tensor([rank + 1.0], device=dev)
    dist.all_reduce(t)
    result, _ = evaluate(_eval_config(data, ckpt, out))
    if rank == 0:
        (out / "ddp.json").write_text(json.dumps({"backend": dist.get_backend(), "world": world,
                                                  "all_reduce": t.item(), "expected": world * (world + 1) / 2,
                                                  "metrics": result["metrics"]}))
    dist.destroy_process_group()


def ddp(ctx: Context) -> dict[str, Any]:
    """Metric reduction across ranks: evaluation under torchrun against the same evaluation in one process."""
    from lsbench.benchmark.evaluate import evaluate
    from lsbench.dec_models import checkpoint
    from lsbench.dec_models.registry import create_model

    data = _tiny_mnist(ctx.work / "data", train=8, test=40, shard_size=16)  # shards of 16, 16, 8: uneven ranks
    torch.manual_seed(0)
    ckpt = checkpoint.save(ctx.work / "resnet_dec.pt", create_model("resnet_dec", 10, size="micro", img_size=32))
    single, _ = evaluate(_eval_config(data, ckpt, None))
    # One rank per GPU (NCCL refuses two ranks on one GPU); two gloo ranks on the CPU.
    nproc = max(1, torch.cuda.device_count()) if ctx.device == "cuda" else 2
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env["OMP_NUM_THREADS"] = "1"
    out = ctx.work / "ddp"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-port", str(_free_port()), str(PERF / "gpu_check.py"), "--_ddp-worker", str(data), str(ckpt),
           str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    got = json.loads((out / "ddp.json").read_text())
    checks = [check(f"{got['backend']} all_reduce of rank+1 over {got['world']} ranks: |got - expected|",
                    abs(got["all_reduce"] - got["expected"]), 0.0)]
    for key in ("num_samples", "accuracy", "inve", "inve_code"):
        a, b = got["metrics"].get(key), single["metrics"].get(key)
        if isinstance(b, (int, float)):
            checks.append(check(f"{key}: |torchrun - one process|", abs(a - b), 1e-6 * max(1.0, abs(b))))
    kept = {k: got["metrics"].get(k) for k in ("num_samples", "accuracy", "inve")}
    return {"checks": checks, "figures": {"backend": got["backend"], "ranks": got["world"], "metrics": kept}}


def _epoch_losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [e["train_loss"] for e in lines if e.get("event") == "epoch"]


def train(ctx: Context) -> dict[str, Any]:
    """One short training run per family (its DEC model) through ``lsbench.benchmark.train`` under AMP
    on CUDA: the loss stays finite and falls from the first epoch to the last on a batch seen every epoch;
    then fp16 + GradScaler forced on one model (GPUs with bfloat16 pick bfloat16 by themselves)."""
    from lsbench.benchmark import distributed
    from lsbench.benchmark import train as train_mod
    from lsbench.benchmark.configs import TrainConfig
    from lsbench.dec_models.archs import list_archs

    data = _tiny_mnist(ctx.work / "data", train=16, test=16)
    dev = torch.device(ctx.device)
    figures: dict[str, Any] = {"amp": dev.type == "cuda", "amp_dtype": str(distributed.amp_dtype(dev)) if
                               dev.type == "cuda" else "none (CPU trains in float32)", "losses": {}}
    checks = []

    def run(name: str, model: str) -> None:
        cfg = TrainConfig(model=model, data=str(data), out=str(ctx.work / name), size="micro", img_size=32,
                          epochs=5, batch_size=16, lr=5e-4, weight_decay=0.0, warmup_epochs=0, scheduler="constant",
                          label_smoothing=0.0, mixup=0.0, random_erase=0.0, layer_decay=1.0, workers=0,
                          val_limit=16, log_every=1)
        train_mod.train(cfg)
        losses = _epoch_losses(ctx.work / name)
        figures["losses"][name] = [round(v, 4) for v in losses]
        checks.append(check(f"{name}: last epoch loss / first", losses[-1] / losses[0], 0.97))

    for arch in list_archs():
        run(f"{arch}_dec", f"{arch}_dec")
    if dev.type == "cuda":
        original = distributed.amp_dtype
        distributed.amp_dtype = lambda device: torch.float16  # the path of GPUs without bfloat16
        try:
            run("resnet_dec_fp16_gradscaler", "resnet_dec")
        finally:
            distributed.amp_dtype = original
    return {"checks": checks, "figures": figures}


def oom(ctx: Context) -> dict[str, Any]:
    """The learned ImageNet stages' batch halving (``run_in_batches``) on a batch that does not fit.

    On CUDA each item of a chunk allocates 1/4 of the GPU's total memory, so 16 and 8 items run out
    of memory for real and 2 fit.  In the dry mode there is no device to exhaust: the same loop runs
    with an allocation that raises ``torch.OutOfMemoryError`` past 2 items, and says so (``simulated``)."""
    from lsbench.generators.imagenet.learned.common import run_in_batches

    items = list(range(16))
    ooms = []
    if ctx.device == "cuda":
        total = torch.cuda.mem_get_info()[1]
        unit = total // 4

        def fn(chunk: list[int]) -> list[int]:
            try:
                block = torch.empty(len(chunk) * unit, dtype=torch.uint8, device="cuda")
            except torch.OutOfMemoryError:
                ooms.append(len(chunk))
                raise
            block.fill_(1)
            del block
            return list(chunk)
    else:
        def fn(chunk: list[int]) -> list[int]:
            if len(chunk) > 2:
                ooms.append(len(chunk))
                raise torch.OutOfMemoryError("simulated out of memory (dry mode)")
            return list(chunk)

    results, final = run_in_batches(fn, items, 16, "gpu_check")
    return {"checks": [check("results in item order after halving (mismatches)", sum(a != b for a, b in
                                                                                    zip(results, items)), 0),
                       check("out-of-memory errors seen", len(ooms), 1, ">="),
                       check("final batch size", final, 8)],
            "figures": {"simulated": ctx.device != "cuda", "oom_at_chunk_sizes": ooms, "final_batch_size": final,
                        "gpu_total_gb": round(torch.cuda.mem_get_info()[1] / 2**30, 1) if ctx.device == "cuda"
                        else None}}


# --------------------------------------------------------------------------- throughput (the perf/ scripts)


def _script(ctx: Context, name: str, args: list[str], keep: Callable[[dict], dict], tag: str = "") -> dict[str, Any]:
    """Run ``perf/{name}.py args --out ...`` and keep its headline figures; its JSON is saved under results
    as ``gpu_check_{name}{tag}.json``."""
    out = ctx.results / f"gpu_check_{name}{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=ctx.work, suffix=".json", delete=False) as f:
        tmp = Path(f.name)
    proc = subprocess.run([sys.executable, str(PERF / f"{name}.py"), *args, "--out", str(tmp)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:]
        raise RuntimeError(f"perf/{name}.py exited {proc.returncode}: {' '.join(tail)}")
    data = json.loads(tmp.read_text())
    os.replace(tmp, out)
    return {"checks": [], "figures": {"json": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
                                      **keep(data)}}


def dec_overhead(ctx: Context) -> dict[str, Any]:
    """DINOv2-B, batch 128, 224²: DEC's share of the forward; batch-10 training step memory, DEC vs Optim."""
    if ctx.dry:
        args = ["--device", "cpu", "--archs", "dinov2", "--size", "micro", "--batch", "2", "--img-size", "32",
                "--repeats", "1", "--worst-iter", "2", "--profile-archs", "--mem-archs", "dinov2", "--mem-size",
                "micro", "--mem-batch", "2", "--mem-img-size", "32", "--mem-time-repeats", "1", "--optim-steps", "2"]
    else:
        args = ["--device", "cuda", "--archs", "dinov2", "--size", "base", "--batch", "128", "--repeats", "5",
                "--profile-archs", "dinov2", "--mem-archs", "dinov2", "--mem-size", "base", "--mem-batch", "10"]
    return _script(ctx, "dec_overhead", args, lambda d: {
        "dec_share_of_forward": d["summary"]["forward_dec_share_of_time"].get("dinov2"),
        "train_step_peak_delta_mb": d["summary"]["memory_step_peak_delta_mb"].get("dinov2"),
        "paper": {k: d["paper"][k] for k in ("forward_dec_share", "memory_dec_gb", "memory_optim_gb")},
    })


def evaluate(ctx: Context) -> dict[str, Any]:
    """``lsbench evaluate`` against a raw forward loop of the same model (batch 256, 8 workers)."""
    if ctx.dry:
        args = ["--device", "cpu", "--size", "micro", "--batch", "8", "--n", "40", "--workers", "0"]
    else:
        args = ["--device", "cuda", "--batch", "256", "--n", "5120", "--workers", "8"]
    return _script(ctx, "evaluate_throughput", args, lambda d: {
        k: d[k] for k in ("harness_images_per_s", "raw_forward_images_per_s", "harness_over_raw")})


def imagenet_learned(ctx: Context) -> dict[str, Any]:
    """GroundingDINO Swin-T, SAM vit_h and a LaMa-sized network with random weights, photos/s."""
    if ctx.dry:
        args = ["--device", "cpu", "--tiny", "--photos", "2", "--batch", "2"]
    else:
        args = ["--device", "cuda", "--photos", "32", "--batch", "16", "--sam-types", "vit_h"]
    return _script(ctx, "imagenet_learned", args, lambda d: {
        "pipeline_photos_per_s": d["pipeline_photos_per_s"],
        "stage_photos_per_s": {name: {k: v["photos_per_s"] for k, v in stage.items() if k.startswith("batch_")}
                               for name, stage in d["stages"].items()},
    })


def render(ctx: Context) -> dict[str, Any]:
    """A GSO render (Cycles, 256², 16 samples, denoised) with ``--device cuda`` and ``optix``, images/s."""
    devices = ["cpu"] if ctx.dry else ["optix", "cuda"]
    figures, errors = {}, {}
    for device in devices:
        args = (["--device", device, "--size", "48", "--samples", "1", "--images", "2"] if ctx.dry
                else ["--device", device, "--samples", "16", "--images", "24"]) + ["--workers", "1", "--no-eevee"]
        try:
            kept = _script(ctx, "render_gso", args, lambda d: {
                "images_per_s": {("denoised" if r.get("denoise") else "noisy"): r["images_per_s"] for r in d["runs"]},
                "render_s": d["breakdown_s"]}, tag=f"_{device}")
        except RuntimeError as e:  # one device failing (no OptiX here, say) still reports the other
            errors[device] = str(e)
            continue
        figures[device] = kept["figures"]
    if errors and not figures:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in errors.items()))
    return {"checks": [check(f"render with --device {d} failed", 1.0, 0.0) for d in errors],
            "figures": {**figures, **({"errors": errors} if errors else {})}}


SECTIONS: dict[str, tuple[Callable[[Context], dict[str, Any]], int, int]] = {
    # name: (function, time box on a GPU in s, time box in the dry mode in s); the GPU boxes add up to 595 s.
    "warp": (warp, 20, 60),
    "dec": (dec, 45, 90),
    "ddp": (ddp, 45, 120),
    "train": (train, 75, 240),
    "oom": (oom, 20, 30),
    "dec_overhead": (dec_overhead, 110, 180),
    "evaluate": (evaluate, 60, 120),
    "imagenet_learned": (imagenet_learned, 130, 180),
    "render": (render, 90, 180),
}
