"""One prepared run that proves lsbench's CUDA paths on a GPU machine in under ten minutes, as one JSON.

GPU time comes in minutes, so it is spent on this one command, prepared and tested on CPU beforehand::

    make install && .venv/bin/python perf/gpu_check.py            # on the GPU machine: ≤ 600 s
    .venv/bin/python perf/gpu_check.py --dry --out /tmp/dry.json  # anywhere: tiny sizes on the CPU

Sections (``perf/gpu_sections.py``; GPU time box / dry time box, seconds):

- ``warp`` (20/60)  monotone warp/unwarp, exact and fast samplers: CUDA against CPU on the same inputs;
- ``dec`` (45/90)   ``resnet_dec`` and ``dinov2_dec`` forward and implicit backward, float32 and under
  autocast: CUDA against CPU with the same weights (relative error of logits and of all gradients);
- ``ddp`` (45/120)  ``torch.distributed.run --nproc-per-node 1`` (one rank per GPU) with NCCL: a raw
  all-reduce and the real evaluation, whose metric sums go through the collective, against one process;
- ``train`` (75/240) every family's DEC model trained 5 epochs through ``lsbench.benchmark.train`` under
  AMP (bfloat16 where the GPU has it), then fp16 + GradScaler forced: finite losses that fall by ≥ 3 %;
- ``oom`` (20/30)   the learned stages' batch halving on a batch that really does not fit on the GPU;
- ``dec_overhead`` (110/180) ``perf/dec_overhead.py`` at the paper's A4 settings: DINOv2-B batch 128
  forward (DEC's share, paper 24 %), batch-10 training-step memory, DEC vs Optim (paper 5.75 vs 43.3 GB);
- ``evaluate`` (60/120) ``perf/evaluate_throughput.py``: the harness against a raw forward loop, batch
  256, 8 workers;
- ``imagenet_learned`` (130/180) ``perf/imagenet_learned.py``: GroundingDINO Swin-T, SAM vit_h and a
  LaMa-sized network with random weights of the real sizes, photos/s (fp16 autocast for GDINO and SAM);
- ``render`` (90/180) ``perf/render_gso.py`` with ``--device optix`` and ``cuda``: 256², 16 samples, images/s.

Each section runs in its own process group, killed when its box (or the whole ``--budget``) runs out;
a failing or timed-out section is reported with its last error line and the rest go on.  The exit code
is 1 when any section failed or timed out.  The dry mode (``--dry``, CPU, tiny sizes; "CUDA against CPU"
compares the CPU with itself, the OOM is simulated and says so) is a slow test of the suite, so this
script cannot rot between GPU runs.  Writes ``--out`` (default ``perf/results/gpu_check.json``) with each
section's checks (value, limit, passed) and figures, the perf scripts' own JSONs beside it, and prints a
table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_sections as S  # noqa: E402

RESULTS = S.ROOT / "perf" / "results"


def _machine(device: str) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                           "cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__, "device": device}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpus=torch.cuda.device_count(), gpu_memory_gb=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported())
    return out


def _lines(log: Path) -> list[str]:
    return [line.rstrip() for line in log.read_text(errors="replace").splitlines() if line.strip()]


def _last_line(log: Path) -> str:
    lines = _lines(log)
    return lines[-1].strip() if lines else "(no output)"


def run_section(name: str, box: float, device: str, dry: bool, work: Path, results: Path) -> dict[str, Any]:
    """Run one section in a child process (its own session, so a timeout kills its children too)."""
    out, log = work / f"{name}.result.json", work / f"{name}.log"
    cmd = [sys.executable, __file__, "--_section", name, "--_result", str(out), "--device", device,
           "--_work", str(work / name), "--_results", str(results)] + (["--dry"] if dry else [])
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=S.ROOT)
        try:
            proc.wait(timeout=box)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            timed_out = True
    seconds = round(time.perf_counter() - start, 1)
    tail = {"log_tail": _lines(log)[-20:]}  # kept for failures: the traceback's end
    if timed_out:
        return {"status": "timeout", "seconds": seconds, "box_s": box, "error": f"killed after its {box:.0f} s box; "
                f"last output: {_last_line(log)}", **tail}
    if not out.is_file():
        return {"status": "failed", "seconds": seconds, "box_s": box,
                "error": f"exited {proc.returncode} without a result: {_last_line(log)}", **tail}
    body = json.loads(out.read_text())
    return {**body, "seconds": seconds, "box_s": box, **(tail if body["status"] != "ok" else {})}


def child(name: str, result: Path, device: str, dry: bool, work: Path, results: Path) -> int:
    """The section process: run it, write its result (``ok`` when every check passed), never raise."""
    work.mkdir(parents=True, exist_ok=True)
    try:
        body = S.SECTIONS[name][0](S.Context(device=device, dry=dry, work=work, results=results))
        failed = [c["name"] for c in body["checks"] if not c["passed"]]
        body = {"status": "failed" if failed else "ok", **body,
                **({"error": f"{len(failed)} check(s) failed: {'; '.join(failed)}"} if failed else {})}
    except Exception as e:  # noqa: BLE001 - a section's failure is its result; the runner goes on
        import traceback

        traceback.print_exc()
        body = {"status": "failed", "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"}
    result.write_text(json.dumps(body, indent=2, default=str))
    return 0


def _without_paths(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k != "json"}
    return value


def _figure_text(figures: dict[str, Any], width: int = 70) -> str:
    """The figures on one line (the perf scripts' JSON paths left out), cut at ``width``."""
    text = " ".join(f"{k}={json.dumps(v, separators=(',', ':'), default=str)}"
                    for k, v in _without_paths(figures).items())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(report: dict[str, Any]) -> str:
    rows = [("section", "status", "s", "checks", "figures / error")]
    for name, sec in report["sections"].items():
        checks = sec.get("checks", [])
        passed = sum(c["passed"] for c in checks)
        detail = sec.get("error") or _figure_text(sec.get("figures", {}))
        rows.append((name, sec["status"], f"{sec.get('seconds', 0):.0f}", f"{passed}/{len(checks)}", detail))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry", action="store_true", help="the CPU dry mode: tiny sizes, every section (a test)")
    ap.add_argument("--device", default=None, choices=("cuda", "cpu"), help="default: cuda, or cpu with --dry")
    ap.add_argument("--sections", nargs="+", default=list(S.SECTIONS), choices=list(S.SECTIONS))
    ap.add_argument("--box", action="append", default=[], metavar="SECTION=SECONDS",
                    help="override one section's time box (repeatable)")
    ap.add_argument("--budget", type=float, default=600, help="seconds for the whole run; later sections get "
                    "what is left")
    ap.add_argument("--out", type=Path, default=None, help="default: perf/results/gpu_check.json "
                    "(gpu_check_dry.json with --dry)")
    ap.add_argument("--_section", help=argparse.SUPPRESS)
    ap.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_results", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_ddp-worker", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._ddp_worker:
        S.ddp_worker(*args._ddp_worker)
        return 0
    device = args.device or ("cpu" if args.dry else "cuda")
    if args._section:
        return child(args._section, args._result, device, args.dry, args._work, args._results)

    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; run on the GPU machine, or pass --dry for the CPU dry mode",
              file=sys.stderr)
        return 2
    boxes = {name: float(S.SECTIONS[name][2 if args.dry else 1]) for name in args.sections}
    for item in args.box:
        name, _, seconds = item.partition("=")
        if name not in S.SECTIONS or not seconds.replace(".", "", 1).isdigit():
            print(f"error: --box {item!r}: write SECTION=SECONDS with SECTION one of {', '.join(S.SECTIONS)}",
                  file=sys.stderr)
            return 2
        boxes[name] = float(seconds)
    out = args.out or RESULTS / ("gpu_check_dry.json" if args.dry else "gpu_check.json")
    results = out.parent
    results.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "gpu_check", "mode": "dry" if args.dry else "gpu", "machine": _machine(device),
        "budget_s": args.budget, "boxes_s": boxes, "sections": {},
    }
    from lsbench import __version__

    report["lsbench_version"] = __version__
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lsbench-gpu-check-") as tmp:
        for name in args.sections:
            left = args.budget - (time.perf_counter() - start)
            if left < 5:
                report["sections"][name] = {"status": "timeout", "seconds": 0, "box_s": 0,
                                            "error": f"not started: the {args.budget:.0f} s budget was spent"}
            else:
                report["sections"][name] = run_section(name, min(boxes[name], left), device, args.dry, Path(tmp),
                                                       results)
                shutil.rmtree(Path(tmp) / name, ignore_errors=True)
            sec = report["sections"][name]
            print(f"{name}: {sec['status']} ({sec['seconds']:.0f} s){': ' + sec['error'] if 'error' in sec else ''}",
                  file=sys.stderr, flush=True)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    statuses = [s["status"] for s in report["sections"].values()]
    report["summary"] = {k: [n for n, s in report["sections"].items() if s["status"] == k]
                         for k in ("ok", "failed", "timeout")}
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp_out, out)
    print(table(report))
    print(f"wrote {out} ({report['wall_s']:.0f} s)")
    return 0 if all(s == "ok" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
